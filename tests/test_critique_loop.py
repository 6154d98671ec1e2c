"""Critique-GRPO in the loop: rule critiques, shortcut check, refinement selection, sharded step, a tiny run."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from critique_jax import config as config_lib
from critique_jax import validation
from critique_jax.critique.feedback import refinement_reward, rule_critique
from critique_jax.critique import loop as loop_lib
from critique_jax.critique.loop import (RefineSettings, critique_batch, padded_groups, pass1_on_failed,
                                        refinement_metrics, select_refinements)
from critique_jax.critique.sources import ResampleSource, critique_accuracy, critique_source
from critique_jax.rl import rollout as rollout_lib
from critique_jax.runs import roles
from critique_jax.metrics import read_metrics
from critique_jax.models import Transformer, model_config
from critique_jax.parallel.mesh import batch_sharding, make_mesh
from critique_jax.parallel.sharding import param_shardings
from critique_jax.rl.losses import make_loss_config
from critique_jax.rl.train_step import SequenceBatch, TrainState, rl_update
from critique_jax.runs import setup, train
from critique_jax.runs.supervised import refine_sft_arrays
from critique_jax.tasks import Problem, get_task, make_problem, split_steps
from critique_jax.text import parse_critique
from critique_jax.text.templates import condense_critique, format_worked_critique

from test_trainer import _random_batch, tiny_config

SCHEDULE_EARLY = True  # a long file: conftest schedules it early under pytest-xdist


@pytest.mark.parametrize("task_name", ["countdown", "arithmetic"])
def test_rule_critiques_carry_the_checker(task_name, np_rng):
    task = get_task(task_name)
    for i in range(20):
        p = make_problem(task, "test", 0, i, task.default_difficulty)
        good = task.solutions(p, np_rng, 1)[0]
        bad = task.perturb(p, good, np_rng)
        assert parse_critique(rule_critique("rule_step", task, p, good)) == (True, None)
        assert parse_critique(rule_critique("rule_step", task, p, bad.solution)) == (False, bad.step)
        assert parse_critique(rule_critique("indicative", task, p, bad.solution)) == (False, None)
        gt = rule_critique("ground_truth", task, p, bad.solution)
        assert gt.endswith(f"reference answer: {p.answer}")


def test_plan_critiques_name_the_dead_end_else_the_first_wrong_step(np_rng):
    task = get_task("countdown")
    p = Problem("u", "numbers: 3 4 9, target: 21", "21", 1, {"numbers": [3, 4, 9], "target": 21})
    dead = "4 * 9 = 36\n3 + 36 = 39\nanswer: 21"
    for fmt in ("plain", "explained"):  # the dead end's note is what the plan critique says
        assert rule_critique("plan", task, p, dead, fmt) == ("step 1: 4 * 9 = 36 leaves 3 36, 21 unreachable, "
                                                              "wrong, plan\nverdict: wrong")
    assert parse_critique(rule_critique("plan", task, p, dead)) == (False, 0)
    hinted = rule_critique("plan_hint", task, p, dead)  # a right step in place of the dead end
    assert hinted == ("step 1: 4 * 9 = 36 leaves 3 36, 21 unreachable, wrong, plan\nhint: 3 * 4 = 12\n"
                      "verdict: wrong") and parse_critique(hinted) == (False, 0)
    assert parse_critique(rule_critique("rule_step", task, p, dead)) == (False, 2)  # the answer line
    for i in range(20):  # no dead end before the planted error: the step critique
        q = make_problem(task, "test", 0, i, 2)
        good = task.solutions(q, np_rng, 1)[0]
        bad = task.perturb(q, good, np_rng).solution
        if task.dead_end(q, bad) is None:
            assert rule_critique("plan", task, q, bad) == rule_critique("rule_step", task, q, bad)
            assert rule_critique("plan_hint", task, q, bad) == rule_critique("rule_step", task, q, bad)
        assert rule_critique("plan", task, q, good) == rule_critique("rule_step", task, q, good)


@pytest.mark.parametrize("task_name", ["countdown", "arithmetic"])
def test_explained_critiques_add_the_first_wrong_steps_note(task_name, np_rng):
    task = get_task(task_name)
    n_wrong = 0
    for i in range(20):
        p = make_problem(task, "test", 0, i, task.default_difficulty)
        good = task.solutions(p, np_rng, 1)[0]
        for text in (good, task.perturb(p, good, np_rng).solution):
            plain = rule_critique("rule_step", task, p, text)
            explained = rule_critique("rule_step", task, p, text, "explained")
            check = task.check_steps(p, text)
            assert parse_critique(explained) == parse_critique(plain) and condense_critique(explained) == plain
            if check.ok:
                assert explained == plain
                continue
            n_wrong += 1
            worked = format_worked_critique(check, task.step_notes(p, text)).splitlines()
            lines = explained.splitlines()
            k = check.first_wrong
            assert lines[:k] == plain.splitlines()[:k] and lines[k] == worked[k] != plain.splitlines()[k]
    assert n_wrong == 20
    with pytest.raises(ValueError, match="critique format 'fancy'"):
        rule_critique("rule_step", task, p, good, "fancy")


def _refine_sft_pairs(run, examples):
    """(wrong solution, critique, target) of each example's refinement SFT row."""
    arrays = refine_sft_arrays(run, examples, np.random.default_rng(0))
    width = max(run.config.critique.refine_buckets)
    out = []
    for row in arrays["tokens"]:
        prompt, target = run.tok.decode(row[:width]), run.tok.decode(row[width:])
        wrong, critique = prompt.split("<solution>")[1].split("\n<critique>")
        out.append((wrong, critique.removesuffix("\n<refine>"), target))
    return out


