"""What every command-line entry point shares (train, train_critic, self_train): its flags,
what it does first, and how it reports a bad input (one line ``error: ...``, exit status 2;
the traceback with ``--verbose``)."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import Callable

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from critique_jax.parallel.distributed import maybe_initialize
from critique_jax.text import default_cache_dir


@dataclasses.dataclass(frozen=True)
class RunFlags:
    """The flags of an entry point: ``--config``, ``--workdir``, ``--resume``, its stop flag, ``--verbose``."""

    config: flags.FlagHolder
    workdir: flags.FlagHolder
    resume: flags.FlagHolder
    stop: flags.FlagHolder
    verbose: flags.FlagHolder


def define_flags(config_help: str, workdir_help: str, resume_help: str, stop_name: str, stop_help: str) -> RunFlags:
    """Defines the entry point's flags (call once, at import of the entry-point module)."""
    out = RunFlags(
        config=config_flags.DEFINE_config_file("config", None, config_help, lock_config=True),
        workdir=flags.DEFINE_string("workdir", None, workdir_help),
        resume=flags.DEFINE_bool("resume", True, resume_help),
        stop=flags.DEFINE_integer(stop_name, None, stop_help),
        verbose=define_verbose(),
    )
    flags.mark_flags_as_required(["config", "workdir"])
    return out


def define_verbose() -> flags.FlagHolder:
    """``--verbose``: show the traceback of an error (every entry point has it)."""
    return flags.DEFINE_bool("verbose", False, "Show the traceback of an error, not only its message.")


def start(argv: list[str], config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Rejects stray arguments, quiets orbax's per-save INFO logs, splits the CPU into
    ``mesh.cpu_devices`` devices, joins ``jax.distributed``, turns on the persistent compilation
    cache (:func:`use_compile_cache`).

    Call it before importing modules that touch devices: multi-process JAX must be
    initialised before the first device query.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("critique_jax").setLevel(logging.INFO)
    use_cpu_devices(config.mesh.cpu_devices)
    d = config.distributed
    maybe_initialize(d.coordinator_address, d.num_processes, d.process_id)
    use_compile_cache(config.get("compile_cache", ""))  # run configs saved before the key existed: the default
    return config


def use_cpu_devices(n: int) -> None:
    """Splits the CPU into ``n`` JAX devices (``config.mesh.cpu_devices``; 0: leaves JAX's count).
    Must run before the first device query; after it, a one-line error naming the key."""
    import jax

    if not n:
        return
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:  # JAX's backends already started: the count is fixed
        raise ValueError(f"mesh.cpu_devices={n}: set before JAX's first device query, but it already ran "
                         f"({jax.device_count()} devices)") from e


def use_compile_cache(setting: str) -> str | None:
    """Points JAX's persistent compilation cache at ``setting`` (``config.compile_cache``: ``""`` =
    ``<cache>/xla``, ``"off"`` = no cache, else a directory) and returns the directory used (None
    when off). ``JAX_COMPILATION_CACHE_DIR``, when set, wins (JAX reads it itself). Programs that
    compile in under a second are not cached (JAX's default threshold)."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if not isinstance(setting, str):
        raise ValueError(f"compile_cache={setting!r}: expected '' (the default directory), 'off' or a directory")
    if setting == "off":
        return None
    path = setting or os.path.join(default_cache_dir(), "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


#: What a run raises on a bad input or a failed run: invalid config values, missing or
#: conflicting files, non-finite training (not programming errors such as TypeError).
REPORTED_ERRORS = (ValueError, OSError, FloatingPointError)


def run(main: Callable[[list[str]], None], verbose: flags.FlagHolder) -> None:
    """``app.run(main)``; a :data:`REPORTED_ERRORS` error is printed as one line
    ``error: <message>`` and exits with status 2 (re-raised with ``--verbose``)."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except REPORTED_ERRORS as e:
            if verbose.value:
                raise
            print(f"error: {' '.join(str(e).split())} (--verbose for the traceback)", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
