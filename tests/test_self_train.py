"""Self-training: data selection, pool and evaluation metrics on hand-built inputs, the SFT
step on kept data, config errors, and a tiny critique-in-the-loop run that resumes exactly."""

import json
import math
import os

import jax
import numpy as np
import pytest

from critique_jax.checkpoint import Checkpointer
from critique_jax.critique.pool import (eval_metrics, pass_ks, pool_metrics, select_kept, sft_batches,
                                        training_pairs, validate_self_train)
from critique_jax.metrics import read_metrics
from critique_jax.runs import roles, state, train
from critique_jax.runs.run import setup
from critique_jax.runs.self_train_run import check_init_run, self_train, sft_on
from critique_jax.rl.train_step import make_optimizer
from critique_jax.tasks import Problem

from test_trainer import tiny_config


def _problems(levels):
    return [Problem(uid=f"p{i}", question=f"q{i}", answer="0", difficulty=d, meta={}) for i, d in enumerate(levels)]


# ----------------------------------------------------------------------------- pure selection


def test_select_kept_order_dedupe_and_cap():
    # 3 problems x 4 samples; refine_ok only where the sample is not usable.
    sample_ok = np.array([[1, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)
    refine_ok = np.array([[0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]], bool)
    texts = ["a", "x", "a", "b", "x", "x", "x", "x", "c", "x", "x", "x"]
    refs = ["", "r", "", "", "s", "", "s", "t", "", "", "", ""]
    ks, kr = select_kept(sample_ok, refine_ok, texts, refs)
    np.testing.assert_array_equal(ks, sample_ok)  # no dedupe, no cap: everything usable
    np.testing.assert_array_equal(kr, refine_ok)
    ks, kr = select_kept(sample_ok, refine_ok, texts, refs, dedupe=True)
    np.testing.assert_array_equal(ks, [[1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])  # second "a" dropped
    np.testing.assert_array_equal(kr, [[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]])  # second "s" dropped
    ks, kr = select_kept(sample_ok, refine_ok, texts, refs, max_per_problem=2)
    np.testing.assert_array_equal(ks, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])  # samples first
    np.testing.assert_array_equal(kr, [[0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    ks, kr = select_kept(sample_ok, refine_ok, texts, refs, max_per_problem=3, dedupe=True)
    np.testing.assert_array_equal(ks, [[1, 0, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(kr, [[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]])


def test_select_kept_rejects_bad_inputs():
    ok = np.zeros((2, 2), bool)
    with pytest.raises(ValueError, match="problem 1 sample 0 is usable and so is its refinement"):
        select_kept(np.array([[0, 0], [1, 0]], bool), np.array([[0, 0], [1, 0]], bool), ["a"] * 4, ["a"] * 4)
    with pytest.raises(ValueError, match="refine_texts has 3 texts; expected P x K = 4"):
        select_kept(ok, ok, ["a"] * 4, ["a"] * 3)
    with pytest.raises(ValueError, match=r"must be equal \[P, K\]"):
        select_kept(ok, np.zeros((2, 3), bool), ["a"] * 4, ["a"] * 4)
    with pytest.raises(ValueError, match="max_per_problem=-1"):
        select_kept(ok, ok, ["a"] * 4, ["a"] * 4, max_per_problem=-1)


def test_training_pairs_put_refinements_under_their_problem():
    problems = _problems([1, 2, 3])
    keep_sample = np.array([[0, 1], [0, 0], [1, 1]], bool)
    keep_refine = np.array([[1, 0], [0, 1], [0, 0]], bool)
    texts = ["s00", "s01", "s10", "s11", "s20", "s21"]
    refs = ["r00", "", "", "r11", "", ""]
    owners, targets = training_pairs(problems, texts, refs, keep_sample, keep_refine)
    assert targets == ["s01", "s20", "s21", "r00", "r11"]
    assert [p.uid for p in owners] == ["p0", "p2", "p2", "p0", "p1"]
    assert training_pairs(problems, texts, refs, np.zeros((3, 2), bool), np.zeros((3, 2), bool)) == ([], [])


def test_pool_metrics_per_level():
    problems = _problems([1, 1, 2, 2, 2])
    correct = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [0, 0]], bool)
    refined = ~correct
    refine_correct = np.array([[0, 0], [0, 1], [1, 0], [0, 0], [0, 0]], bool)
    keep_sample = correct.copy()
    keep_sample[0, 1] = False  # e.g. a duplicate
    keep_refine = refine_correct.copy()
    m = pool_metrics(problems, correct, refined, refine_correct, keep_sample, keep_refine, critique=True)
    # kept examples per problem: 1, 2, 1, 1, 0 -> 5 in all, 3 from level 1
    expected = {
        "self_train/pool/accuracy": 4 / 10, "self_train/pool/accuracy/level_1": 3 / 4,
        "self_train/pool/accuracy/level_2": 1 / 6,
        "self_train/pool/solved": 3 / 5, "self_train/pool/solved/level_1": 1.0, "self_train/pool/solved/level_2": 1 / 3,
        "self_train/pool/contributed": 4 / 5, "self_train/pool/contributed/level_1": 1.0,
        "self_train/pool/contributed/level_2": 2 / 3,
        "self_train/pool/rescued": 1 / 5, "self_train/pool/rescued/level_1": 0.0,
        "self_train/pool/rescued/level_2": 1 / 3,
        "self_train/pool/data_share/level_1": 3 / 5, "self_train/pool/data_share/level_2": 2 / 5,
        "self_train/pool/n_kept": 5.0, "self_train/pool/n_kept_samples": 3.0, "self_train/pool/n_kept_refinements": 2.0,
        "self_train/pool/n_refined": 6.0, "self_train/pool/refine_success": 2 / 6,
    }
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k
    plain = pool_metrics(problems, correct, np.zeros_like(correct), np.zeros_like(correct), keep_sample,
                         np.zeros_like(correct), critique=False)
    assert "self_train/pool/refine_success" not in plain and plain["self_train/pool/rescued"] == 0.0
    empty = pool_metrics(problems, correct, refined, refine_correct, np.zeros_like(correct), np.zeros_like(correct),
                         critique=True)
    assert math.isnan(empty["self_train/pool/data_share/level_1"]) and empty["self_train/pool/contributed"] == 0.0
    with pytest.raises(ValueError, match="expected all"):
        pool_metrics(problems[:4], correct, refined, refine_correct, keep_sample, keep_refine, critique=True)


def test_pass_ks():
    assert pass_ks(1) == [1]
    assert pass_ks(6) == [1, 2, 4, 6]
    assert pass_ks(8) == [1, 2, 4, 8]


def test_eval_metrics_against_reference(np_rng):
    n, levels = 6, np_rng.integers(1, 4, 40)
    problems = _problems(levels.tolist())
    counts = np_rng.integers(0, n + 1, 40)
    distinct = np.minimum(counts, np_rng.integers(0, 4, 40))
    m = eval_metrics(problems, counts, distinct, n)

    def ref_pass(c, k):  # float64 reference from the formula 1 - C(n-c, k) / C(n, k)
        return np.mean([1.0 - math.comb(n - int(x), k) / math.comb(n, k) for x in c])

    for suffix, at in [("", np.ones(40, bool))] + [(f"/level_{d}", levels == d) for d in (1, 2, 3)]:
        assert m[f"self_train/eval/solved{suffix}"] == pytest.approx(np.mean(counts[at] > 0))
        assert m[f"self_train/eval/distinct_correct{suffix}"] == pytest.approx(distinct[at & (counts > 0)].mean())
        for k in (1, 2, 4, 6):
            assert m[f"self_train/eval/pass@k/{k}{suffix}"] == pytest.approx(ref_pass(counts[at], k), rel=1e-12)
    with pytest.raises(ValueError, match=r"expected \(40,\)"):
        eval_metrics(problems, counts[:39], distinct[:39], n)


def test_sft_batches_cover_examples_evenly():
    order = sft_batches(7, 4, 5, seed=3)
    assert order.shape == (5, 4)
    counts = np.bincount(order.ravel(), minlength=7)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 20
    np.testing.assert_array_equal(order, sft_batches(7, 4, 5, seed=3))
    assert not np.array_equal(order, sft_batches(7, 4, 5, seed=4))
    with pytest.raises(ValueError, match="no examples"):
        sft_batches(0, 4, 5, seed=0)


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    os.environ["CRITIQUE_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    tmp = tmp_path_factory.mktemp("self_train")
    init = tmp / "init"
    train(_base_config(tmp, **{"rl.steps": 0}), str(init))
    return tmp, init


def _base_config(tmp, **overrides):
    """The tiny trainer config on countdown levels 1-2, self-critique buckets."""
    base = {"task.difficulties": (1, 2), "task.n_train": 32, "sft.steps": 2, "sampling.max_new_tokens": 48,
            "critique.type": "self", "rl.loss.name": "critique_grpo", "rl.loss.ref_kl_coef": 0.0,
            "critique.prompt_buckets": (72,), "critique.refine_buckets": (128,)}
    return tiny_config(tmp, **(base | overrides))


def _st_config(tmp, init, **overrides):
    c = _base_config(tmp)
    c.unlock()
    c.init_from = str(init)
    c.self_train.update(iterations=2, pool_size=16, samples_per_problem=2, batch_prompts=8, sft_steps=2,
                        sft_batch_size=8, lr=1e-2, warmup_steps=0)
    for k, v in overrides.items():
        section, field = k.split(".")
        c[section][field] = v
    c.lock()
    return c


def test_config_errors(dirs):
    tmp, init = dirs
    for key, value, match in [("self_train.batch_prompts", 4, "self_train.batch_prompts=4: must be a positive multiple"),
                              ("self_train.pool_size", 33, "self_train.pool_size=33: expected 0 .* 32 train"),
                              ("self_train.warmup_steps", 3, "self_train.warmup_steps=3: expected between 0"),
                              ("self_train.iterations", 0, "self_train.iterations=0: expected >= 1")]:
        with pytest.raises(ValueError, match=match):
            validate_self_train(_st_config(tmp, init, **{key: value}), 8, 32)
    with pytest.raises(AttributeError, match='Key "bogus" does not exist'):
        _st_config(tmp, init).self_train.bogus = 1
    with pytest.raises(ValueError, match="init_from is empty"):
        check_init_run(_st_config(tmp, ""))
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        check_init_run(_st_config(tmp, tmp / "nowhere"))
    with pytest.raises(ValueError, match="model.preset='small' differs from the init_from run's model.preset='tiny'"):
        check_init_run(_st_config(tmp, init, **{"model.preset": "small"}))
    # an SFT run that left out its RL pool: self-training must use that pool
    skipped = tmp / "init_skipped"
    skipped.mkdir(exist_ok=True)
    if not (skipped / "sft_policy").exists():
        (skipped / "sft_policy").symlink_to(init / "sft_policy")
    theirs = json.loads((init / "config.json").read_text())
    theirs["sft"]["skip_rl_pool"], theirs["rl"]["pool_size"] = True, 24
    (skipped / "config.json").write_text(json.dumps(theirs))
    with pytest.raises(ValueError, match=r"self_train.pool_size=16: the init_from run's SFT left out its first "
                                         r"rl.pool_size=24 train problems \(sft.skip_rl_pool\); set self_train.pool_size=24"):
        check_init_run(_st_config(tmp, skipped))
    assert check_init_run(_st_config(tmp, skipped, **{"self_train.pool_size": 24})).endswith("sft_policy")
    assert check_init_run(_st_config(tmp, init)) == str(init / "sft_policy")


def test_sft_on_kept_data_lowers_the_nll(dirs):
    tmp, init = dirs
    cfg = _st_config(tmp, init)
    run = setup(cfg, str(tmp / "sft"))
    examples = [run.train[i] for i in range(8)]
    params = roles.init_params(run, 0)
    before = [np.asarray(x).copy() for x in jax.tree.leaves(params)]
    optimizer, _ = make_optimizer(cfg.self_train.lr, 0, cfg.self_train.sft_steps)
    new, m = sft_on(run, state.sft_step_fn(run, params, optimizer), optimizer, params, [e.problem for e in examples],
                    [e.solutions[0] for e in examples], seed=0)
    # 8 examples, batch 8: both steps see the same examples, so the second step's NLL is lower.
    assert m["self_train/sft/nll"] < m["self_train/sft/nll_first"]
    assert m["self_train/sft/skipped"] == 0.0
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(before, jax.tree.leaves(new)))


def _rows(workdir):
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(workdir)]


def test_self_critique_run_writes_metrics_and_resumes_exactly(dirs):
    tmp, init = dirs
    cfg = _st_config(tmp, init)
    straight, stopped = tmp / "straight", tmp / "stopped"
    self_train(cfg, str(straight))
    self_train(cfg, str(stopped), stop_after=1)
    assert Checkpointer(stopped / "checkpoints").latest_step() == 1
    assert [r["step"] for r in read_metrics(stopped)] == [0, 1]
    self_train(cfg, str(stopped))

    rows = _rows(straight)
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert "self_train/eval/solved/level_2" in rows[0] and "self_train/pool/n_kept" not in rows[0]
    n_samples = cfg.self_train.pool_size * cfg.self_train.samples_per_problem
    for r in rows[1:]:
        for key in ("self_train/pool/contributed/level_1", "self_train/pool/contributed/level_2",
                    "self_train/pool/data_share/level_1", "self_train/eval/pass@k/2/level_1",
                    "self_train/eval/distinct_correct", "self_train/eval/entropy"):
            assert key in r, key
        n_wrong = round((1 - r["self_train/pool/accuracy"]) * n_samples)
        assert r["self_train/pool/n_refined"] + r["self_train/pool/n_too_long"] == n_wrong
        assert r["self_train/pool/n_refined"] > 0
        assert r["self_train/sft/skipped_iteration"] == float(r["self_train/pool/n_kept"] == 0)
    resumed = _rows(stopped)
    assert [r["step"] for r in resumed] == [0, 1, 2]
    for a, b in zip(rows, resumed):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, err_msg=f"step {a['step']} {k}")
    samples = [json.loads(line) for line in open(straight / "samples.jsonl")]
    assert {s["step"] for s in samples} == {1, 2} and "critique" in samples[0] and "refinement" in samples[0]
    like = {"params": setup(cfg, str(tmp / "like")).abstract_params()}
    pa = Checkpointer(straight / "checkpoints").restore(2, like=like)[0]["params"]
    pb = Checkpointer(stopped / "checkpoints").restore(2, like=like)[0]["params"]
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