@pytest.mark.parametrize("fmt", ["plain", "explained"])
def test_refinement_sft_targets_a_solution_of_the_problem(tmp_path, fmt):
    run = setup(tiny_config(tmp_path, **{"critique.sft_refine_every": 2, "critique.format": fmt,
                                         "critique.sft_refine_target": "source",
                                         "critique.refine_buckets": (160,)}), str(tmp_path / "run"))
    examples = [run.train[i] for i in range(32)]
    kept_prefix = {}
    for target_mode in ("source", "any"):
        run.config.unlock()
        run.config.critique.sft_refine_target = target_mode
        kept, explained = 0, 0
        for ex, (wrong, critique, target) in zip(examples, _refine_sft_pairs(run, examples)):
            assert target in ex.solutions
            check = run.task.check_steps(ex.problem, wrong)
            assert not check.ok and critique == rule_critique("rule_step", run.task, ex.problem, wrong, fmt)
            # a planted error keeps every line before it: so does the solution it came from
            kept += split_steps(target)[0][:check.first_wrong] == split_steps(wrong)[0][:check.first_wrong]
            explained += critique != condense_critique(critique)  # the wrong step's note is there
        assert explained == (32 if fmt == "explained" else 0)
        kept_prefix[target_mode] = kept
    assert kept_prefix["source"] == 32 > kept_prefix["any"]  # 'any' often picks another solution
    run.config.critique.refine_buckets = (40,)
    with pytest.raises(ValueError, match=r"prompt of \d+ tokens exceeds the largest prompt bucket 40 "
                                         r"\(config critique.refine_buckets\)"):
        refine_sft_arrays(run, examples, np.random.default_rng(0))


@pytest.mark.parametrize("kind", ["plan", "plan_hint"])
def test_plan_refinement_sft_plants_dead_ends_in_half_the_rows(tmp_path, kind):
    run = setup(tiny_config(tmp_path, **{"critique.sft_refine_every": 2, "critique.type": kind,
                                         "rl.loss.name": "critique_grpo", "critique.refine_buckets": (160,)}),
                str(tmp_path / "run"))
    examples = [run.train[i] for i in range(32)]
    n_plan = 0
    for ex, (wrong, critique, target) in zip(examples, _refine_sft_pairs(run, examples)):
        assert run.task.reward(ex.problem, wrong) == 0 and run.task.reward(ex.problem, target) == 1
        assert critique == rule_critique(kind, run.task, ex.problem, wrong)
        dead_end = ", wrong, plan" in critique
        n_plan += dead_end
        if kind == "plan_hint" and dead_end:  # the target follows the hint
            assert target.splitlines()[0] == critique.splitlines()[1].removeprefix("hint: ")
        else:
            assert target in ex.solutions
    assert 8 <= n_plan <= 24


