"""Countdown, small preset: Critique-GRPO (arXiv:2506.03106) with a selectable critique type.

The argument after ``:`` is ``critique.type`` (default ``rule_step``)::

    python -m critique_jax.train --config=configs/countdown_critique_grpo.py --workdir=runs/cg_rule
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:indicative --workdir=runs/cg_ind
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:ground_truth --workdir=runs/cg_gt
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:self --workdir=runs/cg_self
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:model --workdir=runs/cg_model \\
        --config.critique.critic_from=runs/critic
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:none --workdir=runs/grpo

``none`` is the GRPO baseline with everything else equal (including the refinement-format SFT
batches, so both arms start from the same kind of policy). Every group holds G - n_refine
initial responses and n_refine = 1 refinement; refinement tokens get the shaped objective
``-A * p / (p + 0.1)``.
"""

from critique_jax.config import default_config
from critique_jax.critique.feedback import CRITIQUE_TYPES


def get_config(critique: str = "rule_step"):
    if critique not in CRITIQUE_TYPES:
        raise ValueError(f"configs/countdown_critique_grpo.py:{critique}: expected one of {list(CRITIQUE_TYPES)}")
    c = default_config()
    c.critique.type = critique
    c.critique.sft_refine_every = 3  # teaches the small policy the refinement format during SFT
    c.rl.loss.name = "ppo" if critique == "none" else "critique_grpo"
    return c
