"""Countdown, small preset: GRPO with an entropy bonus (coefficient rl.loss.entropy_coef)."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "ppo"
    c.rl.loss.entropy_coef = 1e-3
    return c