def test_ground_truth_shortcut_is_rejected():
    task = get_task("arithmetic")  # answer-only reward: copying the revealed answer would pay
    p = make_problem(task, "test", 0, 0, 2)
    copied = f"1 + 1 = 3\nanswer: {p.answer}"
    assert task.reward(p, copied) == 1.0
    assert refinement_reward(task, p, copied, "ground_truth") == 0.0
    assert refinement_reward(task, p, copied, "indicative") == 1.0


def test_select_refinements_prefers_rescues():
    init = np.array([[0, 1, 0], [1, 1, 1], [0, 0, 0]], float)
    ref = np.array([[0, 1, 1], [0, 1, 0], [0, 0, 0]], float)
    # prompt 0: failed responses 0 and 2; refinement 2 is correct -> first
    # prompt 1: nothing failed; correct refinement 1 first
    # prompt 2: nothing correct -> the first failed response's refinement
    np.testing.assert_array_equal(select_refinements(init, ref, 1)[:, 0], [2, 1, 0])
    np.testing.assert_array_equal(select_refinements(init, ref, 2)[0], [2, 0])
    with pytest.raises(ValueError, match="n_refine=4 exceeds the 3 initial responses"):
        select_refinements(init, ref, 4)


def test_critique_accuracy_scoring():
    task = get_task("countdown")
    rng = np.random.default_rng(0)
    probs, resps, crits = [], [], []
    for i in range(10):
        p = make_problem(task, "test", 0, i, 1)
        good = task.solutions(p, rng, 1)[0]
        bad = task.perturb(p, good, rng).solution
        for r in (good, bad):
            probs.append(p)
            resps.append(r)
            crits.append(rule_critique("rule_step", task, p, r))
    m = critique_accuracy(task, probs, resps, crits)
    assert m == {"critique/verdict_acc": 1.0, "critique/first_wrong_acc": 1.0, "critique/parse_fail": 0.0}
    flipped = [c.replace("verdict: correct", "verdict: wrong") for c in crits]
    assert critique_accuracy(task, probs, resps, flipped)["critique/verdict_acc"] == 0.5


