"""Train a policy: SFT warm-up, then RL with the configured entropy-control loss.

    python -m critique_jax.train --config=configs/quickstart.py --workdir=runs/quickstart
    python -m critique_jax.train --config=configs/countdown_kl_cov.py --workdir=runs/kl \\
        --config.rl.loss.kl_cov.ratio=2e-3 --config.seed=1

Re-running the same command resumes from the latest checkpoint in ``--workdir``.
Multi-process (one process per host): add ``--config.distributed.coordinator_address=HOST:PORT
--config.distributed.num_processes=N --config.distributed.process_id=I`` (or the JAX_* env vars;
on TPU pods set JAX_DISTRIBUTED_AUTO=1).
"""

from __future__ import annotations

from critique_jax import cli

FLAGS = cli.define_flags(
    "Path to a configs/*.py file.", "Run directory (metrics, checkpoints, samples).",
    "Continue from the latest checkpoint in --workdir.", "stop_at_step",
    "Checkpoint and exit after this RL step (global step numbering, as in metrics.jsonl); re-run to resume.")


def main(argv: list[str]) -> None:
    config = cli.start(argv, FLAGS.config.value)
    from critique_jax.runs import train  # after jax.distributed.initialize

    train(config, FLAGS.workdir.value, resume=FLAGS.resume.value, stop_at=FLAGS.stop.value)


if __name__ == "__main__":
    cli.run(main, FLAGS.verbose)
