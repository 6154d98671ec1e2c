"""Quickstart: SFT + a short Clip-Cov RL run on countdown (level 1), sized for a 2-core CPU.

Level 1 countdown (three numbers from 1..10, targets 10..99) keeps prompts under 20 tokens
and reference solutions under 30, so the small policy learns the format and some arithmetic
in a few minutes of SFT and leaves room for RL to improve it.
"""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.task.name = "countdown"
    c.task.difficulties = (1,)
    c.task.n_train = 2000
    c.task.n_test = 128
    c.model.preset = "small"
    c.sampling.prompt_buckets = (20,)
    c.sampling.max_new_tokens = 40
    c.sft.steps = 450
    c.sft.batch_size = 32
    c.rl.steps = 30
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.rl.loss.name = "clip_cov"
    # At this scale (~3k response tokens per update) the paper's r = 2e-4 detaches one token
    # per step; 2e-2 makes the intervention visible.
    c.rl.loss.clip_cov.ratio = 2e-2
    c.eval.every = 15
    c.eval.n_problems = 64
    c.checkpoint.every = 15
    return c
