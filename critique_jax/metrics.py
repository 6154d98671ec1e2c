"""Run-directory logging: ``metrics.jsonl``, ``samples.jsonl``, TensorBoard events, progress.
Over 300 lines: the writers and ``read_metrics`` share one file format (the non-finite encoding,
the truncation on resume), so both live here.

Layout: ``<workdir>/metrics.jsonl`` holds one JSON object per logged step,
``{"step": s, "train/entropy": ..., "eval/pass@1": ..., "perf/...": ...}``; TensorBoard
scalars use the same names as tags, unchanged (``<workdir>/events.out.tfevents.*``, one
event per step, written with tensorboardX, no TensorFlow needed); ``samples.jsonl`` holds
decoded rollouts, one JSON object per sample with its ``step``.

Values are written as plain JSON numbers (jax/numpy scalars and 0-d arrays converted to
``int``/``float``/``bool``). Non-finite floats are written as the strings ``"nan"``,
``"inf"`` and ``"-inf"`` so that the file stays strict JSON (readable by ``jq`` and
browsers) and a NaN stays recognisable; ``read_metrics`` turns them back into floats.

Only process 0 writes: on other processes (or with ``enabled=False``) the writers do
nothing, so every process can call them unconditionally. A cloud run directory (``gs://...``)
is written through a local :class:`critique_jax.storage.Staging` folder, uploaded every 30 s and
at ``close``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TextIO

import jax
import numpy as np
import tensorboardX as tbx
from etils import epath
from tensorboardX.proto import event_pb2, summary_pb2

from critique_jax import storage
from critique_jax.storage import Staging

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

log = logging.getLogger("critique_jax")


def _scalar(name: str, value: Any) -> bool | int | float:
    """Plain Python number from a Python/NumPy/jax scalar or 0-d (or size-1) array."""
    if isinstance(value, (bool, int, float)):
        return value
    try:
        arr = np.asarray(jax.device_get(value))
    except Exception as e:  # noqa: BLE001 - any failure means "not a number"
        kind = type(value).__name__
        raise ValueError(f"metric {name!r}: cannot convert {kind} to a number") from e
    if arr.size == 1:
        arr = arr.reshape(())
        if arr.dtype == np.bool_:
            return bool(arr)
        if jax.dtypes.issubdtype(arr.dtype, np.integer):
            return int(arr)
        if jax.dtypes.issubdtype(arr.dtype, np.floating):  # includes bfloat16
            return float(arr.astype(np.float64))
    raise ValueError(
        f"metric {name!r}: expected a real scalar, got dtype {arr.dtype} shape {arr.shape}"
    )


def _encode(value: Any) -> Any:
    """JSON-ready value: non-finite floats become "nan"/"inf"/"-inf"; containers recurse."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        arr = np.asarray(jax.device_get(value))
        return _encode(arr.tolist())
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as JSON")


def _dumps(record: Mapping[str, Any]) -> str:
    return json.dumps(_encode(record), allow_nan=False, ensure_ascii=False)


def _parse(line: str, path: Path, lineno: int) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg}): {line[:80]!r}") from e
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError(
            f"{path}:{lineno}: expected an object with an integer 'step': {line[:80]!r}"
        )
    return record


