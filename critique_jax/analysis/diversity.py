"""Diversity and tail measures: distinct correct solutions, per-difficulty solve rates,
pass@k curves and the token-entropy distribution (forking tokens: arXiv:2506.01939; tail
narrowing: arXiv:2411.00750, and critique-in-the-loop self-training against it: arXiv:2411.16579).

Everything here is host-side NumPy on decoded samples and per-token entropies.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from critique_jax.analysis.passk import pass_at_k
from critique_jax.tasks import Problem, Task

#: Entropy thresholds (nats) whose token shares ``top_fraction_threshold`` reports by default.
DEFAULT_THRESHOLDS = (0.01, 0.1, 0.5, 1.0, 2.0)


def distinct_correct_solutions(task: Task, problem: Problem, texts: Iterable[str]) -> int:
    """Number of distinct correct solutions among sampled ``texts`` of ``problem``.

    Correct: ``task.reward(problem, text) >= 1``. Sameness: equal :meth:`Task.solution_key
    <critique_jax.tasks.base.Task.solution_key>` (for countdown, the multiset of operations
    performed: line order, operand order of ``+``/``*`` and grouping of steps into lines do
    not matter; for arithmetic, the sequence of reductions: the style does not matter; for
    other tasks, the step lines up to case and whitespace).
    """
    keys = {task.solution_key(t) for t in texts if task.reward(problem, t) >= 1.0}
    return len(keys)


def distinct_per_solved(correct_counts: Sequence[int] | np.ndarray, distinct_counts: Sequence[int] | np.ndarray) -> float:
    """Mean distinct correct solutions over the *solved* problems (``correct_counts > 0``),
    reported next to pass@k: a problem no sample solved has no solutions to be diverse in, so
    counting it as 0 would mix coverage into diversity. NaN when no problem was solved."""
    counts, distinct = np.asarray(correct_counts), np.asarray(distinct_counts, np.float64)
    solved = counts > 0
    return float(distinct[solved].mean()) if solved.any() else float("nan")


def solved_share_by_difficulty(
    problems: Sequence[Problem], correct_counts: Sequence[int] | np.ndarray
) -> dict[int, float]:
    """Share of problems with at least one correct sample, per difficulty level.

    ``problems[i]`` had ``correct_counts[i]`` correct samples. Returns ``{level: share}``
    sorted by level, for the levels present (the tail-narrowing measure, arXiv:2411.00750).
    """
    counts = np.asarray(correct_counts)
    if counts.shape != (len(problems),):
        raise ValueError(
            f"correct_counts has shape {counts.shape}; expected ({len(problems)},), one per problem"
        )
    levels = np.array([p.difficulty for p in problems])
    return {
        int(d): float(np.mean(counts[levels == d] > 0)) for d in sorted(set(levels.tolist()))
    }


def pass_at_k_curve(
    n: int | Sequence[int] | np.ndarray, correct_counts: Sequence[int] | np.ndarray, ks: Iterable[int]
) -> dict[int, float]:
    """``{k: mean over problems of pass@k}`` with the unbiased estimator
    (:func:`critique_jax.analysis.passk.pass_at_k`); ``n`` samples per problem (a number or
    one per problem), ``correct_counts`` correct ones per problem."""
    counts = np.asarray(correct_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"correct_counts: expected a non-empty 1-D sequence, got shape {counts.shape}")
    return {int(k): float(pass_at_k(n, counts, int(k)).mean()) for k in ks}


def _valid_entropies(entropies: Any, mask: Any | None) -> np.ndarray:
    """The entropies of the valid tokens (float64, 1-D); ValueError on a shape mismatch or a
    non-finite valid entry."""
    h = np.asarray(entropies, np.float64)
    if mask is None:
        valid = np.ones(h.shape, bool)
    else:
        valid = np.asarray(mask)
        if valid.shape != h.shape:
            raise ValueError(f"mask has shape {valid.shape} but entropies have shape {h.shape}")
        valid = valid.astype(bool)
    values = h[valid]
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(valid & ~np.isfinite(h))[0]
        raise ValueError(f"entropies: non-finite value {h[tuple(bad)]} at valid index {tuple(bad.tolist())}")
    if values.size == 0:
        raise ValueError(f"no valid token among {h.size}")
    return values


def entropy_histogram(
    entropies: Any, mask: Any | None = None, bins: int | Sequence[float] = 50
) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` of the valid tokens' entropies (``np.histogram`` semantics: int64
    counts, float64 edges; ``bins`` a number of equal bins over the data range or the edges).

    entropies: per-token entropies (nats), any shape; mask: bool of the same shape (True =
    a response token), or None for all.
    """
    return np.histogram(_valid_entropies(entropies, mask), bins=bins)


