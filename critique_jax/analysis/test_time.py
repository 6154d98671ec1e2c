"""Test-time variance of a policy across generation budgets and sample counts (pure; the
sampling is :mod:`critique_jax.runs.budget_sweep`).

Input: per problem and generation budget ``b`` (max new tokens), ``n`` samples, each with its
0/1 verifier reward ``c_j``, extracted final answer ``a_j`` (None: no answer) and response
tokens ``t_j``. Per problem (:func:`problem_stats`):

* ``pass@1`` = mean_j c_j (single-sample accuracy);
* ``correct_var`` = p (1 - p) with p = pass@1: the variance of correctness across the samples
  (population variance, ddof 0; 0 when every sample agrees, at most 0.25);
* ``answer_entropy`` = -sum_a f_a ln f_a (nats), f_a the share of samples with final answer a;
  **None (no answer, e.g. cut off by the budget) counts as one category of its own**, so a
  budget that truncates half the samples shows as answer variance;
* ``no_answer`` = share of samples with no extracted answer;
* ``maj@k`` (k <= n) = mean, over the floor(n / k) disjoint consecutive blocks of k samples,
  of :func:`~critique_jax.analysis.evaluation.majority_correct` on the block (None never votes;
  ties: the tied answer that appears first in the block); None where the task's reward is not a
  function of the answer (``answer_graded`` False).

Per budget (:func:`budget_table`): the means over problems of the above, ``pass@k`` (the
unbiased estimator from all n samples), ``tokens_per_sample`` (mean response tokens).

Equal token budget (:func:`equal_budget`): maj@k of k samples generated with budget b against
pass@1 of one sample generated with budget k·b, both capped at ``token_cap = k·b`` new tokens in
all per problem, for every pair the sweep has (k > 1, k·b also a swept budget); ``tokens@k`` =
k x tokens_per_sample at b and ``tokens_at_cap`` = tokens_per_sample at k·b are the tokens each
actually spent.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from critique_jax.analysis.evaluation import majority_correct
from critique_jax.analysis.passk import pass_at_k


@dataclasses.dataclass(frozen=True)
class SampleSet:
    """One problem's ``n`` samples at generation budget ``budget`` (max new tokens): ``correct``
    [n] 0/1 verifier rewards, ``answers`` [n] extracted final answers (None: none), ``tokens`` [n]
    response tokens. One line of a budget's records file."""

    uid: str
    difficulty: int
    budget: int
    correct: list[int]
    answers: list[str | None]
    tokens: list[int]


def correctness_variance(correct: Sequence[int]) -> float:
    """p (1 - p), p the mean of the 0/1 ``correct`` [n] (population variance across samples)."""
    p = float(np.mean(correct))
    return p * (1.0 - p)


def answer_entropy(answers: Sequence[str | None]) -> float:
    """Entropy (nats) of the answers' empirical distribution [n]; None is a category of its own."""
    counts = np.asarray(list(collections.Counter(answers).values()), np.float64)
    f = counts / counts.sum()
    return float(-(f * np.log(f)).sum())


def majority_at(answers: Sequence[str | None], correct: Sequence[int], k: int) -> float:
    """maj@k: the mean of :func:`majority_correct` over the floor(n / k) disjoint consecutive
    blocks of ``k`` of the ``n`` samples (1 <= k <= n)."""
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj@k: k={k}, expected 1 <= k <= n={n} samples")
    blocks = range(0, n - n % k, k)
    return float(np.mean([majority_correct(answers[i:i + k], correct[i:i + k]) for i in blocks]))


def problem_stats(s: SampleSet, counts: Sequence[int], answer_graded: bool) -> dict[str, float | None]:
    """One problem's test-time statistics (module docstring) for the sample counts ``counts``."""
    out: dict[str, float | None] = {
        "pass@1": float(np.mean(s.correct)), "correct_var": correctness_variance(s.correct),
        "answer_entropy": answer_entropy(s.answers),
        "no_answer": float(np.mean([a is None for a in s.answers]))}
    for k in counts:
        out[f"maj@{k}"] = majority_at(s.answers, s.correct, k) if answer_graded else None
    return out


def budget_table(sets: Sequence[SampleSet], counts: Sequence[int], answer_graded: bool) -> dict[str, float]:
    """The per-budget means over problems (module docstring) of ``sets`` (one budget, one n);
    maj@k is NaN where the task is not answer-graded."""
    if not sets:
        raise ValueError("test-time table: no problems")
    ns = {len(s.correct) for s in sets}
    if len(ns) != 1:
        raise ValueError(f"test-time table: problems have different sample counts {sorted(ns)}; expected one n")
    n = ns.pop()
    stats = [problem_stats(s, counts, answer_graded) for s in sets]
    out = {key: (float("nan") if stats[0][key] is None else float(np.mean([st[key] for st in stats])))
           for key in stats[0]}
    correct = np.asarray([sum(s.correct) for s in sets])
    out |= {f"pass@{k}": float(pass_at_k(n, correct, k).mean()) for k in counts}
    out |= {"tokens_per_sample": float(np.mean([t for s in sets for t in s.tokens])),
            "n_problems": float(len(sets))}
    return out


def equal_budget(per_budget: Mapping[int, Mapping[str, float]], counts: Sequence[int]) -> list[dict[str, float]]:
    """maj@k at budget b against pass@1 at budget k·b (module docstring), for every k > 1 in
    ``counts`` and budget b whose k·b is also a key of ``per_budget`` (budget -> table)."""
    rows = []
    for b in sorted(per_budget):
        for k in sorted(c for c in counts if c > 1 and c * b in per_budget):
            small, big = per_budget[b], per_budget[k * b]
            rows.append({"budget": b, "k": k, "token_cap": k * b,
                         "maj@k": small[f"maj@{k}"], "pass@1_at_cap": big["pass@1"],
                         "tokens@k": k * small["tokens_per_sample"], "tokens_at_cap": big["tokens_per_sample"]})
    return rows


def sweep_report(sets: Sequence[SampleSet], counts: Sequence[int], answer_graded: bool) -> dict[str, Any]:
    """The sweep's report from every record (any budgets, one n): ``per_budget`` (str(budget) ->
    :func:`budget_table`), ``equal_budget`` (:func:`equal_budget`) and the settings."""
    by_budget: dict[int, list[SampleSet]] = collections.defaultdict(list)
    for s in sets:
        by_budget[s.budget].append(s)
    tables = {b: budget_table(by_budget[b], counts, answer_graded) for b in sorted(by_budget)}
    return {"budgets": sorted(tables), "sample_counts": list(counts), "answer_graded": answer_graded,
            "per_budget": {str(b): t for b, t in tables.items()}, "equal_budget": equal_budget(tables, counts)}
