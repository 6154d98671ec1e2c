"""Tasks: generators, reference solutions, step checkers, perturbers, registry, GSM8K loader."""

import collections
import itertools
import json
import re
from fractions import Fraction

import numpy as np
import pytest

from critique_jax.tasks import (
    get_task,
    join_steps,
    iter_problems,
    load_jsonl,
    make_problem,
    split_steps,
    task_names,
)
from critique_jax.tasks import arithmetic as arith_lib
from critique_jax.tasks import countdown as cd_lib
from critique_jax.tasks import expr as ex
from critique_jax.tasks.base import Problem, Task

GENERATED = ("arithmetic", "countdown")
N_PER_LEVEL = 60


def _problems(name, n=N_PER_LEVEL, seed=0):
    task = get_task(name)
    return [make_problem(task, "train", seed, i, d) for d in task.difficulties for i in range(n)]


@pytest.fixture(scope="module", params=GENERATED)
def task_and_solutions(request):
    """(task, [(problem, solutions)]) over every difficulty."""
    task = get_task(request.param)
    out = []
    for p in _problems(request.param):
        rng = np.random.default_rng([7, p.difficulty, int(p.uid.rsplit("/", 1)[1])])
        out.append((p, task.solutions(p, rng, 4)))
    return task, out


def test_registry_lists_tasks_and_rejects_unknown_names():
    assert set(task_names()) >= {"arithmetic", "countdown", "gsm8k"}
    with pytest.raises(KeyError) as err:
        get_task("sudoku")
    assert "sudoku" in str(err.value)
    for name in task_names():
        assert name in str(err.value)


def test_reference_solutions_verify(task_and_solutions):
    task, items = task_and_solutions
    for p, sols in items:
        assert 1 <= len(sols) <= 4 and len(set(sols)) == len(sols), p
        for s in sols:
            check = task.check_steps(p, s)
            assert check.ok and check.kind == "ok", (p.question, s, check)
            assert check.n_steps == len(s.strip().splitlines())
            assert task.reward(p, s) == 1.0 and task.format_ok(s)
            assert task.extract_answer(s) == p.answer


def test_perturbations_fail_at_the_planted_step(task_and_solutions):
    task, items = task_and_solutions
    kinds = collections.Counter()
    for j, (p, sols) in enumerate(items):
        rng = np.random.default_rng(j)
        for s in sols:
            pert = task.perturb(p, s, rng)
            check = task.check_steps(p, pert.solution)
            assert (check.first_wrong, check.kind) == (pert.step, pert.kind), (s, pert, check)
            assert not check.ok
            if task.name == "countdown":
                assert task.reward(p, pert.solution) == 0.0
            # The steps before the planted error are the correct solution's own.
            good, bad = split_steps(s)[0], split_steps(pert.solution)[0]
            assert bad[: pert.step] == good[: pert.step]
            kinds[pert.kind] += 1
    expected = {
        "arithmetic": {"arithmetic", "invalid_step", "incomplete", "wrong_answer"},
        "countdown": {"arithmetic", "unavailable_number", "wrong_answer"},
    }[task.name]
    assert set(kinds) == expected, kinds


def test_perturb_rejects_a_wrong_solution():
    for name in GENERATED:
        task = get_task(name)
        p = make_problem(task, "train", 0, 0, task.default_difficulty)
        with pytest.raises(ValueError, match="correct"):
            task.perturb(p, "answer: 1", np.random.default_rng(0))


@pytest.mark.parametrize("name", GENERATED)
def test_generators_are_deterministic_per_seed(name):
    task = get_task(name)
    a = list(iter_problems(task, "train", 3, 40))
    b = list(iter_problems(task, "train", 3, 40))
    c = list(iter_problems(task, "train", 4, 40))
    assert a == b
    assert [p.uid for p in a] == [f"{name}/train/3/{i}" for i in range(40)]
    assert sum(x.question != y.question for x, y in zip(a, c)) > 30
    assert len({p.question for p in a}) > 30
    sols = [task.solutions(a[5], np.random.default_rng(1), 4) for _ in range(2)]
    assert sols[0] == sols[1]
    # A problem does not depend on how many came before it.
    assert make_problem(task, "train", 3, 17, a[17].difficulty) == a[17]


