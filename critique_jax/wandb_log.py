"""Optional Weights & Biases logging beside ``metrics.jsonl`` and TensorBoard (``log.wandb``).

``log.wandb`` is a W&B project name ("" = off); ``log.wandb_mode`` is ``online`` or ``offline``
(no network: the run is kept under ``<workdir>/wandb`` for ``wandb sync``; the ``WANDB_MODE``
environment variable overrides both, as in W&B itself). The W&B run lives in the run
directory and keeps one id across resumes (``<workdir>/wandb_id``), so a resumed run continues
the same W&B run with the same metric names (``train/entropy``, ``eval/pass@1``, ...) and steps
as ``metrics.jsonl``. W&B accepts each step once: steps logged by a crashed attempt after its
last checkpoint keep their first values there, while ``metrics.jsonl`` and TensorBoard hold
the resumed run's. Only process 0 logs. Install with ``pip install -e '.[wandb]'``.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from typing import Any, Mapping

import ml_collections

WANDB_MODES = ("online", "offline")
WANDB_ID_FILE = "wandb_id"


def check_wandb(config: ml_collections.ConfigDict) -> None:
    """Fails (one line, naming the key) when ``log.wandb`` is set but W&B cannot run."""
    project, mode = config.log.wandb, config.log.wandb_mode
    if mode not in WANDB_MODES:
        raise ValueError(f"config log.wandb_mode={mode!r}: expected one of {list(WANDB_MODES)}")
    if project and importlib.util.find_spec("wandb") is None:
        raise ValueError(f"config log.wandb={project!r}: the wandb package is not installed "
                         "(pip install -e '.[wandb]'), or set log.wandb='' to log without it")


class WandbSink:
    """One W&B run for a run directory: ``log(step, values)`` per logged step, ``close()`` at the end.

    folder: the run directory's local log folder (W&B's files go to ``<folder>/wandb``, its id to
    ``<folder>/wandb_id``); config: the run's whole config (shown as the W&B run's config); name:
    the W&B run's name (the run directory's name).
    """

    def __init__(self, folder: str, project: str, mode: str, config: Mapping[str, Any], name: str):
        import wandb

        id_file = os.path.join(folder, WANDB_ID_FILE)
        if os.path.isfile(id_file):
            with open(id_file) as f:
                run_id = f.read().strip()
        else:
            run_id = secrets.token_hex(4)  # W&B ids: lower-case letters and digits
            with open(id_file, "w") as f:
                f.write(run_id + "\n")
        self.run = wandb.init(project=project, id=run_id, resume="allow", dir=folder, mode=mode, config=dict(config),
                              name=name)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def wandb_sinks(config: ml_collections.ConfigDict, folder: str, enabled: bool, name: str) -> list[WandbSink]:
    """``[WandbSink]`` for a run with ``log.wandb`` set, on the logging process (``enabled``); else ``[]``.
    ``folder``: the local folder of the run directory's logs (the run directory itself, or its
    :class:`critique_jax.storage.Staging` folder for a cloud one); ``name``: the W&B run's name."""
    if not (enabled and config.log.wandb):
        return []
    os.makedirs(folder, exist_ok=True)
    return [WandbSink(folder, config.log.wandb, config.log.wandb_mode, config.to_dict(), name)]
