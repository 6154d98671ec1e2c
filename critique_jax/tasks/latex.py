"""Final answers written in LaTeX: extraction from ``\\boxed{...}`` and a cheap normaliser.

Pure string functions (no sympy): :func:`last_boxed` finds the content of the last
``\\boxed{...}`` / ``\\fbox{...}`` (nested braces, or the unbraced ``\\boxed 5``), and
:func:`normalize_latex` rewrites an answer to a canonical string so that most equivalent
answers of MATH-style problems compare equal as strings (``\\dfrac12`` and ``\\frac{1}{2}``,
``5 \\text{ cm}`` and ``5``, ``x=3`` and ``3``, ``\\left[2,5\\right)`` and ``[2, 5)``).
What it cannot decide (``\\frac12`` vs ``0.5``) goes to the sympy-based verifier,
:mod:`critique_jax.tasks.verifier`.
"""

from __future__ import annotations

import re

from critique_jax.tasks.base import normalize_number

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Text wrappers whose content is the answer itself (``\text{(A)}`` -> ``(A)``).
_TEXT = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_UNITS = (
    "units?|square units?|sq units?|cm\\^?2?|centimeters?|mm|millimeters?|km|kilometers?|meters?|m\\^?2?|"
    "inch(?:es)?|in\\^?2?|feet|foot|ft\\^?2?|yards?|miles?|mph|degrees?|deg|radians?|dollars?|cents?|"
    "hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|ounces?|pounds?|lbs?|"
    "grams?|kg|liters?|gallons?|people|students?|ways?|points?"
)
_TRAILING_UNIT = re.compile(rf"(?<=[\d}}.])\s*(?:\\,|\\;|\\ |~)?\s*(?:{_UNITS})\.?$")
_SPACES = re.compile(r"\\[,;:! ]|~|\s+")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d|[A-Za-z])\s*(\d|[A-Za-z])")
_FRAC_HALF = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d|[A-Za-z])(?![\w{])")
_FRAC_HALF2 = re.compile(r"\\frac\s*(\d|[A-Za-z])\s*(\{)")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d|[A-Za-z])")
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?=(?![=<>])(.+)$")
_CHOICE = re.compile(r"^\(?([A-Ea-e])\)?$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """The content of the brace group opening at ``text[start] == "{"`` and the index after it;
    None when the braces do not balance."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]  # an escaped brace (``\{``) does not count
        if c == "{" and (i == 0 or text[i - 1] != "\\"):
            depth += 1
        elif c == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
    return None


def last_boxed(text: str | None) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` of ``text`` (braces may nest),
    or the token after an unbraced ``\\boxed 5``; None when there is none or its braces do not
    close."""
    if not text:
        return None
    for m in reversed(list(_BOX.finditer(text))):
        rest = text[m.end() :]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            got = _braced(text, m.end() + len(rest) - len(stripped))
            if got is not None:
                return got[0].strip()
            continue
        if rest[:1].isspace():  # ``\boxed 5``: up to the next space or ``$``
            token = re.match(r"[^\s$]+", stripped)
            if token:
                return token.group(0).rstrip(".")
    return None


def strip_boxed(text: str) -> str:
    """``text`` stripped, without an outer ``\\boxed{...}`` that wraps all of it."""
    text = text.strip()
    m = _BOX.match(text)
    if m:
        rest = text[m.end() :].lstrip()
        if rest.startswith("{"):
            got = _braced(text, len(text) - len(rest))
            if got is not None and got[1] == len(text):
                return got[0].strip()
        elif rest and text[m.end()].isspace() and " " not in rest:
            return rest
    return text


def _unwrap_text(s: str) -> str:
    prev = None
    while prev != s:
        prev, s = s, _TEXT.sub(r"\1", s)
    return s


def normalize_latex(answer: str | None) -> str | None:
    """A canonical string for a final answer (None for None or an empty answer).

    Strips an outer ``\\boxed{}`` and ``$``, ``\\left``/``\\right``, spacing commands (``\\!``,
    ``\\,``), ``\\text{...}`` wrappers, degrees (``^\\circ``), a trailing unit word
    (``5 \\text{ cm}``), ``%``, a trailing ``.``, every space, a single-variable assignment
    (``x=3`` -> ``3``), a multiple-choice letter's parentheses (``(A)`` -> ``A``);
    ``\\dfrac``/``\\tfrac`` -> ``\\frac``; ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` ->
    ``\\sqrt{2}``; numbers lose thousands separators and trailing zeros (``1,000.50`` ->
    ``1000.5``).
    """
    if answer is None:
        return None
    s = strip_boxed(answer)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREES.sub("", s)
    s = _unwrap_text(s).strip()
    s = _TRAILING_UNIT.sub("", s.rstrip(".").strip())
    s = _SPACES.sub("", s).rstrip(".")
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF.sub(r"\\frac\1{\2}", s)
    s = _FRAC_HALF2.sub(r"\\frac{\1}\2", s)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    m = _ASSIGNMENT.match(s)
    if m:
        s = m.group(1)
    m = _CHOICE.match(s)
    if m:
        s = m.group(1).upper()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if s.startswith("."):
        s = "0" + s
    elif s.startswith("-."):
        s = "-0" + s[1:]
    number = normalize_number(s) if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", s) else None
    s = number if number is not None else s
    return s or None
