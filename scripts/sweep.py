"""Run a grid of experiments (loss x coefficient x seed) and summarise it.

    python scripts/sweep.py --config configs/sweeps/entropy.py --out runs/repro/entropy
    python scripts/sweep.py --config configs/sweeps/entropy.py --out runs/sweep --parallel 2
    python scripts/sweep.py --config configs/sweeps/entropy.py --out runs/sweep --print   # for a scheduler
    python scripts/sweep.py --config configs/sweeps/entropy.py --out runs/sweep --labels grpo --seeds 0
    python scripts/sweep.py --config configs/sweeps/entropy.py --out runs/sweep --set rl.steps=5

Finished runs are skipped on a re-run; unfinished ones resume from their checkpoints. The
summary (``summary.csv`` / ``summary.md`` in --out) is rewritten at the end, or alone with
--summarize. The sweep file format is in :mod:`critique_jax.sweep`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import shlex
import sys
from pathlib import Path

from critique_jax import sweep as sweep_lib


def _value(text: str):
    """``--set`` values: Python literals (numbers, tuples, True) or else plain strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="sweep file (configs/sweeps/*.py)")
    p.add_argument("--out", required=True, help="sweep directory (one sub-directory per run)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each is one process)")
    p.add_argument("--labels", default="", help="comma-separated labels to run (default: all)")
    p.add_argument("--seeds", default="", help="comma-separated seeds to run (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run, after the sweep's own (repeatable)")
    p.add_argument("--print", action="store_true", help="print one command per unfinished run and exit")
    p.add_argument("--summarize", action="store_true", help="only rewrite the summary of finished runs")
    args = p.parse_args(argv)

    sweep = sweep_lib.load_sweep(args.config)
    labels = [s for s in args.labels.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    sweep = sweep_lib.select(sweep, labels, seeds)
    extra = {}
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}: expected KEY=VALUE, e.g. rl.steps=5")
        key, text = item.split("=", 1)
        extra[key] = _value(text)
    if extra:
        runs = tuple(dataclasses.replace(r, overrides={**r.overrides, **extra}) for r in sweep.runs)
        sweep = dataclasses.replace(sweep, runs=runs)
    out = Path(args.out)
    if args.print:  # each command marks its run done, so --summarize and re-runs see it
        out.mkdir(parents=True, exist_ok=True)
        sweep_lib.write_manifest(sweep, out)
        for r in sweep.runs:
            if not sweep_lib.is_done(out, r):
                done = shlex.quote(str(out / r.name / "done.json"))
                print(f"{shlex.join(r.command(sweep.base, out / r.name))} && echo '{{}}' > {done}")
        return 0
    failed = [] if args.summarize else sweep_lib.run_sweep(sweep, out, args.parallel)
    rows = sweep_lib.summarize(out)
    print(f"summary of {len(rows)} finished runs: {out / 'summary.md'}")
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see <run>/sweep.log)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
