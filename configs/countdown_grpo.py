"""Countdown, small preset: GRPO: group-normalised advantages with the clip-higher PPO surrogate (the entropy-collapse baseline)."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "ppo"
    return c
