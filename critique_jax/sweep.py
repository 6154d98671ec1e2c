"""Hyper-parameter sweeps: expand a grid into runs, run them (resumable), summarise them.
Over 300 lines: one program (``scripts/sweep.py``) and the sweep file format it reads; the summary
part (:func:`run_summary`, :func:`summarize`) is the piece to move out if it grows.

A sweep file (``configs/sweeps/*.py``) defines ``get_sweep()`` returning a dict::

    dict(name="entropy",
         base="configs/quickstart.py",      # the training config file every run starts from
         entry="train",                     # default entry point: "train" or "self_train"
         common={"rl.steps": 40},           # overrides shared by every run
         seeds=(0,),                        # default seeds
         runs=[dict(label="grpo", set={"rl.loss.name": "ppo"}, seeds=(0, 1, 2)),
               dict(label="clip_cov", set={"rl.loss.name": "clip_cov"},
                    grid={"rl.loss.clip_cov.ratio": (2e-3, 2e-2)})])

Each ``runs`` entry expands to the product of its ``grid`` values and its seeds. A run's
label is the entry's label plus ``_<key>=<value>`` for every grid key with more than one
value; its name is ``<label>_s<seed>``. Overrides are applied in the order common, set,
grid, ``seed`` and are passed to the entry point as ``--config.<key>=<value>``.

The sweep directory holds ``manifest.json`` (every run: name, label, group, seed, params,
entry, overrides, workdir), one directory per run (the trainer's output plus ``sweep.log``
and ``done.json`` once the process exited with 0), and ``summary.csv`` / ``summary.md``.
Finished runs are skipped when the sweep is started again; unfinished ones resume from
their latest checkpoint (the trainers resume by default).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

ENTRIES = {"train": "critique_jax.train", "self_train": "critique_jax.self_train"}
_SWEEP_KEYS = {"name", "base", "entry", "common", "seeds", "runs"}
_RUN_KEYS = {"label", "set", "grid", "seeds", "entry"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name, grouping, and the config overrides that define it."""

    name: str
    label: str  # group + the grid values that vary (the unit averaged over seeds)
    group: str  # the ``runs`` entry's label
    seed: int
    params: dict[str, Any]  # grid key -> value
    entry: str
    overrides: dict[str, Any]  # every config override, in application order

    def command(self, base: str, workdir: str | os.PathLike) -> list[str]:
        """The command line that runs this run into ``workdir``."""
        args = [sys.executable, "-m", ENTRIES[self.entry], f"--config={base}", f"--workdir={workdir}"]
        return args + [f"--config.{k}={_render(v)}" for k, v in self.overrides.items()]


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    base: str
    runs: tuple[RunSpec, ...]


