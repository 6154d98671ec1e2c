"""Critique in the entropy-collapse regime (issue: does critique keep entropy from collapsing?).
The argument after ``:`` is the arm: a critique type (``plan_hint``, ``plan``, ``rule_step``, ``indicative``), the
compute-matched control ``resample``, or ``none`` (GRPO). Critique acts on all-wrong groups only
(``critique.scope='all_wrong'``; ``--config.critique.scope=all`` for the paper's layout)::

    python -m critique_jax.train --config=configs/countdown_critique_collapse.py:plan_hint --workdir=runs/ccl_sft \\
        --config.rl.steps=0                                                    # the shared SFT policy
    python -m critique_jax.train --config=configs/countdown_critique_collapse.py:plan_hint \\
        --config.init_from=runs/ccl_sft --workdir=runs/ccl_plan_hint
    python -m critique_jax.train --config=configs/countdown_critique_collapse.py:resample \\
        --config.init_from=runs/ccl_sft --workdir=runs/ccl_resample

The collapse regime of ``configs/countdown_collapse.py`` (the ``mini`` policy, a fixed pool of 128
prompts revisited every 4 steps, 4 minibatches per step, no KL), with two changes that give critique
something to act on:

* ``sft.skip_rl_pool``: SFT never sees the pool's problems. In the collapse regime the pool is
  part of SFT's data, the policy solves ~70% of it before RL and only ~0.3% of its groups are ever
  all wrong, so critique of all-wrong groups would have nothing to act on.
* refinement-format SFT batches every 3 steps (``critique.sft_refine_every``) in every arm, so all
  arms start from one policy that can read a critique; with ``plan`` / ``plan_hint`` half their
  wrong solutions are planted dead ends under that critique, and after a ``plan_hint`` critique
  the target follows the hint (``critique_jax.runs.supervised``). The shared SFT policy of the
  sweep is trained with ``plan_hint``.

Critique arms use the ``critique_grpo`` loss (PPO on initial responses, ``-A * p / (p + 0.1)`` on
refinement tokens) with GRPO advantages, as the collapse regime's GRPO; ``resample`` and ``none``
use PPO.
"""

import runpy
from pathlib import Path

from critique_jax.critique.feedback import CRITIQUE_TYPES


def get_config(kind: str = "plan_hint"):
    if kind not in CRITIQUE_TYPES:
        raise ValueError(f"configs/countdown_critique_collapse.py:{kind}: expected a critique type, one of "
                         f"{list(CRITIQUE_TYPES)}")
    c = runpy.run_path(str(Path(__file__).with_name("countdown_collapse.py")))["get_config"]("ppo")
    c.sft.skip_rl_pool = True
    c.critique.sft_refine_every = 3
    c.critique.type = kind
    c.critique.scope = "all_wrong"
    c.critique.refine_buckets = (128,)
    c.rl.loss.name = "ppo" if kind in ("none", "resample") else "critique_grpo"
    return c
