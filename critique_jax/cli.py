"""What every command-line entry point shares (train, train_critic, self_train): its flags,
and what it does first."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from critique_jax.parallel.distributed import maybe_initialize


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The flags of an entry point: ``--config``, ``--workdir``, ``--resume`` and its stop flag."""

    config: flags.FlagHolder
    workdir: flags.FlagHolder
    resume: flags.FlagHolder
    stop: flags.FlagHolder


def define_flags(config_help: str, workdir_help: str, resume_help: str, stop_name: str, stop_help: str) -> RunFlags:
    """Defines the entry point's flags (call once, at import of the entry-point module)."""
    out = RunFlags(
        config=config_flags.DEFINE_config_file("config", None, config_help, lock_config=True),
        workdir=flags.DEFINE_string("workdir", None, workdir_help),
        resume=flags.DEFINE_bool("resume", True, resume_help),
        stop=flags.DEFINE_integer(stop_name, None, stop_help),
    )
    flags.mark_flags_as_required(["config", "workdir"])
    return out


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