def _render(value: Any) -> str:
    """A value as ml_collections' command-line parser reads it."""
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_render(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else _render(value)


def load_sweep(path: str | os.PathLike) -> Sweep:
    """Reads and expands a sweep file; ValueError names the file and the offending key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"{path}: expected a function get_sweep() returning the sweep dict")
    return expand(module.get_sweep(), where=str(path))


def expand(d: dict, where: str = "sweep") -> Sweep:
    """The runs of a sweep dict (format in the module docstring), in file order."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"{where}: {msg}")

    need(isinstance(d, dict), f"get_sweep() returned {type(d).__name__}; expected a dict")
    need(not (extra := set(d) - _SWEEP_KEYS), f"unknown key(s) {sorted(extra)}; expected some of {sorted(_SWEEP_KEYS)}")
    for key in ("name", "base", "runs"):
        need(key in d, f"missing key {key!r}")
    default_entry, default_seeds = d.get("entry", "train"), tuple(d.get("seeds", (0,)))
    runs: list[RunSpec] = []
    for i, r in enumerate(d["runs"]):
        at = f"runs[{i}]"
        need(isinstance(r, dict) and "label" in r, f"{at}: expected a dict with a 'label'")
        need(not (extra := set(r) - _RUN_KEYS), f"{at} ({r['label']}): unknown key(s) {sorted(extra)}; "
             f"expected some of {sorted(_RUN_KEYS)}")
        entry = r.get("entry", default_entry)
        need(entry in ENTRIES, f"{at} ({r['label']}): entry={entry!r}; expected one of {sorted(ENTRIES)}")
        grid = {k: tuple(v) if isinstance(v, (tuple, list)) else (v,) for k, v in r.get("grid", {}).items()}
        need(all(grid.values()), f"{at} ({r['label']}): a grid key has no values")
        seeds = tuple(r.get("seeds", default_seeds))
        need(len(seeds) > 0 and all(isinstance(s, int) for s in seeds), f"{at} ({r['label']}): seeds={seeds}; "
             "expected a non-empty tuple of ints")
        for values in itertools.product(*grid.values()):
            params = dict(zip(grid, values))
            label = r["label"] + "".join(f"_{k.rsplit('.', 1)[-1]}={_short(v)}" for k, v in params.items()
                                         if len(grid[k]) > 1)
            for seed in seeds:
                overrides = {**d.get("common", {}), **r.get("set", {}), **params, "seed": seed}
                runs.append(RunSpec(f"{label}_s{seed}", label, r["label"], seed, params, entry, overrides))
    names = [r.name for r in runs]
    need(len(set(names)) == len(names), f"duplicate run names {sorted({n for n in names if names.count(n) > 1})}")
    return Sweep(d["name"], d["base"], tuple(runs))


def select(sweep: Sweep, labels: Sequence[str] = (), seeds: Sequence[int] = ()) -> Sweep:
    """The runs whose group or label is in ``labels`` and seed in ``seeds`` (empty = all)."""
    known = {r.group for r in sweep.runs} | {r.label for r in sweep.runs}
    if unknown := set(labels) - known:
        raise ValueError(f"--labels {sorted(unknown)} are not in sweep {sweep.name!r}; labels: {sorted(known)}")
    runs = tuple(r for r in sweep.runs if (not labels or r.group in labels or r.label in labels)
                 and (not seeds or r.seed in seeds))
    return dataclasses.replace(sweep, runs=runs)


def write_manifest(sweep: Sweep, out: Path) -> None:
    """``manifest.json``: the sweep's runs (merged with runs already listed by earlier calls)."""
    from critique_jax.analysis.sweeps import read_manifest

    path = out / "manifest.json"
    listed = {}
    if path.exists():
        listed = {r["name"]: r for r in read_manifest(path)[1]}
    for r in sweep.runs:
        listed[r.name] = dict(dataclasses.asdict(r), workdir=r.name)
    path.write_text(json.dumps({"sweep": sweep.name, "base": sweep.base, "runs": list(listed.values())}, indent=1))


def is_done(out: Path, run: RunSpec) -> bool:
    return (out / run.name / "done.json").exists()


_children: set[subprocess.Popen] = set()  # the runs in progress


#: Runs a command that gets SIGTERM when the runner's thread that started it dies, however it dies
#: (``kill -9`` included, which no signal handler sees): Linux's PR_SET_PDEATHSIG, which survives exec.
_DIE_WITH_RUNNER = ("import ctypes, os, signal, sys; ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "
                    "os.getppid() == 1 and sys.exit(143); os.execvp(sys.argv[1], sys.argv[1:])")


def _with_runner(command: list[str]) -> list[str]:
    """``command`` wrapped so that it stops when the runner is killed (Linux; elsewhere unchanged)."""
    return [sys.executable, "-c", _DIE_WITH_RUNNER, *command] if sys.platform.startswith("linux") else command


def run_one(sweep: Sweep, run: RunSpec, out: Path) -> tuple[RunSpec, int, float]:
    """Runs ``run`` as a subprocess in its own process group (output to ``<run>/sweep.log``,
    stopped with the runner, see :func:`run_sweep`); marks it done on exit 0."""
    workdir = out / run.name
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(workdir / "sweep.log", "a") as log:
        proc = subprocess.Popen(_with_runner(run.command(sweep.base, workdir)), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        _children.add(proc)
        try:
            rc = proc.wait()
        finally:
            _children.discard(proc)
    seconds = time.time() - t0
    if rc == 0:
        (workdir / "done.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
    return run, rc, seconds


def _stop_children(signum: int, frame: Any) -> None:
    """Signal handler: sends the signal to every run's process group, waits for them, exits."""
    for proc in list(_children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
    for proc in list(_children):
        proc.wait()
    raise SystemExit(128 + signum)


def run_sweep(sweep: Sweep, out: str | os.PathLike, parallel: int = 1) -> list[str]:
    """Runs the unfinished runs of ``sweep`` under ``out``, ``parallel`` at a time; prints one
    line per run and returns the names of the runs that failed. SIGTERM or SIGINT to the runner
    (called from the main thread) stops the runs in progress too, then the runner."""
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stop_children) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_manifest(sweep, out)
        todo = [r for r in sweep.runs if not is_done(out, r)]
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} done, {len(todo)} to run "
              f"({parallel} at a time) -> {out}", flush=True)
        failed, t0 = [], time.time()
        with ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
            for i, (run, rc, seconds) in enumerate(pool.map(lambda r: run_one(sweep, r, out), todo), 1):
                eta = (time.time() - t0) / i * (len(todo) - i)
                status = "done" if rc == 0 else f"FAILED (exit {rc}; log: {out / run.name / 'sweep.log'})"
                print(f"[{i}/{len(todo)}] {run.name}: {status} in {seconds:.0f} s | ETA {eta / 60:.0f} min", flush=True)
                if rc != 0:
                    failed.append(run.name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return failed


# ----------------------------------------------------------------------------- summary


def _finite(rows: list[dict], key: str) -> list[float]:
    """The finite values of ``key`` in step order."""
    return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def _first(rows: list[dict], key: str) -> float:
    return (_finite(rows, key) or [math.nan])[0]


def _last(rows: list[dict], key: str) -> float:
    return (_finite(rows, key) or [math.nan])[-1]


def _peak(rows: list[dict], key: str) -> float:
    return max(_finite(rows, key) or [math.nan])


def run_summary(rows: list[dict]) -> dict[str, float]:
    """Headline numbers of one run's metrics rows (NaN where a key was never logged):
    first/final/peak eval pass@1, final pass@k at the largest k, final greedy pass@1, first/final
    train entropy, final eval entropy, final distinct correct solutions per problem, and the
    entropy-law fit ``R = -a exp(H) + b`` over the evaluations (a, b, R²; NaN with < 3 points);
    for self-training runs also the first/final held-out solved share, overall and per level.
    """
    from critique_jax.analysis.entropy_law import fit_entropy_law, law_points_from_metrics

    ks = sorted(int(k.rsplit("/", 1)[1]) for k in {k for r in rows for k in r} if k.startswith("eval/pass@k/"))
    out = {"pass@1_first": _first(rows, "eval/pass@1"), "pass@1_final": _last(rows, "eval/pass@1"),
           "pass@1_peak": _peak(rows, "eval/pass@1"),
           "pass@k_final": _last(rows, f"eval/pass@k/{ks[-1]}") if ks else math.nan, "k": ks[-1] if ks else math.nan,
           "greedy_final": _last(rows, "eval/pass@1_greedy"),
           "entropy_first": _first(rows, "train/entropy"), "entropy_final": _last(rows, "train/entropy"),
           "eval_entropy_final": _last(rows, "eval/entropy"), "distinct_final": _last(rows, "eval/distinct_correct"),
           "law_a": math.nan, "law_b": math.nan, "law_r2": math.nan}
    for key in sorted({k for r in rows for k in r if k.startswith("self_train/eval/solved")}):
        level = key.removeprefix("self_train/eval/solved").strip("/") or "all"
        out[f"solved_first/{level}"], out[f"solved_final/{level}"] = _first(rows, key), _last(rows, key)
    try:
        _, h, acc = law_points_from_metrics(rows)
        if len(h) >= 3:
            fit = fit_entropy_law(h, acc)
            out.update(law_a=fit.a, law_b=fit.b, law_r2=fit.r2)
    except ValueError:
        pass  # a run without train entropy or evaluations (e.g. self-training) has no law points
    return out


def summarize(out: str | os.PathLike) -> list[dict]:
    """Writes ``summary.csv`` and ``summary.md`` for every finished run in the manifest of the
    sweep directory ``out``; returns the rows (one per finished run)."""
    from critique_jax.analysis.sweeps import read_manifest
    from critique_jax.metrics import read_metrics

    out = Path(out)
    rows = []
    for r in read_manifest(out / "manifest.json", {"params": dict})[1]:
        if not (out / r["workdir"] / "done.json").exists():
            continue
        head = {"name": r["name"], "label": r["label"], "seed": r["seed"]}
        rows.append(head | {k: r["params"][k] for k in r["params"]} | run_summary(read_metrics(out / r["workdir"])))
    if not rows:
        return rows
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return rows
