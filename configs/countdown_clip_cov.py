"""Countdown, small preset: Clip-Cov (Cui et al. 2025): detach a random share of high-covariance tokens."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "clip_cov"
    # The paper's r = 2e-4 detaches ~1 token per step at this batch size (~5k tokens);
    # 2e-2 makes the intervention act on a comparable number of tokens per update.
    c.rl.loss.clip_cov.ratio = 2e-2
    return c
