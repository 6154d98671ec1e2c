"""Sweep directories as data: runs grouped by label, metric series aligned on step, seed statistics.
Over 300 lines: the notebooks' one import for a sweep (its runs, their seed statistics and the
metric families they tabulate); the sections below are independent and can be split if it grows.

A sweep directory (written by ``scripts/sweep.py``) holds ``manifest.json``::

    {"sweep": "entropy",
     "runs": [{"name": "grpo_s0", "label": "grpo", "seed": 0, "entry": "train",
               "overrides": {"rl.loss.name": "ppo", ...}, "workdir": "grpo_s0"}, ...]}

(``workdir`` relative to the sweep directory; other keys are kept but not needed) and, per run,
the trainer's ``metrics.jsonl`` (and ``done.json`` once the run finished). :func:`read_sweep`
reads it into :class:`SweepData`; :func:`seed_band` and :func:`seed_stat` average over the
seeds of a label; :func:`read_test_time` and :func:`budget_band` do the same for a folder of
budget sweeps (``evaluate --budgets``), against the budget, :func:`read_across` and
:func:`across_band` for a folder of across-training tables (``evaluate --which=all``), against the
RL step. Everything here is host-side NumPy;
values are float64, steps int64.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from critique_jax.metrics import METRICS_FILE, read_metrics

MANIFEST = "manifest.json"
DONE_FILE = "done.json"
_RUN_FIELDS = {"name": str, "label": str, "seed": int, "entry": str, "overrides": dict, "workdir": str}


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run of a sweep: its manifest entry and its ``metrics.jsonl`` rows.

    workdir: absolute path of the run directory; rows: :func:`read_metrics` rows (one per
    logged step); done: the sweep marked it finished (``done.json``).
    """

    name: str
    label: str
    seed: int
    entry: str
    overrides: Mapping[str, Any]
    workdir: Path
    rows: tuple[dict, ...]
    done: bool

    def has(self, key: str) -> bool:
        """Whether some row has a finite value of ``key``."""
        return any(_finite(row.get(key)) for row in self.rows)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the rows with a finite ``key``, sorted by step (int64, float64)."""
        pairs = sorted((int(r["step"]), float(r[key])) for r in self.rows if _finite(r.get(key)))
        steps = np.array([s for s, _ in pairs], np.int64)
        return steps, np.array([v for _, v in pairs], np.float64)

    def paired(self, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, x, y)`` at the steps where both keys have finite values (int64, float64, float64)."""
        xs, ys = dict(zip(*self.series(x_key))), dict(zip(*self.series(y_key)))
        steps = np.array(sorted(set(xs) & set(ys)), np.int64)
        return steps, np.array([xs[s] for s in steps], np.float64), np.array([ys[s] for s in steps], np.float64)

    def last_row(self, key: str) -> dict:
        """The last row (by step) with a finite ``key``; KeyError naming the run when none has it."""
        rows = [r for r in self.rows if _finite(r.get(key))]
        if not rows:
            raise KeyError(f"run {self.name} ({self.workdir / METRICS_FILE}) has no finite {key!r}")
        return max(rows, key=lambda r: r["step"])


@dataclasses.dataclass(frozen=True)
class SweepData:
    """A loaded sweep: ``runs`` in manifest order; ``missing``: names of listed runs without
    metrics (only with ``read_sweep(..., skip_missing=True)``)."""

    name: str
    path: Path
    runs: tuple[RunRecord, ...]
    missing: tuple[str, ...] = ()

    @property
    def labels(self) -> list[str]:
        """The labels, in manifest order of their first run."""
        return list(dict.fromkeys(r.label for r in self.runs))

    def groups(self, labels: Iterable[str] | None = None) -> dict[str, list[RunRecord]]:
        """``{label: runs sorted by seed}`` for ``labels`` (default: all, in manifest order);
        labels without runs are left out."""
        wanted = self.labels if labels is None else list(labels)
        return {lab: sorted((r for r in self.runs if r.label == lab), key=lambda r: r.seed)
                for lab in wanted if any(r.label == lab for r in self.runs)}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_manifest(path: str | Path, extra_fields: Mapping[str, type] | None = None) -> tuple[str, list[dict]]:
    """The sweep name and the validated run entries of ``path`` (a manifest.json), the one
    reader of sweep manifests (``critique_jax.sweep`` merges and summarises with it).

    Every run entry must hold ``name``, ``label``, ``seed``, ``entry``, ``overrides`` and
    ``workdir`` of their types, plus ``extra_fields`` (``{key: type}``, e.g. ``params``). A
    missing or malformed file raises FileNotFoundError / ValueError, one line naming the file.
    """
    path = Path(path)
    fields = {**_RUN_FIELDS, **(extra_fields or {})}
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a sweep directory (scripts/sweep.py writes it)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise ValueError(f"{path}: expected an object with a list 'runs'")
    for i, run in enumerate(manifest["runs"]):
        if not isinstance(run, dict):
            raise ValueError(f"{path}: runs[{i}] is a {type(run).__name__}; expected an object")
        for key, kind in fields.items():
            if key not in run:
                raise ValueError(f"{path}: runs[{i}] ({run.get('name', '?')}) has no {key!r}")
            if not isinstance(run[key], kind) or isinstance(run[key], bool):
                raise ValueError(f"{path}: runs[{i}] ({run.get('name', '?')}) {key}={run[key]!r}; "
                                 f"expected a {kind.__name__}")
    return str(manifest.get("sweep", path.parent.name)), manifest["runs"]


