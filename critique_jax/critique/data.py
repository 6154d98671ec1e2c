"""Supervised data for the step-level critique model (AutoMathCritique format, arXiv:2411.16579).

A :class:`CritiqueExample` is a (problem, solution) pair labelled by the task's step checker;
its prompt is :func:`~critique_jax.text.templates.critique_prompt` and its target, in one
of :data:`TARGET_FORMATS`, lists every step ``correct`` then ``verdict: correct`` for a right
solution, the steps up to the first wrong one then ``verdict: wrong`` for a wrong one:

* ``plain``: :func:`~critique_jax.text.templates.format_step_critique` of the check;
* ``worked``: :func:`~critique_jax.text.templates.format_worked_critique`, each step's
  decision preceded by the task's note on it (:meth:`~critique_jax.tasks.base.Task.step_notes`:
  the step recomputed, what is left), so the model computes before it decides.

Example (countdown, a planted error)::

    prompt: "<question>numbers: 3 4 9, target: 21\\n<solution>3 * 4 = 12\\n9 + 9 = 18\\n"
            "answer: 18\\n<critique>"
    plain:  "step 1: correct\\nstep 2: wrong, unavailable number\\nverdict: wrong"
    worked: "step 1: 3 * 4 is 12 vs 12, left 9 12, correct\\nstep 2: 9 + 9 is 18 vs 18, 9 9 not in 9 12, "
            "wrong, unavailable number\\nverdict: wrong"
    meta:   {"uid": "countdown/train/0/7", "source": "perturbed", "verdict": False,
             "first_wrong": 1, "kind": "unavailable_number", "n_steps": 3}

Sources: ``reference`` (a correct reference solution), ``perturbed`` (``task.perturb`` of a
reference solution: one planted error at a known step) and ``policy`` (a sampled response,
labelled by the checker; see :func:`policy_examples`).

Everything is deterministic per seed: a problem's examples are drawn from the RNG
``default_rng([seed, crc32(uid)])``, so they depend neither on the order of the problems nor
on which other problems are in the set.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import numpy as np

from critique_jax.data import Example
from critique_jax.tasks import Problem, StepCheck, Task
from critique_jax.text import Tokenizer, critique_prompt, format_step_critique
from critique_jax.text.templates import format_worked_critique

SOURCES = ("reference", "perturbed", "policy")
TARGET_FORMATS = ("plain", "worked")


@dataclasses.dataclass(frozen=True)
class CritiqueExample:
    """A solution to critique and the checker's verdict on it (the critique target).

    notes: the task's step notes (worked target), or None (plain target).
    """

    problem: Problem
    solution: str
    check: StepCheck
    source: str  # one of SOURCES
    notes: tuple[str, ...] | None = None

    @property
    def prompt(self) -> str:
        return critique_prompt(self.problem.question, self.solution)

    @property
    def target(self) -> str:
        if self.notes is None:
            return format_step_critique(self.check)
        return format_worked_critique(self.check, self.notes)

    @property
    def meta(self) -> dict:
        """JSON-serialisable labels: uid, source, verdict, first_wrong, kind, n_steps."""
        c = self.check
        return dict(uid=self.problem.uid, source=self.source, verdict=c.ok, first_wrong=c.first_wrong,
                    kind=c.kind, n_steps=c.n_steps)


def make_example(task: Task, problem: Problem, solution: str, source: str, target_format: str = "plain",
                 check: StepCheck | None = None) -> CritiqueExample:
    """``solution`` checked by the task (unless ``check`` is given) with the target of
    ``target_format`` (one of :data:`TARGET_FORMATS`)."""
    if target_format not in TARGET_FORMATS:
        raise ValueError(f"target_format={target_format!r}: expected one of {TARGET_FORMATS}")
    check = task.check_steps(problem, solution) if check is None else check
    notes = tuple(task.step_notes(problem, solution)) if target_format == "worked" else None
    return CritiqueExample(problem, solution, check, source, notes)


def _problem_rng(seed: int, problem: Problem) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(problem.uid.encode())])


def reference_examples(task: Task, example: Example, rng: np.random.Generator, *, wrong_per_solution: int = 1,
                       max_solutions: int | None = None, target_format: str = "plain") -> list[CritiqueExample]:
    """Each of the first ``max_solutions`` reference solutions (all by default) as a correct
    example, and ``wrong_per_solution`` planted errors of each as wrong examples.

    A reference solution the checker rejects is a broken dataset: ValueError naming the uid.
    """
    p = example.problem
    out: list[CritiqueExample] = []
    for sol in example.solutions[:max_solutions]:
        check = task.check_steps(p, sol)
        if not check.ok:
            raise ValueError(f"{p.uid}: reference solution {sol!r} fails the step checker ({check.kind} at "
                             f"step {check.first_wrong}); rebuild the dataset")
        out.append(make_example(task, p, sol, "reference", target_format, check))
        for _ in range(wrong_per_solution):
            out.append(make_example(task, p, task.perturb(p, sol, rng).solution, "perturbed", target_format))
    return out


def policy_examples(task: Task, samples: Sequence[tuple[Problem, str]],
                    target_format: str = "plain") -> list[CritiqueExample]:
    """Sampled ``(problem, response text)`` pairs labelled by the step checker.

    A pair is kept only when its label is known: the checker's verdict agrees with the
    task's verifier (``check.ok == (reward == 1)``). The two can disagree on tasks whose
    checker cannot follow every step (gsm8k: a slip in free text with a right final answer),
    and such a pair has no trustworthy target. On countdown they always agree.
    """
    out = []
    for problem, text in samples:
        check = task.check_steps(problem, text)
        if check.ok == (task.reward(problem, text) == 1.0):
            out.append(make_example(task, problem, text, "policy", target_format, check))
    return out


def balance(examples: Sequence[CritiqueExample], wrong_fraction: float,
            rng: np.random.Generator) -> list[CritiqueExample]:
    """The largest subset whose share of wrong examples is ``wrong_fraction`` (up to rounding),
    in the input order: one class is kept whole, the other subsampled uniformly.

    ValueError when a class the fraction needs is empty.
    """
    if not 0.0 <= wrong_fraction <= 1.0:
        raise ValueError(f"wrong_fraction={wrong_fraction}: expected a value in [0, 1]")
    wrong = [i for i, e in enumerate(examples) if not e.check.ok]
    right = [i for i, e in enumerate(examples) if e.check.ok]
    needs_wrong, needs_right = wrong_fraction > 0.0, wrong_fraction < 1.0
    if (needs_wrong and not wrong) or (needs_right and not right):
        raise ValueError(f"cannot balance {len(right)} correct and {len(wrong)} wrong examples to "
                         f"wrong_fraction={wrong_fraction}: a class is empty")
    if not needs_wrong:
        keep = right
    elif not needs_right:
        keep = wrong
    elif (n_wrong := round(len(right) * wrong_fraction / (1 - wrong_fraction))) <= len(wrong):
        keep = right + list(rng.choice(wrong, n_wrong, replace=False))
    else:
        keep = wrong + list(rng.choice(right, round(len(wrong) * (1 - wrong_fraction) / wrong_fraction),
                                       replace=False))
    return [examples[i] for i in sorted(int(i) for i in keep)]


def build_examples(task: Task, examples: Sequence[Example], seed: int, *, wrong_fraction: float = 0.5,
                   wrong_per_solution: int = 1, max_solutions: int | None = None,
                   policy_samples: Sequence[tuple[Problem, str]] = (),
                   target_format: str = "plain") -> list[CritiqueExample]:
    """Critique examples of ``examples``' problems (see :func:`reference_examples`) and of
    ``policy_samples`` (see :func:`policy_examples`), balanced to ``wrong_fraction``, with
    targets in ``target_format``.

    Deterministic per ``seed`` (module docstring); the order follows ``examples`` then
    ``policy_samples``.
    """
    if wrong_per_solution < 1:
        raise ValueError(f"wrong_per_solution={wrong_per_solution}: expected >= 1")
    out: list[CritiqueExample] = []
    for ex in examples:
        out += reference_examples(task, ex, _problem_rng(seed, ex.problem), wrong_per_solution=wrong_per_solution,
                                  max_solutions=max_solutions, target_format=target_format)
    out += policy_examples(task, policy_samples, target_format)
    return balance(out, wrong_fraction, np.random.default_rng([seed, len(out)]))


def triples(examples: Sequence[CritiqueExample]) -> list[tuple[str, str, dict]]:
    """``(prompt text, target text, meta)`` per example (the inputs of ``rollout.pack_pairs``)."""
    return [(e.prompt, e.target, e.meta) for e in examples]


def token_lengths(tok: Tokenizer, examples: Sequence[CritiqueExample]) -> tuple[np.ndarray, np.ndarray]:
    """Prompt lengths and target lengths (with the end token) in tokens: two [N] int arrays."""
    if not examples:
        raise ValueError("token_lengths: no examples")
    return (np.asarray([len(tok.encode_prompt(e.prompt)) for e in examples]),
            np.asarray([len(tok.encode(e.target, eos=True)) for e in examples]))
