"""Countdown, small preset: Critique-GRPO (arXiv:2506.03106) with a selectable critique type.

The argument after ``:`` is ``critique.type`` (default ``rule_step``), optionally followed by
``,<loss>``, the loss of the initial responses (``rl.loss.critique_grpo.base``, default ``ppo``
as in the paper; ``clip_cov`` / ``kl_cov`` / ``gppo`` add entropy control to them)::

    python -m critique_jax.train --config=configs/countdown_critique_grpo.py --workdir=runs/cg_rule
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:indicative --workdir=runs/cg_ind
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:ground_truth --workdir=runs/cg_gt
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:self --workdir=runs/cg_self
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:model --workdir=runs/cg_model \\
        --config.critique.critic_from=runs/critic
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:rule_step,clip_cov --workdir=runs/cg_cc
    python -m critique_jax.train --config=configs/countdown_critique_grpo.py:none --workdir=runs/grpo

``resample`` (no critique: each kept "refinement" is a fresh sample, the compute-matched control)
and ``none`` take the loss after the comma as the whole loss. ``none`` is the GRPO baseline with
everything else equal (including the refinement-format SFT batches, so both arms start from the
same kind of policy). Every group holds G - n_refine initial responses and n_refine = 1
refinement; refinement tokens get the shaped objective ``-A * p / (p + 0.1)``. Advantages are
Dr.GRPO's (group mean subtracted, no std division), as in the paper's script, in every arm.
"""

from critique_jax.config import default_config
from critique_jax.critique.feedback import CRITIQUE_TYPES


def get_config(arg: str = "rule_step"):
    critique, _, base = arg.partition(",")
    if critique not in CRITIQUE_TYPES:
        raise ValueError(f"configs/countdown_critique_grpo.py:{arg}: critique type {critique!r}, expected one of "
                         f"{list(CRITIQUE_TYPES)}")
    c = default_config()
    c.critique.type = critique
    c.critique.sft_refine_every = 3  # teaches the small policy the refinement format during SFT
    c.rl.advantage = "drgrpo"  # the Critique-GRPO reference script: no division by the group's std
    base = base or "ppo"
    c.rl.loss.name = base if critique in ("none", "resample") else "critique_grpo"
    c.rl.loss.critique_grpo.base = base
    c.rl.loss.clip_cov.ratio = 2e-2  # as configs/countdown_clip_cov.py (used when a loss is clip_cov)
    return c
