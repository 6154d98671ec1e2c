"""The evaluate program's test-time budget sweep (``--budgets``): the policy sampled again at
each generation budget (max new tokens), its per-problem records, and the test-time report of
:mod:`critique_jax.analysis.test_time` with its plot.

Written into the evaluation's folder, beside the main evaluation::

    budgets/<b>.jsonl    one SampleSet per problem at budget b (rewards, extracted answers, tokens
                         of its ``--samples`` samples), appended chunk by chunk and resumable like
                         problems.jsonl; the analysis is recomputed from these files alone
    test_time.json, test_time.md, test_time.png   the report, for the sample counts asked

Sample ``j`` of problem ``i`` uses the key ``(seed, i, j)`` at every budget, as the main
evaluation does: the sampler draws token ``t`` with ``fold_in(key, t)``, so a sample at budget b
is, in exact arithmetic, the first b tokens of the same sample at a larger budget (budgets are
compared on common random numbers). The folder's ``evaluation.json`` fixes the sampling
settings; a re-run may add budgets (each has its own file) or change the sample counts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from critique_jax.analysis.sweeps import TEST_TIME_JSON  # noqa: E402
from critique_jax.analysis.test_time import SampleSet, sweep_report  # noqa: E402
from critique_jax.runs.evaluation_run import (EvalSettings, MakeRecord, check_settings, eval_problems,  # noqa: E402
                                              sample_records, write_report)
from critique_jax.runs.run import Run  # noqa: E402
from critique_jax.tasks import Problem, Task  # noqa: E402

BUDGETS = "budgets"
SWEEP_JSON, SWEEP_MD, SWEEP_PLOT = TEST_TIME_JSON, "test_time.md", "test_time.png"


def check_sweep(run: Run, samples: int, budgets: Sequence[int], counts: Sequence[int]) -> None:
    """Errors naming the flag: budgets >= 1, distinct, each fitting the model beside the largest
    prompt bucket; sample counts in 1..samples."""
    if not budgets or any(b < 1 for b in budgets) or len(set(budgets)) != len(budgets):
        raise ValueError(f"--budgets={','.join(map(str, budgets))}: expected distinct max-new-tokens values >= 1")
    width, limit = max(run.config.sampling.prompt_buckets), run.model_cfg.max_seq_len
    if max(budgets) + width > limit:
        raise ValueError(f"--budgets: {max(budgets)} new tokens after a prompt bucket of {width} exceed the "
                         f"model's max_seq_len {limit}; expected budgets <= {limit - width}")
    if not counts or any(not 1 <= k <= samples for k in counts):
        raise ValueError(f"--sample_counts={','.join(map(str, counts))}: expected values in 1..--samples={samples}")


def _sample_set(task: Task, budget: int) -> MakeRecord:
    def record(p: Problem, texts: list[str], rewards: np.ndarray, lengths: np.ndarray, _: np.ndarray) -> SampleSet:
        return SampleSet(uid=p.uid, difficulty=int(p.difficulty), budget=budget,
                         correct=[int(r >= 1) for r in rewards], answers=[task.extract_answer(t) for t in texts],
                         tokens=[int(n) for n in lengths])
    return record


def budget_sweep(run: Run, params: nnx.State, out: str, settings: EvalSettings, budgets: Sequence[int],
                 counts: Sequence[int]) -> dict[str, Any]:
    """Samples every budget not yet complete in ``out/budgets/`` and writes the test-time report
    of ``budgets`` and sample ``counts`` (module docstring); returns it."""
    check_sweep(run, settings.samples, budgets, counts)
    os.makedirs(os.path.join(out, BUDGETS), exist_ok=True)
    check_settings(out, settings)
    problems, sets = eval_problems(run, settings), []
    for b in sorted(budgets):
        sets += sample_records(run, params, settings, problems, os.path.join(out, BUDGETS, f"{b}.jsonl"),
                               _sample_set(run.task, b), lambda d: SampleSet(**d),
                               sampler=dataclasses.replace(run.sampler, max_new_tokens=b))
    rep = sweep_report(sets, counts, run.task.answer_graded) | {
        "source": settings.source, "split": settings.split, "samples_per_problem": settings.samples,
        "n_problems": len(problems)}
    write_report(out, (SWEEP_JSON, SWEEP_MD, SWEEP_PLOT), rep, sweep_markdown(
        rep, f"Test-time budget sweep of {settings.source} ({settings.split})"),
        lambda path: plot_sweep(rep, path, settings.source))
    return rep


def sweep_markdown(rep: dict[str, Any], title: str) -> str:
    """The report as Markdown: one row per budget, then the equal-token-budget pairs."""
    ks = rep["sample_counts"]
    lines = [f"# {title}", "", f"{rep['n_problems']} problems, {rep['samples_per_problem']} samples each per "
             "budget (max new tokens). maj@k: disjoint blocks of k samples; answer entropy in nats, no answer "
             "counted as an answer.", "",
             "| budget | pass@1 | " + " | ".join(f"maj@{k}" for k in ks) + " | correctness variance | "
             "answer entropy | no answer | tokens/sample |", "|---" * (6 + len(ks)) + "|"]
    for b, t in rep["per_budget"].items():
        lines.append(f"| {b} | {t['pass@1']:.4f} | " + " | ".join(f"{t[f'maj@{k}']:.4f}" for k in ks)
                     + f" | {t['correct_var']:.4f} | {t['answer_entropy']:.4f} | {t['no_answer']:.4f} | "
                     f"{t['tokens_per_sample']:.1f} |")
    lines += ["", "Equal token cap k·b: maj@k of k samples at budget b vs pass@1 of one sample at budget k·b.", "",
              "| budget b | k | cap k·b | maj@k | pass@1 at k·b | tokens spent (k samples) | tokens spent (one) |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['budget']} | {r['k']} | {r['token_cap']} | {r['maj@k']:.4f} | {r['pass@1_at_cap']:.4f} | "
              f"{r['tokens@k']:.1f} | {r['tokens_at_cap']:.1f} |" for r in rep["equal_budget"]]
    return "\n".join(lines) + "\n"


def plot_sweep(rep: dict[str, Any], path: str, title: str) -> None:
    """Accuracy against the total token cap k·b (one line per k: maj@k at budget b, and pass@1
    at b), correctness variance and answer entropy / no-answer share against the budget."""
    budgets = np.asarray(rep["budgets"])
    tables = [rep["per_budget"][str(b)] for b in budgets]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(budgets, [t["pass@1"] for t in tables], "o-", color="k", label="pass@1")
    for i, k in enumerate(k for k in rep["sample_counts"] if k > 1):
        axes[0].plot(k * budgets, [t[f"maj@{k}"] for t in tables], ".--", color=f"C{i}", label=f"maj@{k}")
    axes[0].set(xlabel="total token cap k·b", ylabel="accuracy", ylim=(0, 1))
    axes[1].plot(budgets, [t["correct_var"] for t in tables], "o-", color="k")
    axes[1].set(xlabel="budget b (max new tokens)", ylabel="correctness variance p(1-p)")
    axes[2].plot(budgets, [t["answer_entropy"] for t in tables], "o-", color="k", label="answer entropy (nats)")
    axes[2].plot(budgets, [t["no_answer"] for t in tables], ".--", color="C3", label="no-answer share")
    axes[2].set(xlabel="budget b (max new tokens)")
    caps = sorted({int(k * b) for k in rep["sample_counts"] for b in budgets})
    for ax, ticks in zip(axes, (caps, budgets, budgets)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    for ax in (axes[0], axes[2]):
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
