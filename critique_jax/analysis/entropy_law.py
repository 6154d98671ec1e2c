"""The entropy-performance law of Cui et al. (arXiv:2505.22617) and the covariance-entropy link.
Over 300 lines: the law's fit, its early-fit test and the covariance link pair the same metrics rows
the same way (:func:`law_points_from_metrics`), so they stay together.

Law: validation accuracy ``R = -a * exp(H) + b``, H the mean token entropy
(nats) of the training rollouts; the predicted ceiling is ``b - a`` (R at H = 0). The law is
linear in ``(a, b)`` given H, so :func:`fit_entropy_law` is ordinary least squares on the
design ``[-exp(H), 1]`` with the usual standard errors.

Pairing with ``metrics.jsonl`` (the layout of :mod:`critique_jax.metrics`, rows as returned by
:func:`critique_jax.metrics.read_metrics`): the trainer logs ``train/entropy`` at RL step t
for the rollouts sampled *before* update t (by the parameters after step t-1), and
``eval/pass@1`` at step t *after* update t. See :func:`law_points_from_metrics` and
:func:`covariance_vs_entropy_change` for how each pairs the two, and
:func:`covariance_vs_same_batch_entropy_change` for the change measured on one batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

Rows = Sequence[Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class LawFit:
    """Least-squares fit of ``R = -a * exp(H) + b``.

    a, b: the parameters; a_se, b_se: their standard errors; ab_cov: their covariance.
    ceiling: ``b - a``, the predicted accuracy at H = 0; ceiling_se: its standard error
      (``sqrt(var a + var b - 2 cov(a, b))``).
    r2: coefficient of determination (NaN when all accuracies are equal).
    rmse: root mean squared residual ``sqrt(RSS / n)``.
    n: number of points fitted.
    """

    a: float
    b: float
    a_se: float
    b_se: float
    ab_cov: float
    ceiling: float
    ceiling_se: float
    r2: float
    rmse: float
    n: int

    def predict(self, entropy: Any) -> np.ndarray:
        """``-a * exp(H) + b`` (float64, the shape of ``entropy``)."""
        return -self.a * np.exp(np.asarray(entropy, np.float64)) + self.b


def _vector(name: str, values: Any) -> np.ndarray:
    """``values`` as a finite 1-D float64 array; ValueError naming the first bad index."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x))
    if bad.size:
        raise ValueError(f"{name}: non-finite value {x[bad[0]]} at index {bad[0]}")
    return x


def _paired(entropy: Any, accuracy: Any) -> tuple[np.ndarray, np.ndarray]:
    h, r = _vector("entropy", entropy), _vector("accuracy", accuracy)
    if h.size != r.size:
        raise ValueError(f"entropy has {h.size} values but accuracy has {r.size}")
    return h, r


def fit_entropy_law(entropy: Any, accuracy: Any) -> LawFit:
    """Fits ``R = -a * exp(H) + b`` by ordinary least squares.

    Args:
      entropy: H per point, 1-D, nats (mean token entropy of the training rollouts).
      accuracy: R per point, 1-D, same length (e.g. eval pass@1 in [0, 1]).

    With ``X = [-exp(H), 1]``: ``(a, b) = argmin |R - X (a, b)|²`` (solved by QR), residual
    variance ``s² = RSS / (n - 2)``, parameter covariance ``s² (XᵀX)⁻¹``.

    Raises ValueError for fewer than 3 points (2 parameters + 1 degree of freedom for the
    residual variance), different lengths, non-finite values (naming the index) or a
    singular design (all ``exp(H)`` equal).
    """
    h, r = _paired(entropy, accuracy)
    n = h.size
    if n < 3:
        raise ValueError(
            f"fit_entropy_law needs at least 3 points (2 parameters a, b + 1 for the residual "
            f"variance), got {n}"
        )
    x = -np.exp(h)
    if not np.all(np.isfinite(x)):
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise ValueError(f"entropy: exp(H) overflows at index {i} (H = {h[i]}); H must be in nats")
    if np.ptp(x) == 0:
        raise ValueError(f"all {n} entropies equal exp-wise (H = {h[0]}): a and b are not identifiable")
    design = np.stack([x, np.ones(n)], axis=1)
    q, upper = np.linalg.qr(design)
    theta = np.linalg.solve(upper, q.T @ r)
    resid = r - design @ theta
    rss = float(resid @ resid)
    upper_inv = np.linalg.inv(upper)
    cov = rss / (n - 2) * (upper_inv @ upper_inv.T)
    a, b = float(theta[0]), float(theta[1])
    tss = float(np.sum((r - r.mean()) ** 2))
    ceiling_var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    return LawFit(
        a=a,
        b=b,
        a_se=math.sqrt(cov[0, 0]),
        b_se=math.sqrt(cov[1, 1]),
        ab_cov=float(cov[0, 1]),
        ceiling=b - a,
        ceiling_se=math.sqrt(max(ceiling_var, 0.0)),
        r2=1.0 - rss / tss if tss > 0 else math.nan,
        rmse=math.sqrt(rss / n),
        n=n,
    )


