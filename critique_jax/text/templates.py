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

A *worked* critique (:func:`format_worked_critique`, the critique model's target) writes the
task's note on each listed step before its decision, so that every decision is a comparison
of text already written (the notes come from :meth:`~critique_jax.tasks.base.Task.step_notes`
and never contain the words ``correct``/``wrong``; a step without a note is written plainly)::

    step 1: 8 * 3 is 24 vs 24, left 4 24, correct
    step 2: 24 - 4 is 20 vs 21, left 20, wrong, arithmetic
    verdict: wrong

:func:`parse_critique` reads it too (a step's decision is the first ``correct``/``wrong`` on
its line), and :func:`condense_critique` turns it back into the plain format, which is what
the policy sees in refinement prompts.

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
from typing import Sequence

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
    return _format_critique(check, n_steps, correct, None)


def format_worked_critique(check: StepCheck, notes: Sequence[str], correct: bool | None = None) -> str:
    """Worked critique text: each listed step's note, then its decision (module docstring).

    notes: one per listed step (``check.n_steps`` of them when the solution has no wrong step,
      else ``check.first_wrong + 1``), as :meth:`Task.step_notes` returns them; ``""`` = none.
    correct: the verdict on the final answer (default ``check.ok``).
    """
    return _format_critique(check, None, correct, notes)


def _format_critique(check: StepCheck, n_steps: int | None, correct: bool | None,
                     notes: Sequence[str] | None) -> str:
    n = check.n_steps if n_steps is None else n_steps
    if n < 0:
        raise ValueError(f"n_steps={n}: expected >= 0")
    wrong = check.first_wrong
    # first_wrong == n is a missing answer line: the step after the last one found.
    if wrong is not None and not 0 <= wrong <= n:
        raise ValueError(f"check.first_wrong={wrong}: expected 0 <= first_wrong <= n_steps={n}")
    n_listed = n if wrong is None else wrong + 1
    decisions = [CORRECT] * (n if wrong is None else wrong)
    if wrong is not None:
        decisions.append(f"{WRONG}, {check.kind.replace('_', ' ')}")
    if notes is None:
        notes = [""] * n_listed
    elif len(notes) != n_listed:
        raise ValueError(f"{len(notes)} step notes for {n_listed} listed steps ({check})")
    lines = []
    for i, (note, decision) in enumerate(zip(notes, decisions)):
        if _DECISION.search(note) or "\n" in note:
            raise ValueError(f"step note {note!r}: must be one line without the words {CORRECT!r}/{WRONG!r}")
        lines.append(f"step {i + 1}: {note}, {decision}" if note else f"step {i + 1}: {decision}")
    verdict = check.ok if correct is None else correct
    lines.append(f"verdict: {CORRECT if verdict else WRONG}")
    return "\n".join(lines)


_DECISION = re.compile(r"\b(correct|wrong)\b", re.IGNORECASE)
# A step's decision is the first correct/wrong on its line (after the worked format's note);
# group 3 is the rest of the line (the error kind after "wrong,").
_STEP = re.compile(r"^\s*step\s+(\d+)\s*:.*?\b(correct|wrong)\b[\s,]*(.*?)\s*$", re.IGNORECASE)
_VERDICT = re.compile(r"^\s*verdict\s*:\s*(correct|wrong)\b", re.IGNORECASE)


def parse_critique(text: str) -> tuple[bool | None, int | None]:
    """Reads ``(verdict, first_wrong)`` from critique text (plain or worked format).

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


#: What the policy reads of a step critique in a refinement prompt (``critique.format``):
#: ``plain`` the decisions alone; ``explained`` the decisions, with the worked note kept on the
#: first wrong step (``step 2: 24 - 4 is 20 vs 21, left 20, wrong, arithmetic``).
POLICY_FORMATS = ("plain", "explained")


def condense_critique(text: str, explain_first_wrong: bool = False) -> str:
    """The plain step format of a critique: each step line reduced to its decision (and error
    kind), each verdict line to the verdict; other lines and the notes of the worked format
    are dropped. ``condense_critique(format_worked_critique(c, notes)) ==
    format_step_critique(c)``, and a plain critique is its own condensed form.

    explain_first_wrong: keep the first step line marked wrong as it is, worked note included
    (the ``explained`` policy format: what is wrong there, and what it should be).
    """
    out, keep_note = [], explain_first_wrong
    for line in text.splitlines():
        if m := _STEP.match(line):
            decision = m.group(2).lower()
            kind = m.group(3) if decision == WRONG else ""
            if decision == WRONG and keep_note:
                out.append(line.strip())
                keep_note = False
                continue
            out.append(f"step {int(m.group(1))}: {decision}" + (f", {kind}" if kind else ""))
        elif m := _VERDICT.match(line):
            out.append(f"verdict: {m.group(1).lower()}")
    return "\n".join(out)
