"""Critique sources: who writes the critiques the policy refines from. One is built per run,
at set-up (:func:`critique_source`), and the RL and self-training loops call its one method,
``write``; the checks of a critique type live with its source (:func:`check_config`).

* :class:`RuleSource` (``indicative``, ``ground_truth``, ``rule_step``, ``plan``, ``plan_hint``): built on the host from
  the task's verifier and step checker (:mod:`critique_jax.critique.feedback`);
* :class:`GeneratedSource` (``self``, ``model``): greedy generation from the critique prompt, by
  the policy itself or by a trained critique model (:class:`CritiqueModel`), condensed to the
  policy's ``critique.format`` before the policy reads it;
* :class:`ResampleSource` (``resample``): no critique, a fresh sample instead of a refinement.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np
from flax import nnx

from critique_jax.critique.feedback import CRITIQUE_TYPES, PLAN_TYPES, RULE_TYPES, rule_critiques, score_critiques
from critique_jax.critique.pool import fits
from critique_jax.perf import timed
from critique_jax.rl import rollout as rollout_lib
from critique_jax.sampling import SamplerConfig
from critique_jax.tasks import Problem, Task, get_task
from critique_jax.text.templates import POLICY_FORMATS, condense_critique


@dataclasses.dataclass(frozen=True)
class CritiqueModel:
    """A loaded critique model: ``model`` = (graphdef, params) on the run's mesh, and the sampler
    its critiques are generated with (as many new tokens as its training targets had)."""

    model: tuple[nnx.GraphDef, nnx.State]
    sampler: SamplerConfig


@dataclasses.dataclass(frozen=True)
class Written:
    """Critiques of the responses ``index`` (into the responses asked for; all of them unless
    over-long prompts were dropped), as the policy reads them, and metrics of writing them."""

    index: np.ndarray
    texts: list[str]
    metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class RuleSource:
    """``indicative``, ``ground_truth``, ``rule_step``, ``plan`` or ``plan_hint`` critiques (``fmt``: the policy
    format)."""

    kind: str
    task: Task
    fmt: str

    def write(self, run: rollout_lib.Sampling, params: Any, owners: Sequence[Problem], responses: Sequence[str],
              seeds: Callable[[int], int], *, chunk: int | None = None, times: dict[str, float] | None = None,
              drop_long: bool = False) -> Written:
        """Critiques of ``responses`` (response ``i`` answers ``owners[i]``); time spent is added
        to ``times["perf/score_s"]`` and reported as ``perf/critique_s``. The other arguments
        are those of :meth:`GeneratedSource.write` (rules need no sampling)."""
        metrics: dict[str, float] = {}
        with timed(times if times is not None else {}, "perf/score_s"), timed(metrics, "perf/critique_s"):
            texts = rule_critiques(self.kind, self.task, owners, responses, 1, self.fmt)
        return Written(np.arange(len(responses)), texts, metrics)


@dataclasses.dataclass(frozen=True)
class GeneratedSource:
    """``self`` (``critic`` None: the policy writes its own critiques) or ``model`` critiques:
    greedy, from critique prompts in ``buckets``, condensed to ``fmt``."""

    kind: str
    task: Task
    fmt: str
    buckets: tuple[int, ...]
    critic: CritiqueModel | None

    def write(self, run: rollout_lib.Sampling, params: Any, owners: Sequence[Problem], responses: Sequence[str],
              seeds: Callable[[int], int], *, chunk: int | None = None, times: dict[str, float] | None = None,
              drop_long: bool = False) -> Written:
        """Critiques of ``responses`` (response ``i`` answers ``owners[i]``) by the critic, or by
        the policy ``params`` (graph: ``run.graphdef``); ``chunk`` prompts per sampling call
        (default: one call), call ``j`` with seed ``seeds(j)``; ``drop_long``: leave out
        responses whose critique prompt exceeds the largest bucket (else an error). Sampling
        time goes to ``times["perf/sample_s"]``; metrics: ``perf/critique_s``,
        ``perf/critique_tokens_per_s`` and the critiques' accuracy against the step checker
        (``critique/verdict_acc``, ``critique/first_wrong_acc``, ``critique/parse_fail``)."""
        model, sampler = (run.graphdef, params), None
        if self.critic is not None:
            model, sampler = self.critic.model, self.critic.sampler
        prompts = [run.prompts.critique(p.question, r) for p, r in zip(owners, responses)]
        index = np.flatnonzero(fits(run.tok, prompts, max(self.buckets))) if drop_long else np.arange(len(prompts))
        metrics: dict[str, float] = {}
        if not len(index):
            return Written(index, [], metrics)
        with timed(metrics, "perf/critique_s"):
            gen = rollout_lib.sample_chunked(run, model, [prompts[i] for i in index], self.buckets, 1, 0.0,
                                             chunk or len(index), seeds, sampler, times=times)
        metrics["perf/critique_tokens_per_s"] = gen.n_tokens / max(metrics["perf/critique_s"], 1e-9)
        texts = [condense_critique(t, self.fmt == "explained") for t in gen.texts]
        metrics |= critique_accuracy(self.task, [owners[i] for i in index], [responses[i] for i in index], texts)
        return Written(index, texts, metrics)


@dataclasses.dataclass(frozen=True)
class ResampleSource:
    """``resample``: no critique; :func:`critique_jax.critique.loop.refine` samples the original
    prompt again (the compute-matched control)."""

    kind: str = "resample"


CritiqueSource = RuleSource | GeneratedSource | ResampleSource


def critique_accuracy(task: Task, problems: Sequence[Problem], responses: Sequence[str],
                      critiques: Sequence[str]) -> dict[str, float]:
    """Generated critiques scored against the step checker (see ``score_critiques``)."""
    scores = score_critiques(critiques, [task.check_steps(p, r) for p, r in zip(problems, responses)])
    return {f"critique/{k}": v for k, v in scores.items() if k in ("verdict_acc", "first_wrong_acc", "parse_fail")}


def critique_source(config: ml_collections.ConfigDict, task: Task,
                    critic: CritiqueModel | None = None) -> CritiqueSource | None:
    """The run's source of ``critique.type`` (None for ``none``); ``critic``: the loaded critique
    model, required for ``model``."""
    kind, fmt = config.critique.type, config.critique.format
    if kind == "none":
        return None
    if kind == "resample":
        return ResampleSource()
    if kind in RULE_TYPES:
        return RuleSource(kind, task, fmt)
    if kind == "model" and critic is None:
        raise ValueError("critique.type='model' needs a critique model (critique.critic_from)")
    return GeneratedSource(kind, task, fmt, tuple(config.critique.prompt_buckets), critic if kind == "model" else None)


def check_config(c: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with the ``critique`` section for this task (messages naming the keys; empty: fine)."""
    task = get_task(c.task.name)
    problems = []
    if c.critique.type not in CRITIQUE_TYPES:
        return [f"critique.type={c.critique.type!r}: expected one of {list(CRITIQUE_TYPES)}"]
    if c.critique.type == "model" and not c.critique.critic_from:
        problems.append("critique.type='model' needs critique.critic_from (a train_critic run directory)")
    if c.critique.type == "rule_step" and not task.exact_step_checker:
        problems.append(f"critique.type='rule_step' needs a task whose step checker follows every step; task.name="
                        f"{c.task.name!r} does not check every step: use 'ground_truth', 'indicative' or 'model'")
    if c.critique.type in PLAN_TYPES and not task.has_plan_checker:
        problems.append(f"critique.type={c.critique.type!r} needs a task that finds dead ends; task.name="
                        f"{c.task.name!r} does not: use 'rule_step', 'ground_truth' or 'indicative'")
    if c.critique.format not in POLICY_FORMATS:
        problems.append(f"critique.format={c.critique.format!r}: expected one of {list(POLICY_FORMATS)}")
    elif c.critique.format != "plain" and not task.has_step_notes:
        problems.append(f"critique.format={c.critique.format!r} explains a step with the task's step notes; "
                        f"task.name={c.task.name!r} has none: use 'plain'")
    return problems