def early_fit_prediction(
    steps: Any, entropy: Any, accuracy: Any, fraction: float = 0.15
) -> dict[str, Any]:
    """Fits the law on the early part of a run and scores its prediction of the rest.

    The fit uses the points with ``step <= first + fraction * (last - first)`` (a fraction of
    the *step range*, as "the first 15% of training steps" in the paper; with evenly spaced
    evaluations this is the same fraction of the points), at least the first 3 points by step.
    Inputs need not be sorted.

    Returns a dict: ``fit`` (:class:`LawFit`), ``fit_until_step`` (last step fitted),
    ``n_fit``, ``n_test``, ``test_steps`` (int64), ``predicted`` and ``actual`` (float64, on
    the test points), ``rmse`` (``sqrt(mean (pred - actual)²)``) and ``max_abs_error``.
    Raises ValueError when no point is left to predict.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction!r}: expected a number in (0, 1)")
    s = np.asarray(steps)
    if s.ndim != 1 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"steps: expected a 1-D sequence of integers, got {s.dtype} shape {s.shape}")
    h, r = _paired(entropy, accuracy)
    if s.size != h.size:
        raise ValueError(f"steps has {s.size} values but entropy/accuracy have {h.size}")
    if s.size < 4:
        raise ValueError(f"early_fit_prediction needs at least 4 points (3 to fit, 1 to predict), got {s.size}")
    order = np.argsort(s, kind="stable")
    s, h, r = s[order], h[order], r[order]
    n_fit = max(3, int(np.sum(s <= s[0] + fraction * (s[-1] - s[0]))))
    if n_fit >= s.size:
        raise ValueError(
            f"early_fit_prediction: {s.size} points leave none to predict after fitting {n_fit} "
            f"(fraction={fraction}, at least 3 fitted)"
        )
    fit = fit_entropy_law(h[:n_fit], r[:n_fit])
    predicted, actual = fit.predict(h[n_fit:]), r[n_fit:]
    err = predicted - actual
    return {
        "fit": fit,
        "fit_until_step": int(s[n_fit - 1]),
        "n_fit": n_fit,
        "n_test": int(s.size - n_fit),
        "test_steps": s[n_fit:].astype(np.int64),
        "predicted": predicted,
        "actual": actual,
        "rmse": float(np.sqrt(np.mean(err**2))),
        "max_abs_error": float(np.max(np.abs(err))),
    }


def _series(rows: Rows, key: str) -> dict[int, float]:
    """``{step: value}`` for the rows that have ``key`` with a finite value."""
    out = {}
    for row in rows:
        if key in row:
            value = float(row[key])
            if math.isfinite(value):
                out[int(row["step"])] = value
    return out


def law_points_from_metrics(
    rows: Rows, entropy_key: str = "train/entropy", accuracy_key: str = "eval/pass@1"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, H, R)`` for the law fit from ``metrics.jsonl`` rows, one point per evaluation.

    For an evaluation at step t (the previous one at t'), H is the unweighted mean of the
    logged ``entropy_key`` values of the train steps in ``(t', t]``: the rollouts of the
    policies between the two evaluations, which smooths the per-batch noise of one step.
    An evaluation with no train step in that window (the evaluation right after SFT, before
    the first RL step) takes the first train step after it, whose rollouts come from exactly
    the evaluated parameters; it is dropped when there is none. Rows with a non-finite value
    of a key are ignored for that key.

    Returns int64 steps and float64 H (nats) and R, sorted by step. Raises ValueError when
    the rows have no (finite) ``entropy_key`` or ``accuracy_key``.
    """
    train, evals = _series(rows, entropy_key), _series(rows, accuracy_key)
    for key, series in ((entropy_key, train), (accuracy_key, evals)):
        if not series:
            raise ValueError(f"no row of the {len(rows)} has a finite {key!r}")
    t_steps = np.array(sorted(train), np.int64)
    t_h = np.array([train[s] for s in t_steps], np.float64)
    steps, hs, rs = [], [], []
    previous = -math.inf
    for step in sorted(evals):
        window = (t_steps > previous) & (t_steps <= step)
        later = t_steps > step
        previous = step
        if window.any():
            h = t_h[window].mean()
        elif later.any():
            h = t_h[later][0]
        else:
            continue
        steps.append(step)
        hs.append(h)
        rs.append(evals[step])
    return np.array(steps, np.int64), np.array(hs, np.float64), np.array(rs, np.float64)


