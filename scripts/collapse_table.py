"""The entropy-collapse tables of the README from an entropy sweep (``configs/sweeps/entropy.py``):

    python scripts/collapse_table.py runs/repro/entropy            # finished runs only
    python scripts/collapse_table.py runs/repro/entropy --partial  # also unfinished ones, to their common last step
    python scripts/collapse_table.py runs/repro/critique_collapse --plot notebooks/figures/critique_collapse.png

Per label (mean ± sd over seeds): training-rollout entropy (nats, mean of RL steps 1-5 and of the
last 5), its share of the start, held-out pass@1 / pass@8 and distinct correct solutions at the
last step; each label's difference from GRPO (Welch SE) and its entropy ratio; Clip-Cov's band
and selected token shares over training; the law ``R = -a exp(H) + b`` fitted on held-out pass@1
against the training entropy per label and pooled, and fitted on the first 25% of the step range
of each run to predict the rest (RMSE against predicting the early mean); the correlation of the
step's mean token covariance with the same batch's entropy decrease. For a critique sweep
(``configs/sweeps/critique_collapse.py``: runs logging ``train/pool_coverage``) also the pool
coverage, the all-wrong groups critique acts on, and what refinements did.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from critique_jax.analysis.entropy_law import (covariance_vs_same_batch_entropy_change, early_fit_prediction,
                                               fit_entropy_law, law_points_from_metrics, pearson_r)
from critique_jax.analysis.sweeps import RunRecord, difference, read_sweep, run_value, seed_stat


def window_mean(run: RunRecord, key: str, first: int, last: int) -> float:
    """Mean of ``key`` over the logged steps in [first, last] (NaN when none): the last window at
    the runs' common last step (``run_value(..., "last")`` would take each run's own last steps)."""
    steps, values = run.series(key)
    keep = (steps >= first) & (steps <= last)
    return float(values[keep].mean()) if keep.any() else math.nan


def at_step(run: RunRecord, key: str, step: int) -> float:
    steps, values = run.series(key)
    return float(values[steps == step][0]) if (steps == step).any() else math.nan


def critique_table(groups: dict[str, list[RunRecord]], last: int) -> None:
    """Pool coverage (share of pool prompts with a correct initial response at their latest visit,
    at step ``last``), all-wrong groups (before any refinement) over steps 1-5 and the last 5,
    and, over all steps, rescued groups, refinement success and the mean probability of
    refinement tokens under the policy (``train/refinement_prob``: near 1, the shaping
    ``p / (p + 0.1)`` has little gradient left)."""
    def all_wrong(r: RunRecord) -> str:
        return "critique/groups_all_wrong" if r.has("critique/groups_all_wrong") else "train/groups_none_correct"

    def mean_over_steps(rs: list[RunRecord], key: str) -> str:
        if not all(r.has(key) for r in rs):
            return "-"
        return f"{seed_stat(float(np.nanmean(r.series(key)[1])) for r in rs):.3f}"

    print(f"\n| method (seeds) | pool coverage, step {last} | all-wrong groups, steps 1-5 -> {last - 4}-{last} | "
          "groups rescued | refinement success | refinement p |")
    print("|---|---|---|---|---|---|")
    coverage = {}
    for label, rs in groups.items():
        coverage[label] = seed_stat(at_step(r, "train/pool_coverage", last) for r in rs)
        w0 = seed_stat(run_value(r, all_wrong(r), "first", 5) for r in rs)
        w1 = seed_stat(window_mean(r, all_wrong(r), last - 4, last) for r in rs)
        print(f"| {label} ({len(rs)}) | {coverage[label]:.3f} | {w0:.3f} -> {w1:.3f} | "
              f"{mean_over_steps(rs, 'critique/groups_rescued')} | "
              f"{mean_over_steps(rs, 'critique/refine_success_on_failed')} | "
              f"{mean_over_steps(rs, 'train/refinement_prob')} |")
    if "grpo" in coverage:
        print("\npool coverage minus GRPO's: " + ", ".join(
            f"{label} {difference(c, coverage['grpo']):+.3f}" for label, c in coverage.items() if label != "grpo"))
    if "resample" in groups:  # critique beyond the compute-matched control
        def entropy(rs: list[RunRecord]):
            return seed_stat(window_mean(r, "train/entropy", last - 4, last) for r in rs)

        for label in (k for k in groups if k.startswith("cg_")):
            print(f"{label} minus resample: entropy {difference(entropy(groups[label]), entropy(groups['resample'])):+.4f}"
                  f" nats, pool coverage {difference(coverage[label], coverage['resample']):+.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", help="the sweep directory (its manifest.json)")
    parser.add_argument("--partial", action="store_true", help="include unfinished runs, to their common last step")
    parser.add_argument("--plot", help="also draw the training entropy, pool coverage (critique sweeps) and held-out "
                                       "pass@1 / pass@8 of each label against the step into this PNG")
    args = parser.parse_args(argv)
    try:
        sweep = read_sweep(args.sweep, skip_missing=True)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = [r for r in sweep.runs if r.done or (args.partial and r.has("train/entropy"))]
    if not runs:
        print(f"error: {args.sweep}: no {'' if args.partial else 'finished '}run has train/entropy", file=sys.stderr)
        return 2
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    last = min(int(r.series("train/entropy")[0].max()) for r in runs)
    print(f"runs: {', '.join(r.name for r in runs)}; last common step {last}\n")
    print(f"| method (seeds) | entropy, steps 1-5 | steps {last - 4}-{last} | share of start | "
          f"held-out pass@1, step 0 -> {last} | pass@8 | distinct correct |")
    print("|---|---|---|---|---|---|---|")
    stats = {}
    for label, rs in groups.items():
        h0 = seed_stat(run_value(r, "train/entropy", "first", 5) for r in rs)
        h1 = seed_stat(window_mean(r, "train/entropy", last - 4, last) for r in rs)
        share = seed_stat(window_mean(r, "train/entropy", last - 4, last) / run_value(r, "train/entropy", "first", 5)
                          for r in rs)
        p1_0, p8_0 = (seed_stat(at_step(r, k, 0) for r in rs) for k in ("eval/pass@1", "eval/pass@k/8"))
        p1, p8 = (seed_stat(at_step(r, k, last) for r in rs) for k in ("eval/pass@1", "eval/pass@k/8"))
        distinct = seed_stat(at_step(r, "eval/distinct_correct", last) for r in rs)
        stats[label] = {"h1": h1, "p1": p1, "p8": p8}
        print(f"| {label} ({len(rs)}) | {h0:.3f} | {h1:.3f} | {share:.2f} | {p1_0:.3f} -> {p1:.3f} | "
              f"{p8_0:.3f} -> {p8:.3f} | {distinct:.2f} |")
    if "grpo" in stats:
        g = stats["grpo"]
        print("\ndifference from GRPO at the last step (± Welch SE with 2+ seeds a side):")
        for label, s in stats.items():
            if label != "grpo":
                print(f"- {label}: entropy {difference(s['h1'], g['h1']):+.4f} ({s['h1'].mean / g['h1'].mean:.2f}x), "
                      f"pass@1 {difference(s['p1'], g['p1']):+.3f}, pass@8 {difference(s['p8'], g['p8']):+.3f}")
    if any(r.has("train/pool_coverage") for r in runs):
        critique_table(groups, last)
    if args.plot:
        from critique_jax.analysis import plots

        keys = ["train/entropy", "train/pool_coverage", "eval/pass@1", "eval/pass@k/8"]
        titles = ["training-rollout entropy (nats)", "pool coverage", "held-out pass@1", "held-out pass@8"]
        fig = plots.curves(groups, keys, titles=titles, ncols=4)
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"\nfigure: {args.plot}")
    for r in groups.get("clip_cov", []):
        steps, band = r.series("train/band_frac")
        _, selected = r.series("train/selected_frac")
        pick = [i for i, t in enumerate(steps) if t in (5, 25, 50, 75, 100)]
        print(f"\n{r.name}: band_frac / selected_frac at steps {[int(steps[i]) for i in pick]}: "
              f"{[round(float(band[i]), 4) for i in pick]} / {[round(float(selected[i]), 4) for i in pick]}")
    print("\nlaw R = -a exp(H) + b, held-out pass@1 vs the training entropy since the previous evaluation:")
    pooled_h: list[float] = []
    pooled_r: list[float] = []
    for label, rs in groups.items():
        hs: list[float] = []
        acc: list[float] = []
        early = []
        for r in rs:
            steps, h, a = law_points_from_metrics(list(r.rows))
            hs += list(h)
            acc += list(a)
            e = early_fit_prediction(steps, h, a, fraction=0.25)
            baseline = float(np.sqrt(np.mean((a[e["n_fit"]:] - a[:e["n_fit"]].mean()) ** 2)))
            early.append(f"{e['rmse']:.3f} vs {baseline:.3f}")
        f = fit_entropy_law(hs, acc)
        pooled_h += hs
        pooled_r += acc
        r_cov = [pearson_r(*covariance_vs_same_batch_entropy_change(list(r.rows))[1:]) for r in rs]
        print(f"- {label}: a = {f.a:.3f} ± {f.a_se:.3f}, b = {f.b:.3f} ± {f.b_se:.3f}, R² {f.r2:.2f} ({f.n} points); "
              f"first-25% fit RMSE on the rest vs the early mean, per seed: {', '.join(early)}; "
              f"r(cov, -dH same batch) per seed: {', '.join(f'{x:+.2f}' for x in r_cov)}")
    f = fit_entropy_law(pooled_h, pooled_r)
    print(f"- pooled: a = {f.a:.3f} ± {f.a_se:.3f}, b = {f.b:.3f} ± {f.b_se:.3f}, R² {f.r2:.2f} ({f.n} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
