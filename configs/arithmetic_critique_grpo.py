"""Arithmetic at its default difficulty (three operations on integers 1..20): Critique-GRPO with
step critiques that explain the first wrong step, sized for a 2-core CPU. The policy is the
``mini`` preset (~0.8M parameters), which learns this task's SFT far faster per CPU second than
``small`` (nll 0.07 after 1000 steps against 0.44 for ``small`` after 600).

The argument after ``:`` is ``critique.type`` (default ``rule_step``; ``none`` is GRPO with
everything else equal)::

    python -m critique_jax.train --config=configs/arithmetic_critique_grpo.py --workdir=runs/ar_rule
    python -m critique_jax.train --config=configs/arithmetic_critique_grpo.py:indicative --workdir=runs/ar_ind

Unlike countdown, an arithmetic solution has no plan to get wrong: a failed response is a slip
at some step, which the ``explained`` critique names with the true value
(``step 2: 1 * 17 is 17 vs 27, so 2 * 17, wrong, arithmetic``), so a refinement can keep the
steps before it and repair that one. Every second SFT batch is in refinement format, its target
the solution the planted error came from (``critique.sft_refine_target = "source"``).

Measured (2-core CPU; ``scripts/reproduce.sh``, notebook 07): 3000 SFT steps (~40 min) reach
held-out pass@1 0.535; on held-out problems a refinement after the ``rule_step`` critique fixes
64.9% of failed responses against 24.7% for a fresh sample; 40 RL steps (2-5 min) change
neither entropy nor pass@k against ``none`` (3 seeds each).
"""

from critique_jax.config import default_config
from critique_jax.critique.feedback import CRITIQUE_TYPES


def get_config(critique: str = "rule_step"):
    if critique not in CRITIQUE_TYPES:
        raise ValueError(f"configs/arithmetic_critique_grpo.py:{critique}: expected one of {list(CRITIQUE_TYPES)}")
    c = default_config()
    c.task.name = "arithmetic"
    c.task.difficulties = (2,)
    c.task.n_train = 2000
    c.task.n_test = 128
    c.model.preset = "mini"
    c.sampling.prompt_buckets = (24,)
    c.sampling.max_new_tokens = 72  # the longest reference solution (the ", so <rest>" style) has 69 tokens
    c.sft.steps = 3000
    c.sft.batch_size = 32
    c.critique.type = critique
    c.critique.format = "explained"
    c.critique.sft_refine_every = 2
    c.critique.sft_refine_target = "source"  # the repaired solution: the slip fixed, the rest kept
    c.critique.prompt_buckets = (96,)  # question + a response of up to 72 tokens
    c.critique.refine_buckets = (192,)  # + its explained critique
    c.rl.loss.name = "ppo" if critique == "none" else "critique_grpo"
    c.rl.advantage = "drgrpo"  # the Critique-GRPO reference script (no std division), in every arm
    c.rl.steps = 40
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.rl.lr = 1e-4
    c.eval.every = 10
    c.eval.n_problems = 64
    c.checkpoint.every = 20
    return c