def test_iter_problems_excludes_questions_and_stops_when_exhausted():
    task = get_task("arithmetic")
    test = list(iter_problems(task, "test", 0, 30))
    excluded = {p.question for p in test}
    same_split = list(iter_problems(task, "test", 0, 20, exclude_questions=excluded))
    assert not any(p.question in excluded for p in same_split)
    with pytest.raises(ValueError, match="exhausted"):
        list(iter_problems(task, "test", 0, 5, exclude_questions=excluded, max_skips_in_a_row=10))


# --- arithmetic ------------------------------------------------------------------------------


def test_arithmetic_problems_match_their_level():
    task = get_task("arithmetic")
    for p in _problems("arithmetic", n=100):
        tree = ex.parse(p.question)
        values = ex.node_values(tree)
        assert len(values) == arith_lib.OPS_PER_LEVEL[p.difficulty] == p.difficulty + 1
        assert all(isinstance(v, int) and 0 <= v <= 999 for v in values)
        assert p.answer == str(eval(p.question))  # Python's own precedence rules
        assert ex.render(tree) == p.question  # round trip
    assert task.default_difficulty in task.difficulties[1:-1]


def test_arithmetic_writes_several_orders_and_styles():
    task = get_task("arithmetic")
    p = Problem("u", "(3 + 5) * (2 + 1) - 7", "17", 2, {"expression": "(3 + 5) * (2 + 1) - 7"})
    sols = task.solutions(p, np.random.default_rng(0), 8)
    firsts = {s.splitlines()[0].split(" =")[0] for s in sols}
    assert firsts == {"3 + 5", "2 + 1"}
    assert any(", so " in s for s in sols) and any(", so " not in s for s in sols)


ARITH = Problem("u", "(3 + 5) * 2 - 7", "9", 1, {"expression": "(3 + 5) * 2 - 7"})


@pytest.mark.parametrize(
    "text, first_wrong, kind",
    [
        ("3 + 5 = 8\n8 * 2 = 16\n16 - 7 = 9\nanswer: 9", None, "ok"),
        ("5 + 3 = 8\n2 * 8 = 16\n16 - 7 = 9\nanswer: 9", None, "ok"),  # commuted + and *
        (
            "3 + 5 = 8, so 8 * 2 - 7\n8 * 2 = 16, so (16) - 7\n16 - 7 = 9, so 9\nanswer: 9",
            None,
            "ok",
        ),
        ("(3 + 5) = 8\n8 * 2 = 16.\n16 - 7 = 9\nanswer: 9.0", None, "ok"),
        ("3 + 5 = 8\nthen double it\n16 - 7 = 9\nanswer: 9", 1, "unparsable"),
        ("3 + 5 = 8\n8 * 2 = 16\n16 - 7 = 9", 3, "missing_answer"),
        ("3 + 5 = 8\n8 * 2 = 16\n16 - 7 = 9\nanswer: 10", 3, "wrong_answer"),
        ("3 + 5 = 8\n8 * 2 = 16\n16 - 7 = 9\nanswer: nine", 3, "unparsable"),
        ("3 + 5 = 8\n8 * 2 = 16\nanswer: 16", 2, "incomplete"),
        ("answer: 9", 0, "incomplete"),
        ("3 + 5 = 8\n8 * 2 = 17\n17 - 7 = 10\nanswer: 10", 1, "arithmetic"),
        ("3 + 5 = 8\n2 - 7 = -5\nanswer: 3", 1, "invalid_step"),  # precedence violation
        ("5 * 2 = 10\nanswer: 9", 0, "invalid_step"),  # ignores the parentheses
        ("3 + 5 = 8\n8 * 2 = 16\n7 - 16 = -9\nanswer: -9", 2, "invalid_step"),  # - commuted
        ("3 + 5 * 2 = 13\nanswer: 9", 0, "invalid_step"),  # two operations at once
        ("3 + 5 = 8, so 8 * 2 - 8\n8 * 2 = 16\n16 - 8 = 8\nanswer: 8", 0, "wrong_rewrite"),
        ("3 + 5 = 8\n8 * 2 = 16\n16 - 7 = 9\n9 + 0 = 9\nanswer: 9", 3, "invalid_step"),
    ],
)
def test_arithmetic_step_checker_cases(text, first_wrong, kind):
    check = get_task("arithmetic").check_steps(ARITH, text)
    assert (check.first_wrong, check.kind) == (first_wrong, kind)
    assert check.n_steps == len(text.splitlines())


