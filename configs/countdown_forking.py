"""Countdown, small preset: GRPO trained only on the top-20% entropy (forking) tokens (Wang et al. 2025)."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "ppo"
    c.rl.loss.forking_rho = 0.2
    return c
