"""Test-time variance metrics against a hand-computed table (majority-vote ties included); the
across-training table of several policies beside a run's training entropy."""

import math

import numpy as np
import pytest

from critique_jax.analysis.across_training import PolicyEval, across_markdown, across_table, training_entropy
from critique_jax.analysis.test_time import (SampleSet, answer_entropy, budget_table, correctness_variance,
                                             equal_budget, majority_at, problem_stats, sweep_report)

LN2 = math.log(2)


def _set(uid, correct, answers, tokens, budget=16):
    return SampleSet(uid=uid, difficulty=1, budget=budget, correct=correct, answers=answers, tokens=tokens)


# Four problems, n = 4 samples each: a mixed one with a missing answer, a 2-2 tie, all cut off, all right.
SETS = [_set("mixed", [1, 0, 1, 0], ["7", "8", "7", None], [10, 20, 30, 40]),
        _set("tie", [0, 1, 1, 0], ["5", "6", "6", "5"], [5, 5, 5, 5]),
        _set("cut", [0, 0, 0, 0], [None] * 4, [48] * 4),
        _set("right", [1, 1, 1, 1], ["9"] * 4, [12] * 4)]

# Per problem, by hand: pass@1, p(1-p), entropy (None its own category), no-answer share, maj@1, maj@2, maj@4.
TABLE = {
    # answers 7,8,7,None: shares 1/2, 1/4, 1/4 -> H = 1.5 ln 2. maj@2: [7,8] tie -> 7 (right), [7,None] -> 7.
    "mixed": (0.5, 0.25, 1.5 * LN2, 0.25, 0.5, 1.0, 1.0),
    # 5,6,6,5: a 2-2 tie over all four goes to 5 (appears first): wrong. maj@2: [5,6] -> 5, [6,5] -> 6.
    "tie": (0.5, 0.25, LN2, 0.0, 0.5, 0.5, 0.0),
    "cut": (0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0),  # no votes: never correct
    "right": (1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0),
}
KEYS = ("pass@1", "correct_var", "answer_entropy", "no_answer", "maj@1", "maj@2", "maj@4")


def test_per_problem_table():
    for s in SETS:
        got = problem_stats(s, (1, 2, 4), answer_graded=True)
        assert [got[k] for k in KEYS] == pytest.approx(list(TABLE[s.uid])), s.uid
    assert problem_stats(SETS[0], (1, 2), answer_graded=False)["maj@2"] is None
    assert correctness_variance([1, 0, 0]) == pytest.approx(2 / 9)
    assert answer_entropy(["a", "b", "c"]) == pytest.approx(math.log(3))
    assert majority_at(["a", "b", "b", "a"], [1, 0, 0, 1], 4) == 1.0  # tied: "a" appears first
    assert majority_at(["7", "7", "8", "8"], [1, 1, 0, 0], 3) == 1.0  # one block of 3, the 4th sample unused
    with pytest.raises(ValueError, match=r"k=5, expected 1 <= k <= n=4"):
        majority_at(["7"] * 4, [1] * 4, 5)


def test_budget_table_is_the_mean_of_the_problems():
    got = budget_table(SETS, (1, 2, 4), answer_graded=True)
    want = np.mean(list(TABLE.values()), axis=0)
    assert [got[k] for k in KEYS] == pytest.approx(list(want))
    assert got["maj@2"] == pytest.approx(0.625) and got["answer_entropy"] == pytest.approx(0.625 * LN2)
    # pass@2 = 1 - C(4 - c, 2) / C(4, 2): c = 2 -> 5/6, c = 0 -> 0, c = 4 -> 1; pass@4: solved share.
    assert got["pass@2"] == pytest.approx((5 / 6 + 5 / 6 + 0 + 1) / 4) and got["pass@4"] == pytest.approx(0.75)
    assert got["tokens_per_sample"] == pytest.approx(360 / 16) and got["n_problems"] == 4
    assert math.isnan(budget_table(SETS, (2,), answer_graded=False)["maj@2"])
    with pytest.raises(ValueError, match="different sample counts"):
        budget_table(SETS + [_set("short", [1], ["9"], [3])], (1,), True)


def test_equal_token_budget_pairs():
    tables = {16: {"maj@2": 0.625, "maj@4": 0.5, "pass@1": 0.5, "tokens_per_sample": 22.5},
              32: {"maj@2": 0.7, "maj@4": 0.6, "pass@1": 0.55, "tokens_per_sample": 30.0},
              64: {"maj@2": 0.8, "maj@4": 0.7, "pass@1": 0.6, "tokens_per_sample": 33.0}}
    rows = equal_budget(tables, (1, 2, 4))
    # (b, k) with k·b swept: (16, 2) -> 32, (16, 4) -> 64, (32, 2) -> 64.
    assert [(r["budget"], r["k"], r["token_cap"]) for r in rows] == [(16, 2, 32), (16, 4, 64), (32, 2, 64)]
    assert rows[0] == {"budget": 16, "k": 2, "token_cap": 32, "maj@k": 0.625, "pass@1_at_cap": 0.55,
                       "tokens@k": 45.0, "tokens_at_cap": 30.0}
    assert rows[1]["maj@k"] == 0.5 and rows[1]["pass@1_at_cap"] == 0.6 and rows[1]["tokens@k"] == 90.0