def test_arithmetic_checker_follows_identical_subexpressions():
    # Either (2 + 3) may be reduced first; the checker keeps both readings until one is ruled out.
    q = "(2 + 3) * 4 + (2 + 3)"
    p = Problem("u", q, "25", 2, {"expression": q})
    task = get_task("arithmetic")
    right_first = "2 + 3 = 5\n2 + 3 = 5\n5 * 4 = 20\n20 + 5 = 25\nanswer: 25"
    left_then_mult = "2 + 3 = 5\n5 * 4 = 20\n2 + 3 = 5\n20 + 5 = 25\nanswer: 25"
    assert task.check_steps(p, right_first).ok and task.check_steps(p, left_then_mult).ok
    rewrite = "2 + 3 = 5, so (2 + 3) * 4 + 5\n5 * 4 = 20\nanswer: 20"
    assert task.check_steps(p, rewrite).kind == "invalid_step"


# --- countdown -------------------------------------------------------------------------------


def test_countdown_problems_match_their_level():
    for p in _problems("countdown", n=100):
        level = cd_lib.LEVELS[p.difficulty]
        numbers, target = p.meta["numbers"], p.meta["target"]
        assert len(numbers) == level.n_small + level.n_large and numbers == sorted(numbers)
        assert sum(n in cd_lib.LARGE for n in numbers) >= level.n_large
        lo, hi = level.target_range
        assert lo <= target <= hi and target not in numbers and p.answer == str(target)
        assert p.question == f"numbers: {' '.join(map(str, numbers))}, target: {target}"


def test_countdown_has_several_distinct_solutions_at_medium_difficulty():
    task = get_task("countdown")
    counts = []
    for i in range(100):
        p = make_problem(task, "test", 0, i, task.default_difficulty)
        sols = task.solutions(p, np.random.default_rng(i), 8)
        steps = [frozenset(collections.Counter(map(_step_key, split_steps(s)[0])).items())
                 for s in sols]
        assert len(set(steps)) == len(sols)  # distinct computations, not reorderings
        counts.append(len(sols))
    assert task.default_difficulty == 2
    assert np.mean(counts) > 1.5, np.mean(counts)


def _step_key(line: str):
    """A step with the operands of + and * sorted."""
    step = ex.parse_step(line)
    if step is None:
        return line
    op, a, b = step.lhs
    return (op, *(sorted([a, b]) if op in "+*" else [a, b]), step.result)


