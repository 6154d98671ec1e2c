"""``arithmetic``: evaluate a multi-step integer expression one operation per line.
Over 300 lines: one task; its step checker (with notes) and perturber share the replay of
reductions over one expression tree, and the solution writer and solution key its step format.

Question: the expression alone, e.g. ``"(3 + 5) * 2 - 7"``. Operators ``+ - *`` on integers
1..20; every intermediate value (every node of the expression) lies in 0..999.

Difficulty ``d`` in 1..4 means ``d + 1`` operations (2..5); the default is 2 (3 operations).

A solution reduces one *ready* node (an operation whose operands are both numbers, respecting
parentheses and precedence) per line, in one of two styles the writer varies::

    3 + 5 = 8                          3 + 5 = 8, so 8 * 2 - 7
    8 * 2 = 16                         8 * 2 = 16, so 16 - 7
    16 - 7 = 9                         16 - 7 = 9
    answer: 9                          answer: 9

and in any order of independent sub-expressions. The ``, so <rest>`` tail is optional on
any line; when present it must equal the expression left after the step (parentheses may be
redundant; commuted operands are not accepted in the tail). Operands of ``+``/``*`` may be
written in either order on the step itself.

Step-checker error kinds:
  ``unparsable``     the line is not ``a op b = c[, so <expr>]`` (or the answer is no number);
  ``invalid_step``   ``a op b`` is not a ready node of the current expression (precedence or
                     parenthesis violation, numbers not there, or several operations at once);
  ``arithmetic``     ``a op b`` is a ready node but ``c`` is not its value;
  ``wrong_rewrite``  the step is right but the ``, so`` tail is not the remaining expression;
  ``incomplete``     the answer line comes before the expression is fully reduced;
  ``wrong_answer``   fully reduced, but the answer differs from the value;
  ``missing_answer`` every line is right but there is no answer line.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from critique_jax.tasks import expr as ex
from critique_jax.tasks.base import (
    Perturbation,
    Problem,
    StepCheck,
    Task,
    join_steps,
    normalize_number,
    register_task,
    solution_lines,
    split_steps,
)

MAX_VALUE = 999
LEAF_RANGE = (1, 20)
OPS_PER_LEVEL = {1: 2, 2: 3, 3: 4, 4: 5}
STYLES = ("plain", "rewrite")
_PERTURB_KINDS = ("arithmetic", "invalid_step", "incomplete", "wrong_answer")
_PERTURB_WEIGHTS = (0.45, 0.25, 0.15, 0.15)


def _in_range(v: ex.Number | None) -> bool:
    return v is not None and isinstance(v, int) and 0 <= v <= MAX_VALUE


def random_expression(rng: np.random.Generator, n_ops: int) -> tuple[ex.Tree, int]:
    """A random tree with ``n_ops`` operations and its value; every node value in 0..999.

    Operators are drawn with probabilities + 0.4, - 0.3, * 0.3; a ``-`` whose left side is
    smaller swaps its operands, and an operation that would leave 1..999 becomes ``+``/``-``.
    """
    if n_ops == 0:
        v = int(rng.integers(LEAF_RANGE[0], LEAF_RANGE[1] + 1))
        return v, v
    n_left = int(rng.integers(0, n_ops))
    left, a = random_expression(rng, n_left)
    right, b = random_expression(rng, n_ops - 1 - n_left)
    op = str(rng.choice(["+", "-", "*"], p=[0.4, 0.3, 0.3]))
    if op == "*" and a * b > MAX_VALUE:
        op = "+"
    if op == "+" and a + b > MAX_VALUE:
        op = "-"
    if op == "-" and a == b:
        op = "+"
    if op == "-" and a < b:
        left, right, a, b = right, left, b, a
    return (op, left, right), int(ex.apply(op, a, b))


def _step_text(node: tuple, result: ex.Number, rest: ex.Tree, style: str) -> str:
    show_rest = style == "rewrite" and ex.is_node(rest)
    return ex.format_step(node[0], node[1], node[2], result, rest if show_rest else None)


def write_solution(
    tree: ex.Tree, paths: list[ex.Path], style: str, wrong: dict[int, int] | None = None
) -> tuple[list[str], ex.Number] | None:
    """Lines that reduce ``tree`` at ``paths`` in order, and the final value.

    ``wrong`` maps a step index to the (wrong) result written there; later steps compute
    from it consistently. None if a value leaves 0..999 (only possible with ``wrong``).
    """
    lines = []
    for i, path in enumerate(paths):
        node = ex.subtree(tree, path)
        value = (wrong or {}).get(i, ex.apply(*node))
        if not _in_range(value):
            return None
        tree = ex.replace(tree, path, value)
        lines.append(_step_text(node, value, tree, style))
    return lines, tree


def random_order(tree: ex.Tree, rng: np.random.Generator | None) -> list[ex.Path]:
    """Reduction paths of a full evaluation: a random ready node each time, or leftmost."""
    paths = []
    while ex.is_node(tree):
        ready = ex.ready_paths(tree)
        path = ready[0] if rng is None else ready[int(rng.integers(len(ready)))]
        paths.append(path)
        tree = ex.replace(tree, path, ex.apply(*ex.subtree(tree, path)))
    return paths


def _matches(node: ex.Tree, op: str, a: ex.Number, b: ex.Number) -> bool:
    if node[0] != op:
        return False
    return (node[1], node[2]) == (a, b) or (op in ex.COMMUTATIVE and (node[1], node[2]) == (b, a))


def _after(tree: ex.Tree) -> ex.Tree | None:
    """The ``, so`` tail that shows ``tree`` (None once it is a number)."""
    return tree if ex.is_node(tree) else None


def _replay(tree: ex.Tree, lines: list[str]):
    """Follows ``lines`` from ``tree``.

    Returns ``(first_wrong, kind, states, notes)``; ``states`` maps every expression the
    correct prefix can have led to (several when identical ready nodes exist) to the reduction
    paths that lead there; ``notes`` has the worked-critique note of each line up to and
    including the first wrong one: ``"3 + 5 is 8 vs 8, so 8 * 2 - 7"`` (the true value next to
    the written one, and the expression after the step), ``"5 * 2 not ready in (3 + 5) * 2 - 7"``,
    ``""`` (unparsable).
    """
    states: dict[ex.Tree, list[ex.Path]] = {tree: []}
    notes: list[str] = []
    for i, line in enumerate(lines):
        step = ex.parse_step(line)
        if step is None:
            return i, "unparsable", states, notes + [""]
        pair = step.pair
        found, new = None, {}
        for t, hist in states.items():
            for path in ex.ready_paths(t) if pair else ():
                node = ex.subtree(t, path)
                if not _matches(node, *pair):
                    continue
                if found is None:  # the first match, reduced with the true value
                    found = ex.replace(t, path, ex.apply(*node))
                nt = ex.replace(t, path, step.result)
                if step.result == ex.apply(*node) and (step.rest is None or step.rest == nt):
                    new.setdefault(nt, hist + [path])
        if not new:
            if found is None:
                note = f"{ex.render(step.lhs)} not ready in {ex.render(next(iter(states)))}"
                return i, "invalid_step", states, notes + [note]
            kind = "arithmetic" if step.result != ex.apply(*pair) else "wrong_rewrite"
            return i, kind, states, notes + [_note(pair, step.result, _after(found))]
        states = new
        notes.append(_note(pair, step.result, _after(next(iter(new)))))
    return None, "ok", states, notes


def _note(pair: tuple[str, ex.Number, ex.Number], written: ex.Number, rest: ex.Tree | None) -> str:
    """``"a op b is <true value> vs <written>[, so <rest>]"``: the two values side by side, so the
    decision on the step compares adjacent numbers (as countdown's notes do)."""
    op, a, b = pair
    note = f"{a} {op} {b} is {ex.apply(op, a, b)} vs {written}"
    return note if rest is None else f"{note}, so {ex.render(rest)}"


@register_task("arithmetic")
class Arithmetic(Task):
    """Multi-step integer expressions (see the module docstring)."""

    difficulties = (1, 2, 3, 4)
    default_difficulty = 2
    instructions = (
        "Evaluate the expression one operation per line, as 'a op b = c', respecting "
        "parentheses and operator precedence; you may add ', so <remaining expression>'. "
        "End with the line 'answer: <value>'."
    )

    def generate(self, rng: np.random.Generator, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        tree, value = random_expression(rng, OPS_PER_LEVEL[difficulty])
        text = ex.render(tree)
        return Problem("", text, str(value), difficulty, {"expression": text})

    def _tree(self, problem: Problem) -> ex.Tree:
        tree = ex.parse(problem.meta.get("expression", problem.question))
        if tree is None:
            raise ValueError(f"problem {problem.uid!r}: no expression in {problem.question!r}")
        return tree

    def solutions(self, problem: Problem, rng: np.random.Generator, n: int) -> list[str]:
        """Distinct texts: the leftmost-first plain solution, then random orders and styles."""
        tree = self._tree(problem)
        out: list[str] = []
        for attempt in range(8 * n):
            paths = random_order(tree, None if attempt == 0 else rng)
            style = STYLES[0] if attempt == 0 else STYLES[int(rng.integers(len(STYLES)))]
            lines, value = write_solution(tree, paths, style)
            text = join_steps(lines, value)
            if text not in out:
                out.append(text)
            if len(out) == n:
                break
        return out

    def check_steps(self, problem: Problem, text: str) -> StepCheck:
        return self._walk(problem, text)[1]

    def step_notes(self, problem: Problem, text: str) -> list[str]:
        """Per step: the true value next to the written one and the expression after it
        (``"3 + 5 is 8 vs 8, so 8 * 2 - 7"``)
        or, for a step that is not a ready operation, the expression it should reduce
        (``"5 * 2 not ready in (3 + 5) * 2 - 7"``); on the answer line the answer and the
        value (``"answer: 9, value 9"``), the expression still left (``"left 16 - 7"``) or
        ``"no answer"``; ``""`` on a line that does not parse."""
        return self._walk(problem, text)[0]

    def _walk(self, problem: Problem, text: str) -> tuple[list[str], StepCheck]:
        """The step notes and the check of ``text`` (see the module docstring)."""
        lines, answer = split_steps(text)
        n_steps = len(lines) + (answer is not None)
        first_wrong, kind, states, notes = _replay(self._tree(problem), lines)
        if first_wrong is not None:
            return notes, StepCheck(first_wrong, kind, n_steps)
        if answer is None:
            return notes + ["no answer"], StepCheck(len(lines), "missing_answer", n_steps)
        final = next(iter(states))  # all states have had the same number of reductions
        if ex.is_node(final):
            return notes + [f"left {ex.render(final)}"], StepCheck(len(lines), "incomplete", n_steps)
        got = normalize_number(answer)
        if got is None:
            return notes + [""], StepCheck(len(lines), "unparsable", n_steps)
        notes.append(f"answer: {got}, value {final}")
        if got != str(final):
            return notes, StepCheck(len(lines), "wrong_answer", n_steps)
        return notes, StepCheck(None, "ok", n_steps)

    def solution_key(self, text_or_lines: str | Sequence[str]) -> Hashable:
        """The sequence of reductions ``(op, a, b, value)`` (``+``/``*`` operands sorted): every
        correct solution reduces the same nodes, so solutions differ only in their order; the
        written style (the ``, so <rest>`` tail) is ignored. The reward reads only the answer, so a
        correct solution may hold a line that is not one reduction of two numbers (malformed, or
        several operations at once): that line enters the key as its text."""
        key: list[Hashable] = []
        for line in solution_lines(text_or_lines):
            step = ex.parse_step(line)
            if step is None or not ex.is_node(step.lhs) or any(ex.is_node(v) for v in step.lhs[1:]):
                key.append(" ".join(line.split()))
                continue
            op, a, b = step.lhs
            if op in ex.COMMUTATIVE:
                a, b = sorted((a, b))
            key.append((op, a, b, step.result))
        return tuple(key)

    def perturb(self, problem: Problem, solution: str, rng: np.random.Generator) -> Perturbation:
        """One planted error (arithmetic slip propagated onwards, precedence/grouping slip,
        early stop, or wrong answer line); the result is checked to fail at that step."""
        tree = self._tree(problem)
        lines, _ = split_steps(solution)
        first_wrong, kind, states, _ = _replay(tree, lines)
        if first_wrong is not None or any(ex.is_node(t) for t in states):
            raise ValueError(f"perturb needs a correct full solution; step {first_wrong}: {kind}")
        final, paths = next(iter(states.items()))
        style = "rewrite" if any(ex.parse_step(s).rest is not None for s in lines) else "plain"
        makers = {
            "arithmetic": self._wrong_result,
            "invalid_step": self._wrong_grouping,
            "incomplete": self._early_stop,
            "wrong_answer": self._wrong_answer,
        }
        for kind in rng.choice(_PERTURB_KINDS, size=len(_PERTURB_KINDS), replace=False,
                               p=_PERTURB_WEIGHTS):
            for text, step in makers[str(kind)](tree, paths, style, final, rng):
                check = self.check_steps(problem, text)
                if (check.first_wrong, check.kind) == (step, kind):
                    return Perturbation(text, step, str(kind))
        raise ValueError(f"no perturbation found for {problem.uid!r}")  # pragma: no cover

    @staticmethod
    def _wrong_result(tree, paths, style, final, rng):
        for i in rng.permutation(len(paths)):
            t = tree
            for p in paths[:i]:
                t = ex.replace(t, p, ex.apply(*ex.subtree(t, p)))
            op, a, b = ex.subtree(t, paths[i])
            c = ex.apply(op, a, b)
            slips = [c + 1, c - 1, c + 10, c - 10, c + 2, c - 2]
            if op == "*":
                slips += [c + a, c - a, c + b, c - b]
            for wrong in rng.permutation(slips):
                out = write_solution(tree, paths, style, {int(i): int(wrong)})
                if out is not None:
                    yield join_steps(*out), int(i)

    @staticmethod
    def _wrong_grouping(tree, paths, style, final, rng):
        """Evaluates two adjacent numbers of the rendered expression that do not form a ready
        node (e.g. ``2 + 3`` in ``2 + 3 * 4``), then finishes the misread expression."""
        t = tree
        for i, path in enumerate(paths):
            tokens = ex.tokenize(ex.render(t))
            for j in rng.permutation(max(len(tokens) - 2, 0)):
                a, op, b = tokens[j : j + 3]
                if not (a.isdigit() and b.isdigit() and op in "+-*"):
                    continue
                value = ex.apply(op, int(a), int(b))
                misread = ex.parse(" ".join(tokens[:j] + [str(value)] + tokens[j + 3 :]))
                if misread is None or not all(map(_in_range, [value] + ex.node_values(misread))):
                    continue
                head, _ = write_solution(tree, paths[:i], style)
                line = _step_text((op, int(a), int(b)), value, misread, style)
                tail, end = write_solution(misread, random_order(misread, rng), style)
                yield join_steps(head + [line] + tail, end), i
            t = ex.replace(t, path, ex.apply(*ex.subtree(t, path)))

    @staticmethod
    def _early_stop(tree, paths, style, final, rng):
        lines, _ = write_solution(tree, paths, style)
        for k in rng.permutation(len(lines) - 1) + 1:  # stop after k of the steps, 0 < k < all
            yield join_steps(lines[:k], ex.parse_step(lines[k - 1]).result), int(k)

    @staticmethod
    def _wrong_answer(tree, paths, style, final, rng):
        lines, _ = write_solution(tree, paths, style)
        for wrong in rng.permutation([final + 1, final - 1, final + 10, final * 2, final + 2]):
            yield join_steps(lines, int(wrong)), len(lines)
