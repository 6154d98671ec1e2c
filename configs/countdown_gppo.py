"""Countdown, small preset: GPPO (Klear-Reasoner): clipped tokens keep a scaled gradient."""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.rl.loss.name = "gppo"
    return c
