"""The verifiable-task interface and the task registry.
Over 300 lines: the interface is one class, each optional method (step notes, dead ends, hints)
next to the contract a task implementing it must keep.

A task turns a seeded RNG into problems, writes reference solutions in several styles,
verifies answers (reward 0/1), finds the first wrong step of a solution (the basis of
step-level critiques) and plants errors with a known first-wrong step.

Solution text format, shared by every task so prompts, critiques and step checkers
agree: one reasoning step per line, then a final line ``answer: <value>``::

    8 * 3 = 24
    24 - 4 = 20
    answer: 20

Steps are numbered from 0 in code and from 1 in critique text.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np

ANSWER_PREFIX = "answer:"
SPLIT_IDS = {"train": 0, "test": 1, "validation": 2}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem instance.

    uid: deterministic id ``<task>/<split>/<seed>/<index>``.
    question: the text shown to the model.
    answer: canonical final answer as text (what a verified response's answer equals).
    difficulty: level in ``task.difficulties``.
    meta: task-specific JSON-serialisable data (e.g. the numbers and target of countdown).
    """

    uid: str
    question: str
    answer: str
    difficulty: int
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class StepCheck:
    """Result of checking a solution step by step.

    first_wrong: 0-based index of the first wrong step (the answer line counts as the step
      after the last reasoning line), or None if every step and the answer are right.
    kind: ``"ok"`` or a short error kind, e.g. ``"arithmetic"``, ``"unavailable_number"``,
      ``"unparsable"``, ``"wrong_answer"``, ``"missing_answer"``, ``"incomplete"``.
    n_steps: number of steps found (reasoning lines + the answer line if present).
    """

    first_wrong: int | None
    kind: str
    n_steps: int

    @property
    def ok(self) -> bool:
        return self.first_wrong is None


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A plausible wrong solution with a known first wrong step (0-based) and error kind."""

    solution: str
    step: int
    kind: str


def split_steps(text: str) -> tuple[list[str], str | None]:
    """Splits solution text into reasoning lines and the answer value (None if absent).

    Blank lines are dropped; anything after the first answer line is ignored.
    """
    steps: list[str] = []
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.lower().startswith(ANSWER_PREFIX):
            return steps, line[len(ANSWER_PREFIX):].strip()
        steps.append(line)
    return steps, None


def solution_lines(text_or_lines: str | Sequence[str]) -> list[str]:
    """The reasoning lines of a solution: :func:`split_steps` of a text (answer line dropped),
    or a sequence of lines as given."""
    if isinstance(text_or_lines, str):
        return split_steps(text_or_lines)[0]
    return list(text_or_lines)


def join_steps(steps: Sequence[str], answer: object) -> str:
    """Solution text from reasoning lines and an answer (the inverse of :func:`split_steps`)."""
    return "\n".join([*steps, f"{ANSWER_PREFIX} {answer}"])


def extract_answer(text: str) -> str | None:
    """The value on the first ``answer:`` line, or None."""
    return split_steps(text)[1]


_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?$")


def normalize_number(text: str | None) -> str | None:
    """Canonical form of a numeric answer: strips ``,``/``$``/spaces and trailing ``.0``.

    Returns None when ``text`` is not a number.
    """
    if text is None:
        return None
    t = text.strip().replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not _NUMBER.match(t):
        return None
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    t = t.lstrip("+")
    if t in ("-0", ""):
        t = "0"
    return t


class Task(abc.ABC):
    """A verifiable reasoning task. Subclasses are registered with :func:`register_task`."""

    name: str = ""
    #: Difficulty levels this task supports, easiest first.
    difficulties: tuple[int, ...] = ()
    #: Default difficulty (the level experiments use unless told otherwise).
    default_difficulty: int = 0
    #: The rules and the solution format in one paragraph, for prompts that state them.
    instructions: str = ""
    #: False for tasks whose problems come from files (``task.train_files``/``test_files``, read by
    #: :mod:`critique_jax.tasks.files` through :meth:`problem_from_record`): ``generate`` raises
    #: NotImplementedError.
    generative: bool = True
    #: File-backed tasks: the fields every row of a file must have.
    record_fields: tuple[str, ...] = ()
    #: True when ``check_steps`` follows every step (so its critique is an oracle, the
    #: ``rule_step`` critique type); False when it checks only what free text makes checkable.
    exact_step_checker: bool = True
    #: The reward is a function of the answer alone (maj@n means something); False: steps decide.
    answer_graded: bool = True

    @abc.abstractmethod
    def generate(self, rng: np.random.Generator, difficulty: int) -> Problem:
        """A random problem at ``difficulty`` (uid left empty; see :func:`make_problem`)."""

    @abc.abstractmethod
    def solutions(self, problem: Problem, rng: np.random.Generator, n: int) -> list[str]:
        """Up to ``n`` distinct correct reference solutions in varied styles/orders."""

    @abc.abstractmethod
    def check_steps(self, problem: Problem, text: str) -> StepCheck:
        """Finds the first wrong step of ``text`` (see :class:`StepCheck`)."""

    @abc.abstractmethod
    def perturb(self, problem: Problem, solution: str, rng: np.random.Generator) -> Perturbation:
        """Plants one plausible error in a correct ``solution``; the result must fail."""

    def problem_from_record(self, record: Mapping[str, Any], where: str, uid: str) -> Problem | None:
        """File-backed tasks: the problem of one file row (a dict with :attr:`record_fields`,
        checked by the caller), or None for a row the task skips; a malformed row raises
        ValueError starting with ``where`` (``<file>:<line>`` or ``<file>: row <i>``)."""
        raise NotImplementedError(f"task {self.name!r} generates its problems; it reads no files")

    @property
    def has_step_notes(self) -> bool:
        """Whether the task writes :meth:`step_notes` (the worked critique format needs them)."""
        return type(self).step_notes is not Task.step_notes

    def step_notes(self, problem: Problem, text: str) -> list[str]:
        """What a careful checker writes down on each step before deciding on it: one note per
        step up to and including the first wrong one (every step when none is), the answer
        line included, ``""`` for a step it cannot read. Notes restate the step with the true
        values (and whatever the next decisions compare against) and never contain the words
        ``correct``/``wrong``; they are the worked critique format of
        :func:`critique_jax.text.templates.format_worked_critique`, so
        ``len(step_notes(p, t))`` equals the number of steps that critique lists for
        ``check_steps(p, t)``."""
        raise NotImplementedError(f"task {self.name!r} does not implement step_notes (the worked critique format)")

    @property
    def has_plan_checker(self) -> bool:
        """Whether the task finds dead ends (:meth:`dead_end`; the ``plan`` critique type)."""
        return type(self).dead_end is not Task.dead_end

    def dead_end(self, problem: Problem, text: str) -> tuple[int, str] | None:
        """The first step (0-based) of ``text`` after which the problem can no longer be solved
        from what is left, if every step up to it is right, and a one-line note saying so
        (without the words ``correct``/``wrong``); None when no right step leads into a dead end."""
        raise NotImplementedError(f"task {self.name!r} does not find dead ends (the plan critique)")

    def hinted_steps(self, problem: Problem, text: str, step: int) -> list[str] | None:
        """Right step lines that solve the problem from what is left before step ``step`` (0-based)
        of ``text`` (its steps before that one replayed), the same for the same inputs; None when
        the problem cannot be solved from there. The ``plan_hint`` critique names the first line."""
        raise NotImplementedError(f"task {self.name!r} does not find dead ends (the plan critique)")

    def plant_dead_end(self, problem: Problem, rng: np.random.Generator) -> Perturbation | None:
        """A wrong solution whose first step is right but a dead end (:meth:`dead_end` at step 0),
        or None when every first step keeps the problem solvable."""
        raise NotImplementedError(f"task {self.name!r} does not find dead ends (the plan critique)")

    def solution_key(self, text_or_lines: str | Sequence[str]) -> Hashable:
        """What makes two correct solutions the same solution (the distinct-solutions count of
        :func:`critique_jax.analysis.diversity.distinct_correct_solutions`), from a solution
        text or its reasoning lines (:func:`solution_lines`). Default, for free text: the
        lines, lower-cased with whitespace collapsed."""
        return tuple(" ".join(line.lower().split()) for line in solution_lines(text_or_lines))

    def extract_answer(self, text: str) -> str | None:
        return extract_answer(text)

    def format_ok(self, text: str) -> bool:
        """True when the text has at least one step and an answer line."""
        steps, answer = split_steps(text)
        return answer is not None and len(steps) > 0

    def reward(self, problem: Problem, text: str) -> float:
        """1.0 when the extracted answer equals the problem's answer, else 0.0."""
        got = normalize_number(self.extract_answer(text))
        return float(got is not None and got == normalize_number(problem.answer))

    def rewards(self, problems: Sequence[Problem], texts: Sequence[str]) -> np.ndarray:
        """:meth:`reward` of each (problem, text) pair: float32 ``[len(texts)]``. Tasks with a slow
        verifier override this to check the batch in parallel."""
        if len(problems) != len(texts):
            raise ValueError(f"rewards: {len(problems)} problems but {len(texts)} texts")
        return np.asarray([self.reward(p, t) for p, t in zip(problems, texts)], dtype=np.float32)

    def check_difficulty(self, difficulty: int) -> None:
        if difficulty not in self.difficulties:
            raise ValueError(
                f"task {self.name!r}: difficulty {difficulty!r} is not one of {self.difficulties}"
            )


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: ``@register_task("countdown")``."""

    def wrap(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name lists the registered ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered tasks: {', '.join(task_names())}")
    return _REGISTRY[name]()


def make_problem(task: Task, split: str, seed: int, index: int, difficulty: int) -> Problem:
    """Problem ``index`` of ``split``: a pure function of (task, split, seed, index, difficulty).

    Each problem has its own RNG stream, so a problem does not depend on how many were drawn
    before it.
    """
    if split not in SPLIT_IDS:
        raise ValueError(f"split {split!r}: expected one of {sorted(SPLIT_IDS)}")
    task.check_difficulty(difficulty)
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, difficulty])
    p = task.generate(rng, difficulty)
    return dataclasses.replace(p, uid=f"{task.name}/{split}/{seed}/{index}", difficulty=difficulty)


def iter_problems(
    task: Task,
    split: str,
    seed: int,
    n: int,
    difficulties: Sequence[int] | None = None,
    exclude_questions: set[str] | frozenset[str] = frozenset(),
    max_skips_in_a_row: int = 10_000,
) -> Iterator[Problem]:
    """``n`` problems cycling through ``difficulties`` (default: all), skipping excluded questions.

    ``exclude_questions`` keeps the train split disjoint from the test split. Raises
    ValueError after ``max_skips_in_a_row`` excluded questions in a row (the levels' question
    space is nearly exhausted by the exclusions).
    """
    levels = list(task.difficulties if difficulties is None else difficulties)
    if not levels:
        raise ValueError(f"task {task.name!r}: empty difficulty list")
    index, made, skipped = 0, 0, 0
    while made < n:
        p = make_problem(task, split, seed, index, levels[index % len(levels)])
        index += 1
        if p.question in exclude_questions:
            skipped += 1
            if skipped >= max_skips_in_a_row:
                raise ValueError(
                    f"task {task.name!r}, split {split!r}, levels {levels}: {skipped} excluded "
                    f"questions in a row after {made} of {n} problems; the question space is "
                    "(nearly) exhausted by exclude_questions"
                )
            continue
        skipped = 0
        made += 1
        yield p
