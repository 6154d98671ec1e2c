"""Run summaries from ``metrics.jsonl``: a before/after table and entropy/reward curves
(the library of ``python -m critique_jax.report``).

    python -m critique_jax.report runs/quickstart

    python -m critique_jax.report runs/quickstart runs/quickstart/clip_cov --critic runs/quickstart/critic

prints, per run, the evaluation at the start of RL (after SFT) next to the last evaluation, and
writes ``<first run>/curves.png`` (train entropy, train reward and eval pass@1 against step, the
runs overlaid). ``--critic`` (a ``train_critic`` run) adds the critic's last held-out evaluation.
"""

from __future__ import annotations

import io
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from critique_jax import storage  # noqa: E402
from critique_jax.metrics import read_metrics  # noqa: E402

TABLE_KEYS = ("eval/pass@1_greedy", "eval/pass@1", "eval/pass@k/2", "eval/pass@k/4", "eval/pass@k/8", "eval/distinct_correct",
              "eval/entropy", "eval/response_len")


def eval_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "eval/pass@1" in r]


def before_after(workdir: str) -> str:
    """A Markdown table: first vs last evaluation of the run (RL start vs end)."""
    evals = eval_rows(read_metrics(workdir))
    if len(evals) < 2:
        raise ValueError(f"{workdir}/metrics.jsonl has {len(evals)} evaluation(s); a before/after table needs 2")
    first, last = evals[0], evals[-1]
    keys = [k for k in TABLE_KEYS if k in first and k in last]
    lines = [f"| metric | step {first['step']} (start) | step {last['step']} (end) | change |",
             "|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {k} | {first[k]:.4f} | {last[k]:.4f} | {last[k] - first[k]:+.4f} |")
    return "\n".join(lines)


def run_label(workdir: str) -> str:
    """A run's name in legends and tables: its directory name."""
    return os.path.basename(os.path.normpath(workdir))


def plot_curves(workdirs: str | list[str], out: str | None = None) -> str:
    """Train entropy, train reward and eval pass@1 vs RL step of one or more runs, overlaid (one
    colour per run, step 0 = the start of RL); returns the PNG path (default ``<first run>/curves.png``)."""
    workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, workdir in enumerate(workdirs):
        rows = read_metrics(workdir)
        train = [r for r in rows if "train/entropy" in r]
        evals = eval_rows(rows)
        if not train:
            raise ValueError(f"{workdir}/metrics.jsonl has no RL steps (train/entropy) to plot")
        color, label = f"C{i}", run_label(workdir)
        start = train[0]["step"] - 1  # RL steps count from the end of SFT (a run after its own SFT, or init_from)
        axes[0].plot([r["step"] - start for r in train], [r["train/entropy"] for r in train], color=color, label=label)
        axes[1].plot([r["step"] - start for r in train], [r["train/reward"] for r in train], color=color, alpha=0.35,
                     label=f"{label}: train reward")
        axes[1].plot([r["step"] - start for r in evals if r["step"] >= start],
                     [r["eval/pass@1"] for r in evals if r["step"] >= start], "o-", color=color,
                     label=f"{label}: eval pass@1")
    axes[0].set(xlabel="RL step", ylabel="mean token entropy (nats)", title="policy entropy (training rollouts)")
    axes[1].set(xlabel="RL step", ylabel="accuracy", title="reward and held-out pass@1", ylim=(0, 1))
    for ax in axes:
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(" vs ".join(run_label(w) for w in workdirs))
    fig.tight_layout()
    out = out or os.path.join(workdirs[0], "curves.png")  # a run directory may be a URL
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    storage.path(out, "--out").write_bytes(png.getvalue())
    return out


CRITIC_KEYS = ("critic/verdict_acc", "critic/first_wrong_acc", "critic/acc_on_correct", "critic/acc_on_wrong")


def critic_summary(workdir: str) -> str:
    """One line: the last held-out evaluation of a train_critic run."""
    evals = [r for r in read_metrics(workdir) if "critic/verdict_acc" in r]
    if not evals:
        raise ValueError(f"{workdir}/metrics.jsonl has no critic evaluation (critic/verdict_acc)")
    last = evals[-1]
    return f"critic (step {last['step']}, held-out): " + ", ".join(
        f"{k.split('/')[1]} {last[k]:.3f}" for k in CRITIC_KEYS if k in last)


def summary(workdirs: list[str], critic: str | None = None, out: str | None = None) -> str:
    """The report of ``python -m critique_jax.report``: a before/after table per RL run, their
    curves overlaid (written to ``out``, default ``<first run>/curves.png``) and the critic's
    last evaluation."""
    if not workdirs:
        raise ValueError("no run directories to report on")
    parts = [f"{run_label(w)} ({w}):\n{before_after(w)}" for w in workdirs]
    parts.append(f"curves: {plot_curves(workdirs, out)}")
    if critic is not None:
        parts.append(critic_summary(critic))
    return "\n".join(parts)
