"""Training-state checkpoints: a thin wrapper around ``orbax.checkpoint.CheckpointManager``.
Over 300 lines: one class, whose contract (retention, crash safety, integrity) is written out
below, and whose sha256 integrity check must see every save and restore.

A checkpoint is one step directory ``<directory>/<step>/`` with two orbax items:

* ``state`` — a pytree of jax arrays (policy params as an ``nnx.State`` or dict, optimiser
  state, step counter, PRNG keys ...), written with ``StandardSave`` (tensorstore, one shard
  file set per process) and restored onto the shardings of a ``like`` tree;
* ``meta`` — a small JSON object (config, data-iterator position, ...), ``JsonSave``.

Retention is "the last ``keep_last`` steps plus the ``keep_best`` best steps by
``metrics[best_metric]``", expressed with orbax's preservation policies
(``AnyPreservationPolicy([LatestN, BestN])``); a step saved without a finite value of the
best metric is kept only while it is among the latest.

Crash safety comes from orbax's atomic save: a step is written into
``<step>.orbax-checkpoint-tmp*`` and renamed to ``<step>`` only once every file is complete,
so a process killed mid-write leaves no half-written step that ``latest_step`` could return
(the next ``Checkpointer`` on the directory removes the leftover temporary folder in the
background, finished before its first save).

Saves are asynchronous by default: ``save`` returns once the arrays have been copied to host
memory and the training loop continues while a background thread writes them; ``save`` waits
for the previous write first, and ``wait``/``close`` wait for the last one.

Integrity: once a step is committed (before the next save, in ``wait`` and ``close``),
process 0 writes ``<step>/checksums.json``, the sha256 of every file of the step.
``latest_step`` returns the newest step whose files match it (a step saved without one is
trusted) and moves a damaged step (a file missing or changed) aside to
``<directory>-damaged/<step>`` with a warning naming it, so a run resumes from the newest
intact step and later saves are not mistaken for older ones.

Typed PRNG keys (``jax.random.key``) are stored as their raw ``key_data`` (uint32) and
re-wrapped with the implementation of the matching leaf of ``like`` on restore, so callers
may keep typed keys in ``state``.

Multi-host: every process must call ``save``/``restore``/``wait``/``close`` with the same
arguments and in the same order (orbax synchronises the processes with barriers; each writes
its own addressable shards, process 0 writes the metadata and commits the step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from critique_jax import storage

PyTree = Any

_STATE = "state"
_META = "meta"
CHECKSUMS = "checksums.json"

log = logging.getLogger("critique_jax")


class _SkipExpectedNotices(logging.Filter):
    """Drops orbax notices about what this module does on purpose: the per-save warning for a
    step saved without a best-metric value (such a step is kept only while among the latest, so
    it would fire on every non-eval save of a training run) and the three notices that a
    read-only manager is read-only (every checkpoint an analysis notebook opens).
    """

    SKIP = ("did not provide metrics", "CheckpointManagerOptions.read_only=True", "Given directory is read only")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(s in message for s in self.SKIP)


logging.getLogger("absl").addFilter(_SkipExpectedNotices())


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl(like: Any) -> Any:
    """The PRNG implementation of a typed key array or of its ``ShapeDtypeStruct``."""
    if isinstance(like, jax.Array):
        return jax.random.key_impl(like)
    # jax.random.key_impl rejects ShapeDtypeStruct; the key dtype carries the impl.
    return like.dtype._impl  # noqa: SLF001


def _abstract_leaf(like: Any) -> jax.ShapeDtypeStruct:
    """Restore target for one leaf; typed keys become their uint32 key-data array."""
    sharding = getattr(like, "sharding", None)
    if not _is_key(like):
        return jax.ShapeDtypeStruct(like.shape, like.dtype, sharding=sharding)
    data = jax.eval_shape(jax.random.key_data, like)  # shape + (impl key words,), uint32
    extra = data.ndim - len(like.shape)
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(like.shape) - len(sharding.spec))
        sharding = NamedSharding(sharding.mesh, P(*spec, *([None] * extra)))
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding)


def _rewrap(like: Any, restored: Any) -> Any:
    return jax.random.wrap_key_data(restored, impl=_key_impl(like)) if _is_key(like) else restored


def _file_hashes(step_dir: str) -> dict[str, str]:
    """sha256 of every file under ``step_dir`` (local or a URL) but the manifest, by relative path."""
    out, root = {}, epath.Path(step_dir)
    base = os.fspath(root).split("://", 1)[-1]  # fsspec's walk yields cloud folders without their scheme
    for folder, _, files in root.walk():
        sub = os.fspath(folder).split("://", 1)[-1][len(base):].strip("/")
        for name in files:
            rel = f"{sub}/{name}" if sub else name
            if rel != CHECKSUMS:
                with (root / rel).open("rb") as f:
                    out[rel] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def damage(step_dir: str) -> str | None:
    """What is wrong with a step against its manifest (None: intact, or saved without one)."""
    manifest = epath.Path(step_dir) / CHECKSUMS
    if not manifest.exists():
        return None
    expected = json.loads(manifest.read_text())
    actual = _file_hashes(step_dir)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if not missing and not changed:
        return None
    return "; ".join(f"{what}: {', '.join(names)}" for what, names in (("missing", missing), ("changed", changed))
                     if names)


class Checkpointer:
    """Saves and restores ``(state, meta)`` per training step under one directory.

    Args:
      directory: where the step folders live (created if missing), e.g. ``runs/x/checkpoints``.
      keep_last: how many of the most recent steps to keep (>= 1).
      keep_best: how many steps to keep by the best value of ``metrics[best_metric]`` (>= 0),
        in addition to the latest ones.
      best_metric: metric name ranking steps for ``keep_best`` (None: keep only the latest).
      best_mode: "max" or "min": which end of ``best_metric`` is best.
      async_save: write in a background thread (True) or block in ``save`` (False).
      read_only: open for reading only: nothing is created, cleaned up, moved or saved (safe on
        a directory a live run is writing); a damaged step is skipped with a warning.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep_last: int = 3,
        keep_best: int = 1,
        best_metric: str | None = "eval/pass@1",
        best_mode: str = "max",
        async_save: bool = True,
        read_only: bool = False,
    ):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last}: expected >= 1 (the newest step must stay)")
        if keep_best < 0:
            raise ValueError(f"keep_best={keep_best}: expected >= 0")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode={best_mode!r}: expected 'max' or 'min'")
        path = os.fspath(directory)
        self.directory = path if "://" in path else os.path.abspath(path)  # gs:// etc. as is
        self.best_metric = best_metric if keep_best > 0 and not read_only else None
        self.read_only = read_only
        policies: list[pp.PreservationPolicy] = [pp.LatestN(n=keep_last)]
        best_fn = None
        if self.best_metric is not None:
            worst = -math.inf if best_mode == "max" else math.inf
            name = self.best_metric

            def best_fn(m: dict) -> float:
                # Steps of an older run ranked by another metric sort as the worst.
                return float(m.get(name, worst))

            policies.append(
                pp.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",  # BestN keeps the last n of the sorted list
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(read_only=True) if read_only else ocp.CheckpointManagerOptions(
            # best_fn also makes the manager store each step's metrics (it writes them only
            # when tracking a best metric) so a reopened manager can rank old steps.
            best_fn=best_fn,
            best_mode=best_mode,
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(_STATE, _META)
        )
        self._unsealed: list[int] = []  # steps saved here whose manifest is not written yet
        self._intact: set[int] = set()  # steps verified by latest_step

    def save(
        self,
        step: int,
        state: PyTree,
        meta: dict,
        metrics: dict | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (pytree of jax arrays) and ``meta`` (JSON dict) as ``step``.

        ``metrics`` ranks the step for ``keep_best`` (only ``metrics[best_metric]`` is used and
        stored; a missing or non-finite value means "not a best candidate"). Returns False
        when the step is skipped because it is not newer than the latest saved step (orbax's
        save decision); ``force=True`` saves anyway (an existing step raises orbax's
        ``StepAlreadyExistsError``). With ``async_save`` the write finishes in the background.
        """
        if self.read_only:
            raise PermissionError(f"{self.directory} is open read-only: step {step} not saved")
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta for step {step} is not strict JSON: {e}") from e
        best = None
        if self.best_metric is not None and metrics is not None and self.best_metric in metrics:
            value = float(metrics[self.best_metric])
            best = {self.best_metric: value} if math.isfinite(value) else None
        state = jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, state)
        self.wait()
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
            ),
            metrics=best,
            force=force,
        )
        if saved:
            self._unsealed.append(step)
            self._intact.add(step)
        return saved

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _seal(self) -> None:
        """Writes the manifest of every committed step saved since the last call (process 0)."""
        for step in self._unsealed:
            step_dir = self._step_dir(step)
            if jax.process_index() == 0 and epath.Path(step_dir).is_dir():  # not removed by retention
                text = json.dumps(_file_hashes(step_dir), indent=0, sort_keys=True)
                storage.write_atomic(epath.Path(step_dir) / CHECKSUMS, text)
        self._unsealed = []

    def latest_step(self) -> int | None:
        """The newest intact step; damaged newer steps are moved aside with a warning."""
        for step in reversed(self.all_steps()):
            if step in self._intact:
                return step
            problem = damage(self._step_dir(step))
            if problem is None:
                self._intact.add(step)
                return step
            self._quarantine(step, problem)
        return None

    def _quarantine(self, step: int, problem: str) -> None:
        if self.read_only:
            log.warning("checkpoint step %d in %s is damaged (%s): skipped", step, self.directory, problem)
            return
        aside = os.path.join(f"{self.directory}-damaged", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("checkpoint step %d in %s is damaged (%s): moved to %s; falling back to an older step", step,
                    self.directory, problem, aside)
        if jax.process_index() == 0:
            epath.Path(aside).parent.mkdir(parents=True, exist_ok=True)
            epath.Path(self._step_dir(step)).rename(aside)
        self._manager.reload()

    def best_step(self) -> int | None:
        """Step with the best ``best_metric`` among the kept steps (None if none has it)."""
        return self._manager.best_step() if self.best_metric is not None else None

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None = None, *, like: PyTree, partial: bool = False) -> tuple[PyTree, dict]:
        """Restores ``(state, meta)`` of ``step`` (default: the latest step).

        ``like`` has the structure of the saved state, with concrete arrays or
        ``jax.ShapeDtypeStruct``s whose ``sharding`` says where each restored array goes
        (shape and dtype must match what was saved); ``partial``: ``like`` names a subset of
        the saved items (e.g. only ``{"params": ...}`` of a training state). Raises FileNotFoundError naming the
        directory and the available steps when ``step`` (or any intact step) is missing, and
        ValueError naming what is damaged for a ``step`` whose files do not match its manifest.
        """
        if step is None:
            step = self.latest_step()
        steps = self.all_steps()
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available steps: {steps}"
            )
        problem = None if step in self._intact else damage(self._step_dir(step))
        if problem is not None:
            raise ValueError(f"checkpoint step {step} in {self.directory} is damaged ({problem})")
        abstract = jax.tree.map(_abstract_leaf, like)
        state_args = (ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                             restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
                      if partial else ocp.args.StandardRestore(abstract))
        out = self._manager.restore(
            step, args=ocp.args.Composite(**{_STATE: state_args, _META: ocp.args.JsonRestore()})
        )
        return jax.tree.map(_rewrap, like, out[_STATE]), dict(out[_META])

    def read_meta(self, step: int | None = None) -> dict:
        """Only the JSON ``meta`` of ``step`` (default: the latest step), e.g. to learn what
        architecture to restore the state onto."""
        if step is None:
            step = self.latest_step()
        if step is None or step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; available steps: "
                                    f"{self.all_steps()}")
        return dict(self._manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))[_META])

    def wait(self) -> None:
        """Blocks until the pending asynchronous save (if any) is committed, then writes its manifest."""
        self._manager.wait_until_finished()
        self._seal()

    def close(self) -> None:
        """Waits for pending saves (writing their manifests) and releases the manager's threads."""
        if not self.read_only:
            self.wait()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
