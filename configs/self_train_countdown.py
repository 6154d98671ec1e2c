"""Self-training on countdown levels 1-3, with and without critique (tail narrowing, arXiv:2411.16579).

The argument after ``:`` is ``critique.type`` (default ``rule_step``; ``none`` = plain
self-training). Both variants share one SFT policy, trained with this same config (rl.steps
is 0, so ``train`` stops after SFT; the refinement-format SFT batches teach the policy to use
critiques)::

    python -m critique_jax.train --config=configs/self_train_countdown.py --workdir=runs/st_sft
    python -m critique_jax.self_train --config=configs/self_train_countdown.py:none \\
        --workdir=runs/st_plain --config.init_from=runs/st_sft
    python -m critique_jax.self_train --config=configs/self_train_countdown.py \\
        --workdir=runs/st_critique --config.init_from=runs/st_sft

Widths: level-3 prompts take up to 24 tokens and reference solutions up to ~60; a critique
prompt holds the question and a sample (<= 24 + 64), a refinement prompt also the critique.
"""

from critique_jax.config import default_config


def get_config(critique: str = "rule_step"):
    c = default_config()
    c.task.name = "countdown"
    c.task.difficulties = (1, 2, 3)
    c.task.n_train = 3000
    c.task.n_test = 192
    c.model.preset = "small"
    c.sampling.prompt_buckets = (24,)
    c.sampling.max_new_tokens = 64
    c.critique.prompt_buckets = (96,)
    c.critique.refine_buckets = (128,)
    c.critique.sft_refine_every = 4  # in both variants: one shared SFT policy that can refine
    c.critique.type = critique
    # The SFT policy is trained by a train run of this config (rl.steps = 0), whose validation ties a
    # critique type to the critique_grpo loss.
    c.rl.loss.name = "ppo" if critique == "none" else "critique_grpo"
    c.sft.steps = 800
    c.sft.batch_size = 32
    c.rl.steps = 0
    c.eval.n_problems = 96  # 32 per level (test problems cycle through the levels)
    c.eval.group_size = 16
    c.eval.batch_prompts = 16
    st = c.self_train
    st.iterations = 5
    st.pool_size = 240  # 80 per level
    st.samples_per_problem = 8
    st.batch_prompts = 16
    st.sft_steps = 60
    st.sft_batch_size = 32
    st.lr = 5e-4
    st.warmup_steps = 5
    return c
