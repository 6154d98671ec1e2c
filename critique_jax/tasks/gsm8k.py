"""``gsm8k``: grade-school math word problems read from GSM8K-format JSONL files.

Each line of a file is ``{"question": "...", "answer": "<rationale>\\n#### 72"}``; the
rationale's calculator annotations (``<<48/2=24>>``) are stripped and its lines become the
reference solution in the shared format::

    Natalia sold 48/2 = 24 clips in May.
    Natalia sold 48+24 = 72 clips altogether in April and May.
    answer: 72

The task is registered (so configs, rewards, critiques and perturbations treat it like the
generated tasks) but it cannot generate problems: ``generative`` is False and
:meth:`GSM8K.generate` raises NotImplementedError. Runs read JSONL or Parquet files named by
``task.train_files``/``task.test_files`` (:mod:`critique_jax.tasks.files`); :func:`load_jsonl`
loads one JSONL file.
A problem's difficulty is the number of rationale lines, clipped to 1..8 (a proxy for the
number of reasoning steps, for per-level solve rates).

Answers compare as normalised numbers (``"1,000"``, ``"$1000"``, ``"1000.0"`` all equal
``1000``); an answer line with words around exactly one number (``answer: 18 dollars``)
counts as that number, one with several numbers does not.

The step checker can only check what free text makes checkable: explicit equations
``<expression> = <number>`` on a line (``48/2 = 24``; a stated value may round the exact
one to its own number of decimals). Kinds: ``arithmetic`` (an equation is wrong),
``missing_answer``, ``unparsable`` (the answer has no single number), ``wrong_answer``.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction
from typing import Any, Iterator, Mapping

import numpy as np

from critique_jax.tasks import expr as ex
from critique_jax.tasks.files import check_record, read_records
from critique_jax.tasks.base import (
    Perturbation,
    Problem,
    StepCheck,
    Task,
    join_steps,
    normalize_number,
    register_task,
    split_steps,
)

FINAL_MARK = "####"
MAX_DIFFICULTY = 8
_ANNOTATION = re.compile(r"<<[^>]*>>")
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_OPERAND = rf"\(*\s*\$?{_NUM}\s*\)*"
_EQUATION = re.compile(
    rf"(?<![\w.,$-])(?P<lhs>{_OPERAND}(?:\s*[-+*/×÷x]\s*{_OPERAND})+)"
    rf"\s*=\s*\$?(?P<rhs>-?{_NUM})(?!\d)"
)
_ANY_NUMBER = re.compile(rf"-?\$?{_NUM}")


def parse_numeric_answer(text: str | None) -> str | None:
    """Normalised number of an answer text: the text itself, or its only number; else None."""
    got = normalize_number(text)
    if got is not None or text is None:
        return got
    found = _ANY_NUMBER.findall(text)
    return normalize_number(found[0]) if len(found) == 1 else None


def _balanced(text: str) -> str:
    """``text`` without unmatched leading ``(`` / trailing ``)``."""
    text = text.strip()
    while text.startswith("(") and text.count("(") > text.count(")"):
        text = text[1:].lstrip()
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1].rstrip()
    return text


def _equation_is_right(lhs: str, rhs: str) -> bool | None:
    """Whether ``lhs = rhs`` holds (rounding to rhs's decimals allowed); None if unreadable."""
    tree = ex.parse(_balanced(lhs.replace("$", "").replace(",", "").replace("x", "*")))
    if tree is None or not ex.is_node(tree):
        return None
    value = ex.evaluate(tree)
    if value is None:
        return None
    stated = Fraction(rhs.replace(",", ""))
    if value == stated:
        return True
    decimals = len(rhs.split(".")[1]) if "." in rhs else 0
    return Fraction(value).denominator != 1 and abs(value - stated) < Fraction(1, 10**decimals)


def equations(line: str) -> Iterator[re.Match]:
    """Explicit equations ``<expression> = <number>`` of ``line``, chains included
    (``2*3 = 6 + 4 = 10`` gives ``2*3 = 6`` and ``6 + 4 = 10``)."""
    pos = 0
    while (m := _EQUATION.search(line, pos)) is not None:
        yield m
        pos = m.start("rhs")


def wrong_equation(line: str) -> re.Match | None:
    """The first explicit equation on ``line`` that does not hold, or None."""
    for m in equations(line):
        if _equation_is_right(m["lhs"], m["rhs"]) is False:
            return m
    return None


def rationale_to_solution(rationale: str, answer: str) -> str:
    """GSM8K rationale (text before ``####``) as solution text: annotations stripped, one
    non-empty line per step, then ``answer: <answer>``."""
    lines = [_ANNOTATION.sub("", s).strip() for s in rationale.splitlines()]
    return join_steps([s for s in lines if s], answer)


def _problem(record: Mapping[str, Any], where: str, uid: str) -> Problem:
    """The problem of one checked GSM8K row (see :meth:`GSM8K.problem_from_record`)."""
    rationale, mark, final = str(record["answer"]).rpartition(FINAL_MARK)
    if not mark:
        raise ValueError(f"{where}: expected the answer to end with '{FINAL_MARK} <number>'")
    answer = normalize_number(final)
    if answer is None:
        raise ValueError(f"{where}: final answer {final.strip()!r} after {FINAL_MARK} is no number")
    solution = rationale_to_solution(rationale, answer)
    difficulty = min(max(len(split_steps(solution)[0]), 1), MAX_DIFFICULTY)
    meta = {"solution": solution}
    return Problem(uid, str(record["question"]).strip(), answer, difficulty, meta)


def load_jsonl(path: str | os.PathLike) -> list[Problem]:
    """Problems of a GSM8K-format JSONL file; uid ``gsm8k/<file stem>/<1-based line>``.

    Blank lines are skipped. A malformed line raises ValueError naming the file and line.
    (Runs read ``task.train_files``/``test_files`` through :mod:`critique_jax.tasks.files`.)
    """
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    fields = GSM8K.record_fields
    return [_problem(check_record(record, fields, where), where, f"gsm8k/{stem}/{lineno}")
            for where, lineno, record in read_records(path)]


@register_task("gsm8k")
class GSM8K(Task):
    """GSM8K problems from files (see the module docstring)."""

    difficulties = tuple(range(1, MAX_DIFFICULTY + 1))
    default_difficulty = 3
    generative = False
    record_fields = ("question", "answer")
    exact_step_checker = False  # only explicit equations are checked
    instructions = (
        "Solve the problem step by step, one step per line, writing each calculation as "
        "'<expression> = <number>'. End with the line 'answer: <number>'."
    )

    def generate(self, rng: np.random.Generator, difficulty: int) -> Problem:
        raise NotImplementedError(
            "gsm8k cannot generate problems: runs read them from task.train_files/test_files; "
            "code loads a file with critique_jax.tasks.gsm8k.load_jsonl(path)"
        )

    def problem_from_record(self, record: Mapping[str, Any], where: str, uid: str) -> Problem:
        """A row ``{"question", "answer": "<rationale>\\n#### <number>"}``."""
        return _problem(record, where, uid)

    def solutions(self, problem: Problem, rng: np.random.Generator, n: int) -> list[str]:
        """The dataset's rationale (GSM8K has one reference solution per problem)."""
        return [problem.meta["solution"]][:n]

    def extract_answer(self, text: str) -> str | None:
        return parse_numeric_answer(super().extract_answer(text))

    def check_steps(self, problem: Problem, text: str) -> StepCheck:
        lines, answer = split_steps(text)
        n_steps = len(lines) + (answer is not None)
        for i, line in enumerate(lines):
            if wrong_equation(line) is not None:
                return StepCheck(i, "arithmetic", n_steps)
        if answer is None:
            return StepCheck(len(lines), "missing_answer", n_steps)
        got = parse_numeric_answer(answer)
        if got is None:
            return StepCheck(len(lines), "unparsable", n_steps)
        if got != normalize_number(problem.answer):
            return StepCheck(len(lines), "wrong_answer", n_steps)
        return StepCheck(None, "ok", n_steps)

    def perturb(self, problem: Problem, solution: str, rng: np.random.Generator) -> Perturbation:
        """A wrong result in one equation (probability 0.75 when there is one; later lines are
        left as they are: free text cannot be recomputed), else a wrong answer line. Checked
        to fail at that step."""
        if not self.check_steps(problem, solution).ok:
            raise ValueError(f"perturb needs a correct solution of {problem.uid!r}")
        lines, answer = split_steps(solution)
        if rng.random() < 0.75:
            for i in rng.permutation(len(lines)):
                for m in equations(lines[i]):
                    if _equation_is_right(m["lhs"], m["rhs"]) is not True:
                        continue
                    for delta in rng.permutation([1, -1, 2, 10]):
                        wrong = _shift(m["rhs"], int(delta))
                        new = lines[i][: m.start("rhs")] + wrong + lines[i][m.end("rhs") :]
                        text = join_steps(lines[:i] + [new] + lines[i + 1 :], answer)
                        if self.check_steps(problem, text).first_wrong == i:
                            return Perturbation(text, int(i), "arithmetic")
        wrong = _shift(problem.answer, int(rng.choice([1, -1, 2, 10])))
        return Perturbation(join_steps(lines, wrong), len(lines), "wrong_answer")


def _shift(number: str, delta: int) -> str:
    """``number + delta`` written like a GSM8K number (no trailing ``.0``)."""
    value = Fraction(number.replace(",", "")) + delta
    return str(int(value)) if value.denominator == 1 else str(float(value))


