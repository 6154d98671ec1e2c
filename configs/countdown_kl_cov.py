"""Countdown, small preset: KL-Cov (Cui et al. 2025): a KL penalty on the highest-covariance tokens."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "kl_cov"
    c.rl.loss.kl_cov.ratio = 2e-2  # see countdown_clip_cov.py on ratios at this batch size
    return c