def _brute_force(numbers, target):
    """Step multisets (see _step_key) of all expressions over sub-multisets of ``numbers``
    equal to target, under the search's rules (values 1..10000, no * 1 or / 1), by plain
    recursion over ordered splits."""
    limit = cd_lib.MAX_VALUE
    memo = {}

    def exprs(idx: frozenset):
        """{(step multiset, value)} over exactly the numbers at ``idx``."""
        if idx not in memo:
            if len(idx) == 1:
                (i,) = idx
                memo[idx] = {(frozenset(), numbers[i])}
            else:
                out = set()
                members = sorted(idx)
                for r in range(1, len(members)):
                    for left in itertools.combinations(members, r):
                        left = frozenset(left)
                        for (sa, a), (sb, b) in itertools.product(exprs(left), exprs(idx - left)):
                            steps = collections.Counter(dict(sa)) + collections.Counter(dict(sb))
                            for op, v, ok in (
                                ("+", a + b, a + b <= limit),
                                ("*", a * b, 1 not in (a, b) and a * b <= limit),
                                ("-", a - b, a > b),
                                ("/", a // b, b != 1 and a % b == 0),
                            ):
                                if ok:
                                    key = (op, *(sorted([a, b]) if op in "+*" else [a, b]), v)
                                    new = steps + collections.Counter([key])
                                    out.add((frozenset(new.items()), v))
                memo[idx] = out
        return memo[idx]

    found = set()
    for r in range(2, len(numbers) + 1):
        for idx in itertools.combinations(range(len(numbers)), r):
            found |= {s for s, v in exprs(frozenset(idx)) if v == target}
    return found


def test_countdown_search_finds_exactly_the_brute_force_solutions(np_rng):
    for _ in range(25):
        n = int(np_rng.integers(3, 5))
        numbers = sorted(int(x) for x in np_rng.integers(1, 11, size=n - 1)) + [
            int(np_rng.choice(cd_lib.LARGE))
        ]
        target = int(np_rng.integers(10, 120))
        trees = cd_lib.find_solutions(numbers, target, cap=10**9)
        got = [_steps_of(t) for t in trees]
        assert len(set(got)) == len(got)
        assert set(got) == _brute_force(numbers, target), (numbers, target)
        assert all(ex.evaluate(t) == target for t in trees)


def _steps_of(tree) -> frozenset:
    """The step multiset of a solution tree, read from the lines it is written as."""
    lines = cd_lib.linearize(tree, np.random.default_rng(0))
    return frozenset(collections.Counter(map(_step_key, lines)).items())


CD = Problem("u", "numbers: 3 7 25 50, target: 82", "82", 2,
             {"numbers": [3, 7, 25, 50], "target": 82})


@pytest.mark.parametrize(
    "text, first_wrong, kind",
    [
        ("25 + 50 = 75\n75 + 7 = 82\nanswer: 82", None, "ok"),
        ("50 + 25 = 75\n7 + 75 = 82\nanswer: 82", None, "ok"),
        ("(25 + 50) + 7 = 82\nanswer: 82", None, "ok"),  # several operations in one line
        ("3 - 7 = -4\n50 + 25 = 75\n75 + 7 = 82\nanswer: 82", 2, "unavailable_number"),
        ("25 + 50 = 75\n75 + 25 = 100\nanswer: 100", 1, "unavailable_number"),  # 25 reused
        ("25 + 50 = 75\n75 + 7 = 82\n82 * 1 = 82\nanswer: 82", 2, "unavailable_number"),
        ("7 * 7 = 49\nanswer: 82", 0, "unavailable_number"),  # one 7 only
        ("25 + 50 = 76\n76 + 6 = 82\nanswer: 82", 0, "arithmetic"),
        ("25 / 7 = 3\nanswer: 82", 0, "arithmetic"),  # inexact division
        ("50 / 25 = 2.0\n2 * 3 = 6\nanswer: 82", 2, "wrong_answer"),
        ("25 + 50 = 75\nthen add 7\nanswer: 82", 1, "unparsable"),
        ("25 + 50 = 75\n75 + 7 = 82", 2, "missing_answer"),
        ("25 + 50 = 75\n75 + 7 = 82\nanswer: 83", 2, "wrong_answer"),
        ("25 + 50 = 75\n75 + 3 = 78\nanswer: 82", 2, "wrong_answer"),  # claims the target
        ("answer: 82", 0, "wrong_answer"),  # copies the target from the question
        ("25 + 50 = 75\n75 + 7 = 82\nanswer: eighty-two", 2, "unparsable"),
    ],
)
def test_countdown_step_checker_cases(text, first_wrong, kind):
    task = get_task("countdown")
    check = task.check_steps(CD, text)
    assert (check.first_wrong, check.kind) == (first_wrong, kind)
    assert task.reward(CD, text) == float(kind == "ok")


def test_countdown_reachability_is_the_brute_force_search(np_rng):
    for _ in range(40):
        numbers = sorted(int(x) for x in np_rng.integers(1, 11, size=int(np_rng.integers(1, 4))))
        target = int(np_rng.integers(1, 60))
        brute = target in numbers or any(_brute_force(list(sub), target)
                                         for r in range(2, len(numbers) + 1)
                                         for sub in itertools.combinations(numbers, r))
        assert cd_lib.reachable(numbers, target) == brute, (numbers, target)
    assert cd_lib.reachable([0, 5, 7], 12) and not cd_lib.reachable([0, 4], 9)  # a 0 left by "a - a" is no error


@pytest.mark.parametrize(
    "text, dead",
    [
        ("25 + 50 = 75\n75 + 7 = 82\nanswer: 82", None),  # correct: never a dead end
        ("3 * 25 = 75\n75 + 50 = 125\nanswer: 82", (1, "75 + 50 = 125 leaves 7 125, 82 unreachable")),
        ("3 * 7 = 21\n21 + 50 = 71\nanswer: 82", (0, "3 * 7 = 21 leaves 25 50 21, 82 unreachable")),
        ("25 + 50 = 76\nanswer: 82", None),  # an arithmetic slip comes first
        ("7 * 7 = 49\nanswer: 82", None),  # an unavailable number comes first
        ("25 + 50 = 75\n75 - 3 = 72\nanswer: 82", (1, "75 - 3 = 72 leaves 7 72, 82 unreachable")),
    ],
)
def test_countdown_dead_end_is_the_first_right_step_that_loses_the_target(text, dead):
    task = get_task("countdown")
    assert task.has_plan_checker and not get_task("gsm8k").has_plan_checker
    assert task.dead_end(CD, text) == dead


def test_hinted_steps_solve_from_the_numbers_left():
    task = get_task("countdown")
    text = "25 + 50 = 75\n75 - 3 = 72\nanswer: 82"  # step 2 is the dead end: from 3 7 75, 75 + 7 = 82
    assert task.hinted_steps(CD, text, 1) == ["7 + 75 = 82"]
    assert task.reward(CD, join_steps(["25 + 50 = 75"] + task.hinted_steps(CD, text, 1), 82)) == 1
    assert task.hinted_steps(CD, "25 + 50 = 76\nanswer: 82", 1) is None  # a wrong step before it
    assert task.hinted_steps(CD, "3 * 7 = 21\nanswer: 82", 1) is None  # out of reach


def test_planted_dead_ends_are_right_first_steps_into_a_dead_end(np_rng):
    task = get_task("countdown")
    for k in range(40):
        p = make_problem(task, "train", 0, k, 1 + k % 3)
        planted = task.plant_dead_end(p, np_rng)
        assert planted.step == 0 and planted.kind == "plan" and task.reward(p, planted.solution) == 0
        assert task.dead_end(p, planted.solution)[0] == 0 and task.check_steps(p, planted.solution).first_wrong > 0
        for sol in task.solutions(p, np_rng, 4):
            assert task.dead_end(p, sol) is None


# --- gsm8k -----------------------------------------------------------------------------------

GSM_RECORDS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half "
        "as many clips in May. How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
        "<<48+24=72>>72 clips altogether in April and May.\n#### 72",
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 "
        "minutes of babysitting. How much did she earn?",
        "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she "
        "earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
    },
    {
        "question": "A shop sells 250 pens a day. How many in 4 days?",
        "answer": "It sells 250*4 = <<250*4=1000>>1000 pens.\n#### 1,000",
    },
]


