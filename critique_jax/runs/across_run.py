"""The evaluate program across training (``--which=all`` or a list): several policies of one
train run evaluated one after another, each exactly as a single evaluation
(:mod:`critique_jax.runs.evaluation_run`, and the budget sweep of
:mod:`critique_jax.runs.budget_sweep` with ``--budgets``), then one table of them beside the
run's training entropy (:mod:`critique_jax.analysis.across_training`).

Output folder::

    <which>/          one policy's evaluation folder (``sft`` or its checkpoint step), as a single
                      evaluation writes it: resumable the same way, so re-running the command
                      samples only what is missing
    across.json, across.md, across.png   the table of this call's policies, written after them

The policies share one set-up of the run (its sampler compiles once); the run directory is
only read (safe on a live run, whose checkpoints the call lists when it starts).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from critique_jax import storage  # noqa: E402
from critique_jax.analysis.across_training import PolicyEval, across_markdown, across_table  # noqa: E402
from critique_jax.analysis.sweeps import ACROSS_JSON  # noqa: E402
from critique_jax.metrics import METRICS_FILE, read_metrics  # noqa: E402
from critique_jax.runs.budget_sweep import budget_sweep, check_sweep  # noqa: E402
from critique_jax.runs.evaluation_run import EvalSettings, evaluate_policy, write_report  # noqa: E402
from critique_jax.runs.layout import CHECKPOINTS, SFT_POLICY, RunDir  # noqa: E402
from critique_jax.runs.policies import (final_policy, load_policy, load_run_config, saved_policies,  # noqa: E402
                                        starting_policy)
from critique_jax.runs.run import Run  # noqa: E402

ACROSS_MD, ACROSS_PLOT = "across.md", "across.png"


def resolve_which(workdir: str, which: Sequence[str | int]) -> list[str | int]:
    """The policies ``which`` names (``"all"``, ``"final"``, ``"sft"``, steps) as ``"sft"`` and
    checkpoint steps, in order, each once: ``"all"`` is the SFT policy (when the run has one, or
    the policy of its ``init_from`` run it started from: ``policies.starting_policy``) and every
    finished step of ``checkpoints/``, ``"final"`` the latest policy (``policies.final_policy``).
    Errors name ``--which``."""
    flag = f"--which={','.join(map(str, which))}"
    steps = saved_policies(workdir)[1]
    sft_dir, sft = starting_policy(workdir)
    held = f"{RunDir(workdir) / CHECKPOINTS} holds steps {', '.join(map(str, steps)) or 'none'}"
    out: list[str | int] = []
    for w in which:
        if w == "all":
            if sft is None and not steps:
                raise ValueError(f"{flag}: {workdir} holds no finished checkpoint and no {SFT_POLICY}/")
            out += (["sft"] if sft is not None else []) + steps
        elif w == "sft":
            if sft is None:
                raise ValueError(f"{flag}: {sft_dir} holds no finished checkpoint ({held})")
            out.append("sft")
        elif w == "final":
            latest = final_policy(workdir)
            if latest is None:
                raise ValueError(f"{flag}: {workdir} holds no finished checkpoint and no {SFT_POLICY}/")
            out.append(latest)
        elif isinstance(w, int):
            if w not in steps:
                raise ValueError(f"{flag}: no checkpoint at step {w}; {held}")
            out.append(w)
        else:
            raise ValueError(f"{flag}: {w!r} is not 'all', 'final', 'sft' or a step number")
    return list(dict.fromkeys(out))


def evaluate_across(workdir: str, which: Sequence[str | int], out: str, settings: EvalSettings,
                    budgets: Sequence[int] = (), counts: Sequence[int] = (), run: Run | None = None) -> dict[str, Any]:
    """Evaluates the policies ``which`` (from :func:`resolve_which`) of the run ``workdir`` into
    ``out/<which>/`` with ``settings`` (their ``source`` set per policy), each with the budget
    sweep of ``budgets`` and sample ``counts`` when ``budgets`` is not empty, and writes the
    across-training table (module docstring); returns it. ``run``: a set-up of this run to reuse
    (:func:`~critique_jax.runs.policies.load_policy`)."""
    config = load_run_config(workdir)
    path = os.path.join(workdir, METRICS_FILE)
    metrics = read_metrics(path) if storage.path(path).exists() else []  # read first: a bad file fails before sampling
    sft_step = starting_policy(workdir)[1]
    evaluated = []
    for w in which:
        policy = load_policy(workdir, w, run)
        run = policy.run
        if budgets and not evaluated:  # checked before anything is sampled
            check_sweep(run, settings.samples, budgets, counts)
        folder, mine = os.path.join(out, str(w)), dataclasses.replace(settings, source=policy.source)
        rep = evaluate_policy(run, policy.params, folder, mine)
        sweep = budget_sweep(run, policy.params, folder, mine, budgets, counts) if budgets else None
        evaluated.append(PolicyEval(str(w), sft_step if w == "sft" else int(w), rep, sweep))
        del policy  # its parameters freed before the next policy's are restored
    table = across_table(evaluated, metrics, rl_offset=0 if config.init_from else config.sft.steps)
    table |= {"run": str(workdir), "split": settings.split, "n_problems": int(evaluated[0].report["n_problems"])}
    title = f"Across training: {workdir} ({settings.split})"
    write_report(out, (ACROSS_JSON, ACROSS_MD, ACROSS_PLOT), table, across_markdown(table, title),
                 lambda p: plot_across(table, p, title))
    return table


def plot_across(table: dict[str, Any], path: str, title: str) -> None:
    """Against the RL step: training and evaluation token entropy; pass@1, pass@n, maj@n; and
    with a budget sweep, the correctness variance and the answer entropy, one line per budget."""
    rows, n, budgets = table["rows"], table["samples_per_problem"], table["budgets"]
    x = [r["rl_step"] for r in rows]
    fig, axes = plt.subplots(1, 4 if budgets else 2, figsize=(13 if budgets else 7, 3.6), squeeze=False)
    axes = axes[0]
    for key, style, label in (("train_entropy", "o-", "training rollouts"), ("eval_entropy", "s--", "evaluation")):
        axes[0].plot(x, [r[key] for r in rows], style, label=label)
    axes[0].set(xlabel="RL step", ylabel="token entropy (nats)")
    for key, style in (("pass@1", "o-"), (f"pass@{n}", "s--"), (f"maj@{n}", "^:")):
        axes[1].plot(x, [r[key] for r in rows], style, label=key)
    axes[1].set(xlabel="RL step", ylabel="accuracy", ylim=(0, 1))
    for ax, key, label in zip(axes[2:], ("correct_var", "answer_entropy"),
                              ("correctness variance p(1-p)", "answer entropy (nats)")):
        for i, b in enumerate(budgets):
            ax.plot(x, [r[f"{key}/{b}"] for r in rows], "o-", color=f"C{i}", label=f"b={b}")
        ax.set(xlabel="RL step", ylabel=label)
    for ax in axes:
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
