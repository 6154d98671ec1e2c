"""Train the step-level critique model (the critic) on a task's reference and perturbed solutions.

    python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir=runs/critic
    python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir=runs/critic_tiny \\
        --config.critic.preset=tiny --config.critic.steps=200

Re-running the same command resumes from the latest checkpoint in ``--workdir``; a finished run
(``<workdir>/critic_policy``) is left as it is. The critic's fields are the config's ``critic``
section. Multi-process: as ``critique_jax.train``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from critique_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file with a critic section.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of the critic (metrics, checkpoints, samples).")
_RESUME = flags.DEFINE_bool("resume", True, "Continue from the latest checkpoint in --workdir.")
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "Checkpoint and exit after this critic step; re-run to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    config = cli.start(argv, _CONFIG.value)
    from critique_jax.critique.critic import train_critic  # after jax.distributed.initialize

    train_critic(config, _WORKDIR.value, resume=_RESUME.value, stop_at=_STOP_AT.value)


if __name__ == "__main__":
    app.run(main)