@pytest.fixture
def gsm_file(tmp_path):
    path = tmp_path / "mini_gsm.jsonl"
    lines = [json.dumps(GSM_RECORDS[0]), "", json.dumps(GSM_RECORDS[1]), json.dumps(GSM_RECORDS[2])]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gsm8k_loader_reads_problems_and_solutions(gsm_file):
    problems = load_jsonl(gsm_file)
    assert [p.uid for p in problems] == ["gsm8k/mini_gsm/1", "gsm8k/mini_gsm/3", "gsm8k/mini_gsm/4"]
    assert [p.answer for p in problems] == ["72", "10", "1000"]
    assert problems[0].question == GSM_RECORDS[0]["question"]
    assert problems[0].meta["solution"] == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "answer: 72"
    )
    assert [p.difficulty for p in problems] == [2, 2, 1]
    task = get_task("gsm8k")
    for p in problems:
        (sol,) = task.solutions(p, np.random.default_rng(0), 4)
        assert "<<" not in sol and task.check_steps(p, sol).ok and task.reward(p, sol) == 1.0


def test_gsm8k_reward_normalises_numbers(gsm_file):
    task = get_task("gsm8k")
    p = load_jsonl(gsm_file)[2]
    for good in ("1000", "1,000", "$1000", "1000.0", "$1,000.00", "1000 pens"):
        assert task.reward(p, f"250*4 = 1000\nanswer: {good}") == 1.0, good
    for bad in ("100", "999 or 1000", "", "many"):
        assert task.reward(p, f"250*4 = 1000\nanswer: {bad}") == 0.0, bad
    assert task.reward(p, "250*4 = 1000") == 0.0  # no answer line


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "invalid JSON"),
        ('["question", "answer"]', "JSON object"),
        ('{"question": "q"}', "'answer'"),
        ('{"question": "q", "answer": "it is 5"}', "####"),
        ('{"question": "q", "answer": "5\\n#### five"}', "no number"),
    ],
)
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GSM_RECORDS[0]) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=expected) as err:
        load_jsonl(path)
    assert f"{path}:3:" in str(err.value)


