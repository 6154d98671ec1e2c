"""The critique gate (``python -m critique_jax.evaluate --critique_gate=plan,rule_step,...``): before a
critique type enters an RL sweep, its refinements of held-out failed responses must succeed at
least :data:`GATE_RATIO` times as often as the policy's own pass@1 on those prompts.

Per type, :func:`~critique_jax.critique.loop.evaluate_refinement` on the evaluation's problems
(``--split``, ``--n_problems``): ``G - n_refine`` samples per problem (the same samples for every type: same seeds),
each failed one critiqued and refined once. The ``resample`` type (a fresh sample instead of a
refinement) is the gate's own check: its ratio should be near 1.

Written into the output folder: ``gate.json`` (one row per type) and ``gate.md``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from critique_jax.critique.feedback import PLAN_TYPES, RULE_TYPES
from critique_jax.critique.loop import RefineSettings, evaluate_refinement
from critique_jax.critique.sources import CritiqueSource, GeneratedSource, ResampleSource, RuleSource
from critique_jax.runs.run import Run, prompt_buckets
from critique_jax.tasks import Problem

GATE_RATIO = 2.0
GATE_TYPES = RULE_TYPES + ("self", "resample")
GATE_JSON, GATE_MD = "gate.json", "gate.md"


def gate_source(run: Run, kind: str) -> CritiqueSource:
    """The critique source of ``kind`` for this run's task and ``critique.format``; ``model``
    critiques need a trained critic and are not gated here (a one-line error)."""
    c, task = run.config.critique, run.task
    if kind not in GATE_TYPES:
        raise ValueError(f"--critique_gate: {kind!r} is not one of {list(GATE_TYPES)}")
    if kind == "resample":
        return ResampleSource()
    if kind in PLAN_TYPES and not task.has_plan_checker:
        raise ValueError(f"--critique_gate: {kind!r} needs a task that finds dead ends; {task.name!r} does not")
    if kind == "self":
        return GeneratedSource(kind, task, c.format, tuple(c.prompt_buckets), None)
    return RuleSource(kind, task, c.format)


def critique_gate(run: Run, params: Any, kinds: Sequence[str], problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """One row per critique type on ``problems`` (held-out ones: the evaluation's
    :func:`~critique_jax.runs.evaluation_run.eval_problems`): ``type``, ``n_failed`` (failed responses),
    ``refine_success`` (their refinements' success rate), ``pass1`` (the policy's own pass@1 on
    their prompts, leave-one-out), ``ratio`` and ``passed`` (ratio >= :data:`GATE_RATIO`)."""
    buckets = prompt_buckets(run.config)
    if max(run.config.critique.refine_buckets) not in buckets:
        raise ValueError("--critique_gate: the run's model was not sized for refinement prompts (critique.type 'none' "
                         "and critique.sft_refine_every 0): gate a policy trained with refinement-format SFT")
    settings = RefineSettings.from_config(run.config)
    rows = []
    for kind in kinds:
        m = evaluate_refinement(run, params, gate_source(run, kind), settings, problems, 0)
        success, pass1 = m["eval/critique/refine_success_on_failed"], m["eval/critique/pass1_on_failed_prompts"]
        ratio = success / pass1 if pass1 > 0 else float("inf") if success > 0 else float("nan")
        rows.append(dict(type=kind, n_problems=len(problems), n_failed=int(m["eval/critique/n_failed"]),
                         initial_reward=m["eval/critique/initial_reward"], refine_success=success, pass1=pass1,
                         ratio=ratio, passed=bool(ratio >= GATE_RATIO)))
    return rows


def gate_markdown(rows: Sequence[dict[str, Any]], source: str) -> str:
    lines = [f"# Critique gate: {source}", "",
             f"Refinement success on failed held-out responses vs the policy's own pass@1 on their prompts; a type "
             f"passes at ratio >= {GATE_RATIO:g}.", "",
             "| type | failed responses | refinement success | own pass@1 | ratio | passes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['type']} | {r['n_failed']} | {r['refine_success']:.3f} | {r['pass1']:.3f} | {r['ratio']:.2f} | "
              f"{'yes' if r['passed'] else 'no'} |" for r in rows]
    return "\n".join(lines) + "\n"


def write_gate(out: str, rows: Sequence[dict[str, Any]], source: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, GATE_JSON), "w") as f:
        json.dump({"source": source, "ratio_needed": GATE_RATIO, "rows": list(rows)}, f, indent=1)
    with open(os.path.join(out, GATE_MD), "w") as f:
        f.write(gate_markdown(rows, source))