def test_sweep_report_groups_by_budget():
    longer = [_set(s.uid, [1] * 4, ["9"] * 4, [20] * 4, budget=32) for s in SETS]
    rep = sweep_report(longer + SETS, (1, 2), answer_graded=True)
    assert rep["budgets"] == [16, 32] and list(rep["per_budget"]) == ["16", "32"]
    assert rep["per_budget"]["16"]["maj@2"] == pytest.approx(0.625) and rep["per_budget"]["32"]["pass@1"] == 1.0
    assert rep["equal_budget"] == [{"budget": 16, "k": 2, "token_cap": 32, "maj@k": pytest.approx(0.625),
                                    "pass@1_at_cap": 1.0, "tokens@k": 45.0, "tokens_at_cap": 20.0}]


def _policy(which, step, pass1, var16=None, n=4):
    report = {"samples_per_problem": n, "pass@1": pass1, f"pass@{n}": 2 * pass1, f"maj@{n}": math.nan,
              "entropy": 1 - pass1, "source": f"ckpt/{which}"}
    sweep = None if var16 is None else {"budgets": [16], "per_budget": {"16": {"correct_var": var16,
                                                                              "answer_entropy": 2 * var16}}}
    return PolicyEval(which, step, report, sweep)


def test_across_training_table():
    """S = 2 SFT steps; RL steps 3..10 log train/entropy = step / 10 (step 4 logged twice: the last
    value counts), and rows without train/entropy (SFT, evaluation) are passed over."""
    metrics = ([{"step": 2, "sft/nll": 1.0}, {"step": 2, "eval/entropy": 9.0}, {"step": 4, "train/entropy": 9.9}]
               + [{"step": s, "train/entropy": s / 10, "eval/pass@1": 0.5} for s in range(3, 11)])
    assert training_entropy(metrics, 9, sft=False) == pytest.approx(0.7)  # steps 5..9
    assert training_entropy(metrics, 4, sft=False) == pytest.approx(0.35)  # steps 3, 4 (its last value)
    assert training_entropy(metrics, 2, sft=True) == pytest.approx(0.3)  # the first RL step's rollouts
    assert math.isnan(training_entropy(metrics, 2, sft=False)) and math.isnan(training_entropy([], 2, sft=True))
    policies = [_policy("9", 9, 0.6, var16=0.1), _policy("sft", 2, 0.2, var16=0.2), _policy("1", 1, 0.1)]
    table = across_table(policies, metrics, rl_offset=2)
    assert table["budgets"] == [16] and table["samples_per_problem"] == 4 and table["entropy_window"] == 5
    got = [(r["which"], r["step"], r["rl_step"], r["train_entropy"], r["pass@1"], r["pass@4"], r["eval_entropy"],
            r["correct_var/16"], r["answer_entropy/16"]) for r in table["rows"]]
    want = [("1", 1, -1, math.nan, 0.1, 0.2, 0.9, math.nan, math.nan),  # an SFT-phase checkpoint, no sweep
            ("sft", 2, 0, 0.3, 0.2, 0.4, 0.8, 0.2, 0.4), ("9", 9, 7, 0.7, 0.6, 1.2, 0.4, 0.1, 0.2)]
    assert got == [pytest.approx(w, nan_ok=True) for w in want]
    assert all(math.isnan(r["maj@4"]) for r in table["rows"]) and table["rows"][2]["source"] == "ckpt/9"
    md = across_markdown(table, "t")
    assert "| policy | step | RL step | train entropy | pass@1 | pass@4 | maj@4 | eval entropy | var b=16 | " \
           "H(answer) b=16 |" in md
    assert "| sft | 2 | 0 | 0.3000 | 0.2000 | 0.4000 | nan | 0.8000 | 0.2000 | 0.4000 |" in md
    assert across_table(policies[:1], [], rl_offset=0)["rows"][0]["rl_step"] == 9  # init_from: RL from step 1
    with pytest.raises(ValueError, match="different samples per problem"):
        across_table(policies + [_policy("10", 10, 0.5, n=2)], metrics, rl_offset=2)
    with pytest.raises(ValueError, match="no policies"):
        across_table([], metrics, rl_offset=2)
