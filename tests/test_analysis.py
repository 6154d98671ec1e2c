"""Entropy-law fits, covariance vs entropy change, pass@k curves, diversity and entropy shares."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from critique_jax.analysis import (
    covariance_vs_entropy_change,
    distinct_correct_solutions,
    early_fit_prediction,
    entropy_histogram,
    fit_entropy_law,
    law_points_from_metrics,
    pass_at_k_curve,
    pearson_r,
    solved_share_by_difficulty,
    top_fraction_threshold,
)
from critique_jax.tasks import Problem, get_task, join_steps, make_problem
from critique_jax.tasks.countdown import find_solutions, linearize

A, B = 0.45, 0.95  # law parameters used for synthetic data


def _law(h):
    return -A * np.exp(h) + B


def _reference_ols(h, r):
    """OLS of r on [-exp(h), 1] by the normal equations, with s² (XᵀX)⁻¹ (float64)."""
    x = np.column_stack([-np.exp(h), np.ones_like(h)])
    xtx = x.T @ x
    theta = np.linalg.solve(xtx, x.T @ r)
    resid = r - x @ theta
    cov = resid @ resid / (len(h) - 2) * np.linalg.inv(xtx)
    return theta, cov, resid


def test_fit_matches_reference_ols(np_rng):
    h = np_rng.uniform(0.05, 1.5, 40)
    r = _law(h) + np_rng.normal(0, 0.02, h.size)
    fit = fit_entropy_law(h, r)
    theta, cov, resid = _reference_ols(h, r)
    np.testing.assert_allclose([fit.a, fit.b], theta, rtol=1e-9)
    np.testing.assert_allclose([fit.a_se**2, fit.b_se**2, fit.ab_cov], [cov[0, 0], cov[1, 1], cov[0, 1]],
                               rtol=1e-7)
    assert fit.ceiling == pytest.approx(theta[1] - theta[0], rel=1e-9)
    assert fit.ceiling_se**2 == pytest.approx(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], rel=1e-7)
    assert fit.r2 == pytest.approx(1 - resid @ resid / np.sum((r - r.mean()) ** 2), rel=1e-9)
    assert fit.rmse == pytest.approx(np.sqrt(np.mean(resid**2)), rel=1e-9)
    assert fit.n == 40
    np.testing.assert_allclose(fit.predict(h), r - resid, atol=1e-12)


def test_fit_recovers_parameters_within_standard_errors(np_rng):
    z_a, z_b, z_c = [], [], []
    for _ in range(400):
        h = np_rng.uniform(0.05, 1.5, 30)
        fit = fit_entropy_law(h, _law(h) + np_rng.normal(0, 0.02, h.size))
        z_a.append((fit.a - A) / fit.a_se)
        z_b.append((fit.b - B) / fit.b_se)
        z_c.append((fit.ceiling - (B - A)) / fit.ceiling_se)
    z = np.abs(np.array([z_a, z_b, z_c]))
    assert np.all(z[:, :5] < 3)  # the first few seeds: within 3 standard errors
    # The standard errors are calibrated: ~95% of the estimates lie within 1.96 of them.
    coverage = np.mean(z < 1.96, axis=1)
    assert np.all((coverage > 0.91) & (coverage < 0.99)), coverage


def test_fit_exact_law_data():
    h = np.linspace(0.1, 1.2, 12)
    fit = fit_entropy_law(h, _law(h))
    assert fit.a == pytest.approx(A, abs=1e-12) and fit.b == pytest.approx(B, abs=1e-12)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.rmse < 1e-12 and fit.a_se < 1e-10
    assert fit.ceiling == pytest.approx(B - A, abs=1e-12)
    assert fit.predict(0.0) == pytest.approx(B - A, abs=1e-12)


@pytest.mark.parametrize(
    "h, r, match",
    [
        ([0.1, 0.2], [0.5, 0.4], "at least 3 points"),
        ([0.1], [0.5], "at least 3 points"),
        ([0.1, 0.2, 0.3], [0.5, 0.4], "3 values but accuracy has 2"),
        ([0.1, 0.2, 0.3, np.nan], [0.5, 0.4, 0.3, 0.2], "entropy: non-finite value nan at index 3"),
        ([0.1, 0.2, 0.3], [0.5, np.inf, 0.3], "accuracy: non-finite value inf at index 1"),
        ([0.7, 0.7, 0.7, 0.7], [0.5, 0.4, 0.3, 0.2], "entropies equal"),
        ([[0.1, 0.2, 0.3]], [[0.5, 0.4, 0.3]], "1-D"),
    ],
)
def test_fit_refuses_bad_input(h, r, match):
    with pytest.raises(ValueError, match=match):
        fit_entropy_law(h, r)


def test_early_fit_prediction_on_exact_law(np_rng):
    steps = np.arange(0, 200, 2)  # 100 evaluations; the first 15% of steps: 0..29.7
    h = np.sort(np_rng.uniform(0.1, 1.4, steps.size))[::-1]  # entropy falls over training
    order = np_rng.permutation(steps.size)  # input order does not matter
    out = early_fit_prediction(steps[order], h[order], _law(h)[order])
    assert out["n_fit"] == 15 and out["n_test"] == 85 and out["fit_until_step"] == 28
    np.testing.assert_array_equal(out["test_steps"], steps[15:])
    np.testing.assert_allclose(out["actual"], _law(h[15:]), rtol=0, atol=0)
    assert out["rmse"] < 1e-9 and out["max_abs_error"] < 1e-9
    assert out["fit"].n == 15 and out["fit"].a == pytest.approx(A, abs=1e-9)
    # Noisy data: the prediction error is of the order of the noise, and rmse/max agree
    # with their definitions.
    noisy = _law(h) + np_rng.normal(0, 0.01, h.size)
    out = early_fit_prediction(steps, h, noisy)
    err = out["predicted"] - noisy[15:]
    assert out["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-12)
    assert out["max_abs_error"] == pytest.approx(np.max(np.abs(err)), rel=1e-12)
    assert out["rmse"] < 0.05


def test_early_fit_prediction_minimum_points_and_errors():
    steps, h = np.arange(10), np.linspace(1.0, 0.1, 10)
    out = early_fit_prediction(steps, h, _law(h), fraction=0.01)
    assert out["n_fit"] == 3 and out["n_test"] == 7
    with pytest.raises(ValueError, match="at least 4 points"):
        early_fit_prediction(steps[:3], h[:3], _law(h[:3]))
    with pytest.raises(ValueError, match="none to predict"):
        early_fit_prediction([0, 0, 0, 0], h[:4], _law(h[:4]))
    with pytest.raises(ValueError, match="integers"):
        early_fit_prediction(steps * 0.5, h, _law(h))


def _metrics_rows():
    """Post-SFT eval at step 10, RL steps 11..16 with evals at 13 and 16 (as the trainer logs)."""
    rows = [{"step": 10, "eval/pass@1": 0.30, "sft/nll": 1.0}]
    entropy = {11: 1.0, 12: 0.9, 13: 0.8, 14: float("nan"), 15: 0.6, 16: 0.5}
    cov = {11: 0.2, 12: 0.1, 13: -0.05, 14: 0.3, 15: 0.05, 16: 0.0}
    for s in range(11, 17):
        row = {"step": s, "train/entropy": entropy[s], "train/cov_mean": cov[s]}
        if s in (13, 16):
            row["eval/pass@1"] = {13: 0.40, 16: 0.50}[s]
        rows.append(row)
    rows += [{"step": 18, "train/entropy": 0.45, "train/cov_mean": 0.02},  # gap after 16
             {"step": 19, "train/entropy": 0.40, "train/cov_mean": 0.01}]
    return rows


def test_law_points_from_metrics():
    steps, h, r = law_points_from_metrics(_metrics_rows()[::-1])
    np.testing.assert_array_equal(steps, [10, 13, 16])
    # Step 10: no RL step before it -> the next step's rollouts (same parameters);
    # 13: mean over 11..13; 16: mean over 14..16 without the NaN step.
    np.testing.assert_allclose(h, [1.0, (1.0 + 0.9 + 0.8) / 3, (0.6 + 0.5) / 2], rtol=1e-15)
    np.testing.assert_allclose(r, [0.30, 0.40, 0.50])
    with pytest.raises(ValueError, match="'eval/pass@1'"):
        law_points_from_metrics([{"step": 1, "train/entropy": 1.0}])


def test_covariance_vs_entropy_change():
    rows = _metrics_rows()
    steps, cov, minus_dh = covariance_vs_entropy_change(rows)
    # 13 -> 14 and 14 -> 15 involve the NaN entropy; 16 and 19 have no next step.
    np.testing.assert_array_equal(steps, [11, 12, 15, 18])
    np.testing.assert_allclose(cov, [0.2, 0.1, 0.05, 0.02])
    np.testing.assert_allclose(minus_dh, [0.1, 0.1, 0.1, 0.05], rtol=1e-12)
    assert pearson_r(cov, minus_dh) == pytest.approx(np.corrcoef(cov, minus_dh)[0, 1], rel=1e-12)
    with pytest.raises(ValueError, match="t \\+ 1"):
        covariance_vs_entropy_change(rows[:1])
    with pytest.raises(ValueError, match="constant"):
        pearson_r([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_pass_at_k_curve_matches_enumeration():
    n, counts = 6, [0, 1, 2, 3, 6, 4]
    ks = range(1, n + 1)
    curve = pass_at_k_curve(n, counts, ks)
    for k in ks:
        per_problem = []
        for c in counts:
            outcomes = [1] * c + [0] * (n - c)
            subsets = list(itertools.combinations(outcomes, k))
            per_problem.append(sum(any(s) for s in subsets) / len(subsets))
        assert curve[k] == pytest.approx(np.mean(per_problem), rel=1e-12)
    assert list(curve) == list(ks)
    # Per-problem sample counts.
    curve = pass_at_k_curve([2, 4], [1, 1], [2])
    assert curve[2] == pytest.approx((1.0 + (1 - math.comb(3, 2) / math.comb(4, 2))) / 2)


COUNTDOWN = Problem("t/0", "numbers: 3 7 25 50, target: 82", "82", 2,
                    {"numbers": [3, 7, 25, 50], "target": 82})


def test_distinct_correct_solutions_countdown():
    task = get_task("countdown")
    same = ["25 + 50 = 75\n75 + 7 = 82\nanswer: 82",
            "50 + 25 = 75\n7 + 75 = 82\nanswer: 82",  # commuted operands
            "(25 + 50) + 7 = 82\nanswer: 82"]  # both steps on one line
    other = ["50 - 25 = 25\n25 * 3 = 75\n75 + 7 = 82\nanswer: 82",
             "25 + 7 = 32\n50 + 32 = 82\nanswer: 82"]
    wrong = ["25 + 50 = 75\n75 + 3 = 78\nanswer: 82",  # wrong answer
             "50 + 32 = 82\nanswer: 82",  # 32 is not available
             "25 + 50 = 75\n75 + 7 = 82"]  # no answer line
    assert all(task.reward(COUNTDOWN, t) == 1.0 for t in same + other)
    assert distinct_correct_solutions(task, COUNTDOWN, same) == 1
    assert distinct_correct_solutions(task, COUNTDOWN, same + other) == 3
    assert distinct_correct_solutions(task, COUNTDOWN, same[:1] + other[:1]) == 2
    assert distinct_correct_solutions(task, COUNTDOWN, wrong) == 0
    assert distinct_correct_solutions(task, COUNTDOWN, wrong + same + wrong) == 1


def test_distinct_correct_solutions_countdown_search(np_rng):
    """The task's solution search returns distinct computations; each written twice in random
    step and operand orders still counts once."""
    task = get_task("countdown")
    problem = make_problem(task, "test", 0, 3, 2)
    numbers, target = problem.meta["numbers"], problem.meta["target"]
    trees = find_solutions(numbers, target, cap=8)
    texts = [join_steps(linearize(t, np_rng), target) for t in trees for _ in range(2)]
    assert len(trees) >= 2
    assert distinct_correct_solutions(task, problem, texts) == len(trees)


def test_distinct_correct_solutions_arithmetic():
    task = get_task("arithmetic")
    problem = Problem("t/1", "(3 + 5) * (2 + 4)", "48", 2, {"expression": "(3 + 5) * (2 + 4)"})
    left_first = "3 + 5 = 8\n2 + 4 = 6\n8 * 6 = 48\nanswer: 48"
    right_first = "2 + 4 = 6\n3 + 5 = 8\n8 * 6 = 48\nanswer: 48"
    styled = "5 + 3 = 8, so 8 * (2 + 4)\n4 + 2 = 6, so 8 * 6\n6 * 8 = 48\nanswer: 48"
    wrong = "3 + 5 = 8\n2 + 4 = 6\n8 * 6 = 46\nanswer: 46"
    assert all(task.reward(problem, t) == 1.0 for t in (left_first, right_first, styled))
    assert distinct_correct_solutions(task, problem, [left_first, styled]) == 1
    assert distinct_correct_solutions(task, problem, [left_first, right_first, styled, wrong]) == 2
    assert distinct_correct_solutions(task, problem, [wrong]) == 0
    # The reward reads the answer alone: lines that are not one reduction are compared as text.
    malformed = "3 + 5 = 8\n8 * (2 + 4) = 48\nanswer: 48"
    garbled = "3 + 5 = 8\n2 +  4 = six\nanswer: 48"
    assert distinct_correct_solutions(task, problem, [malformed, garbled, garbled.replace("  ", " ")]) == 2
    assert distinct_correct_solutions(task, problem, [malformed, left_first]) == 2


def test_solved_share_by_difficulty():
    problems = [Problem(f"p{i}", "q", "1", d) for i, d in enumerate([2, 1, 1, 2, 2, 3])]
    shares = solved_share_by_difficulty(problems, [0, 2, 0, 1, 5, 0])
    assert shares == {1: 0.5, 2: pytest.approx(2 / 3), 3: 0.0}
    assert list(shares) == [1, 2, 3]
    with pytest.raises(ValueError, match="one per problem"):
        solved_share_by_difficulty(problems, [1, 2])


@pytest.mark.parametrize("rho", [0.2, 0.05, 0.5, 1.0])
def test_top_fraction_threshold_keeps_rho(np_rng, rho):
    h = np_rng.exponential(0.5, (7, 53))
    mask = np_rng.random(h.shape) < 0.8
    h_masked = np.where(mask, h, 100.0)  # padding entropies must not count
    out = top_fraction_threshold(h_masked, mask, rho=rho, thresholds=(0.1, 0.5, 1.0))
    valid = np.sort(h[mask])[::-1]
    n = valid.size
    k = 1 + math.floor(Fraction(str(rho)) * (n - 1))  # tokens kept by the forking mask
    assert valid[k - 1] >= out["threshold"] > (valid[k] if k < n else -np.inf)
    assert out["kept_share"] == pytest.approx(k / n)
    assert abs(out["kept_share"] - rho) <= 1 / n
    assert out["threshold"] == pytest.approx(np.quantile(valid, 1 - rho), rel=1e-12)
    for t, share in out["share_at_or_above"].items():
        assert share == pytest.approx(np.count_nonzero(valid >= t) / n)


def test_entropy_histogram_and_input_checks(np_rng):
    h = np_rng.exponential(0.5, (4, 30))
    mask = np_rng.random(h.shape) < 0.7
    counts, edges = entropy_histogram(np.where(mask, h, 50.0), mask, bins=[0, 0.1, 0.5, 1, 100])
    expected = [np.count_nonzero(mask & (h >= lo) & (h < hi)) for lo, hi in
                [(0, 0.1), (0.1, 0.5), (0.5, 1), (1, 100)]]
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == mask.sum()
    counts, edges = entropy_histogram(h, None, bins=8)
    assert counts.sum() == h.size and edges.size == 9
    bad = h.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"non-finite value nan at valid index \(2, 3\)"):
        top_fraction_threshold(bad)
    with pytest.raises(ValueError, match="mask has shape"):
        entropy_histogram(h, mask[:, :5])
    with pytest.raises(ValueError, match="no valid token"):
        top_fraction_threshold(h, np.zeros(h.shape, bool))


def test_report_prints_the_last_critic_evaluation(tmp_path):
    from critique_jax.analysis.run_summary import critic_summary

    rows = [{"step": 1, "critic/nll": 2.0}, {"step": 100, "critic/verdict_acc": 0.5, "critic/first_wrong_acc": 0.1},
            {"step": 150, "critic/verdict_acc": 0.625, "critic/first_wrong_acc": 0.25, "critic/acc_on_wrong": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert critic_summary(str(tmp_path)) == ("critic (step 150, held-out): verdict_acc 0.625, first_wrong_acc 0.250, "
                                             "acc_on_wrong 0.300")
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match="no critic evaluation"):
        critic_summary(str(tmp_path))


def test_report_compares_runs_side_by_side(tmp_path, capsys):
    from critique_jax.analysis.run_summary import summary

    for name, h in (("grpo", 0.4), ("clip_cov", 0.8)):
        rows = [{"step": s, "train/entropy": h / s, "train/reward": 0.1 * s} for s in range(1, 5)]
        rows += [{"step": s, "eval/pass@1": 0.1 * s, "eval/entropy": h / s} for s in (1, 4)]
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = summary([str(tmp_path / "grpo"), str(tmp_path / "clip_cov")], out=str(tmp_path / "both.png"))
    assert "grpo (" in out and "clip_cov (" in out and "| eval/pass@1 | 0.1000 | 0.4000 | +0.3000 |" in out
    assert (tmp_path / "both.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no run directories"):
        summary([])
