"""Critique models and critique in the loop.

Modules (imported directly; this package imports nothing so that ``rl`` and ``config`` can use
its light modules without cycles):

* :mod:`critique_jax.critique.data`: step-level critique examples (prompt, target, labels).
* :mod:`critique_jax.critique.critic`: the critique model's training (``train_critic``) and
  held-out evaluation (``evaluate_critic``, ``score_critiques``).
"""
