"""Final-answer extraction and equivalence: GSM8K numbers, MATH LaTeX (boxes, the normaliser,
math-verify in the process pool), the timeout path, and the math task's rewards."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from critique_jax.tasks import get_task, verifier
from critique_jax.tasks.base import Problem
from critique_jax.tasks.competition_math import parse_level, response_answer
from critique_jax.tasks.gsm8k import parse_numeric_answer
from critique_jax.tasks.latex import last_boxed, normalize_latex

needs_math_verify = pytest.mark.skipif(not verifier.has_math_verify(), reason="math-verify is not installed")


def slow_backend(reference: str, answer: str) -> bool:
    """A verifier that never finishes in time (runs in the pool's worker processes)."""
    time.sleep(60)
    return True


def deaf_backend(reference: str, answer: str) -> bool:
    """A verifier the worker's alarm cannot interrupt (as if stuck in C code)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(60)
    return True


# ---------------------------------------------------------------- GSM8K numbers

@pytest.mark.parametrize("text, want", [
    ("1,000", "1000"), ("$1,000.00", "1000"), ("1000.0", "1000"), ("1000.", "1000"), ("-3.50", "-3.5"),
    ("$ 18", "18"), ("18 dollars", "18"), ("+7", "7"), ("-0", "0"), ("12,345,678", "12345678"),
    ("3 or 4", None), ("many", None), ("", None), (None, None),
])
def test_gsm8k_numeric_normalisation(text, want):
    assert parse_numeric_answer(text) == want


# ---------------------------------------------------------------- boxes

@pytest.mark.parametrize("text, want", [
    (r"so the answer is \boxed{\frac{\sqrt{2}}{2}}.", r"\frac{\sqrt{2}}{2}"),
    (r"\boxed{1} first, then \boxed{2}", "2"),
    (r"\boxed 5", "5"),
    (r"$\boxed 12$.", "12"),
    (r"\fbox{7}", "7"),
    (r"\boxed{\text{(A)}}", r"\text{(A)}"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"\boxed{ (-\infty, 3] }", r"(-\infty, 3]"),
    (r"\boxed{unclosed", None),
    ("no box here", None),
    ("", None),
])
def test_last_boxed(text, want):
    assert last_boxed(text) == want


@pytest.mark.parametrize("text, want", [
    ("step\nanswer: 5", "5"),
    ("step\nanswer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("so \\boxed{3}\nanswer: 4", "4"),  # the answer line wins
    ("so \\boxed{3}.", "3"),
    ("no answer", None),
])
def test_response_answer(text, want):
    assert response_answer(text) == want


# ---------------------------------------------------------------- normaliser and equivalence

@pytest.mark.parametrize("text, want", [
    (r"\frac12", r"\frac{1}{2}"), (r"\dfrac{1}{2}", r"\frac{1}{2}"), (r"\tfrac34.", r"\frac{3}{4}"),
    (r"\text{(A)}", "A"), ("(b)", "B"), ("1,000", "1000"), (r"5 \text{ cm}", "5"), ("4 units", "4"),
    ("x=3", "3"), (r"\left[2, 5\right)", "[2,5)"), (r"90^\circ", "90"), (r"10\%", "10"), ("3.50", "3.5"),
    (".5", "0.5"), (r"\$5.00", "5"), (r"\sqrt2", r"\sqrt{2}"), (r"\boxed{3}", "3"), (r"3\!", "3"),
    ("1,2", "1,2"), ("", None), (None, None),
])
def test_normalize_latex(text, want):
    assert normalize_latex(text) == want


# (reference, answer, equivalent): the normaliser settles some, math-verify the others.
EQUIVALENCE = [
    ("0.5", r"\frac12", True),
    (r"\frac12", "0.5", True),
    ("A", r"\text{(A)}", True),
    (r"\text{(A)}", "A", True),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    ("1000", "1,000", True),
    ("5", r"5 \text{ cm}", True),
    ("3", "x=3", True),
    ("(1,3]", r"\left(1, 3\right]", True),
    ("[2,5)", "(2,5)", False),
    (r"\dfrac{3}{4}", "0.75", True),
    (r"\frac{3}{4}", r"\tfrac34", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    ("90", r"90^\circ", True),
    ("x^2+2x+1", "(x+1)^2", True),
    (r"\{1,2\}", r"\{2,1\}", True),
    ("3", "4", False),
    ("A", "B", False),
    (r"\frac{1}{2}", r"\frac{1}{3}", False),
    ("3", None, False),
    ("3", "", False),
]


@needs_math_verify
def test_equivalence_table():
    refs, answers, want = zip(*EQUIVALENCE)
    got = verifier.equivalent_many(refs, answers)
    bad = [(r, a, w) for r, a, w, g in zip(refs, answers, want, got) if g != w]
    assert not bad, bad
    assert verifier.equivalent("0.5", r"\frac12") and not verifier.equivalent("0.5", "0.6")


def test_normaliser_alone_settles_string_equal_forms_without_a_backend():
    # No process: pairs equal after normalising never reach the backend.
    got = verifier.equivalent_many(["1000", "A", "3"], ["1,000", r"\text{(A)}", "x = 3"], backend=slow_backend)
    assert got.tolist() == [True, True, True]


def test_a_slow_check_times_out_counts_and_is_not_equivalent():
    verifier.take_timeout_count()
    start = time.monotonic()
    got = verifier.equivalent_many(["1", "2", "3"], ["a", "b", "3"], timeout_s=0.5, backend=slow_backend)
    elapsed = time.monotonic() - start
    assert got.tolist() == [False, False, True]
    assert verifier.timeout_count() == 2
    assert verifier.take_timeout_count() == 2 and verifier.timeout_count() == 0
    assert elapsed < 45, elapsed  # the 60 s sleeps were cut short (pool start-up included)


def test_a_check_deaf_to_its_alarm_is_killed_at_the_batch_deadline(monkeypatch):
    monkeypatch.setattr(verifier, "STARTUP_S", 20.0)
    verifier.take_timeout_count()
    got = verifier.equivalent_many(["1"], ["a"], timeout_s=0.5, backend=deaf_backend)
    assert got.tolist() == [False] and verifier.take_timeout_count() == 1
    assert verifier._pool is None  # killed; the next check makes a new pool
    got = verifier.equivalent_many(["1"], ["a"], timeout_s=0.5, backend=slow_backend)
    assert got.tolist() == [False] and verifier.take_timeout_count() == 1


@needs_math_verify
def test_a_pathological_expression_times_out():
    verifier.take_timeout_count()
    assert not verifier.equivalent(r"10^{10^{10}}", "1", timeout_s=1.0)
    assert verifier.take_timeout_count() == 1


def test_configure_checks_its_arguments():
    with pytest.raises(ValueError, match="timeout_s=0"):
        verifier.configure(timeout_s=0)
    with pytest.raises(ValueError, match="workers=-1"):
        verifier.configure(workers=-1)


# ---------------------------------------------------------------- the math task

def _problem(answer: str, level: int = 3) -> Problem:
    solution = f"Compute it.\nSo it is $\\boxed{{{answer}}}$.\nanswer: {answer}"
    return Problem(f"math/test/t/{level}", "What is it?", answer, level, {"solution": solution, "type": "Algebra"})


@needs_math_verify
def test_math_rewards_equal_the_reward_loop():
    task = get_task("math")
    p, q = _problem(r"\frac{1}{2}"), _problem(r"\text{(C)}")
    problems = [p, p, p, p, q, q]
    texts = ["x\nanswer: 0.5", "so \\boxed{\\dfrac12}.", "x\nanswer: 1/3", "no answer", "x\nanswer: C", "x\nanswer: D"]
    got = task.rewards(problems, texts)
    assert got.dtype == np.float32 and got.tolist() == [1, 1, 0, 0, 1, 0]
    assert [task.reward(a, b) for a, b in zip(problems, texts)] == got.tolist()
    with pytest.raises(ValueError, match="2 problems but 1 texts"):
        task.rewards([p, p], ["x"])


def test_base_rewards_loop_over_reward():
    task = get_task("gsm8k")
    p = Problem("gsm8k/t/1", "2 + 2?", "4", 1, {"solution": "2 + 2 = 4\nanswer: 4"})
    assert task.rewards([p, p], ["2 + 2 = 4\nanswer: 4", "answer: 5"]).tolist() == [1.0, 0.0]


@needs_math_verify
def test_math_check_steps_and_perturbations():
    task = get_task("math")
    for answer in [r"\frac{\sqrt{2}}{2}", "12", r"\text{(B)}", r"(-\infty, 3]", r"\pi", "x^2+1"]:
        p = _problem(answer)
        (sol,) = task.solutions(p, np.random.default_rng(0), 4)
        assert task.check_steps(p, sol).ok and task.reward(p, sol) == 1.0 and task.format_ok(sol)
        for seed in range(3):
            pert = task.perturb(p, sol, np.random.default_rng(seed))
            check = task.check_steps(p, pert.solution)
            assert (check.first_wrong, check.kind) == (pert.step, pert.kind) == (2, "wrong_answer"), pert
            assert task.reward(p, pert.solution) == 0.0
            assert last_boxed(pert.solution.splitlines()[1]) == response_answer(pert.solution)  # box rewritten too
    p = _problem("7")
    assert (task.check_steps(p, "thinking").first_wrong, task.check_steps(p, "thinking").kind) == (1, "missing_answer")
    assert task.check_steps(p, "a\nso \\boxed{8}\nthe end").first_wrong == 1  # the line with the box
    assert not task.exact_step_checker and not task.generative


def test_math_levels():
    assert parse_level("Level 3", "f:1") == 3 and parse_level(5, "f:1") == 5 and parse_level("level 1", "f:1") == 1
    assert parse_level("Level ?", "f:1") is None
    for bad in ("Level 9", "hard", 0):
        with pytest.raises(ValueError, match=r"^f:1: level .*expected 'Level 1'..'Level 5'"):
            parse_level(bad, "f:1")
