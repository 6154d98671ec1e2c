"""The evaluate program: the report from per-problem results (vs direct computation), a
resumable evaluation of a tiny run's policy and its test-time budget sweep, and of several
checkpoints of one run (across training); and, from the same SFT policy, the RLSF confidence
reward end to end."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from critique_jax.analysis.evaluation import ProblemResult, majority_correct, markdown, report
from critique_jax.analysis.passk import pass_at_k
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.confidence import answer_char_span, answer_span_mask
from critique_jax.runs import train
from critique_jax.runs.across_run import ACROSS_JSON, evaluate_across, resolve_which
from critique_jax.runs.budget_sweep import BUDGETS, budget_sweep
from critique_jax.runs.evaluation_run import RESULTS, EvalSettings, evaluate_policy
from critique_jax.runs.policies import final_policy, load_policy, starting_policy

from test_trainer import tiny_config

SCHEDULE_EARLY = True  # a long file: conftest schedules it early under pytest-xdist


def test_majority_vote():
    assert majority_correct(["3", "4", "3", None], [1, 0, 1, 0])
    assert not majority_correct(["4", "4", "3"], [0, 0, 1])
    assert majority_correct(["3", "4"], [1, 0])  # a tie: the tied answer that appears first
    assert not majority_correct([None, None], [0, 0])


def _result(uid, level, correct, maj, distinct, n=4):
    return ProblemResult(uid=uid, difficulty=level, n=n, correct=correct, majority_correct=maj, distinct=distinct,
                         tokens=10.0 * n, entropy_sum=2.0 * n)


def test_report_matches_direct_computation():
    results = [_result("a", 1, 4, True, 2), _result("b", 1, 0, False, 0), _result("c", 2, 1, False, 1)]
    rep = report(results)
    for k in range(1, 5):
        want = np.mean([pass_at_k(4, c, k) for c in (4, 0, 1)])
        assert math.isclose(rep[f"pass@{k}"], want), k
    assert rep["maj@4"] == pytest.approx(1 / 3) and rep["solved"] == pytest.approx(2 / 3)
    assert rep["response_len"] == 10.0 and rep["entropy"] == pytest.approx(0.2)
    assert rep["distinct_correct"] == pytest.approx(1.5)  # (2 + 1) / 2 solved problems
    assert rep["per_level"]["1"]["pass@1"] == 0.5 and rep["per_level"]["2"]["pass@4"] == 1.0
    assert "| 2 | 1 | 0.2500 | 1.0000 | 0.0000 |" in markdown(rep, "t")
    steps_decide = report([dataclasses.replace(r, majority_correct=None) for r in results])
    assert math.isnan(steps_decide["maj@4"]) and steps_decide["pass@1"] == rep["pass@1"]
    with pytest.raises(ValueError, match="different sample counts"):
        report(results + [_result("d", 1, 1, True, 1, n=2)])
    with pytest.raises(ValueError, match="no problems"):
        report([])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny SFT-only run (2 steps) in ``<tmp>/run``: the policy evaluated here, and the
    reference and starting policy of the RLSF run."""
    tmp = tmp_path_factory.mktemp("evaluate")
    train(tiny_config(tmp, **{"rl.steps": 0, "sft.steps": 2}), str(tmp / "run"))
    return tmp


@pytest.fixture(scope="module")
def policy(sft_run):
    return load_policy(sft_run / "run", "sft")


