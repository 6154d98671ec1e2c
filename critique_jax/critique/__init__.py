"""Critique models and critique in the loop (pure parts; the programs are in ``critique_jax.runs``).

Modules (imported directly; this package imports nothing):

* :mod:`critique_jax.critique.feedback`: critique types, rule critiques, critique scoring.
* :mod:`critique_jax.critique.sources`: who writes the critiques of a run (rules, the policy, a critique model).
* :mod:`critique_jax.critique.loop`: one Critique-GRPO batch and the held-out refinement evaluation.
* :mod:`critique_jax.critique.data`: step-level critique examples (prompt, target, labels).
* :mod:`critique_jax.critique.critic`: the ``critic`` section's checks and the critic's widths.
* :mod:`critique_jax.critique.pool`: self-training's selection, pool and evaluation metrics.
"""
