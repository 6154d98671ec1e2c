"""Test-time evaluation across the checkpoints of one train run, beside its training-time
entropy (pure; the evaluations are :mod:`critique_jax.runs.across_training`).

Input: per evaluated policy its label (``"sft"`` or a checkpoint step), its global step, the
evaluation report (:mod:`critique_jax.analysis.evaluation`) and, with a budget sweep, the
test-time report (:mod:`critique_jax.analysis.test_time`); and the run's logged metrics rows.
One row per policy (:func:`across_table`), sorted by step (the SFT policy first at its step):

* ``step`` (the global step: SFT ``1..S``, RL ``S+1..S+R``) and ``rl_step`` = step - S (S =
  ``sft.steps``, 0 for a run with ``init_from``): 0 for the SFT policy, <= 0 for a checkpoint of
  the SFT warm-up;
* ``train_entropy``: the training rollouts' mean token entropy (``train/entropy``) near the
  policy. For a checkpoint at step t, the mean over the last :data:`WINDOW` (5) logged steps
  <= t; step s's rollouts are sampled before its update, so these are samples of the policies
  of steps t-5..t-1. **For the SFT policy: the value of the first logged RL step**, whose
  rollouts are the SFT policy's own samples (NaN when the run has no RL step logged). NaN for a
  checkpoint of the SFT warm-up (no rollouts up to it);
* from the evaluation: ``pass@1``, ``pass@n``, ``maj@n`` (n samples per problem; maj@n NaN where
  the task's steps decide the reward) and ``eval_entropy`` (mean token entropy of the
  evaluation's samples, nats);
* with a budget sweep, per budget b: ``correct_var/b`` (mean correctness variance p(1-p)) and
  ``answer_entropy/b`` (mean answer entropy, nats); NaN for a budget a policy's sweep lacks.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

ENTROPY = "train/entropy"
WINDOW = 5  # logged steps averaged for a checkpoint's training entropy


@dataclasses.dataclass(frozen=True)
class PolicyEval:
    """One evaluated policy: ``which`` (``"sft"`` or its step as text), ``step`` (global),
    ``report`` (evaluation report) and ``sweep`` (test-time report; None without a sweep)."""

    which: str
    step: int
    report: Mapping[str, Any]
    sweep: Mapping[str, Any] | None = None


def training_entropy(metrics: Sequence[Mapping[str, Any]], step: int, sft: bool,
                     window: int = WINDOW) -> float:
    """``train/entropy`` near a policy of global ``step`` (module docstring): the mean over the
    last ``window`` logged steps <= ``step``, or for the SFT policy (``sft``) the first logged
    step's value; NaN when no step qualifies. A step logged twice counts once (its last value)."""
    logged = {int(r["step"]): float(r[ENTROPY]) for r in metrics if ENTROPY in r}
    if sft:
        return logged[min(logged)] if logged else math.nan
    near = [logged[s] for s in sorted(logged) if s <= step][-window:]
    return float(np.mean(near)) if near else math.nan


def across_table(policies: Sequence[PolicyEval], metrics: Sequence[Mapping[str, Any]], rl_offset: int,
                 window: int = WINDOW) -> dict[str, Any]:
    """The across-training table (module docstring) of ``policies`` (every report with the same
    samples per problem) and the run's ``metrics`` rows; ``rl_offset``: S, the step before the
    first RL step."""
    if not policies:
        raise ValueError("across training: no policies were evaluated")
    ns = {int(p.report["samples_per_problem"]) for p in policies}
    if len(ns) != 1:
        raise ValueError(f"across training: reports have different samples per problem {sorted(ns)}; expected one n")
    n = ns.pop()
    budgets = sorted({int(b) for p in policies if p.sweep for b in p.sweep["budgets"]})
    rows = []
    for p in sorted(policies, key=lambda p: (p.step, p.which != "sft")):
        row = {"which": p.which, "step": p.step, "rl_step": p.step - rl_offset,
               "train_entropy": training_entropy(metrics, p.step, p.which == "sft", window),
               "pass@1": p.report["pass@1"], f"pass@{n}": p.report[f"pass@{n}"], f"maj@{n}": p.report[f"maj@{n}"],
               "eval_entropy": p.report["entropy"], "source": p.report.get("source", "")}
        per_budget = (p.sweep or {}).get("per_budget", {})
        for b in budgets:
            table = per_budget.get(str(b), {})
            row[f"correct_var/{b}"] = table.get("correct_var", math.nan)
            row[f"answer_entropy/{b}"] = table.get("answer_entropy", math.nan)
        rows.append(row)
    return {"samples_per_problem": n, "budgets": budgets, "rl_offset": rl_offset, "entropy_window": window,
            "rows": rows}


def across_markdown(table: Mapping[str, Any], title: str) -> str:
    """The table as Markdown: one row per policy."""
    n, budgets = table["samples_per_problem"], table["budgets"]
    lines = [f"# {title}", "", f"{n} samples per problem. train entropy: the training rollouts' mean token entropy, "
             f"mean of the last {table['entropy_window']} logged steps up to the checkpoint (the SFT policy: the first "
             "RL step's, sampled from it); eval entropy: the evaluation samples'; correctness variance p(1-p) and "
             "answer entropy (nats) per budget b (max new tokens): means over problems.", "",
             "| " + " | ".join(["policy", "step", "RL step", "train entropy", "pass@1", f"pass@{n}", f"maj@{n}",
                                "eval entropy"] + [f"{name} b={b}" for b in budgets for name in ("var", "H(answer)")])
             + " |", "|---" * (8 + 2 * len(budgets)) + "|"]
    for r in table["rows"]:
        values = [r["train_entropy"], r["pass@1"], r[f"pass@{n}"], r[f"maj@{n}"], r["eval_entropy"]]
        values += [r[f"{key}/{b}"] for b in budgets for key in ("correct_var", "answer_entropy")]
        lines.append(f"| {r['which']} | {r['step']} | {r['rl_step']} | "
                     + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"
