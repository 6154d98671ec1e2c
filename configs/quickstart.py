"""Quickstart: SFT + a short Clip-Cov RL run on countdown, sized for a 2-core CPU (~10 min)."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.task.name = "countdown"
    c.task.n_train = 2000
    c.task.n_test = 128
    c.model.preset = "small"
    c.sampling.max_new_tokens = 64
    c.sft.steps = 300
    c.sft.batch_size = 32
    c.rl.steps = 40
    c.rl.prompts_per_step = 16
    c.rl.group_size = 8
    c.rl.loss.name = "clip_cov"
    # At this scale (~5k response tokens per step) the paper's r = 2e-4 detaches one token
    # per step; 2e-2 makes the intervention visible.
    c.rl.loss.clip_cov.ratio = 2e-2
    c.eval.every = 20
    c.eval.n_problems = 64
    c.checkpoint.every = 20
    return c
