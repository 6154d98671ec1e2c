"""A run directory: one object owns the names in it and opens its checkpoints.

    <workdir>/config.json          the whole config (critique_jax.rundir.save_config)
    <workdir>/metrics.jsonl        logged metrics, samples.jsonl a few samples (critique_jax.metrics)
    <workdir>/checkpoints/<step>/  resumable training states
    <workdir>/sft_policy/<step>/   a train run's final SFT policy, {"params"}: the reference policy,
                                   and what init_from / critic.policy_from / self-training load
    <workdir>/critic_policy/<step>/ a train_critic run's final critic, {"params"}; its meta holds
                                   the critic's architecture, dtypes and widths
    <workdir>/run.lock             held by the process that trains in it (critique_jax.runlock)
    <workdir>/wandb/, wandb_id     with log.wandb: the Weights & Biases run (critique_jax.wandb_log)

Training checkpointers (read-write, asynchronous per ``checkpoint.async_save``) keep the latest
and best steps; final-policy checkpointers keep one step and write synchronously; read-only
checkpointers never delete or move anything (a live run's directory is safe to read).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from critique_jax.checkpoint import Checkpointer
from critique_jax.metrics import MetricsWriter
from critique_jax.parallel.distributed import is_main_process
from critique_jax.wandb_log import wandb_sinks

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
SFT_POLICY = "sft_policy"
CRITIC_POLICY = "critic_policy"


def local_path(workdir: str) -> str:
    """``workdir`` when it is a local folder; a one-line ValueError for a URL such as
    ``gs://bucket/run``, before anything is created: only orbax would write there, every other
    file would go to a local folder named like the URL."""
    if "://" in str(workdir):
        raise ValueError(f"--workdir={workdir}: run directories must be local folders; cloud URLs are not "
                         "supported yet")
    return workdir


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The directory ``path`` of one run (train, train_critic or self_train)."""

    path: str

    def __truediv__(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_file(self) -> str:
        return self / CONFIG

    def has(self, name: str) -> bool:
        """``name`` is a non-empty folder of the run (e.g. :data:`SFT_POLICY`)."""
        return os.path.isdir(self / name) and bool(os.listdir(self / name))

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
        and W&B (``log.wandb``); lines past ``resume_step`` (-1: all) belong to a crashed attempt and are
        dropped."""
        main = is_main_process()
        return MetricsWriter(self.path, enabled=main, tensorboard=config.log.tensorboard, resume_step=resume_step,
                             sinks=wandb_sinks(config, self.path, main))

    def final(self, name: str) -> Checkpointer:
        """The one-step, synchronous checkpointer of a final policy folder (``sft_policy``, ``critic_policy``)."""
        return final_checkpointer(self / name)


def final_checkpointer(directory: str) -> Checkpointer:
    """A one-step, synchronous checkpointer of a final-parameters folder ``directory``."""
    return Checkpointer(directory, keep_last=1, keep_best=0, best_metric=None, async_save=False)


def reader(directory: str) -> Checkpointer:
    """A read-only checkpointer of ``directory`` (another run's, possibly live)."""
    return Checkpointer(directory, read_only=True)