def _iter_lines(path: Path | epath.Path) -> Iterable[tuple[int, str, bool]]:
    """(line number, text, ends with newline) for each non-blank line."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line, line.endswith("\n")


def read_metrics(path_or_workdir: str | os.PathLike) -> list[dict]:
    """Parses ``metrics.jsonl`` (a file, or a run directory containing one; local or a URL).

    Returns one dict per line, ``"nan"``/``"inf"``/``"-inf"`` strings decoded to floats.
    Raises ValueError naming ``file:line`` for a malformed line.
    """
    path = storage.path(path_or_workdir, "metrics")
    if path.is_dir():
        path = path / METRICS_FILE
    records = [_parse(line, path, n) for n, line, _ in _iter_lines(path)]
    return [
        {k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in r.items()}
        for r in records
    ]


def _truncate_after(path: Path, step: int) -> None:
    """Atomically rewrites ``path`` without the lines whose step is > ``step``.

    A last line without a trailing newline that does not parse is a write torn by a crash
    and is dropped with a warning; any other malformed line raises ValueError.
    """
    if not path.exists():
        return
    kept = []
    for lineno, line, complete in _iter_lines(path):
        try:
            record = _parse(line, path, lineno)
        except ValueError:
            if complete:
                raise
            log.warning("%s:%d: dropped a cut-off last line (a write torn by a crash): %r", path, lineno, line[:80])
            continue
        if record["step"] <= step:
            kept.append(line if complete else line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsWriter:
    """Appends per-step metrics and samples to a run directory (process 0 only).

    Args:
      workdir: the run directory (created if missing).
      enabled: False makes every method a no-op (it is also a no-op off process 0).
      tensorboard: also write scalars to a TensorBoard event file in ``workdir``.
      resume_step: when resuming from a checkpoint at this step, drop lines with a larger
        step from ``metrics.jsonl``/``samples.jsonl`` (atomic rewrite) and tell TensorBoard
        to purge events after it, so the resumed run's logs equal an uninterrupted run's.
        Without it, an existing ``metrics.jsonl`` is appended to as is.
      staging: the local folder the files are written in (default: ``Staging(workdir)``, which
        is ``workdir`` itself when it is local).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int | None = None,
        sinks: Sequence[Any] = (),
        staging: Staging | None = None,
    ):
        self.enabled = enabled and jax.process_index() == 0
        self._metrics = self._samples = self._tb = self._staging = None
        self._sinks = list(sinks) if self.enabled else []
        self.workdir = os.fspath(workdir)  # the run directory, local or a URL
        if not self.enabled:
            return
        self._staging = staging or Staging(self.workdir, fetch=(METRICS_FILE, SAMPLES_FILE))
        self._local = Path(self._staging.local)  # where the files are written
        if resume_step is not None:
            for name in (METRICS_FILE, SAMPLES_FILE):
                _truncate_after(self._local / name, resume_step)
        self._metrics = open(self._local / METRICS_FILE, "a", encoding="utf-8")
        if tensorboard:
            # tensorboardX names the file by the whole second and opens it with "wb": the
            # sub-second suffix keeps a writer reopened within a second from truncating it.
            suffix = f".{time.time_ns() % 10**9:09d}"
            self._tb = tbx.FileWriter(str(self._local), filename_suffix=suffix)
            if resume_step is not None:
                # What tensorboardX's SummaryWriter(purge_step=...) writes: TensorBoard hides
                # the older events with step >= this one.
                purge = resume_step + 1
                self._tb.add_event(event_pb2.Event(file_version="brain.Event:2"), step=purge)
                start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
                self._tb.add_event(event_pb2.Event(session_log=start), step=purge)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends ``{"step": step, **metrics}`` as one line (flushed) and logs TB scalars."""
        if not self._open():
            return
        if "step" in metrics:
            raise ValueError(f"metric name 'step' is reserved (step {step})")
        values = {name: _scalar(name, v) for name, v in metrics.items()}
        self._metrics.write(_dumps({"step": int(step), **values}) + "\n")
        self._metrics.flush()
        self._staging.sync()
        if self._tb is not None:
            # Summary protos built directly: tensorboardX's add_scalar would rename tags
            # ("eval/pass@1" -> "eval/pass_1"); TensorBoard itself accepts any tag.
            tb_values = [
                summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
            ]
            summary = summary_pb2.Summary(value=tb_values)
            self._tb.add_summary(summary, global_step=int(step))
            self._tb.flush()
        for sink in self._sinks:
            sink.log(int(step), values)

    def write_samples(self, step: int, samples: Sequence[Mapping[str, Any]]) -> None:
        """Appends one line ``{"step": step, **sample}`` per sample to ``samples.jsonl``."""
        if not self._open():
            return
        if self._samples is None:
            self._samples = open(self._local / SAMPLES_FILE, "a", encoding="utf-8")
        self._samples.writelines(_dumps({"step": int(step), **s}) + "\n" for s in samples)
        self._samples.flush()
        self._staging.sync()

    def _open(self) -> bool:
        """False for a no-op writer; raises if this writer was closed."""
        if self.enabled and self._metrics is None:
            raise ValueError(f"MetricsWriter for {self.workdir} is closed")
        return self.enabled

    def close(self) -> None:
        for f in (self._metrics, self._samples, self._tb, *self._sinks, self._staging):
            if f is not None:
                f.close()
        self._metrics = self._samples = self._tb = self._staging = None
        self._sinks = []

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


DEFAULT_PROGRESS_KEYS = ("train/reward", "train/entropy", "eval/pass@1")


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Training progress on process 0: a tqdm bar on a terminal, plain lines otherwise.

    ``update(step, metrics)`` moves to ``step`` (absolute) and shows the latest values of
    ``keys`` (names shortened to their last path part). When ``file`` is not a TTY (CI
    logs) the bar is off and one line ``step s/total (p%) | x s/step | ETA h:mm:ss | k v``
    is printed every ``print_every`` steps (default: about 20 lines per run) and at the end.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        keys: Sequence[str] = DEFAULT_PROGRESS_KEYS,
        print_every: int | None = None,
        enabled: bool = True,
        file: TextIO | None = None,
    ):
        self.total, self.keys = total, tuple(keys)
        self.file = sys.stderr if file is None else file
        self.enabled = enabled and jax.process_index() == 0
        self.print_every = print_every or max(1, (total - initial) // 20)
        self._initial = self._step = self._printed = initial
        self._start = time.monotonic()
        self._shown: dict[str, float] = {}
        self._bar = None
        if self.enabled and self.file.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, file=self.file, dynamic_ncols=True)

    def _postfix(self) -> dict[str, str]:
        return {k.rsplit("/", 1)[-1]: f"{v:.4g}" for k, v in self._shown.items()}

    def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        for k in self.keys:
            if metrics is not None and k in metrics:
                self._shown[k] = float(_scalar(k, metrics[k]))
        previous, self._step = self._step, step
        if self._bar is not None:
            self._bar.set_postfix(self._postfix(), refresh=False)
            self._bar.update(step - previous)
        elif step - self._printed >= self.print_every or step >= self.total:
            self._printed = step
            done = step - self._initial
            rate = (time.monotonic() - self._start) / max(done, 1)
            fields = " ".join(f"{k} {v}" for k, v in self._postfix().items())
            print(
                f"step {step}/{self.total} ({100 * step / max(self.total, 1):.0f}%) | "
                f"{rate:.3g} s/step | ETA {_format_duration(rate * (self.total - step))}"
                + (f" | {fields}" if fields else ""),
                file=self.file,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
