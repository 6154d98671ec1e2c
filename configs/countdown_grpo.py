"""Countdown, small preset: GRPO: group-normalised advantages with the symmetric PPO surrogate (clip 0.2), the
entropy-collapse baseline of the papers; clip-higher is a separate method (``rl.loss.ppo.clip_high=0.28``)."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "ppo"
    return c
