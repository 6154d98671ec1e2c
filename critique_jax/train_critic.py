"""Train the step-level critique model (the critic) on a task's reference and perturbed solutions.

    python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir=runs/critic
    python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir=runs/critic_tiny \\
        --config.critic.preset=tiny --config.critic.steps=200

Re-running the same command resumes from the latest checkpoint in ``--workdir``; a finished run
(``<workdir>/critic_policy``) is left as it is. The critic's fields are the config's ``critic``
section. Multi-process: as ``critique_jax.train``.
"""

from __future__ import annotations

from critique_jax import cli

FLAGS = cli.define_flags(
    "Path to a configs/*.py file with a critic section.", "Run directory of the critic (metrics, checkpoints, "
    "samples).", "Continue from the latest checkpoint in --workdir.", "stop_at_step",
    "Checkpoint and exit after this critic step; re-run to resume.")


def main(argv: list[str]) -> None:
    config = cli.start(argv, FLAGS.config.value)
    from critique_jax.runs import train_critic  # after jax.distributed.initialize

    train_critic(config, FLAGS.workdir.value, resume=FLAGS.resume.value, stop_at=FLAGS.stop.value)


if __name__ == "__main__":
    cli.run(main, FLAGS.verbose)