def test_evaluation_resumes_to_the_same_report(policy, tmp_path):
    settings = EvalSettings(source="tiny", split="test", n_problems=16, samples=2, temperature=1.0, seed=3,
                            batch_prompts=8)
    whole = evaluate_policy(policy.run, policy.params, str(tmp_path / "whole"), settings)
    assert whole["n_problems"] == 16 and set(whole) >= {"pass@1", "pass@2", "maj@2", "per_level", "entropy"}
    assert (tmp_path / "whole" / "passk.png").stat().st_size > 0
    lines = (tmp_path / "whole" / RESULTS).read_text().splitlines()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "evaluation.json").write_text((tmp_path / "whole" / "evaluation.json").read_text())
    # A crash in the second chunk: one whole chunk written, then part of a line.
    (cut / RESULTS).write_text("\n".join(lines[:9]) + "\n" + lines[9][:20])
    resumed = evaluate_policy(policy.run, policy.params, str(cut), settings)
    assert json.dumps(resumed, sort_keys=True) == json.dumps(whole, sort_keys=True)
    assert (cut / RESULTS).read_text().splitlines() == lines
    with pytest.raises(ValueError, match=r"samples=4 \(the folder has 2\)"):
        evaluate_policy(policy.run, policy.params, str(cut), settings.__class__(**{**settings.__dict__, "samples": 4}))


def test_budget_sweep_records_and_report(policy, tmp_path):
    """Two budgets, the larger the run's own (56): its records are the main evaluation's samples
    (same keys (seed, i, j)), the smaller one's responses fit in 28 tokens, and maj@2 at 28 is
    paired with pass@1 at 56."""
    settings = EvalSettings(source="tiny", split="test", n_problems=16, samples=2, temperature=1.0, seed=3,
                            batch_prompts=8)
    main = evaluate_policy(policy.run, policy.params, str(tmp_path), settings)
    rep = budget_sweep(policy.run, policy.params, str(tmp_path), settings, (56, 28), (1, 2))
    assert rep["budgets"] == [28, 56] and rep["per_budget"]["56"]["pass@1"] == main["pass@1"]
    records = [json.loads(line) for line in (tmp_path / BUDGETS / "28.jsonl").read_text().splitlines()]
    assert len(records) == 16 and all(max(r["tokens"]) <= 28 and len(r["answers"]) == 2 for r in records)
    assert [(r["budget"], r["k"], r["token_cap"]) for r in rep["equal_budget"]] == [(28, 2, 56)]
    assert math.isnan(rep["per_budget"]["28"]["maj@2"])  # countdown: the steps decide, no majority vote
    assert (tmp_path / "test_time.png").stat().st_size > 0 and "| 28 | 2 | 56 |" in (tmp_path / "test_time.md").read_text()


def _run_with_checkpoints(sft_run, path, steps):
    """A run directory like this module's SFT run (sft.steps = 2) whose ``checkpoints/`` holds its
    SFT policy again at ``steps`` (no training), with RL steps 3..5 logging train/entropy =
    step / 10."""
    src = sft_run / "run"
    path.mkdir()
    shutil.copy(src / "config.json", path)
    shutil.copytree(src / "sft_policy", path / "sft_policy")
    for step in steps:
        shutil.copytree(src / "sft_policy" / "2", path / "checkpoints" / str(step))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/entropy": s / 10}) + "\n"
                                                for s in (3, 4, 5)))
    return path