def read_sweep(path: str | Path, *, skip_missing: bool = False) -> SweepData:
    """Reads a sweep directory (its manifest and every run's ``metrics.jsonl``).

    A run whose ``metrics.jsonl`` is missing or empty raises FileNotFoundError naming the file,
    unless ``skip_missing``: then it is left out and listed in ``SweepData.missing`` (a sweep
    still running). A malformed manifest or metrics line raises ValueError naming the file.
    """
    path = Path(path).resolve()
    name, entries = read_manifest(path / MANIFEST)
    runs, missing = [], []
    for e in entries:
        workdir = path / e["workdir"]
        metrics = workdir / METRICS_FILE
        rows = tuple(read_metrics(metrics)) if metrics.is_file() else ()
        if not rows:
            if not skip_missing:
                raise FileNotFoundError(f"run {e['name']} of {path / MANIFEST}: {metrics} is missing or empty")
            missing.append(e["name"])
            continue
        runs.append(RunRecord(name=e["name"], label=e["label"], seed=e["seed"], entry=e["entry"],
                              overrides=dict(e["overrides"]), workdir=workdir, rows=rows,
                              done=(workdir / DONE_FILE).is_file()))
    return SweepData(name=name, path=path, runs=tuple(runs), missing=tuple(missing))


def read_run(path: str | Path, label: str | None = None) -> RunRecord:
    """One run directory outside a sweep (a ``train_critic`` run, say) as a :class:`RunRecord`
    labelled ``label`` (default: the directory name), seed 0. FileNotFoundError names a missing
    or empty ``metrics.jsonl``."""
    path = Path(path).resolve()
    metrics = path / METRICS_FILE
    rows = tuple(read_metrics(metrics)) if metrics.is_file() else ()
    if not rows:
        raise FileNotFoundError(f"{metrics} is missing or empty: not a run directory with metrics")
    return RunRecord(name=path.name, label=label or path.name, seed=0, entry="run", overrides={}, workdir=path,
                     rows=rows, done=(path / DONE_FILE).is_file())


# ----------------------------------------------------------------------------- seed statistics


@dataclasses.dataclass(frozen=True)
class Band:
    """A metric averaged over runs, step by step (every step some run logged).

    steps [S] int64; mean [S] float64; sd [S]: sample standard deviation (ddof 1) over the runs
    with a value at that step, NaN where fewer than 2 have one; n [S] int64: that count.
    """

    steps: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    n: np.ndarray


def seed_band(runs: Sequence[RunRecord], key: str) -> Band:
    """Mean and sd of ``key`` across ``runs`` (e.g. the seeds of a label), aligned on step.

    Each step of the union of the runs' steps averages the runs that logged a finite value
    there. ValueError when no run has ``key``.
    """
    by_step: dict[int, list[float]] = {}
    for run in runs:
        for s, v in zip(*run.series(key)):
            by_step.setdefault(int(s), []).append(float(v))
    if not by_step:
        raise ValueError(f"no run of {[r.name for r in runs]} has a finite {key!r}")
    return _band_of(by_step)


