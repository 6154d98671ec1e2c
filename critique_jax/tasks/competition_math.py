"""``math``: competition mathematics (MATH, MATH-500) read from JSONL or Parquet files.

A row is ``{"problem", "solution", "level", "type"}`` (MATH; ``level`` like ``"Level 3"``) or
``{"problem", "solution", "answer", "subject", "level"}`` (MATH-500; ``level`` an integer). The
reference answer is the row's ``answer`` when it has one, else the last ``\\boxed{...}`` of the
solution; the difficulty is the level, 1..5 (a row whose level is ``"Level ?"``, as a few MATH
train rows have, is skipped and counted). The reference solution, for SFT, is the solution text
in the shared format: its non-empty lines, then ``answer: <reference answer>``.

A response's answer is the value of its ``answer:`` line (unwrapped when boxed), else the
last ``\\boxed{...}`` of the text (what instruct models write). It earns reward 1 when it is
equivalent to the reference (:mod:`critique_jax.tasks.verifier`: normalised strings, then
``math-verify``, with a timeout); :meth:`CompetitionMath.rewards` checks a batch in parallel.

No step is checkable in free-form mathematics: :meth:`CompetitionMath.check_steps` judges the
final answer only (``exact_step_checker`` is False; kinds ``missing_answer``, ``wrong_answer``)
and :meth:`CompetitionMath.perturb` plants a wrong final answer.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from critique_jax.tasks import verifier
from critique_jax.tasks.base import (
    Perturbation,
    Problem,
    StepCheck,
    Task,
    join_steps,
    register_task,
    split_steps,
)
from critique_jax.tasks.latex import last_boxed, normalize_latex

LEVELS = (1, 2, 3, 4, 5)
_LEVEL = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def parse_level(value: object, where: str) -> int | None:
    """The level of a row's ``level`` (``"Level 3"`` or ``3``); None for an unknown level
    (``"Level ?"``); ValueError naming ``where`` otherwise."""
    text = str(value)
    m = _LEVEL.match(text)
    if m and int(m.group(1)) in LEVELS:
        return int(m.group(1))
    if "?" in text:
        return None
    raise ValueError(f"{where}: level {value!r}: expected 'Level 1'..'Level 5' or an integer 1..5")


def response_answer(text: str) -> str | None:
    """The final answer of a response: its ``answer:`` line (boxed or not), else its last box."""
    line = split_steps(text)[1]
    if line is not None:
        boxed = last_boxed(line)
        return boxed if boxed is not None else (line.strip() or None)
    return last_boxed(text)


def _candidates(answer: str, rng: np.random.Generator) -> list[str]:
    """Plausible wrong answers, likeliest first: the number shifted, another choice letter,
    the last integer in the expression shifted, and two that no answer equals."""
    deltas = [int(d) for d in rng.permutation([1, -1, 2, 10])]
    norm = normalize_latex(answer) or ""
    out = []
    if re.fullmatch(r"-?\d+", norm):
        out += [str(int(norm) + d) for d in deltas]
    if re.fullmatch(r"[A-E]", norm):
        out += [c for c in rng.permutation(list("ABCDE")) if c != norm]
    m = _LAST_INT.search(answer)
    if m:
        out += [answer[: m.start()] + str(max(int(m.group(1)) + d, 0)) + answer[m.end() :] for d in deltas]
    return out + [f"-({answer})+1", "\\text{none of these}"]


@register_task("math")
class CompetitionMath(Task):
    """MATH-format problems from files (see the module docstring)."""

    difficulties = LEVELS
    default_difficulty = 3
    generative = False
    exact_step_checker = False  # only the final answer is checked
    record_fields = ("problem", "solution", "level")
    instructions = (
        "Solve the problem step by step, one step per line. End with the line "
        "'answer: <final answer>', the answer in LaTeX (for example answer: \\frac{1}{2})."
    )

    def generate(self, rng: np.random.Generator, difficulty: int) -> Problem:
        raise NotImplementedError("math cannot generate problems: runs read them from task.train_files/test_files")

    def problem_from_record(self, record: Mapping[str, Any], where: str, uid: str) -> Problem | None:
        level = parse_level(record["level"], where)
        if level is None:
            return None
        solution = str(record["solution"])
        given = record.get("answer")
        answer = str(given).strip() if isinstance(given, (str, int)) and str(given).strip() else last_boxed(solution)
        if not answer:
            raise ValueError(f"{where}: expected the solution to contain \\boxed{{<answer>}} (or an 'answer' field)")
        answer = " ".join(answer.split())
        lines = [line.strip() for line in solution.splitlines() if line.strip()]
        meta = {"solution": join_steps(lines, answer), "type": str(record.get("type") or record.get("subject") or "")}
        if record.get("unique_id"):
            meta["id"] = str(record["unique_id"])
        return Problem(uid, str(record["problem"]).strip(), answer, level, meta)

    def solutions(self, problem: Problem, rng: np.random.Generator, n: int) -> list[str]:
        """The dataset's solution (MATH has one reference solution per problem)."""
        return [problem.meta["solution"]][:n]

    def extract_answer(self, text: str) -> str | None:
        return response_answer(text)

    def format_ok(self, text: str) -> bool:
        """At least one reasoning line and a final answer (an ``answer:`` line or a box)."""
        return len(split_steps(text)[0]) > 0 and self.extract_answer(text) is not None

    def reward(self, problem: Problem, text: str) -> float:
        return float(verifier.equivalent(problem.answer, self.extract_answer(text)))

    def rewards(self, problems: Sequence[Problem], texts: Sequence[str]) -> np.ndarray:
        """Rewards of a batch, verified in parallel: float32 ``[len(texts)]``."""
        if len(problems) != len(texts):
            raise ValueError(f"rewards: {len(problems)} problems but {len(texts)} texts")
        got = verifier.equivalent_many([p.answer for p in problems], [self.extract_answer(t) for t in texts])
        return got.astype(np.float32)

    def check_steps(self, problem: Problem, text: str) -> StepCheck:
        """The final answer only: the answer line (or the last line with a box) is the step."""
        lines, answer_line = split_steps(text)
        n_steps = len(lines) + (answer_line is not None)
        got = self.extract_answer(text)
        step = len(lines)
        if answer_line is None and got is not None:
            step = max((i for i, line in enumerate(lines) if "\\boxed" in line or "\\fbox" in line), default=step)
        if got is None:
            return StepCheck(len(lines), "missing_answer", n_steps)
        if not verifier.equivalent(problem.answer, got):
            return StepCheck(step, "wrong_answer", n_steps)
        return StepCheck(None, "ok", n_steps)

    def perturb(self, problem: Problem, solution: str, rng: np.random.Generator) -> Perturbation:
        """A wrong final answer, written on the answer line and in the solution's last box.
        Checked to fail at the answer line."""
        lines, _ = split_steps(solution)
        wrong = next(c for c in _candidates(problem.answer, rng) if not verifier.equivalent(problem.answer, c))
        for i in reversed(range(len(lines))):
            boxed = last_boxed(lines[i])
            if boxed is not None and boxed in lines[i]:
                head, sep, tail = lines[i].rpartition(boxed)
                lines = lines[:i] + [head + wrong + tail] + lines[i + 1 :]
                break
        return Perturbation(join_steps(lines, wrong), len(lines), "wrong_answer")