def covariance_vs_entropy_change(
    rows: Rows, cov_key: str = "train/cov_mean", entropy_key: str = "train/entropy"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, cov, minus_dH)`` over consecutive train steps, for the "Cov vs -ΔH" figure.

    For each step t with a logged ``cov_key`` and entropies at t and t + 1:
    ``cov[i] = cov_t`` (the mean token covariance of log-prob and advantage in update t) and
    ``minus_dH[i] = -(H_{t+1} - H_t)``. ``H_t`` is the entropy of the rollouts update t trains
    on and ``H_{t+1}`` that of the policy update t produced, so under natural policy gradient
    ``minus_dH ≈ η·cov`` (Cui et al.). Steps with a gap (no row t + 1) or a non-finite value
    are skipped. Returns int64 steps and float64 arrays; ValueError when no pair exists.
    """
    cov, h = _series(rows, cov_key), _series(rows, entropy_key)
    steps = [t for t in sorted(cov) if t in h and t + 1 in h]
    if not steps:
        raise ValueError(
            f"no step t has a finite {cov_key!r} and finite {entropy_key!r} at t and t + 1 "
            f"({len(rows)} rows)"
        )
    return (
        np.array(steps, np.int64),
        np.array([cov[t] for t in steps], np.float64),
        np.array([h[t] - h[t + 1] for t in steps], np.float64),
    )


def covariance_vs_same_batch_entropy_change(
    rows: Rows, cov_key: str = "train/cov_mean", change_key: str = "train/entropy_change"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, cov, minus_dH)`` with ``minus_dH[i] = -ΔH_t`` measured on the *same* batch:
    the mean entropy of the initial-response tokens update t trained on, after the update minus
    before it (the trainer's ``train/entropy_change``, ``rl.entropy_change=True``). Unlike
    :func:`covariance_vs_entropy_change`, whose ``H_t`` and ``H_{t+1}`` come from different
    prompts (so batch-to-batch noise and regression to the mean enter ``-ΔH``), this isolates
    the change the update made. ValueError when no step has both values.
    """
    cov, dh = _series(rows, cov_key), _series(rows, change_key)
    steps = [t for t in sorted(cov) if t in dh]
    if not steps:
        raise ValueError(f"no step has a finite {cov_key!r} and a finite {change_key!r} ({len(rows)} rows; "
                         "train/entropy_change is logged with rl.entropy_change=True)")
    return (np.array(steps, np.int64), np.array([cov[t] for t in steps], np.float64),
            np.array([-dh[t] for t in steps], np.float64))


def pearson_r(x: Any, y: Any) -> float:
    """Pearson correlation of two 1-D samples of equal length (at least 2, non-constant)."""
    x, y = _vector("x", x), _vector("y", y)
    if x.size != y.size or x.size < 2:
        raise ValueError(f"pearson_r needs two samples of equal length >= 2, got {x.size} and {y.size}")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    if denom == 0:
        raise ValueError("pearson_r: a sample is constant; the correlation is undefined")
    return float(dx @ dy) / denom


def covariance_by_accuracy(cov: Any, mask: Any, rewards: Any, group_size: int) -> dict[float, dict[str, float]]:
    """Token covariance bucketed by the accuracy of the prompt's group ("covariance by prompt accuracy").

    cov, mask: [N, L] per-token covariance (e.g. :func:`critique_jax.ops.token_covariance` of
    log-probs and advantages) and valid tokens; rewards [N] with N = prompts x ``group_size``,
    group-major (sample i answers prompt i // group_size). A group's accuracy is its mean reward.
    Returns ``{accuracy: {"mean_cov": mean of cov over the valid tokens of those groups,
    "n_tokens", "n_groups"}}`` sorted by accuracy (float keys, rounded to 9 decimals).
    """
    c, valid, r = np.asarray(cov, np.float64), np.asarray(mask, bool), np.asarray(rewards, np.float64)
    if c.ndim != 2 or valid.shape != c.shape or r.shape != c.shape[:1]:
        raise ValueError(f"cov {c.shape}, mask {valid.shape}, rewards {r.shape}: expected [N, L], [N, L], [N]")
    if group_size < 1 or r.size % group_size:
        raise ValueError(f"{r.size} samples do not split into groups of group_size={group_size}")
    acc = np.round(r.reshape(-1, group_size).mean(1), 9)
    sample_acc = np.repeat(acc, group_size)
    out = {}
    for a in np.unique(acc):
        rows = sample_acc == a
        n_tokens = int(valid[rows].sum())
        out[float(a)] = {"mean_cov": float(c[rows][valid[rows]].mean()) if n_tokens else math.nan,
                         "n_tokens": float(n_tokens), "n_groups": float(np.sum(acc == a))}
    return out