def _band_of(values: Mapping[int, Sequence[float]]) -> Band:
    """:class:`Band` of ``{x: values at x}``: each x's :func:`seed_stat`, in order of x."""
    xs = sorted(values)
    stats = [seed_stat(values[x]) for x in xs]
    return Band(steps=np.array(xs, np.int64), mean=np.array([st.mean for st in stats]),
                sd=np.array([st.sd for st in stats]), n=np.array([st.n for st in stats], np.int64))


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean, sample sd (ddof 1; NaN when n < 2) and count of the finite values given."""

    mean: float
    sd: float
    n: int

    def __format__(self, spec: str) -> str:
        """``f"{stat:.3f}"`` -> ``"0.512 ± 0.031"`` (no ± with one value, "n/a" with none)."""
        spec = spec or ".3f"
        if self.n == 0:
            return "n/a"
        return f"{self.mean:{spec}}" + (f" ± {self.sd:{spec.replace('+', '')}}" if self.n > 1 else "")


def seed_stat(values: Iterable[float]) -> Stat:
    """:class:`Stat` of the finite ``values`` (NaN are dropped: a seed without the metric)."""
    x = np.array([float(v) for v in values], np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Stat(math.nan, math.nan, 0)
    return Stat(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size))


def difference(a: Stat, b: Stat) -> Stat:
    """``a - b`` of two independent seed means, with Welch's standard error in ``sd``
    (``sqrt(sd_a²/n_a + sd_b²/n_b)``, NaN when a side has fewer than 2 values); ``n`` is the
    smaller count."""
    se = math.sqrt(a.sd**2 / a.n + b.sd**2 / b.n) if min(a.n, b.n) > 1 else math.nan
    return Stat(a.mean - b.mean, se, min(a.n, b.n))


def clustered_mean(values: Sequence[float], clusters: Sequence[Any]) -> Stat:
    """Mean of the finite ``values`` with a cluster-robust standard error in ``sd``.

    Points in one cluster (e.g. the repeated evaluations of one run, which score the same
    held-out problems with a slowly changing policy) are not independent, so the SE is the
    CR1 sandwich ``sqrt(G/(G-1) * sum_g (sum_{i in g} (x_i - mean))^2) / N`` over the G clusters
    (N points), not ``sd / sqrt(N)``. NaN with fewer than 2 clusters; ``n`` is G."""
    x = np.asarray(values, np.float64)
    if x.shape != (len(clusters),):
        raise ValueError(f"clustered_mean: {x.shape} values for {len(clusters)} cluster labels")
    keep = np.isfinite(x)
    x, labels = x[keep], [c for c, k in zip(clusters, keep) if k]
    if x.size == 0:
        return Stat(math.nan, math.nan, 0)
    mean = float(x.mean())
    sums: dict[Any, float] = {}
    for v, c in zip(x, labels):
        sums[c] = sums.get(c, 0.0) + (v - mean)
    g = len(sums)
    se = math.sqrt(g / (g - 1) * sum(u * u for u in sums.values())) / x.size if g > 1 else math.nan
    return Stat(mean, se, g)


def pooled_pairs(runs: Sequence[RunRecord], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`RunRecord.paired` of every run, concatenated (e.g. all seeds' per-step points of a label)."""
    parts = [r.paired(x_key, y_key) for r in runs]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def run_value(run: RunRecord, key: str, which: str = "last", window: int = 1) -> float:
    """Mean of the first or last ``window`` finite values of ``key`` in ``run`` (NaN if none)."""
    if which not in ("first", "last") or window < 1:
        raise ValueError(f"run_value: which={which!r}, window={window}; expected 'first'/'last' and >= 1")
    _, values = run.series(key)
    part = values[:window] if which == "first" else values[-window:]
    return float(part.mean()) if part.size else math.nan


# ----------------------------------------------------------------------------- test-time budget sweeps

#: The report ``evaluate --budgets`` writes into its folder (critique_jax/runs/budget_sweep.py).
TEST_TIME_JSON = "test_time.json"
#: The table ``evaluate --which=all`` writes into its folder (critique_jax/runs/across_run.py).
ACROSS_JSON = "across.json"
_SEED_SUFFIX = re.compile(r"_s\d+$")


