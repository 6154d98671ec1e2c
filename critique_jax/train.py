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

from absl import app, flags
from ml_collections import config_flags

from critique_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, samples).")
_RESUME = flags.DEFINE_bool("resume", True, "Continue from the latest checkpoint in --workdir.")
_STOP_AT = flags.DEFINE_integer("stop_at_step", None, "Checkpoint and exit after this RL step (global step "
                                "numbering, as in metrics.jsonl); re-run to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    config = cli.start(argv, _CONFIG.value)
    from critique_jax.rl.trainer import train  # after jax.distributed.initialize

    train(config, _WORKDIR.value, resume=_RESUME.value, stop_at=_STOP_AT.value)


if __name__ == "__main__":
    app.run(main)