def top_fraction_threshold(
    entropies: Any,
    mask: Any | None = None,
    rho: float = 0.2,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The forking-token threshold and token shares above fixed entropies.

    Returns ``{"threshold": τ, "kept_share": share of valid tokens with H >= τ,
    "share_at_or_above": {t: share of valid tokens with H >= t for t in thresholds}}``.
    ``τ = np.quantile(H_valid, 1 - rho)`` (linear interpolation), the threshold of the
    forking-token mask (:func:`critique_jax.rl.terms.forking_mask`): with distinct entropies
    exactly ``1 + floor(rho * (N - 1))`` of the N valid tokens have ``H >= τ``. The position
    ``(1 - rho) * (N - 1)`` is computed exactly on the decimal value of ``rho`` (as the mask
    does), so float rounding cannot move τ past an order statistic.
    """
    if not 0 < rho <= 1:
        raise ValueError(f"rho={rho!r}: expected a number in (0, 1]")
    values = np.sort(_valid_entropies(entropies, mask))
    pos = (1 - Fraction(repr(float(rho)))) * (values.size - 1)
    lo = math.floor(pos)
    tau = float(values[lo] if pos == lo else values[lo] + float(pos - lo) * (values[lo + 1] - values[lo]))
    shares: Mapping[float, float] = {float(t): float(np.mean(values >= t)) for t in thresholds}
    return {"threshold": tau, "kept_share": float(np.mean(values >= tau)), "share_at_or_above": shares}


def top_entropy_positions(entropies: Any, mask: Any, n: int) -> list[tuple[int, int]]:
    """``(row, col)`` of the ``n`` highest-entropy valid tokens of a ``[N, L]`` array, highest
    first (ties by position); fewer when there are fewer valid tokens."""
    h, valid = np.asarray(entropies, np.float64), np.asarray(mask, bool)
    if h.ndim != 2 or valid.shape != h.shape:
        raise ValueError(f"entropies {h.shape} and mask {valid.shape}: expected equal [N, L] shapes")
    flat = np.flatnonzero(valid)
    order = flat[np.argsort(-h.reshape(-1)[flat], kind="stable")[:n]]
    return [(int(i // h.shape[1]), int(i % h.shape[1])) for i in order]


def fork_share_by_token(
    token_ids: Any, entropies: Any, mask: Any, threshold: float, min_count: int = 1
) -> list[dict[str, float]]:
    """Which token ids fork: per id among the valid tokens, ``count``, ``mean_entropy`` and
    ``fork_share`` (share of its occurrences with ``H >= threshold``, e.g. the top-20% threshold
    of :func:`top_fraction_threshold`). Ids seen fewer than ``min_count`` times are left out;
    sorted by fork share, then count, descending. ``id`` is an int, the rest float."""
    ids, valid = np.asarray(token_ids), np.asarray(mask, bool)
    h = np.asarray(entropies, np.float64)
    if ids.shape != h.shape or valid.shape != h.shape:
        raise ValueError(f"token_ids {ids.shape}, entropies {h.shape}, mask {valid.shape}: expected equal shapes")
    ids, h = ids[valid], h[valid]
    rows = []
    for t in np.unique(ids):
        at = ids == t
        if at.sum() >= min_count:
            rows.append({"id": int(t), "count": float(at.sum()), "mean_entropy": float(h[at].mean()),
                         "fork_share": float(np.mean(h[at] >= threshold))})
    return sorted(rows, key=lambda r: (-r["fork_share"], -r["count"], r["id"]))