def _read_grouped(folder: str | Path, filename: str, writer: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``<folder>/<name>/<filename>`` (JSON) grouped by label (the name without its ``_s<seed>``):
    ``{label: [(name, report), ...]}``, names sorted; a one-line FileNotFoundError naming
    ``writer`` (the command that writes them) when there is none."""
    folder = Path(folder)
    paths = sorted(folder.glob(f"*/{filename}"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no <policy>/{filename} (written by {writer})")
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for path in paths:
        name = path.parent.name
        out.setdefault(_SEED_SUFFIX.sub("", name), []).append((name, json.loads(path.read_text())))
    return out


def read_test_time(folder: str | Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The budget sweeps of a folder holding one ``evaluate --budgets`` folder per policy
    (``<folder>/<name>/test_time.json``, e.g. ``sft``, ``grpo_s0``), grouped by label (the name
    without its ``_s<seed>``): ``{label: [(name, report), ...]}``, names sorted. A one-line
    FileNotFoundError when there is none."""
    return _read_grouped(folder, TEST_TIME_JSON, "evaluate --budgets")


def read_across(folder: str | Path) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """The across-training tables of a folder holding one ``evaluate --which=all`` folder per run
    (``<folder>/<run>/across.json``: ``rows``, one per policy), grouped by label like
    :func:`read_test_time`."""
    return _read_grouped(folder, ACROSS_JSON, "evaluate --which=all")


def budget_band(reports: Sequence[Mapping[str, Any]], key: str) -> Band:
    """``per_budget[b][key]`` of budget sweeps (e.g. one label's seeds) against the budget b: the
    mean and sd over the reports with a finite value, at every budget some report has
    (:class:`Band` with ``steps`` = budgets). ValueError when no report has the key."""
    return _band_over([{int(b): row.get(key) for b, row in rep["per_budget"].items()} for rep in reports],
                      f"no budget sweep has a finite {key!r}")


def across_band(tables: Sequence[Mapping[str, Any]], key: str) -> Band:
    """``key`` of the rows of across-training tables (e.g. one label's seeds, :func:`read_across`)
    against the RL step (:class:`Band` with ``steps`` = ``rl_step``). ValueError when no row has it."""
    return _band_over([{int(row["rl_step"]): row.get(key) for row in t["rows"]} for t in tables],
                      f"no across-training row has a finite {key!r}")


def _band_over(series: Sequence[Mapping[int, Any]], missing: str) -> Band:
    """:func:`_band_of` of the finite values of ``series`` (``{x: value}`` per run); ValueError
    ``missing`` when there is none."""
    by_x: dict[int, list[float]] = {}
    for one in series:
        for x, v in one.items():
            if _finite(v):
                by_x.setdefault(x, []).append(float(v))
    if not by_x:
        raise ValueError(missing)
    return _band_of(by_x)


# ----------------------------------------------------------------------------- metric families


def pass_at_k_of_row(row: Mapping[str, Any], prefix: str = "eval") -> dict[int, float]:
    """``{k: pass@k}`` from one metrics row: ``<prefix>/pass@1`` and ``<prefix>/pass@k/<k>``
    (per-level keys such as ``.../pass@k/4/level_2`` are not matched), sorted by k."""
    pattern = re.compile(rf"^{re.escape(prefix)}/pass@k/(\d+)$")
    out = {int(m.group(1)): float(v) for key, v in row.items() if (m := pattern.match(key)) and _finite(v)}
    if _finite(row.get(f"{prefix}/pass@1")):
        out.setdefault(1, float(row[f"{prefix}/pass@1"]))
    return dict(sorted(out.items()))


def final_pass_at_k(runs: Sequence[RunRecord], prefix: str = "eval") -> dict[int, Stat]:
    """``{k: seed Stat}`` of pass@k at each run's last evaluation (the last row with
    ``<prefix>/pass@1``), for the k every run logged."""
    curves = [pass_at_k_of_row(r.last_row(f"{prefix}/pass@1"), prefix) for r in runs if r.has(f"{prefix}/pass@1")]
    ks = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {k: seed_stat(c[k] for c in curves) for k in ks}


def level_keys(runs: Iterable[RunRecord], prefix: str) -> dict[int, str]:
    """``{level: key}`` for the keys ``<prefix>/level_<d>`` logged by any of ``runs``, by level
    (e.g. ``prefix="self_train/eval/solved"``)."""
    pattern = re.compile(rf"^{re.escape(prefix)}/level_(\d+)$")
    found = {int(m.group(1)): key for run in runs for row in run.rows for key in row if (m := pattern.match(key))}
    return dict(sorted(found.items()))


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; floats as ``.3f`` (NaN as ``n/a``), :class:`Stat` as ``mean ± sd``, others
    with ``str``; ``|`` in a cell is escaped."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3f}"
        return (f"{v:.3f}" if isinstance(v, Stat) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"markdown_table: a row has {len(row)} cells for {len(columns)} columns: {row}")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)
