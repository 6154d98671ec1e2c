"""A policy's evaluation report from per-problem results (pure; the sampling is
:mod:`critique_jax.runs.evaluation_run`).

Per problem, ``n`` samples: how many are correct, whether the majority answer is correct, how
many distinct correct solutions (:meth:`~critique_jax.tasks.base.Task.solution_key`), response
tokens and their summed token entropy. The report: pass@k for k = 1..n (unbiased estimator),
majority vote (maj@n; NaN for tasks whose steps decide the reward), solved share, per-level pass@1 / pass@n / maj@n, mean response length
(tokens), mean token entropy (nats) and distinct correct solutions per solved problem.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import numpy as np

from critique_jax.analysis.diversity import distinct_per_solved
from critique_jax.analysis.passk import pass_at_k


@dataclasses.dataclass(frozen=True)
class ProblemResult:
    """One problem's ``n`` samples: ``correct`` of them verified, ``majority_correct`` (the most
    frequent extracted answer is right; None where the task's reward is not a function of the
    answer, :attr:`~critique_jax.tasks.base.Task.answer_graded`), ``distinct`` distinct correct
    solutions, ``tokens`` response tokens in all and ``entropy_sum`` their summed token entropy
    (nats)."""

    uid: str
    difficulty: int
    n: int
    correct: int
    majority_correct: bool | None
    distinct: int
    tokens: float
    entropy_sum: float


def majority_correct(answers: Sequence[str | None], rewards: Sequence[float]) -> bool:
    """Whether the most frequent extracted answer (None: no answer, never a vote; ties: of the
    tied answers, the one that appears first in ``answers``) belongs to a correct sample."""
    votes = collections.Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return any(r >= 1 for a, r in zip(answers, rewards) if a == winner)


def _block(results: Sequence[ProblemResult], n: int) -> dict[str, float]:
    correct = np.asarray([r.correct for r in results])
    return {f"pass@{k}": float(pass_at_k(n, correct, k).mean()) for k in range(1, n + 1)} | {
        f"maj@{n}": (float("nan") if any(r.majority_correct is None for r in results)
                     else float(np.mean([r.majority_correct for r in results]))),
        "solved": float(np.mean(correct > 0)),
        "n_problems": float(len(results))}


def report(results: Sequence[ProblemResult]) -> dict[str, Any]:
    """The evaluation report of ``results`` (every problem with the same ``n``)."""
    if not results:
        raise ValueError("no problems were evaluated")
    ns = {r.n for r in results}
    if len(ns) != 1:
        raise ValueError(f"problems have different sample counts {sorted(ns)}; expected one n")
    n = ns.pop()
    tokens = sum(r.tokens for r in results)
    out: dict[str, Any] = {"samples_per_problem": n} | _block(results, n)
    out |= {"response_len": tokens / (n * len(results)),
            "entropy": sum(r.entropy_sum for r in results) / max(tokens, 1.0),
            "distinct_correct": distinct_per_solved([r.correct for r in results], [r.distinct for r in results])}
    levels = sorted({r.difficulty for r in results})
    out["per_level"] = {str(d): _block([r for r in results if r.difficulty == d], n) for d in levels}
    return out


def markdown(rep: dict[str, Any], title: str) -> str:
    """The report as Markdown: the overall numbers, then pass@1 / pass@n / maj@n per level."""
    n = rep["samples_per_problem"]
    ks = sorted({1, 2, 4, 8, 16, 32, 64, n} & set(range(1, n + 1)))
    lines = [f"# {title}", "", f"{int(rep['n_problems'])} problems, {n} samples each.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| pass@{k} | {rep[f'pass@{k}']:.4f} |" for k in ks]
    lines += [f"| maj@{n} | {rep[f'maj@{n}']:.4f} |", f"| solved | {rep['solved']:.4f} |",
              f"| response length (tokens) | {rep['response_len']:.1f} |",
              f"| token entropy (nats) | {rep['entropy']:.4f} |",
              f"| distinct correct per solved | {rep['distinct_correct']:.3f} |", "",
              f"| level | problems | pass@1 | pass@{n} | maj@{n} |", "|---|---|---|---|---|"]
    for d, b in rep["per_level"].items():
        lines.append(f"| {d} | {int(b['n_problems'])} | {b['pass@1']:.4f} | {b[f'pass@{n}']:.4f} | {b[f'maj@{n}']:.4f} |")
    return "\n".join(lines) + "\n"
