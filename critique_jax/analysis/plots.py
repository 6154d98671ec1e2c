"""The notebooks' figures: one function per figure, each returning a ``matplotlib.figure.Figure``.

Figures are built without pyplot (no global state, no GUI backend: safe under Agg, in tests and
in notebook kernels); a notebook shows one with ``display(fig)`` and saves it with
:func:`save_figure` as ``<fig_dir>/<notebook>_<name>.png``. Inputs are the dataclasses of
:mod:`critique_jax.analysis.sweeps` and plain arrays; a label keeps one colour in every figure.
"""

from __future__ import annotations

import math
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from critique_jax.analysis.entropy_law import LawFit
from critique_jax.analysis.sweeps import Band, RunRecord, Stat, seed_band

class NoDataWarning(UserWarning):
    """A figure panel has nothing to draw (a metric no run logged, a sweep without those labels)."""


#: tab20 index per label of the reproduction sweeps: a hue per method, its light shade for a variant (clip_cov_all).
LABEL_COLORS = {"grpo": 0, "clip_higher": 1, "clip_cov": 2, "clip_cov_all": 3, "kl_cov": 4, "entropy_bonus": 6,
                "gppo": 8, "forking_top20": 10, "forking_bottom80": 11, "cg_rule_step": 12, "cg_indicative": 13,
                "cg_ground_truth": 16, "cg_model": 18, "st_none": 0, "st_rule_step": 12, "sft": 14, "resample": 14,
                "ar_grpo": 0, "ar_rule_step": 12, "ar_indicative": 13, "ar_rule_step_clip_cov": 2, "critic": 6,
                "cg_plan_hint": 16, "cg_plan": 17, "cg_hint_drgrpo": 18, "cg_hint_is": 19, "cg_hint_forking": 5,
                "critique_grpo": 16}


def color(label: str) -> tuple[float, float, float, float]:
    """The colour of ``label`` (tab20; a label outside :data:`LABEL_COLORS` by a hash of its name)."""
    index = LABEL_COLORS.get(label, zlib.crc32(label.encode()) % 20)
    return colormaps["tab20"](index)


def save_figure(fig: Figure, fig_dir: str | Path, notebook: str, name: str, dpi: int = 120) -> Path:
    """Writes ``fig`` to ``<fig_dir>/<notebook>_<name>.png`` (directory created) and returns the path."""
    path = Path(fig_dir) / f"{notebook}_{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def show(fig: Figure, fig_dir: str | Path, notebook: str, name: str) -> Path:
    """:func:`save_figure`, then display ``fig`` in the running notebook (IPython); returns the path."""
    from IPython.display import display

    path = save_figure(fig, fig_dir, notebook, name)
    display(fig)
    return path


def _grid(n: int, ncols: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list[Any]]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _no_data(ax: Any, what: str) -> None:
    """Marks an empty panel and warns (a notebook shows the warning; tests look for it)."""
    warnings.warn(f"no data: {what}", NoDataWarning, stacklevel=3)
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes, color="gray")


def _band(ax: Any, band: Band, label: str, style: str = "-", legend: str | None = None) -> None:
    """Mean line in ``label``'s colour with a ±1 sd band where at least 2 runs have a value."""
    ax.plot(band.steps, band.mean, style, color=color(label), label=legend or label, lw=1.6, ms=3)
    ok = band.n > 1
    if ok.any():
        lo, hi = np.where(ok, band.mean - band.sd, np.nan), np.where(ok, band.mean + band.sd, np.nan)
        ax.fill_between(band.steps, lo, hi, color=color(label), alpha=0.2, lw=0)