def test_evaluation_across_checkpoints_resumes(sft_run, policy, tmp_path, monkeypatch):
    """--which=sft,final of a run with checkpoints 3 and 5: one folder per policy (as a single
    evaluation writes it, with its budget sweep), across.json one row per policy; all the same
    parameters here, so the same samples; a re-run samples nothing and writes the same table."""
    run = str(_run_with_checkpoints(sft_run, tmp_path / "run", (3, 5)))
    assert resolve_which(run, ["all"]) == ["sft", 3, 5] and resolve_which(run, ["final", 5]) == [5]
    with pytest.raises(ValueError, match=r"^--which=sft,4: no checkpoint at step 4; .*checkpoints holds steps 3, 5$"):
        resolve_which(run, ["sft", 4])
    settings = EvalSettings(source="", split="test", n_problems=8, samples=2, temperature=1.0, seed=3,
                            batch_prompts=8)
    out = tmp_path / "across"
    table = evaluate_across(run, resolve_which(run, ["sft", "final"]), str(out), settings, (56,), (1, 2),
                            run=policy.run)
    for which, source in (("sft", "sft_policy/2"), ("5", "checkpoints/5")):
        assert json.loads((out / which / "evaluation.json").read_text())["source"] == f"{run}/{source}"
        assert (out / which / "report.json").exists() and (out / which / "budgets" / "56.jsonl").exists()
    rows = json.loads((out / ACROSS_JSON).read_text())["rows"]
    assert [(r["which"], r["step"], r["rl_step"]) for r in rows] == [("sft", 2, 0), ("5", 5, 3)]
    assert [r["train_entropy"] for r in rows] == pytest.approx([0.3, 0.4])  # first RL step; steps 3..5
    assert rows[0]["pass@1"] == rows[1]["pass@1"] and rows[0]["correct_var/56"] == rows[1]["correct_var/56"]
    assert (out / "across.md").exists() and (out / "across.png").stat().st_size > 0

    def no_sampling(*args, **kwargs):
        raise AssertionError("a resumed evaluation sampled again")

    monkeypatch.setattr(rollout_lib, "sample_chunked", no_sampling)
    again = evaluate_across(run, ["sft", 5], str(out), settings, (56,), (1, 2), run=policy.run)
    assert json.dumps(again, sort_keys=True) == json.dumps(table, sort_keys=True)


def test_a_run_with_init_from_starts_from_that_runs_sft_policy(sft_run, policy, tmp_path):
    """--which=all of a run with init_from (no sft_policy/ of its own) begins with the policy it
    started from, at step 0; its latest checkpoint stays the final policy."""
    run = tmp_path / "rl"
    run.mkdir()
    config = json.loads((sft_run / "run" / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"init_from": str(sft_run / "run")}))
    shutil.copytree(sft_run / "run" / "sft_policy" / "2", run / "checkpoints" / "3")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/entropy": 0.7}) + "\n")
    assert starting_policy(run) == (str(sft_run / "run" / "sft_policy"), 0)
    assert resolve_which(str(run), ["all"]) == ["sft", 3] and final_policy(run) == 3
    settings = EvalSettings(source="", split="test", n_problems=8, samples=2, temperature=1.0, seed=3,
                            batch_prompts=8)
    table = evaluate_across(str(run), ["sft"], str(tmp_path / "across"), settings, run=policy.run)
    assert [(r["which"], r["step"], r["rl_step"], r["train_entropy"]) for r in table["rows"]] == [("sft", 0, 0, 0.7)]
    assert table["rows"][0]["source"] == f"{sft_run}/run/sft_policy/2"


def test_final_policy_of_an_sft_only_run_is_its_sft_policy(sft_run, tmp_path):
    """An SFT-only run keeps its last SFT step in sft_policy/ and only earlier periodic steps in
    checkpoints/ (here step 1): "final" is the SFT policy, not the last periodic checkpoint."""
    run = _run_with_checkpoints(sft_run, tmp_path / "run", (1,))
    assert final_policy(run) == "sft" and resolve_which(str(run), ["final"]) == ["sft"]
    assert load_policy(run, "final").source == f"{run}/sft_policy/2"
    later = _run_with_checkpoints(sft_run, tmp_path / "later", (1, 5))
    assert final_policy(later) == 5 and resolve_which(str(later), ["final"]) == [5]
    assert final_policy(tmp_path) is None


def test_answer_span_with_the_run_tokenizer(policy):
    """The answer-span tokens of a reference solution, found through the run's SentencePiece
    tokenizer, decode to the span's text (countdown: the last step through the answer)."""
    run = policy.run
    text = run.task.solutions(run.test[0].problem, np.random.default_rng(0), 1)[0]
    ids = np.asarray([run.tok.encode(text, eos=True)])
    span = answer_span_mask(run.task, run.tok, ids, np.ones(ids.shape, bool), [text])
    start, end = answer_char_span(text, "steps")
    assert run.tok.decode(ids[0][span[0]]) == text[start:end] and text[start:end].count("\n") == 1
