"""A run directory: one object owns the names in it and opens its checkpoints. A local folder or
a cloud URL (``gs://bucket/run``, :mod:`critique_jax.storage`).

    <workdir>/config.json          the whole config (critique_jax.rundir.save_config)
    <workdir>/metrics.jsonl        logged metrics, samples.jsonl a few samples (critique_jax.metrics)
    <workdir>/checkpoints/<step>/  resumable training states
    <workdir>/sft_policy/<step>/   a train run's final SFT policy, {"params"}: the reference policy,
                                   and what init_from / critic.policy_from / self-training load
    <workdir>/critic_policy/<step>/ a train_critic run's final critic, {"params"}; its meta holds
                                   the critic's architecture, dtypes and widths
    <workdir>/run.lock             held by the process that trains in it (critique_jax.runlock; for a
                                   cloud run directory, a lock file on the local machine)
    <workdir>/wandb/, wandb_id     with log.wandb: the Weights & Biases run (critique_jax.wandb_log)

Training checkpointers (read-write, asynchronous per ``checkpoint.async_save``) keep the latest
and best steps; final-policy checkpointers keep one step and write synchronously; read-only
checkpointers never delete or move anything (a live run's directory is safe to read).
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from critique_jax import storage
from critique_jax.checkpoint import Checkpointer
from critique_jax.metrics import METRICS_FILE, SAMPLES_FILE, MetricsWriter
from critique_jax.parallel.distributed import is_main_process
from critique_jax.storage import Staging, is_remote
from critique_jax.wandb_log import WANDB_ID_FILE, wandb_sinks

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
SFT_POLICY = "sft_policy"
CRITIC_POLICY = "critic_policy"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The directory ``path`` of one run (train, train_critic or self_train)."""

    path: str

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_file(self) -> str:
        return self / CONFIG

    def read_config(self) -> dict:
        """The run's ``config.json`` as a dict (local or a URL)."""
        return json.loads(storage.path(self.config_file).read_text())

    def has(self, name: str) -> bool:
        """``name`` is a non-empty folder of the run (e.g. :data:`SFT_POLICY`)."""
        folder = storage.path(self / name)
        return folder.is_dir() and any(True for _ in folder.iterdir())

    def refuse_overwrite(self, resume: bool, *names: str) -> None:
        """Without ``resume``, a folder of ``names`` that already holds checkpoints is an error."""
        for name in names:
            if not resume and self.has(name):
                raise FileExistsError(f"{self / name} holds checkpoints and resume is off: use a new --workdir or "
                                      "--resume")

    def training(self, checkpoint: ml_collections.ConfigDict, *, best: bool = False) -> Checkpointer:
        """The resumable-state checkpointer of ``checkpoints/`` (config section ``checkpoint``);
        ``best``: also keep the ``checkpoint.keep_best`` best steps by ``checkpoint.best_metric``."""
        return Checkpointer(self / CHECKPOINTS, keep_last=checkpoint.keep_last,
                            keep_best=checkpoint.keep_best if best else 0,
                            best_metric=checkpoint.best_metric if best else None, async_save=checkpoint.async_save)

    def writer(self, config: ml_collections.ConfigDict, resume_step: int) -> MetricsWriter:
        """The run's metrics writer (process 0 only): ``metrics.jsonl``, TensorBoard (``log.tensorboard``)
        and W&B (``log.wandb``), written in a :class:`Staging` folder (the run directory itself when
        local); lines past ``resume_step`` (-1: all) belong to a crashed attempt and are dropped."""
        main = is_main_process()
        staging = Staging(self.path, fetch=(METRICS_FILE, SAMPLES_FILE, WANDB_ID_FILE)) if main else None
        sinks = wandb_sinks(config, staging.local, main, name=self.name) if main else []
        return MetricsWriter(self.path, enabled=main, tensorboard=config.log.tensorboard, resume_step=resume_step,
                             sinks=sinks, staging=staging)

    @property
    def name(self) -> str:
        """The run directory's last path component."""
        return os.path.basename(self.path.rstrip("/")) if is_remote(self.path) else \
            os.path.basename(os.path.abspath(self.path))

    def final(self, name: str) -> Checkpointer:
        """The one-step, synchronous checkpointer of a final policy folder (``sft_policy``, ``critic_policy``)."""
        return final_checkpointer(self / name)


def final_checkpointer(directory: str) -> Checkpointer:
    """A one-step, synchronous checkpointer of a final-parameters folder ``directory``."""
    return Checkpointer(directory, keep_last=1, keep_best=0, best_metric=None, async_save=False)


def reader(directory: str) -> Checkpointer:
    """A read-only checkpointer of ``directory`` (another run's, possibly live)."""
    return Checkpointer(directory, read_only=True)