def _legend_once(axes: Sequence[Any]) -> None:
    """One legend, on the first panel that has labelled lines (every panel has the same labels)."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
            return


def curves(groups: Mapping[str, Sequence[RunRecord]], keys: Sequence[str], *, titles: Sequence[str] | None = None,
           ncols: int = 3, xlabel: str = "step") -> Figure:
    """One panel per metric key: its mean over each label's runs (seeds) vs step, ±1 sd band.

    Labels without the key are left out of that panel (a panel no label has says so); the
    legend gives the number of seeds. Eval metrics (few points) are drawn with markers.
    """
    fig, axes = _grid(len(keys), ncols)
    for i, (ax, key) in enumerate(zip(axes, keys)):
        drawn = 0
        for label, runs in groups.items():
            have = [r for r in runs if r.has(key)]
            if have:
                band = seed_band(have, key)
                _band(ax, band, label, "o-" if band.steps.size <= 12 else "-",
                      f"{label} (n={len(have)})" if len(have) > 1 else label)
                drawn += 1
        if not drawn:
            _no_data(ax, key)
        ax.set(xlabel=xlabel, title=titles[i] if titles else key)
        ax.grid(alpha=0.3)
    _legend_once(axes)
    return fig


def band_panels(panels: Mapping[str, Mapping[str, Band]], *, xlabel: str, ncols: int = 4) -> Figure:
    """One panel per title of ``panels`` (``{title: {label: Band}}``, bands already computed, e.g.
    test-time metrics against the generation budget), one line per label with its ±1 sd band."""
    fig, axes = _grid(len(panels), ncols)
    for ax, (title, bands) in zip(axes, panels.items()):
        for label, band in bands.items():
            n = int(band.n.max()) if band.n.size else 0
            _band(ax, band, label, "o-", f"{label} (n={n})" if n > 1 else label)
        if not bands:
            _no_data(ax, title)
        ax.set(xlabel=xlabel, title=title)
        ax.grid(alpha=0.3)
    _legend_once(axes)
    return fig


def law_fits(points: Mapping[str, tuple[np.ndarray, np.ndarray]], fits: Mapping[str, LawFit], *,
             xlabel: str = "mean token entropy H (nats)", ylabel: str = "accuracy R") -> Figure:
    """Accuracy vs entropy points per label with the fitted ``R = -a·exp(H) + b`` over the label's
    entropy range (dashed) and R² in the legend; ``fits`` may lack labels (points only)."""
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for label, (h, r) in points.items():
        ax.scatter(h, r, s=10, alpha=0.55, color=color(label))
        fit = fits.get(label)
        if fit is not None:
            grid = np.linspace(float(np.min(h)), float(np.max(h)), 100)
            ax.plot(grid, fit.predict(grid), "--", color=color(label), label=f"{label}: R²={fit.r2:.2f}")
        else:
            ax.plot([], [], "o", color=color(label), label=f"{label} (no fit)")
    if not points:
        _no_data(ax, "no label has entropy and accuracy points")
    ax.set(xlabel=xlabel, ylabel=ylabel, title="R = -a·exp(H) + b per method")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def early_fit(series: Mapping[str, tuple[np.ndarray, np.ndarray]], results: Mapping[str, Mapping[str, Any]], *,
              ylabel: str = "accuracy", ncols: int = 3) -> Figure:
    """One panel per label: the accuracy points vs step, the steps fitted (shaded) and the law's
    prediction of the later points from their entropies (``results``: :func:`early_fit_prediction`)."""
    labels = [lab for lab in series if lab in results]
    fig, axes = _grid(max(len(labels), 1), ncols)
    if not labels:
        _no_data(axes[0], "no label has enough points for an early fit")
    for ax, label in zip(axes, labels):
        steps, acc = series[label]
        res = results[label]
        ax.scatter(steps, acc, s=8, color=color(label), alpha=0.6, label="measured")
        ax.axvspan(float(np.min(steps)), res["fit_until_step"], color="gray", alpha=0.15, label="fitted")
        order = np.argsort(res["test_steps"], kind="stable")
        ax.plot(res["test_steps"][order], res["predicted"][order], "k.", ms=3, label="predicted")
        ax.set(title=f"{label}: RMSE {res['rmse']:.3f}", xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    if labels:
        axes[0].legend(fontsize=7)
    return fig


def scatter(points: Mapping[str, tuple[np.ndarray, np.ndarray]], *, xlabel: str, ylabel: str, title: str,
            notes: Mapping[str, str] | None = None) -> Figure:
    """``y`` vs ``x`` per label (``notes[label]`` appended to its legend entry, e.g. its Pearson r)."""
    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    for label, (x, y) in points.items():
        note = f" ({notes[label]})" if notes and label in notes else ""
        ax.scatter(x, y, s=10, alpha=0.6, color=color(label), label=label + note)
    if not points:
        _no_data(ax, title)
    ax.axhline(0, color="gray", lw=0.6)
    ax.axvline(0, color="gray", lw=0.6)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if points:
        ax.legend(fontsize=7)
    return fig


def by_bucket(buckets: Mapping[str, Mapping[float, Mapping[str, float]]], *, value: str = "mean_cov",
              xlabel: str = "group accuracy (share of correct samples)", ylabel: str = "mean token covariance",
              title: str = "covariance by prompt accuracy") -> Figure:
    """Per policy, ``buckets[policy][x][value]`` vs x (left) and the share of tokens per bucket
    (right; ``n_tokens``), e.g. :func:`covariance_by_accuracy` outputs."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax, share_ax = fig.subplots(1, 2)
    for name, b in buckets.items():
        x = np.array(sorted(b), np.float64)
        ax.plot(x, [b[k][value] for k in x], "o-", color=color(name), label=name)
        total = sum(b[k]["n_tokens"] for k in x)
        share_ax.plot(x, [b[k]["n_tokens"] / max(total, 1) for k in x], "o-", color=color(name), label=name)
    if not buckets:
        _no_data(ax, title)
    ax.axhline(0, color="gray", lw=0.6)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    share_ax.set(xlabel=xlabel, ylabel="share of tokens", title="where the tokens are")
    for a in (ax, share_ax):
        a.grid(alpha=0.3)
    if buckets:
        ax.legend(fontsize=7)
    return fig


