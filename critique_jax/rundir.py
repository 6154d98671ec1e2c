"""A run directory's config: ``config.json`` (the whole config of the run) and
``config_changes.jsonl`` (one line per resume that changed an allowed key).

A resumed run must train what the saved config says: a change of any key outside
:data:`RESUMABLE` is refused, naming the keys. The keys in :data:`RESUMABLE` say how long to
train, how often to log, evaluate and checkpoint, and where the run's processes and caches
are; changing one is allowed and recorded. ``config.json`` is written only after the checks.
"""

from __future__ import annotations

import json
import time
from typing import Any

import ml_collections

from critique_jax import storage

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"

#: Keys a resumed run may change (a key ending in "." covers its section).
RESUMABLE = ("rl.steps", "critic.steps", "self_train.iterations",  # extend (or end earlier)
             "sft.log_every", "critic.log_every", "eval.every", "critic.eval_every", "eval.n_logged_samples",
             "critic.n_logged_samples", "log.",
             "checkpoint.every", "critic.checkpoint_every", "checkpoint.keep_last", "checkpoint.keep_best",
             "checkpoint.async_save",
             "sft.max_bad_steps", "rl.max_bad_steps", "critic.max_bad_steps",
             "distributed.", "data_dir",
             # how the same numbers are computed (a device count: mesh.data=-1 takes whatever there is)
             "model.remat", "model.attention", "rl.micro_batches", "sampling.decode_phases", "mesh.cpu_devices")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every key whose value differs (None: not saved)."""
    old, new = _flat(saved), _flat(json.loads(config.to_json()))
    return {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}


def save_config(config: ml_collections.ConfigDict, workdir: str, resume: bool, write: bool = True) -> None:
    """Writes ``<workdir>/config.json`` (``write``: on the main process only). Resuming a run
    whose saved config differs in a key outside :data:`RESUMABLE` raises ValueError naming the
    keys, before anything is written; allowed changes are appended to ``config_changes.jsonl``.
    A run that does not resume starts a new change log."""
    root = storage.path(workdir)
    path, changes_path = root / CONFIG_FILE, root / CHANGES_FILE
    changes = {}
    if resume and path.exists():
        changes = config_changes(json.loads(path.read_text()), config)
        refused = {k: v for k, v in changes.items() if not _resumable(k) and v[0] is not None}
        if refused:
            listed = "; ".join(f"{k}={new!r} (the run has {old!r})" for k, (old, new) in refused.items())
            raise ValueError(f"config {listed}: resuming {workdir} with another value changes what the run trains; "
                             f"use a new --workdir (or --noresume if it holds no checkpoints). A resumed run may "
                             f"change only: {', '.join(RESUMABLE)}")
    if not write:
        return
    if changes:  # appended by rewriting: object stores have no append
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}) + "\n"
        changes_path.write_text((changes_path.read_text() if changes_path.exists() else "") + line)
    elif not resume and changes_path.exists():
        changes_path.unlink()
    path.write_text(config.to_json(indent=1))
