"""Arithmetic expressions shared by the tasks: parser, renderer, exact evaluator, tree edits.

A tree is a number (``int``; ``Fraction`` for decimal literals such as ``0.2``) or a tuple
``(op, left, right)`` with ``op`` in ``+ - * /``. Trees are hashable and compare by structure
(``Fraction(2) == 2``). Unary minus is accepted only on a literal (``-4``). Nodes are addressed
by paths: tuples of 0 (left) / 1 (right) from the root.

A step line is ``<lhs> = <number>`` optionally followed by ``, so <expression>`` (the remaining
expression after the step); see :func:`parse_step`.
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from typing import Union

Number = Union[int, Fraction]
Tree = Union[Number, tuple]
Path = tuple[int, ...]

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
COMMUTATIVE = frozenset("+*")
_SYMBOLS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"})
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?)|([-+*/()]))")


def is_node(tree: Tree) -> bool:
    return isinstance(tree, tuple)


def tokenize(text: str) -> list[str] | None:
    """Number and operator tokens of ``text``; None if anything else occurs."""
    text = text.translate(_SYMBOLS).strip()
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


def _literal(token: str) -> Number:
    if "." in token:
        value = Fraction(token)
        return int(value) if value.denominator == 1 else value
    return int(token)


class _Parser:
    """Precedence climbing over tokens; all binary operators are left-associative."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expr(self, min_prec: int = 1) -> Tree:
        left = self.atom()
        while (op := self.peek()) in PRECEDENCE and PRECEDENCE[op] >= min_prec:
            self.take()
            left = (op, left, self.expr(PRECEDENCE[op] + 1))
        return left

    def atom(self) -> Tree:
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end")
        self.take()
        if tok == "(":
            inner = self.expr()
            if self.peek() != ")":
                raise ValueError("missing )")
            self.take()
            return inner
        if tok == "-" and self.peek() is not None and self.peek()[0].isdigit():
            return -_literal(self.take())
        if tok[0].isdigit():
            return _literal(tok)
        raise ValueError(f"unexpected {tok!r}")


def parse(text: str) -> Tree | None:
    """The tree of ``text``, or None when it is not a well-formed expression."""
    tokens = tokenize(text)
    if not tokens:
        return None
    parser = _Parser(tokens)
    try:
        tree = parser.expr()
    except ValueError:
        return None
    return tree if parser.pos == len(tokens) else None


def render(tree: Tree) -> str:
    """Text with the fewest parentheses that parses back to the same tree."""
    if not is_node(tree):
        return str(tree)
    op, left, right = tree
    ls, rs = render(left), render(right)
    if is_node(left) and PRECEDENCE[left[0]] < PRECEDENCE[op]:
        ls = f"({ls})"
    if is_node(right) and PRECEDENCE[right[0]] <= PRECEDENCE[op]:
        rs = f"({rs})"
    return f"{ls} {op} {rs}"


def apply(op: str, a: Number, b: Number) -> Number | None:
    """``a op b`` exactly (int when integral); None for division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    q = Fraction(a) / Fraction(b)
    return int(q) if q.denominator == 1 else q


def evaluate(tree: Tree) -> Number | None:
    """Exact value of ``tree``; None if it divides by zero."""
    if not is_node(tree):
        return tree
    a, b = evaluate(tree[1]), evaluate(tree[2])
    if a is None or b is None:
        return None
    return apply(tree[0], a, b)


def node_values(tree: Tree) -> list[Number | None]:
    """Values of every internal node (post-order)."""
    if not is_node(tree):
        return []
    return node_values(tree[1]) + node_values(tree[2]) + [evaluate(tree)]


def leaves(tree: Tree) -> list[Number]:
    """The numbers of ``tree``, left to right."""
    return leaves(tree[1]) + leaves(tree[2]) if is_node(tree) else [tree]


def subtree(tree: Tree, path: Path) -> Tree:
    for i in path:
        tree = tree[1 + i]
    return tree


def replace(tree: Tree, path: Path, new: Tree) -> Tree:
    """``tree`` with the node at ``path`` replaced by ``new``."""
    if not path:
        return new
    op, left, right = tree
    if path[0] == 0:
        return (op, replace(left, path[1:], new), right)
    return (op, left, replace(right, path[1:], new))


def ready_paths(tree: Tree, path: Path = ()) -> list[Path]:
    """Paths of the nodes whose operands are both numbers (reducible now), left to right."""
    if not is_node(tree):
        return []
    if not is_node(tree[1]) and not is_node(tree[2]):
        return [path]
    return ready_paths(tree[1], path + (0,)) + ready_paths(tree[2], path + (1,))


@dataclasses.dataclass(frozen=True)
class StepLine:
    """A parsed step line ``lhs = result[, so rest]``."""

    lhs: Tree
    result: Number
    rest: Tree | None

    @property
    def pair(self) -> tuple[str, Number, Number] | None:
        """``(op, a, b)`` when ``lhs`` is one operation on two numbers, else None."""
        if is_node(self.lhs) and not is_node(self.lhs[1]) and not is_node(self.lhs[2]):
            return self.lhs
        return None


_STEP = re.compile(
    r"^(?P<lhs>[^=]+)=(?P<result>[^=,;]+?)(?:\s*[,;]?\s*so\s+(?P<rest>[^=]+?))?\s*\.?$",
    re.IGNORECASE,
)


def parse_step(line: str) -> StepLine | None:
    """Parses ``"3 + 5 = 8"`` or ``"3 + 5 = 8, so 8 * 2 - 7"``; None if malformed."""
    m = _STEP.match(line.strip())
    if m is None:
        return None
    lhs, result = parse(m["lhs"]), parse(m["result"])
    if lhs is None or result is None or is_node(result):
        return None
    rest = None
    if m["rest"] is not None:
        rest = parse(m["rest"])
        if rest is None:
            return None
    return StepLine(lhs, result, rest)


def format_step(op: str, a: Number, b: Number, result: Number, rest: Tree | None = None) -> str:
    """``"a op b = result"`` plus ``", so <rest>"`` when ``rest`` is given."""
    line = f"{a} {op} {b} = {result}"
    return line if rest is None else f"{line}, so {render(rest)}"