def pass_at_k(curves_by_label: Mapping[str, Mapping[int, Stat]], *, title: str = "pass@k at the end") -> Figure:
    """pass@k vs k (log2 axis) per label: seed mean with ±1 sd error bars."""
    fig = Figure(figsize=(6.5, 4.4), layout="constrained")
    ax = fig.subplots()
    for label, curve in curves_by_label.items():
        ks = sorted(curve)
        mean = [curve[k].mean for k in ks]
        sd = [curve[k].sd if curve[k].n > 1 else 0.0 for k in ks]
        n = max((curve[k].n for k in ks), default=0)
        ax.errorbar(ks, mean, yerr=sd, fmt="o-", ms=3, capsize=2, color=color(label),
                    label=f"{label} (n={n})" if n > 1 else label)
    if not curves_by_label:
        _no_data(ax, title)
    ax.set_xscale("log", base=2)
    ks_all = sorted({k for curve in curves_by_label.values() for k in curve})
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(xlabel="k (samples per problem)", ylabel="pass@k", title=title)
    ax.grid(alpha=0.3)
    if curves_by_label:
        ax.legend(fontsize=7)
    return fig


def grouped_bars(values: Mapping[str, Mapping[str, Stat]], *, ylabel: str, title: str,
                 error: str = "± 1 sd") -> Figure:
    """One group of bars per label (``values[label][series]``: mean with ``sd`` as the error
    bar, whatever spread the caller put there, named by ``error``), one colour per series."""
    series = list(dict.fromkeys(k for per in values.values() for k in per))
    fig = Figure(figsize=(max(4.5, 1.6 * len(values) + 2.0) + 2.2, 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for j, name in enumerate(series):
        xs = [i for i, per in enumerate(values.values()) if name in per]
        stats = [per[name] for per in values.values() if name in per]
        ax.bar([x + (j - (len(series) - 1) / 2) * width for x in xs], [st.mean for st in stats], width,
               yerr=[st.sd if st.n > 1 else 0.0 for st in stats], capsize=3, label=name,
               color=colormaps["tab10"](j))
    if not values:
        _no_data(ax, title)
    ax.set_xticks(range(len(values)), list(values), rotation=15)
    ax.set(ylabel=ylabel, title=f"{title} ({error})")
    ax.grid(alpha=0.3, axis="y")
    if values:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars stay visible
    return fig


def per_level(bands: Mapping[str, Mapping[int, Band]], *, ylabel: str, xlabel: str = "iteration",
              ncols: int = 4) -> Figure:
    """One panel per difficulty level: ``bands[label][level]`` vs step, one line per label."""
    levels = sorted({lvl for per in bands.values() for lvl in per})
    fig, axes = _grid(max(len(levels), 1), ncols, width=3.6)
    if not levels:
        _no_data(axes[0], ylabel)
    for ax, level in zip(axes, levels):
        for label, per in bands.items():
            if level in per:
                _band(ax, per[level], label, "o-")
        ax.set(title=f"level {level}", xlabel=xlabel, ylabel=ylabel, ylim=(-0.03, 1.03))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if levels:
        axes[0].legend(fontsize=7)
    return fig


def entropy_histogram(counts: np.ndarray, edges: np.ndarray, threshold: float, *, rho: float = 0.2,
                      title: str = "token entropy of the policy's samples") -> Figure:
    """Histogram (log counts) of token entropies with the top-``rho`` threshold marked."""
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.stairs(counts, edges, fill=True, alpha=0.6, color="tab:purple")
    ax.axvline(threshold, color="k", ls="--", label=f"top {rho:.0%} threshold τ = {threshold:.3f} nats")
    ax.set_yscale("log")
    ax.set(xlabel="token entropy H (nats)", ylabel="tokens", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig
