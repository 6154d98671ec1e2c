"""Run summaries from ``metrics.jsonl``: a before/after table and entropy/reward curves.

    python -m critique_jax.analysis.report runs/quickstart

prints the evaluation at the start of RL (after SFT) next to the last evaluation, and writes
``<run>/curves.png`` (train entropy, train reward and eval pass@1 against step). With a second
directory (a ``train_critic`` run) it also prints the critic's last held-out evaluation.
"""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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


def plot_curves(workdir: str, out: str | None = None) -> str:
    """Train entropy, train reward and eval pass@1 vs step; returns the PNG path."""
    rows = read_metrics(workdir)
    train = [r for r in rows if "train/entropy" in r]
    evals = eval_rows(rows)
    if not train:
        raise ValueError(f"{workdir}/metrics.jsonl has no RL steps (train/entropy) to plot")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["train/entropy"] for r in train], color="tab:purple")
    axes[0].set(xlabel="step", ylabel="mean token entropy (nats)", title="policy entropy (training rollouts)")
    axes[1].plot(steps, [r["train/reward"] for r in train], color="tab:green", alpha=0.6, label="train reward")
    axes[1].plot([r["step"] for r in evals], [r["eval/pass@1"] for r in evals], "o-", color="tab:blue",
                 label="eval pass@1")
    axes[1].set(xlabel="step", ylabel="accuracy", title="reward and held-out pass@1", ylim=(0, 1))
    axes[1].legend(loc="best")
    fig.suptitle(os.path.basename(os.path.normpath(workdir)))
    fig.tight_layout()
    out = out or os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
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


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit("usage: python -m critique_jax.analysis.report RUN_DIR [CRITIC_RUN_DIR]")
    print(before_after(argv[1]))
    print(f"curves: {plot_curves(argv[1])}")
    if len(argv) == 3:
        print(critic_summary(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
