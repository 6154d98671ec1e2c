"""Self-training (STaR / RFT style), optionally with critiques and refinements in the loop.

    python -m critique_jax.self_train --config=configs/self_train_countdown.py --workdir=runs/st \\
        --config.init_from=runs/st_sft
    python -m critique_jax.self_train --config=configs/self_train_countdown.py:none --workdir=runs/st_plain \\
        --config.init_from=runs/st_sft

``init_from`` is a train run directory with ``sft_policy/`` (``python -m critique_jax.train`` with
``rl.steps=0``). Re-running the same command resumes after the last finished iteration.
Multi-process: as ``critique_jax.train``. See :mod:`critique_jax.runs.self_train_run`.
"""

from __future__ import annotations

from critique_jax import cli

FLAGS = cli.define_flags(
    "Path to a configs/*.py file with a self_train section.", "Run directory (metrics, checkpoints, samples).",
    "Continue after the last finished iteration in --workdir.", "stop_after_iteration",
    "Checkpoint and exit after this iteration; re-run to resume.")


def main(argv: list[str]) -> None:
    config = cli.start(argv, FLAGS.config.value)
    from critique_jax.runs import self_train  # after jax.distributed.initialize

    self_train(config, FLAGS.workdir.value, resume=FLAGS.resume.value, stop_after=FLAGS.stop.value)


if __name__ == "__main__":
    cli.run(main, FLAGS.verbose)
