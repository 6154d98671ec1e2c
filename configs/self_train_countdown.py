"""Self-training on countdown levels 1-2, with and without critique (tail narrowing, arXiv:2411.16579).

The argument after ``:`` is ``critique.type`` (default ``plan_hint``, the critique that passes
the gate; ``none`` = plain self-training). Both variants share one SFT policy, trained with this
same config (rl.steps is 0, so ``train`` stops after SFT; the refinement-format SFT batches,
with planted dead-end first steps, teach the policy to use a critique)::

    python -m critique_jax.train --config=configs/self_train_countdown.py --workdir=runs/st_sft
    python -m critique_jax.self_train --config=configs/self_train_countdown.py:none \\
        --workdir=runs/st_plain --config.init_from=runs/st_sft
    python -m critique_jax.self_train --config=configs/self_train_countdown.py \\
        --workdir=runs/st_critique --config.init_from=runs/st_sft

Why these settings: tail narrowing needs a starting policy that solves a real share of every
level it is tested on. The earlier setup (levels 1-3, the ``small`` policy after 400-800 SFT
steps) solved 6% of level 1 and none of levels 2-3, so every level's share was 0 = 0. Here the
``mini`` policy (as in the collapse regime) learns levels 1 (three numbers from 1..10) and 2
(one more, from 25/50/75/100) for 2400 steps. The self-training pool (the first
``self_train.pool_size`` train problems, half per level) is unseen by SFT: ``rl.pool_size`` names
the same problems and ``sft.skip_rl_pool`` drops every train record with one of their questions,
so the pool's solved share measures what the policy can do, not what it memorised.

Widths: level-2 prompts take up to 24 tokens and reference solutions up to ~45; a critique
prompt holds the question and a sample (<= 24 + 64), a refinement prompt also the critique
(a `plan_hint` critique of a level-2 sample takes a refinement prompt up to ~135 tokens).
"""

from critique_jax.config import default_config
from critique_jax.critique.feedback import CRITIQUE_TYPES


def get_config(critique: str = "plan_hint"):
    if critique not in CRITIQUE_TYPES or critique == "resample":
        raise ValueError(f"configs/self_train_countdown.py:{critique}: expected a critique type, one of "
                         f"{[t for t in CRITIQUE_TYPES if t != 'resample']}")
    c = default_config()
    c.task.name = "countdown"
    c.task.difficulties = (1, 2)
    c.task.n_train = 3000
    c.task.n_test = 192
    c.model.preset = "mini"
    c.sampling.prompt_buckets = (24,)
    c.sampling.max_new_tokens = 64
    c.critique.prompt_buckets = (96,)
    c.critique.refine_buckets = (160,)
    c.critique.sft_refine_every = 3  # in both variants: one shared SFT policy that can refine
    c.critique.type = critique
    # The SFT policy is trained by a train run of this config (rl.steps = 0), whose validation ties a
    # critique type to the critique_grpo loss.
    c.rl.loss.name = "ppo" if critique == "none" else "critique_grpo"
    c.sft.steps = 2400
    c.sft.batch_size = 32
    c.sft.skip_rl_pool = True
    c.rl.steps = 0
    c.rl.pool_size = 240  # = self_train.pool_size: the problems SFT leaves out
    c.eval.n_problems = 96  # 48 per level (test problems cycle through the levels)
    c.eval.group_size = 16
    c.eval.batch_prompts = 16
    st = c.self_train
    st.iterations = 5
    st.pool_size = 240  # 120 per level
    st.samples_per_problem = 8
    st.batch_prompts = 16
    st.sft_steps = 60
    st.sft_batch_size = 32
    st.lr = 5e-4
    st.warmup_steps = 5
    return c
