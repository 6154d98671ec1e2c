"""Self-training (STaR / RFT style), optionally with critiques and refinements in the loop.

    python -m critique_jax.self_train --config=configs/self_train_countdown.py --workdir=runs/st \\
        --config.init_from=runs/st_sft
    python -m critique_jax.self_train --config=configs/self_train_countdown.py:none --workdir=runs/st_plain \\
        --config.init_from=runs/st_sft

``init_from`` is a train run directory with ``sft_policy/`` (``python -m critique_jax.train`` with
``rl.steps=0``). Re-running the same command resumes after the last finished iteration.
Multi-process: as ``critique_jax.train``. See :mod:`critique_jax.critique.self_train`.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from critique_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file with a self_train section.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, samples).")
_RESUME = flags.DEFINE_bool("resume", True, "Continue after the last finished iteration in --workdir.")
_STOP_AFTER = flags.DEFINE_integer("stop_after_iteration", None, "Checkpoint and exit after this iteration; "
                                   "re-run to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    config = cli.start(argv, _CONFIG.value)
    from critique_jax.critique.self_train import self_train  # after jax.distributed.initialize

    self_train(config, _WORKDIR.value, resume=_RESUME.value, stop_after=_STOP_AFTER.value)


if __name__ == "__main__":
    app.run(main)
