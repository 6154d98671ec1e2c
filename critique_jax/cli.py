"""What every command-line entry point does first (train, train_critic, self_train)."""

from __future__ import annotations

import logging

import ml_collections
from absl import app

from critique_jax.parallel.distributed import maybe_initialize


def start(argv: list[str], config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Rejects stray arguments, quiets orbax's per-save INFO logs, joins ``jax.distributed``.

    Call it before importing modules that touch devices: multi-process JAX must be
    initialised before the first device query.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("critique_jax").setLevel(logging.INFO)
    d = config.distributed
    maybe_initialize(d.coordinator_address, d.num_processes, d.process_id)
    return config