def test_gsm8k_checks_equations_and_cannot_generate(gsm_file):
    task = get_task("gsm8k")
    p = load_jsonl(gsm_file)[1]
    cases = {
        "Weng earns 12/60 = 0.2 per minute.\n0.2 x 50 = 10\nanswer: 10": (None, "ok"),
        "12/60 = 0.3 per minute.\n0.3 x 50 = 15\nanswer: 15": (0, "arithmetic"),
        "She earns 10/3 = 3.33 and 2*3 = 6 + 4 = 11\nanswer: 10": (0, "arithmetic"),
        "She earns 10/3 = 3.33 and 2*3 = 6 + 4 = 10\nanswer: 10": (None, "ok"),
        "She earns ten dollars\nanswer: 12": (1, "wrong_answer"),
        "She earns ten dollars": (1, "missing_answer"),
    }
    for text, want in cases.items():
        check = task.check_steps(p, text)
        assert (check.first_wrong, check.kind) == want, text
    assert not task.generative and get_task("arithmetic").generative
    with pytest.raises(NotImplementedError, match="load_jsonl"):
        make_problem(task, "train", 0, 0, task.default_difficulty)


def test_gsm8k_perturbations_fail_at_the_planted_step(gsm_file):
    task = get_task("gsm8k")
    kinds = collections.Counter()
    for p in load_jsonl(gsm_file):
        sol = task.solutions(p, np.random.default_rng(0), 1)[0]
        for seed in range(20):
            pert = task.perturb(p, sol, np.random.default_rng(seed))
            check = task.check_steps(p, pert.solution)
            assert (check.first_wrong, check.kind) == (pert.step, pert.kind)
            kinds[pert.kind] += 1
    assert set(kinds) == {"arithmetic", "wrong_answer"}


# --- step notes (the worked critique format) --------------------------------------------------

