"""Prompt and target text for solving, critiquing and refining (pure string functions).

Every prompt starts with a marker token; each marker is a single token of the project
tokenizer (see :mod:`critique_jax.text.tokenizer`), and a prompt ends with the marker of the
part the model writes next, so no separator text is spent. ``\\n`` separates the parts.

Solve (question -> solution)::

    prompt: "<question>{question}\\n<solution>"
    target: "{solution}"

Critique (question + solution -> step-level critique)::

    prompt: "<question>{question}\\n<solution>{solution}\\n<critique>"
    target: "{critique}"

Refine (question + previous solution + critique -> new solution)::

    prompt: "<question>{question}\\n<solution>{solution}\\n<critique>{critique}\\n<refine>"
    target: "{solution}"

A solution is the task format of :mod:`critique_jax.tasks.base` (one step per line, then
``answer: <value>``). A step-level critique (AutoMathCritique style, arXiv:2411.16579) has one
line per step up to and including the first wrong one, numbered from 1 (the answer line is a
step), then a verdict on the final answer::

    step 1: correct
    step 2: wrong, arithmetic
    verdict: wrong

The text after ``wrong,`` is the step checker's error kind with ``_`` read as a space
(``unavailable_number`` -> ``unavailable number``). A solution without errors lists every
step as correct and ends with ``verdict: correct``. An indicative critique is the verdict line
alone; :func:`parse_critique` reads both.

Example (countdown)::

    <question>Use 3, 8, 4 to make 20.
    <solution>8 * 3 = 24
    24 - 4 = 21
    answer: 21
    <critique>step 1: correct
    step 2: wrong, arithmetic
    verdict: wrong
    <refine>

The model's refinement then follows ``<refine>``; it is a plain solution (Critique-GRPO places
it in the group as a response to the solve prompt).
"""

from __future__ import annotations

import re

from critique_jax.tasks.base import StepCheck

#: Marker name -> marker text; each is one token of the project tokenizer.
MARKERS: dict[str, str] = {
    "question": "<question>",
    "solution": "<solution>",
    "critique": "<critique>",
    "refine": "<refine>",
}

CORRECT, WRONG = "correct", "wrong"


def solve_prompt(question: str) -> str:
    """Prompt that asks for a solution to ``question``."""
    return f"{MARKERS['question']}{question}\n{MARKERS['solution']}"


def critique_prompt(question: str, solution: str) -> str:
    """Prompt that asks for a step-level critique of ``solution``."""
    return f"{solve_prompt(question)}{solution}\n{MARKERS['critique']}"


def refine_prompt(question: str, solution: str, critique: str) -> str:
    """Prompt that asks for a new solution given the previous ``solution`` and its ``critique``."""
    return f"{critique_prompt(question, solution)}{critique}\n{MARKERS['refine']}"


def format_step_critique(
    check: StepCheck, n_steps: int | None = None, correct: bool | None = None
) -> str:
    """Step-level critique text for a checked solution (format in the module docstring).

    n_steps: steps in the solution (default ``check.n_steps``); all of them are listed when
      the solution has no wrong step, else steps ``1 .. first_wrong + 1``.
    correct: the verdict on the final answer (default ``check.ok``).
    """
    n = check.n_steps if n_steps is None else n_steps
    if n < 0:
        raise ValueError(f"n_steps={n}: expected >= 0")
    wrong = check.first_wrong
    # first_wrong == n is a missing answer line: the step after the last one found.
    if wrong is not None and not 0 <= wrong <= n:
        raise ValueError(f"check.first_wrong={wrong}: expected 0 <= first_wrong <= n_steps={n}")
    lines = [f"step {i + 1}: {CORRECT}" for i in range(n if wrong is None else wrong)]
    if wrong is not None:
        lines.append(f"step {wrong + 1}: {WRONG}, {check.kind.replace('_', ' ')}")
    verdict = check.ok if correct is None else correct
    lines.append(f"verdict: {CORRECT if verdict else WRONG}")
    return "\n".join(lines)


_STEP = re.compile(r"^\s*step\s+(\d+)\s*:\s*(correct|wrong)\b", re.IGNORECASE)
_VERDICT = re.compile(r"^\s*verdict\s*:\s*(correct|wrong)\b", re.IGNORECASE)


def parse_critique(text: str) -> tuple[bool | None, int | None]:
    """Reads ``(verdict, first_wrong)`` from critique text.

    verdict: True for ``verdict: correct``, False for ``verdict: wrong``, None if no verdict
      line (the first one counts).
    first_wrong: 0-based index of the first step marked wrong, or None if none is.
    Lines in other formats are ignored, so malformed model output parses to Nones.
    """
    verdict: bool | None = None
    first_wrong: int | None = None
    for line in text.splitlines():
        if first_wrong is None and (m := _STEP.match(line)):
            step = int(m.group(1))
            if step >= 1 and m.group(2).lower() == WRONG:
                first_wrong = step - 1
        elif verdict is None and (m := _VERDICT.match(line)):
            verdict = m.group(1).lower() == CORRECT
    return verdict, first_wrong