@pytest.mark.parametrize("base", ["ppo", "clip_cov"])
def test_critique_grpo_sharded_step_equals_single_device(base, np_rng):
    cfg = model_config("tiny", 128, n_layers=1)  # 1 layer: compiles fast; every parameter kind is sharded
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    optimizer = optax.sgd(0.5)  # see test_trainer: Adam amplifies the zero-gradient k-bias noise
    # A wide Clip-Cov band, so that its random selection among the initial tokens is exercised.
    base_cfg = make_loss_config(base, **(dict(ratio=0.05, cov_lb=-10.0, cov_ub=10.0) if base == "clip_cov" else {}))
    loss_cfg = make_loss_config("critique_grpo", base=base_cfg)
    arrays = _random_batch(np_rng, 16, 6, 10, 128)
    del arrays["ref_logp"]
    arrays["is_refinement"] = np.tile([False, False, False, True], 4)

    def run(params, batch, mesh):
        state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
        step = jax.jit(functools.partial(rl_update, graphdef, optimizer, loss_cfg, minibatches=2, mesh=mesh))
        return step(state, batch, jax.random.key(0))

    single_state, single_m = run(params, SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}), None)
    mesh = make_mesh(data=4, fsdp=2)
    batch = SequenceBatch(**{k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()})
    mesh_state, mesh_m = run(jax.device_put(params, param_shardings(params, mesh)), batch, mesh)
    assert float(single_m["refinement_frac"]) > 0
    assert (float(single_m["selected_frac"]) > 0) == (base == "clip_cov")
    for k in single_m:
        tol = dict(rtol=1e-3, atol=1e-4) if k.startswith("cov_p") else dict(rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mesh_m[k], single_m[k], err_msg=k, **tol)
    for a, b in zip(jax.tree.leaves(single_state.params), jax.tree.leaves(mesh_state.params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_tiny_rule_step_critique_run(tmp_path):
    # 5 held-out problems: the refinement evaluation pads its one chunk of rl.prompts_per_step = 8
    cfg = tiny_config(tmp_path, **{"critique.type": "rule_step", "critique.sft_refine_every": 2,
                                   "rl.loss.name": "critique_grpo", "rl.advantage": "drgrpo", "rl.steps": 2,
                                   "rl.loss.ref_kl_coef": 0.0, "checkpoint.every": 2, "eval.every": 2,
                                   "eval.n_problems": 5})
    train(cfg, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run")
    evals = [r for r in rows if "eval/pass@1" in r]
    assert evals[0]["step"] == cfg.sft.steps and evals[-1]["step"] == cfg.sft.steps + 2  # after SFT, after RL
    n0 = cfg.rl.group_size - cfg.critique.n_refine
    for r in evals:
        n_failed = r["eval/critique/n_failed"]
        assert n_failed == int(n_failed) and 0 <= n_failed <= 5 * n0  # the padding is not counted
        assert n_failed == pytest.approx(5 * n0 * (1 - r["eval/critique/initial_reward"]))
        for key in ("refine_success_on_failed", "pass1_on_failed_prompts"):
            v = r[f"eval/critique/{key}"]
            assert (0 <= v <= 1) if n_failed else math.isnan(v), key
    rl = [r for r in rows if "train/reward" in r]
    assert len(rl) == 2
    for key in ("critique/refine_success_on_failed", "critique/groups_rescued", "critique/refinement_entropy",
                "train/refinement_frac", "perf/critique_s", "perf/critique_share"):
        assert key in rl[-1], key
    assert "perf/critique_tokens_per_s" not in rl[-1]  # rule critiques are written on the host
    assert rl[-1]["train/refinement_frac"] == pytest.approx(1 / cfg.rl.group_size, rel=0.5)


def test_padded_groups_are_powers_of_two_that_divide_over_the_shards():
    assert [padded_groups(n, 32, 8, 1) for n in (1, 2, 3, 5, 9, 17, 32)] == [1, 2, 4, 8, 16, 32, 32]
    assert [padded_groups(n, 8, 4, 8) for n in (1, 2, 3, 8)] == [2, 2, 4, 8]  # 2 x 4 rows: one per shard
    assert padded_groups(3, 6, 4, 8) == 4 and padded_groups(1, 3, 4, 16) == 3  # else the whole batch


@pytest.mark.parametrize("kind", ["rule_step", "resample"])
def test_all_wrong_scope_refines_only_all_wrong_groups(tmp_path, monkeypatch, kind):
    cfg = tiny_config(tmp_path, **{"critique.type": kind, "critique.scope": "all_wrong",
                                   "rl.loss.name": "critique_grpo" if kind != "resample" else "ppo"})
    validation.validate(cfg, 8)
    run = setup(cfg, str(tmp_path / "run"))
    params = roles.init_params(run, 0)
    problems = [run.train[i].problem for i in range(cfg.rl.prompts_per_step)]
    b, g = len(problems), cfg.rl.group_size
    pattern = np.ones((b, g), np.float32) * (np.arange(g) == 1)  # one correct response per group ...
    wrong = np.asarray([1, 4, 6])
    pattern[wrong] = 0.0  # ... except three all-wrong groups
    monkeypatch.setattr(rollout_lib, "score", lambda task, probs, texts, n: pattern.reshape(-1).copy())
    calls = iter(range(10**6))  # refinement rows come in order: groups 1, 4, 6, then one padding group
    monkeypatch.setattr(loop_lib, "refinement_reward", lambda *a: float(next(calls) in (2, 5, 6)))
    source = critique_source(cfg, run.task)
    assert isinstance(source, ResampleSource) == (kind == "resample")
    arrays, metrics = critique_batch(run, params, problems, 123, source, RefineSettings.from_config(cfg), {})
    initial = rollout_lib.sample_texts(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                                       cfg.sampling.prompt_buckets, 123, g, cfg.sampling.temperature)
    picks = {1: 2, 4: 1, 6: 0}  # first correct refinement, else the first
    replaced = np.zeros((b, g), bool)
    for grp, j in picks.items():
        replaced[grp, j] = True
    replaced = replaced.reshape(-1)
    np.testing.assert_array_equal(arrays["response_mask"][~replaced], initial.mask[~replaced])
    resp = arrays["tokens"][:, -initial.tokens.shape[1]:]
    np.testing.assert_array_equal(resp[~replaced], initial.tokens[~replaced])
    assert (resp[replaced] != initial.tokens[replaced]).any(1).all()
    expected = pattern.copy()
    expected[1, 2], expected[4, 1] = 1.0, 1.0
    np.testing.assert_array_equal(arrays["rewards"], expected.reshape(-1))
    np.testing.assert_array_equal(arrays["is_refinement"], replaced & (kind != "resample"))
    np.testing.assert_array_equal(arrays["solved"], pattern.max(1) >= 1)  # initial responses only
    assert metrics["critique/groups_all_wrong"] == 3 / b and metrics["critique/refined"] == 3 * g
    assert metrics["critique/groups_rescued"] == 2 / b
    assert metrics["critique/refine_success_on_failed"] == pytest.approx(3 / 12)


def test_critique_gate_rows_and_errors(tmp_path, monkeypatch):
    from critique_jax.runs import gate as gate_lib

    run = setup(tiny_config(tmp_path, **{"critique.sft_refine_every": 2}), str(tmp_path / "run"))
    params = roles.init_params(run, 0)
    problems = [run.test[i].problem for i in range(5)]
    rows = gate_lib.critique_gate(run, params, ["plan", "resample"], problems)  # a random policy: every response fails
    assert [r["type"] for r in rows] == ["plan", "resample"] and rows[0]["n_failed"] == rows[1]["n_failed"] == 5 * 3
    fake = {"plan": (0.5, 0.2), "indicative": (0.25, 0.5), "resample": (0.0, 0.0)}
    monkeypatch.setattr(gate_lib, "evaluate_refinement", lambda run, params, source, *a: {
        "eval/critique/refine_success_on_failed": fake[source.kind][0],
        "eval/critique/pass1_on_failed_prompts": fake[source.kind][1],
        "eval/critique/n_failed": 10.0, "eval/critique/initial_reward": 0.1})
    rows = gate_lib.critique_gate(run, params, list(fake), problems)
    assert [(r["ratio"], r["passed"]) for r in rows][:2] == [(2.5, True), (0.5, False)]
    assert math.isnan(rows[2]["ratio"]) and not rows[2]["passed"]
    gate_lib.write_gate(str(tmp_path / "gate"), rows, "tiny")
    assert "| plan | 10 | 0.500 | 0.200 | 2.50 | yes |" in (tmp_path / "gate" / "gate.md").read_text()
    with pytest.raises(ValueError, match=r"--critique_gate: 'oracle' is not one of \['indicative'"):
        gate_lib.critique_gate(run, params, ["oracle"], problems)
    plain = setup(tiny_config(tmp_path / "plain"), str(tmp_path / "plain_run"))
    with pytest.raises(ValueError, match="the run's model was not sized for refinement prompts"):
        gate_lib.critique_gate(plain, params, ["plan"], problems)


@pytest.mark.parametrize("overrides,message", [
    ({"critique.type": "rule_step"}, r"critique.type='rule_step' needs rl.loss.name='critique_grpo'"),
    ({"critique.type": "rule_step", "rl.loss.name": "critique_grpo", "critique.n_refine": 4},
     r"critique.n_refine=4: expected 1 <= n_refine < rl.group_size=4"),
    ({"critique.type": "model", "rl.loss.name": "critique_grpo"}, r"critique.type='model' needs critique.critic_from"),
    ({"rl.loss.name": "critique_grpo"}, r"rl.loss.name='critique_grpo' needs refinements"),
    ({"critique.type": "oracle"}, r"critique.type='oracle': expected one of"),
    ({"critique.type": "rule_step", "rl.loss.name": "critique_grpo", "critique.scope": "some"},
     r"critique.scope='some': expected one of \['all', 'all_wrong'\]"),
    ({"critique.type": "plan", "rl.loss.name": "critique_grpo", "task.name": "gsm8k"},
     r"critique.type='plan' needs a task that finds dead ends; task.name='gsm8k'"),
    ({"critique.type": "resample", "rl.loss.name": "critique_grpo"},
     r"rl.loss.name='critique_grpo' needs refinements: set critique.type \(e.g. 'rule_step'\), not 'resample'"),
    ({"sft.skip_rl_pool": True}, r"sft.skip_rl_pool=True leaves the RL pool out of SFT: set rl.pool_size"),
    ({"critique.format": "fancy"}, r"critique.format='fancy': expected one of \['plain', 'explained'\]"),
    ({"critique.sft_refine_target": "best"}, r"critique.sft_refine_target='best': expected 'any' or 'source'"),
    ({"critique.format": "explained", "task.name": "gsm8k"},
     r"critique.format='explained' explains a step with the task's step notes; task.name='gsm8k' has none"),
    ({"critique.type": "rule_step", "rl.loss.name": "critique_grpo", "rl.loss.critique_grpo.base": "critique_grpo"},
     r"rl.loss.critique_grpo.base='critique_grpo': expected another registered loss, one of \['ppo', "),
    ({"critique.type": "rule_step", "rl.loss.name": "critique_grpo", "task.name": "gsm8k"},
     r"critique.type='rule_step' needs a task whose step checker follows every step; task.name='gsm8k'"),
])
def test_critique_config_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        validation.validate(tiny_config(tmp_path, **overrides), 8)


def test_a_critic_with_another_vocabulary_is_rejected_before_training(tmp_path):
    critic_dir = tmp_path / "critic"
    (critic_dir / "critic_policy").mkdir(parents=True)
    trained = config_lib.default_config()
    trained.unlock()
    trained.tokenizer.vocab_size = 1024
    (critic_dir / "config.json").write_text(trained.to_json())  # what train_critic writes
    cfg = tiny_config(tmp_path, **{"critique.type": "model", "rl.loss.name": "critique_grpo",
                                   "critique.critic_from": str(critic_dir)})
    with pytest.raises(ValueError, match=r"trained with tokenizer.vocab_size=1024 but this run has "
                                         r"tokenizer.vocab_size=512"):
        setup(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    cfg = tiny_config(tmp_path, **{"critique.type": "model", "rl.loss.name": "critique_grpo",
                                   "critique.critic_from": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match=r"expected a train_critic run directory"):
        setup(cfg, str(tmp_path / "run"))


def test_pass1_on_failed_is_the_leave_one_out_accuracy_of_failed_responses(np_rng):
    r = (np_rng.random((7, 5)) < 0.4).astype(np.float64)
    r[0] = 1.0  # a group with no failure contributes nothing
    ref = [np.mean([r[i, k] for k in range(5) if k != j]) for i in range(7) for j in range(5) if r[i, j] < 1]
    assert pass1_on_failed(r) == pytest.approx(float(np.mean(ref)), rel=1e-12)
    assert np.isnan(pass1_on_failed(np.ones((3, 4))))
    assert np.isnan(pass1_on_failed(np.zeros((3, 1))))


def test_refinement_metrics_compare_refinements_of_failed_responses_with_fresh_samples(np_rng):
    r = (np_rng.random((6, 5)) < 0.5).astype(np.float64)
    rr = (np_rng.random((6, 5)) < 0.5).astype(np.float64)
    m = refinement_metrics(r, rr)
    failed = [(i, j) for i in range(6) for j in range(5) if r[i, j] < 1]
    assert m["refine_success_on_failed"] == pytest.approx(np.mean([rr[i, j] for i, j in failed]), rel=1e-12)
    assert m["refine_success_on_correct"] == pytest.approx(
        np.mean([rr[i, j] for i in range(6) for j in range(5) if r[i, j] >= 1]), rel=1e-12)
    assert m["pass1_on_failed_prompts"] == pass1_on_failed(r)
    assert math.isnan(refinement_metrics(np.ones((2, 3)), rr[:2, :3])["refine_success_on_failed"])
