"""``countdown``: reach a target from a set of numbers with ``+ - * /``.
Over 300 lines: one task; its generator, exhaustive solution search, step checker (with notes),
perturbation plan and solution key share the expression trees and the pool of available numbers.

Question: ``"numbers: 3 7 25 50, target: 82"`` (numbers sorted). Each number may be used at
most once, each result becomes available to later steps, division must be exact; results may
be any integer (negative and zero are allowed, as in plain arithmetic).

Difficulty levels (the generator builds the target from a random expression over *all* the
numbers, so every problem is reachable; solutions may use fewer numbers):

    level 1: 3 numbers from 1..10, target 10..99
    level 2: 3 numbers from 1..10 and one of 25 50 75 100, target 10..199 (default)
    level 3: 4 numbers from 1..10 and one of 25 50 75 100, target 100..499

Solution: one operation per line, then the answer (the target)::

    25 + 50 = 75
    75 + 7 = 82
    answer: 82

A line may also combine several operations (``(25 + 50) + 7 = 82``); all its numbers are
taken from the available ones. Reference solutions are distinct *computations*: their
multisets of steps differ after sorting the operands of ``+``/``*`` (so ``a + b`` and
``b + a`` are one solution, and so are two orders of independent steps; ``(a + b) + c`` and
``a + (b + c)`` are two). Each is written in a random order of its independent steps with
random ``+``/``*`` operand order. They are found by search over
subsets of the numbers with positive intermediate values up to :data:`MAX_VALUE`, without
``* 1`` or ``/ 1``.

Step-checker error kinds:
  ``unparsable``          the line is not ``<expression> = <number>`` (or the answer is no number);
  ``unavailable_number``  an operand is not in the current multiset of available numbers;
  ``arithmetic``          wrong result, inexact division or division by zero;
  ``wrong_answer``        the answer is not the target, or not the result of the last line;
  ``missing_answer``      every line is right but there is no answer line.

The reward is 1.0 only when the whole solution checks (the target is in the question, so an
answer line alone proves nothing).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from fractions import Fraction
from typing import Hashable, Iterator, Sequence

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

#: Largest intermediate value the solution search and the generator use.
MAX_VALUE = 10_000
#: Distinct solution trees the search collects before sampling ``n`` of them.
SEARCH_CAP = 64
LARGE = (25, 50, 75, 100)


@dataclasses.dataclass(frozen=True)
class Level:
    """How one difficulty level draws numbers (small from 1..10, large from LARGE) and targets."""

    n_small: int
    n_large: int
    target_range: tuple[int, int]


LEVELS = {
    1: Level(3, 0, (10, 99)),
    2: Level(3, 1, (10, 199)),
    3: Level(4, 1, (100, 499)),
}


def _combine(a: int, b: int) -> Iterator[tuple[str, int, int, int]]:
    """``(op, left, right, value)`` for the useful operations on ``a`` and ``b`` (either order).

    Values stay in 1..MAX_VALUE; ``* 1`` and ``/ 1`` are skipped (they change nothing).
    """
    if a + b <= MAX_VALUE:
        yield "+", a, b, a + b
    if a != 1 and b != 1 and a * b <= MAX_VALUE:
        yield "*", a, b, a * b
    if a > b:
        yield "-", a, b, a - b
    elif b > a:
        yield "-", b, a, b - a
    if b not in (0, 1) and a % b == 0:
        yield "/", a, b, a // b
    if a not in (0, 1) and a != b and b % a == 0:
        yield "/", b, a, b // a


def _splits(mask: int) -> Iterator[tuple[int, int]]:
    """Unordered splits of ``mask`` into two non-empty parts (the first holds the lowest bit)."""
    low = mask & -mask
    rest = mask ^ low
    sub = rest
    while True:
        a = sub | low
        if a != mask:
            yield a, mask ^ a
        if sub == 0:
            break
        sub = (sub - 1) & rest


def _reachable(numbers: list[int]) -> dict[int, set[int]]:
    """Values reachable with exactly the numbers of each proper subset ``mask``."""
    full = (1 << len(numbers)) - 1
    vals: dict[int, set[int]] = {}
    for mask in sorted(range(1, full), key=int.bit_count):
        if mask.bit_count() == 1:
            vals[mask] = {numbers[mask.bit_length() - 1]}
            continue
        out: set[int] = set()
        for a_mask, b_mask in _splits(mask):
            for a in vals[a_mask]:
                for b in vals[b_mask]:
                    out.update(v for *_, v in _combine(a, b))
        vals[mask] = out
    return vals


def _trees(numbers, vals, mask: int, target: int) -> Iterator[ex.Tree]:
    """Every expression tree over exactly the numbers of ``mask`` whose value is ``target``."""
    if mask.bit_count() == 1:
        if numbers[mask.bit_length() - 1] == target:
            yield target
        return
    for a_mask, b_mask in _splits(mask):
        for b in vals[b_mask]:
            for a in _partners(target, b) & vals[a_mask]:
                for op, left, right, v in _combine(a, b):
                    if v != target:
                        continue
                    sides = [(a_mask, b_mask) if left == a else (b_mask, a_mask)]
                    if left == right and op not in ex.COMMUTATIVE:  # x / y with x == y
                        sides.append(sides[0][::-1])
                    for l_mask, r_mask in sides:
                        for lt in _trees(numbers, vals, l_mask, left):
                            for rt in _trees(numbers, vals, r_mask, right):
                                yield (op, lt, rt)


def _partners(target: int, b: int) -> set[int]:
    """Values ``a`` for which some operation on ``a`` and ``b`` can give ``target``."""
    out = {target - b, target + b, b - target, target * b}
    if b != 0 and target % b == 0:
        out.add(target // b)
    if target != 0 and b % target == 0:
        out.add(b // target)
    return out


def reachable(numbers: Sequence[int], target: int) -> bool:
    """Whether ``target`` can be made from some of ``numbers`` (each used at most once), with the
    operations of the solution search (:func:`_combine`: values in 1..MAX_VALUE after each
    operation; a number equal to the target counts)."""
    numbers = [int(v) for v in numbers]
    if target in numbers:
        return True
    if len(numbers) < 2:
        return False
    vals = _reachable(numbers)  # proper subsets
    if any(target in v for v in vals.values()):
        return True
    full = (1 << len(numbers)) - 1
    return any(v == target for a_mask, b_mask in _splits(full) for b in vals[b_mask]
               for a in _partners(target, b) & vals[a_mask] for *_, v in _combine(a, b))


def canonical(tree: ex.Tree) -> tuple:
    """The steps of ``tree`` as a sorted tuple of ``(op, a, b, value)``, operands of ``+``/``*``
    sorted: two trees with the same key read as the same solution text (up to line order)."""
    if not ex.is_node(tree):
        return ()
    op, left, right = tree
    a, b = ex.evaluate(left), ex.evaluate(right)
    if op in ex.COMMUTATIVE:
        a, b = sorted((a, b))
    return tuple(sorted(canonical(left) + canonical(right) + ((op, a, b, ex.evaluate(tree)),)))


def find_solutions(numbers: list[int], target: int, cap: int = SEARCH_CAP) -> list[ex.Tree]:
    """Up to ``cap`` distinct solution trees (see :func:`canonical`), fewer numbers first."""
    vals = _reachable(numbers)
    full = (1 << len(numbers)) - 1
    seen: dict[tuple, ex.Tree] = {}
    for mask in sorted(range(1, full + 1), key=int.bit_count):
        if mask.bit_count() < 2:
            continue
        for tree in _trees(numbers, vals, mask, target):
            seen.setdefault(canonical(tree), tree)
            if len(seen) >= cap:
                return list(seen.values())
    return list(seen.values())


def _random_tree(rng: np.random.Generator, numbers: list[int]) -> ex.Tree | None:
    """A random expression over all ``numbers`` (random pairing order and operations)."""
    pool: list[tuple[ex.Tree, int]] = [(n, n) for n in numbers]
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        (ta, a), (tb, b) = pool[i], pool[j]
        options = list(_combine(a, b))
        if not options:
            return None
        op, left, right, v = options[int(rng.integers(len(options)))]
        node = (op, ta, tb) if left == a else (op, tb, ta)
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(node, v)]
    return pool[0][0]


def linearize(tree: ex.Tree, rng: np.random.Generator) -> list[str]:
    """Step lines computing ``tree``: a random ready node each time, ``+``/``*`` operands in a
    random order."""
    lines = []
    while ex.is_node(tree):
        ready = ex.ready_paths(tree)
        path = ready[int(rng.integers(len(ready)))]
        op, a, b = ex.subtree(tree, path)
        value = ex.apply(op, a, b)
        if op in ex.COMMUTATIVE and rng.random() < 0.5:
            a, b = b, a
        lines.append(ex.format_step(op, a, b, value))
        tree = ex.replace(tree, path, value)
    return lines


def _as_int(v) -> int | None:
    if isinstance(v, Fraction):
        return int(v) if v.denominator == 1 else None
    return v


def _value_note(step: ex.StepLine) -> tuple[str, int | None]:
    """``"<lhs> is <true value> vs <written result>"`` and the true value, or why ``lhs`` has no
    whole value (None). The written result stands next to the true one, so the decision on the
    step compares two adjacent numbers; ``is`` (not the solution's ``=``) keeps the line from
    being copied token by token."""
    values, text = ex.node_values(step.lhs), ex.render(step.lhs)
    if any(v is None for v in values):
        return f"{text} divides by zero", None
    if any(_as_int(v) is None for v in values):
        return f"{text} divides inexactly", None
    return f"{text} is {_as_int(values[-1])} vs {ex.render(step.result)}", _as_int(values[-1])


def _check_line(pool: list[int], step: ex.StepLine) -> tuple[str, str | None]:
    """The step's note (worked critique format) and error kind (None if right) given the
    ``pool`` of available numbers (question numbers, then results in order); updates the pool.

    Notes: ``"8 * 3 is 24 vs 24, left 4 24"`` (the true value, the solution's, then the pool
    after the step), ``"9 + 9 is 18 vs 18, 9 not in 4 24"`` (an operand missing from the pool
    before the step; repeated as often as the line uses it), ``"7 / 2 divides inexactly"``.
    """
    note, value = _value_note(step)
    used = collections.Counter(ex.leaves(step.lhs))
    for v, k in used.items():
        if pool.count(v) < k:
            return f"{note}, {' '.join([str(v)] * k)} not in {' '.join(map(str, pool))}", "unavailable_number"
    for v in ex.leaves(step.lhs):
        pool.remove(v)
    if value is None:
        return note, "arithmetic"
    pool.append(value)
    return f"{note}, left {' '.join(map(str, pool))}", None if value == step.result else "arithmetic"


def _right_steps(problem: Problem, text: str) -> Iterator[tuple[ex.StepLine, list[int]]]:
    """Each step line of ``text`` with the numbers left after it, up to the first wrong one."""
    pool = [int(v) for v in problem.meta["numbers"]]
    for line in split_steps(text)[0]:
        step = ex.parse_step(line)
        if step is None or step.rest is not None or not ex.is_node(step.lhs) or _check_line(pool, step)[1]:
            return
        yield step, list(pool)


_PERTURB_WEIGHTS = (0.5, 0.3, 0.2)  # arithmetic, unavailable_number, wrong_answer


def _with_leaves(tree: ex.Tree, values: Iterator[ex.Number]) -> ex.Tree:
    """``tree`` with its leaves replaced, left to right, by ``values``."""
    if not ex.is_node(tree):
        return next(values)
    op, left, right = tree
    return (op, _with_leaves(left, values), _with_leaves(right, values))


class _Plan:
    """A correct solution as a computation graph: which available item each operand uses.

    Items are the numbers (ids 0..n-1) and the step results (id n + k for step k), so a
    changed value can be carried through the later steps that use it.
    """

    def __init__(self, numbers: list[int], steps: list[ex.StepLine]):
        self.numbers, self.steps = numbers, steps
        pool = dict(enumerate(numbers))  # id -> value of the available items
        self.refs: list[list[int]] = []
        self.available: list[collections.Counter] = []  # before each step
        for k, step in enumerate(steps):
            self.available.append(collections.Counter(pool.values()))
            ids: list[int] = []
            for leaf in ex.leaves(step.lhs):
                ids.append(next(j for j, v in pool.items() if v == leaf and j not in ids))
            for j in ids:
                del pool[j]
            pool[len(numbers) + k] = _as_int(step.result)
            self.refs.append(ids)

    def replay(
        self,
        result_of: dict[int, int] | None = None,
        leaf_of: dict[tuple[int, int], int] | None = None,
    ) -> tuple[list[str], ex.Number] | None:
        """Lines and last value with step results (``{step: value}``) or operands
        (``{(step, leaf position): value}``) overridden; later steps recompute from them.

        None when a recomputed step divides inexactly or by zero.
        """
        result_of, leaf_of = result_of or {}, leaf_of or {}
        values = dict(enumerate(self.numbers))
        lines, value = [], None
        for k, (step, ids) in enumerate(zip(self.steps, self.refs)):
            operands = [leaf_of.get((k, pos), values[j]) for pos, j in enumerate(ids)]
            lhs = _with_leaves(step.lhs, iter(operands))
            exact = [_as_int(v) if v is not None else None for v in ex.node_values(lhs)]
            if None in exact:
                return None
            value = result_of.get(k, exact[-1])
            values[len(self.numbers) + k] = value
            lines.append(f"{ex.render(lhs)} = {value}")
        return lines, value

    def wrong_results(self, rng: np.random.Generator, target: int):
        for k in rng.permutation(len(self.steps)):
            lhs = self.steps[k].lhs
            c = _as_int(self.steps[k].result)
            slips = [c + 1, c - 1, c + 2, c - 2, c + 10, c - 10]
            if ex.is_node(lhs) and lhs[0] == "*":
                slips += [c + v for v in ex.leaves(lhs)] + [c - v for v in ex.leaves(lhs)]
            for wrong in rng.permutation([s for s in slips if s > 0 and s != c]):
                out = self.replay(result_of={int(k): int(wrong)})
                if out is not None:
                    yield join_steps(*out), int(k)

    def unavailable_operands(self, rng: np.random.Generator, target: int):
        """Reuses a spent number or result, or uses one that never existed (a near miss)."""
        seen = set(self.numbers) | {_as_int(s.result) for s in self.steps}
        for k in rng.permutation(len(self.steps)):
            leaves = ex.leaves(self.steps[k].lhs)
            for pos in rng.permutation(len(leaves)):
                others = collections.Counter(leaves[:pos] + leaves[pos + 1 :])
                near = {leaves[pos] + 1, leaves[pos] - 1, target}
                for v in rng.permutation(sorted((seen | near) - {0})):
                    if self.available[k][v] > others[v]:
                        continue  # still available: not an error
                    out = self.replay(leaf_of={(int(k), int(pos)): int(v)})
                    if out is not None:
                        yield join_steps(*out), int(k)

    def wrong_answers(self, rng: np.random.Generator, target: int):
        lines, _ = self.replay()
        if rng.random() < 0.5:  # claims the target one step early
            yield join_steps(lines[:-1], target), len(lines) - 1
        for wrong in rng.permutation([target + 1, target - 1, target + 10, target - 10]):
            yield join_steps(lines, int(wrong)), len(lines)


@register_task("countdown")
class Countdown(Task):
    """Countdown numbers game (see the module docstring)."""

    difficulties = (1, 2, 3)
    default_difficulty = 2
    answer_graded = False  # every solution ends with the target: the steps decide
    instructions = (
        "Reach the target with + - * /, using each given number at most once; every result "
        "can be used in later steps and division must be exact. Write one operation per line "
        "as 'a op b = c', then the line 'answer: <target>'."
    )

    def generate(self, rng: np.random.Generator, difficulty: int) -> Problem:
        self.check_difficulty(difficulty)
        level = LEVELS[difficulty]
        lo, hi = level.target_range
        while True:
            numbers = [int(x) for x in rng.integers(1, 11, size=level.n_small)]
            numbers += [int(x) for x in rng.choice(LARGE, size=level.n_large, replace=False)]
            numbers.sort()
            for _ in range(20):
                tree = _random_tree(rng, numbers)
                target = None if tree is None else ex.evaluate(tree)
                if target is not None and lo <= target <= hi and target not in numbers:
                    question = f"numbers: {' '.join(map(str, numbers))}, target: {target}"
                    meta = {"numbers": numbers, "target": int(target)}
                    return Problem("", question, str(target), difficulty, meta)

    def solutions(self, problem: Problem, rng: np.random.Generator, n: int) -> list[str]:
        """Up to ``n`` distinct computations (random sample of the search's first
        :data:`SEARCH_CAP`), each written in a random step order."""
        numbers, target = list(problem.meta["numbers"]), int(problem.meta["target"])
        trees = find_solutions(numbers, target)
        pick = rng.permutation(len(trees))[:n]
        return [join_steps(linearize(trees[i], rng), target) for i in sorted(pick)]

    def check_steps(self, problem: Problem, text: str) -> StepCheck:
        return self._walk(problem, text)[1]

    def step_notes(self, problem: Problem, text: str) -> list[str]:
        """Per step: the true value next to the written one and the numbers left
        (``"8 * 3 is 24 vs 25, left 4 24"``) or the missing operand
        (``"9 + 9 is 18 vs 18, 9 not in 4 24"``); on the answer line the answer, the
        last line's result and the target (``"answer: 20, last 20, target: 20"``: ``answer:`` and
        ``target:`` as the solution and the question write them, so the values are copied), or
        ``"no answer"``; ``""`` on a line that does not parse."""
        return self._walk(problem, text)[0]

    def _walk(self, problem: Problem, text: str) -> tuple[list[str], StepCheck]:
        """The step notes and the check of ``text`` (one pass; see the module docstring)."""
        lines, answer = split_steps(text)
        n_steps = len(lines) + (answer is not None)
        pool = [int(v) for v in problem.meta["numbers"]]
        notes: list[str] = []
        last = None
        for i, line in enumerate(lines):
            step = ex.parse_step(line)
            if step is None or step.rest is not None or not ex.is_node(step.lhs):
                return notes + [""], StepCheck(i, "unparsable", n_steps)
            note, kind = _check_line(pool, step)
            notes.append(note)
            if kind is not None:
                return notes, StepCheck(i, kind, n_steps)
            last = step.result
        if answer is None:
            return notes + ["no answer"], StepCheck(len(lines), "missing_answer", n_steps)
        got = normalize_number(answer)
        if got is None:
            return notes + [""], StepCheck(len(lines), "unparsable", n_steps)
        target = str(int(problem.meta["target"]))
        notes.append(f"answer: {got}, last {'none' if last is None else last}, target: {target}")
        if got != target or last is None or str(last) != target:
            return notes, StepCheck(len(lines), "wrong_answer", n_steps)
        return notes, StepCheck(None, "ok", n_steps)

    def dead_end(self, problem: Problem, text: str) -> tuple[int, str] | None:
        """The first right step after which the target cannot be reached from the numbers left
        (:func:`reachable`), with the note ``"5 + 6 = 11 leaves 5 11, 19 unreachable"``; None
        when a wrong step (or the end) comes first."""
        target = int(problem.meta["target"])
        for i, (step, pool) in enumerate(_right_steps(problem, text)):
            if not reachable(pool, target):
                left = " ".join(map(str, pool))
                return i, f"{ex.render(step.lhs)} = {ex.render(step.result)} leaves {left}, {target} unreachable"
        return None

    def hinted_steps(self, problem: Problem, text: str, step: int) -> list[str] | None:
        """The lines of the search's first solution (fewest numbers first, :func:`find_solutions`)
        from the numbers left before step ``step`` of ``text``, in the order of
        ``linearize(tree, default_rng(0))``; None when a step before it is wrong or the target is
        out of reach."""
        pools = [[int(v) for v in problem.meta["numbers"]]]
        pools += [pool for _, pool in itertools.islice(_right_steps(problem, text), step)]
        if len(pools) <= step:
            return None
        trees = find_solutions(pools[step], int(problem.meta["target"]), cap=1)
        return linearize(trees[0], np.random.default_rng(0)) if trees else None

    def plant_dead_end(self, problem: Problem, rng: np.random.Generator) -> Perturbation | None:
        """A random right first step that leaves the target unreachable, then random right
        steps on what is left (each further one with probability 1/2) and ``answer: <target>``."""
        numbers, target = [int(v) for v in problem.meta["numbers"]], int(problem.meta["target"])
        firsts = [(i, j, op, a, b, v) for i in range(len(numbers)) for j in range(i + 1, len(numbers))
                  for op, a, b, v in _combine(numbers[i], numbers[j])
                  if not reachable([n for k, n in enumerate(numbers) if k not in (i, j)] + [v], target)]
        if not firsts:
            return None
        i, j, op, a, b, v = firsts[int(rng.integers(len(firsts)))]
        pool = [n for k, n in enumerate(numbers) if k not in (i, j)] + [v]
        lines = [f"{a} {op} {b} = {v}"]
        while len(pool) > 1 and rng.random() < 0.5:
            i, j = sorted(int(k) for k in rng.choice(len(pool), size=2, replace=False))
            options = list(_combine(pool[i], pool[j]))
            if not options:
                break
            op, a, b, v = options[int(rng.integers(len(options)))]
            pool = [n for k, n in enumerate(pool) if k not in (i, j)] + [v]
            lines.append(f"{a} {op} {b} = {v}")
        text = join_steps(lines, target)
        if self.dead_end(problem, text) is None or self.reward(problem, text) > 0:  # pragma: no cover
            raise AssertionError(f"{problem.uid}: planted dead end {text!r} is not one")
        return Perturbation(text, 0, "plan")

    def reward(self, problem: Problem, text: str) -> float:
        """1.0 only for a solution whose every step checks (see the module docstring)."""
        return float(self.check_steps(problem, text).ok)

    def solution_key(self, text_or_lines: str | Sequence[str]) -> Hashable:
        """The multiset of operations ``(op, a, b, value)`` over all lines (``+``/``*`` operands
        sorted; a line with several operations contributes each): the same computation written
        in another order of independent steps, with commuted operands, or with steps merged into
        one line has the same key (as :func:`canonical`). Meant for correct solutions: every
        line must parse."""
        ops: tuple = ()
        for line in solution_lines(text_or_lines):
            ops += canonical(ex.parse_step(line).lhs)
        return tuple(sorted(ops))

    def perturb(self, problem: Problem, solution: str, rng: np.random.Generator) -> Perturbation:
        """One planted error: a wrong result (later lines recomputed from it), an operand that is
        not available (reused or made up; later lines recomputed), or a wrong answer line
        (not the target, or the target claimed one line early). Checked to fail at that step."""
        if not self.check_steps(problem, solution).ok:
            raise ValueError(f"perturb needs a correct solution of {problem.uid!r}")
        numbers = [int(v) for v in problem.meta["numbers"]]
        steps = [ex.parse_step(line) for line in split_steps(solution)[0]]
        plan = _Plan(numbers, steps)
        makers = {
            "arithmetic": plan.wrong_results,
            "unavailable_number": plan.unavailable_operands,
            "wrong_answer": plan.wrong_answers,
        }
        kinds = rng.choice(list(makers), size=len(makers), replace=False, p=_PERTURB_WEIGHTS)
        for kind in kinds:
            for text, step in makers[str(kind)](rng, int(problem.meta["target"])):
                check = self.check_steps(problem, text)
                if (check.first_wrong, check.kind) == (step, kind):
                    return Perturbation(text, step, str(kind))
        raise ValueError(f"no perturbation found for {problem.uid!r}")  # pragma: no cover