_CD_LINE = re.compile(r"^(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def _countdown_reference(numbers, target, lines, answer):
    """Notes and (first_wrong, kind) of single-operation countdown lines, recomputed from the rules."""
    pool, notes, last = list(numbers), [], None
    for i, line in enumerate(lines):
        m = _CD_LINE.match(line)
        if m is None:
            return notes + [""], (i, "unparsable")
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        value = _OPS[op](Fraction(a), Fraction(b))
        said = f"{a} {op} {b} is {value} vs {c}" if value.denominator == 1 else f"{a} {op} {b} divides inexactly"
        need = collections.Counter([a, b])
        missing = [v for v in (a, b) if pool.count(v) < need[v]]
        if missing:
            v = missing[0]
            return notes + [f"{said}, {' '.join([str(v)] * need[v])} not in {' '.join(map(str, pool))}"], \
                (i, "unavailable_number")
        pool.remove(a)
        pool.remove(b)
        if value.denominator != 1:
            return notes + [said], (i, "arithmetic")
        pool.append(int(value))
        notes.append(f"{said}, left {' '.join(map(str, pool))}")
        if value != c:
            return notes, (i, "arithmetic")
        last = c
    if answer is None:
        return notes + ["no answer"], (len(lines), "missing_answer")
    notes.append(f"answer: {answer}, last {'none' if last is None else last}, target: {target}")
    if answer != target or last != target:
        return notes, (len(lines), "wrong_answer")
    return notes, (None, "ok")


def _countdown_texts(task, p, rng):
    """(lines, answer) of reference solutions, planted errors and random edits of them."""
    out = []
    for sol in task.solutions(p, rng, 3):
        for text in (sol, task.perturb(p, sol, rng).solution):
            lines, answer = split_steps(text)
            out.append((lines, int(answer)))
            pool = list(p.meta["numbers"]) + [int(line.rsplit("=", 1)[1]) for line in lines]
            k = int(rng.integers(len(lines)))
            a, b = (int(rng.choice(pool)) if rng.random() < 0.7 else int(rng.integers(1, 13)) for _ in range(2))
            op = str(rng.choice(list(_OPS)))
            value = _OPS[op](Fraction(a), Fraction(b))
            c = int(value) + int(rng.integers(-1, 2))
            out.append((lines[:k] + [f"{a} {op} {b} = {c}"] + lines[k + 1:], int(answer)))
            out.append((lines[:k] + ["then add them"] + lines[k:], int(answer)))
            out.append((lines, None))
            out.append((lines, int(answer) + int(rng.integers(-2, 3))))
    return out


def test_countdown_step_notes_match_a_recomputation(np_rng):
    task = get_task("countdown")
    seed = int(np_rng.integers(1 << 30))
    kinds = collections.Counter()
    for p in iter_problems(task, "train", seed, 30):
        for lines, answer in _countdown_texts(task, p, np_rng):
            text = "\n".join(lines + ([] if answer is None else [f"answer: {answer}"]))
            notes, (first_wrong, kind) = _countdown_reference(p.meta["numbers"], p.meta["target"], lines, answer)
            check = task.check_steps(p, text)
            assert (check.first_wrong, check.kind) == (first_wrong, kind), text
            assert task.step_notes(p, text) == notes, text
            kinds[kind] += 1
    assert set(kinds) == {"ok", "unparsable", "unavailable_number", "arithmetic", "missing_answer", "wrong_answer"}


def test_arithmetic_step_notes_recompute_each_step(np_rng):
    """Notes of right steps hold the true value and an expression of the question's value with
    one operation fewer; the wrong step's note shows what the checker compares against."""
    task = get_task("arithmetic")
    seed = int(np_rng.integers(1 << 30))
    note_re = re.compile(r"^(\d+) ([-+*]) (\d+) is (-?\d+) vs (-?\d+)(?:, so (.+))?$")
    kinds = collections.Counter()
    for p in iter_problems(task, "train", seed, 40):
        value = eval(p.question)
        for sol in task.solutions(p, np_rng, 2):
            for text in (sol, task.perturb(p, sol, np_rng).solution):
                lines, answer = split_steps(text)
                check, notes = task.check_steps(p, text), task.step_notes(p, text)
                assert len(notes) == (check.n_steps if check.ok else check.first_wrong + 1)
                expr = p.question
                for i, (line, note) in enumerate(zip(lines, notes)):
                    if i == check.first_wrong and check.kind == "invalid_step":
                        assert note == f"{line.split(' =')[0]} not ready in {expr}"
                        break
                    a, op, b, v, written, rest = note_re.match(note).groups()
                    assert int(v) == eval(f"{a} {op} {b}")
                    assert int(written) == ex.parse_step(line).result
                    assert rest is None or (eval(rest) == value and rest.count(" ") == expr.count(" ") - 2)
                    if i == check.first_wrong:
                        assert check.kind in ("arithmetic", "wrong_rewrite")
                        assert (int(v) != ex.parse_step(line).result) == (check.kind == "arithmetic")
                        break
                    assert ", so" not in line or note == line.replace(" = ", f" is {v} vs ", 1)
                    expr = rest or str(v)
                else:
                    assert notes[-1] == (f"answer: {answer}, value {value}" if " " not in expr else f"left {expr}")
                kinds[check.kind] += 1
    assert set(kinds) == {"ok", "arithmetic", "invalid_step", "incomplete", "wrong_answer"}


def test_step_notes_never_hold_a_decision_word_and_gsm8k_has_none():
    for name in GENERATED:
        task = get_task(name)
        for p in _problems(name, n=5):
            rng = np.random.default_rng(0)
            for sol in task.solutions(p, rng, 2):
                for text in (sol, task.perturb(p, sol, rng).solution, "", "no idea\nanswer: 3"):
                    assert not any(re.search(r"correct|wrong", n) for n in task.step_notes(p, text))
    with pytest.raises(NotImplementedError, match="task 'gsm8k' does not implement step_notes"):
        get_task("gsm8k").step_notes(Problem("gsm8k/x", "What is 2 + 2?", "4", 1), "2 + 2 = 4\nanswer: 4")


def test_solution_key_is_a_task_method():
    """``Task.solution_key`` (what the distinct-solutions count compares) per task: the same key
    from a text and from its reasoning lines, and the sameness each task documents."""
    countdown, arithmetic, gsm8k = get_task("countdown"), get_task("arithmetic"), get_task("gsm8k")
    # countdown: step order, operand order of + and *, and grouping into lines do not matter.
    cd = ["25 + 50 = 75\n75 + 7 = 82\nanswer: 82", "7 + 75 = 82\n50 + 25 = 75\nanswer: 82",
          "(25 + 50) + 7 = 82\nanswer: 82"]
    assert len({countdown.solution_key(t) for t in cd}) == 1
    assert countdown.solution_key(cd[0]) == countdown.solution_key(split_steps(cd[0])[0])
    assert countdown.solution_key(cd[0]) == (("+", 7, 75, 82), ("+", 25, 50, 75))
    assert countdown.solution_key(cd[0]) != countdown.solution_key("25 + 7 = 32\n50 + 32 = 82\nanswer: 82")
    # arithmetic: the sequence of reductions; the ", so" style and operand order do not matter.
    plain = "3 + 5 = 8\n2 + 4 = 6\n8 * 6 = 48\nanswer: 48"
    styled = "5 + 3 = 8, so 8 * (2 + 4)\n4 + 2 = 6, so 8 * 6\n6 * 8 = 48\nanswer: 48"
    assert arithmetic.solution_key(plain) == arithmetic.solution_key(styled)
    assert arithmetic.solution_key(plain) == (("+", 3, 5, 8), ("+", 2, 4, 6), ("*", 6, 8, 48))
    assert arithmetic.solution_key(plain) != arithmetic.solution_key("2 + 4 = 6\n3 + 5 = 8\n8 * 6 = 48\nanswer: 48")
    assert arithmetic.solution_key("2 +  4 = six") == ("2 + 4 = six",)
    # gsm8k keeps the base class's free-text key: lines up to case and whitespace.
    assert type(gsm8k).solution_key is Task.solution_key
    assert gsm8k.solution_key("He has 2 + 2 = 4  Pens.\nanswer: 4") == ("he has 2 + 2 = 4 pens.",)
    assert gsm8k.solution_key(["A  b", "C"]) == gsm8k.solution_key("a b\nc\nanswer: 1")
