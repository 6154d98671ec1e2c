"""The critic: critique data labels (plain and worked targets), balance and determinism; the
critique formats (parse, condense); the scorer; a tiny end-to-end run with exact resume; config
and width errors."""

import json
import pathlib

import jax
import numpy as np
import pytest

from critique_jax.checkpoint import Checkpointer
from critique_jax.config import default_config
from critique_jax.runs.critic_run import initial_params, setup_critic, train_critic
from critique_jax.critique.data import balance, build_examples, make_example, policy_examples, triples
from critique_jax.critique.feedback import score_critiques
from critique_jax.data import Example
from critique_jax.metrics import read_metrics
from critique_jax.tasks import Problem, StepCheck, get_task, iter_problems
from critique_jax.text import critique_prompt, format_step_critique, parse_critique
from critique_jax.text.templates import condense_critique, format_worked_critique

SCHEDULE_EARLY = True  # a long file: conftest schedules it early under pytest-xdist

TASK = get_task("countdown")


def _examples(n: int = 16, seed: int = 3) -> list[Example]:
    problems = iter_problems(TASK, "train", seed, n, (1, 2))
    return [Example(p, tuple(TASK.solutions(p, np.random.default_rng(i), 3))) for i, p in enumerate(problems)]


@pytest.fixture(scope="module")
def examples():
    return _examples()


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("fmt", ["plain", "worked"])
def test_targets_parse_back_to_the_checker_labels(examples, fmt):
    built = build_examples(TASK, examples, seed=0, wrong_per_solution=2, wrong_fraction=0.5, target_format=fmt)
    assert {e.source for e in built} == {"reference", "perturbed"}
    for (prompt, target, meta), e in zip(triples(built), built):
        check = TASK.check_steps(e.problem, e.solution)
        assert check == e.check
        assert condense_critique(target) == format_step_critique(check)
        if fmt == "worked":
            notes = TASK.step_notes(e.problem, e.solution)
            assert target == format_worked_critique(check, notes) and notes[0] in target.splitlines()[0]
        else:
            assert target == format_step_critique(check)
        assert e.check.ok == (e.source == "reference")
        assert prompt == critique_prompt(e.problem.question, e.solution)
        assert parse_critique(target) == (check.ok, check.first_wrong)
        assert (meta["verdict"], meta["first_wrong"], meta["uid"]) == (check.ok, check.first_wrong, e.problem.uid)
        assert target.splitlines()[-1] == f"verdict: {'correct' if check.ok else 'wrong'}"
        # steps listed: all of them when right, up to and including the first wrong one otherwise
        n_listed = len(target.splitlines()) - 1
        assert n_listed == (check.n_steps if check.ok else check.first_wrong + 1)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_balance_hits_the_wrong_fraction(examples, fraction):
    n_refs = sum(len(ex.solutions) for ex in examples)
    built = build_examples(TASK, examples, seed=1, wrong_per_solution=2, wrong_fraction=fraction)
    n_wrong = sum(not e.check.ok for e in built)
    n_right = len(built) - n_wrong
    # the larger class is subsampled: right ones are R = n_refs, wrong ones 2R
    expected = {0.0: (n_refs, 0), 0.25: (n_refs, round(n_refs / 3)), 0.5: (n_refs, n_refs),
                0.75: (round(2 * n_refs / 3), 2 * n_refs), 1.0: (0, 2 * n_refs)}[fraction]
    assert (n_right, n_wrong) == expected


def test_balance_errors_on_a_missing_class(examples):
    right = [e for e in build_examples(TASK, examples[:2], seed=0) if e.check.ok]
    with pytest.raises(ValueError, match="wrong_fraction=0.5: a class is empty"):
        balance(right, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="wrong_fraction=1.5"):
        balance(right, 1.5, np.random.default_rng(0))
    assert balance(right, 0.0, np.random.default_rng(0)) == right


def test_examples_are_deterministic_per_seed(examples):
    key = lambda built: [(e.problem.uid, e.solution, e.check) for e in built]  # noqa: E731
    a = build_examples(TASK, examples, seed=5)
    assert key(a) == key(build_examples(TASK, examples, seed=5))
    assert key(a) != key(build_examples(TASK, examples, seed=6))
    # a problem's examples do not depend on the other problems or their order
    rev = build_examples(TASK, examples[::-1], seed=5)
    assert sorted(key(a), key=str) == sorted(key(rev), key=str)


def test_policy_samples_are_labelled_by_the_checker_and_ambiguous_ones_dropped(examples):
    p, sol = examples[0].problem, examples[0].solutions[0]
    bad = TASK.perturb(p, sol, np.random.default_rng(0))
    got = policy_examples(TASK, [(p, sol), (p, bad.solution), (p, "no idea"), (p, "")])
    assert [e.check.ok for e in got] == [True, False, False, False]
    assert got[1].check.first_wrong == bad.step and got[1].source == "policy"
    assert parse_critique(got[2].target) == (False, 0)
    # gsm8k: a slip inside a step with the right final answer has no trustworthy label
    gsm = get_task("gsm8k")
    q = Problem("gsm8k/test/x", "What is 2 + 2?", "4", 1)
    texts = ["2 + 2 = 5\nanswer: 4", "2 + 2 = 4\nanswer: 4", "2 + 2 = 4\nanswer: 5"]
    kept = policy_examples(gsm, [(q, t) for t in texts])
    assert [(e.solution.splitlines()[-1], e.check.ok) for e in kept] == [("answer: 4", True), ("answer: 5", False)]
    # policy samples join the training set with their checker labels
    built = build_examples(TASK, examples[:3], seed=0, policy_samples=[(p, bad.solution), (p, sol)])
    assert [e.solution for e in built if e.source == "policy"] == [bad.solution, sol]


# ----------------------------------------------------------------------------- critique formats


def _texts_of_every_kind(task, problems, rng):
    """Reference solutions, planted errors and edits (no answer, an unreadable line or answer)."""
    out = []
    for p in problems:
        for sol in task.solutions(p, rng, 2):
            bad = task.perturb(p, sol, rng).solution
            lines = sol.splitlines()
            out += [(p, t) for t in (sol, bad, "\n".join(lines[:-1]), "\n".join(["so then"] + lines),
                                     sol.replace("answer:", "answer: x"), "")]
    return out


@pytest.mark.parametrize("name", ["countdown", "arithmetic"])
def test_parse_and_condense_read_plain_and_worked_critiques_of_every_kind(name):
    task = get_task(name)
    rng = np.random.default_rng(11)
    items = _texts_of_every_kind(task, iter_problems(task, "train", 5, 30), rng)
    kinds = set()
    for p, text in items:
        check = task.check_steps(p, text)
        kinds.add(check.kind)
        for correct in (None, not check.ok):  # the verdict as checked, and flipped
            plain = format_step_critique(check, correct=correct)
            worked = format_worked_critique(check, task.step_notes(p, text), correct=correct)
            verdict = check.ok if correct is None else correct
            assert parse_critique(worked) == parse_critique(plain) == (verdict, check.first_wrong)
            assert condense_critique(worked) == condense_critique(plain) == plain
            assert len(worked.splitlines()) == len(plain.splitlines())
    expected = {"ok", "unparsable", "wrong_answer", "missing_answer", "arithmetic"}
    expected |= {"unavailable_number"} if name == "countdown" else {"invalid_step", "incomplete"}
    assert kinds >= expected


def test_condense_keeps_decisions_and_drops_everything_else():
    text = ("Step 1: 8 * 3 = 24, left 4 24, Correct, fine\nnote: whatever\nstep 2: 24 - 4 = 20, wrong,  arithmetic "
            "\nstep 3: answer 20\nverdict:   WRONG because\nreference answer: 20")
    assert condense_critique(text) == "step 1: correct\nstep 2: wrong, arithmetic\nverdict: wrong"
    assert parse_critique(text) == (False, 1)
    assert condense_critique("step 2: wrong\nno idea") == "step 2: wrong"
    assert condense_critique("") == condense_critique("all good") == ""


def test_worked_critique_rejects_bad_notes():
    check = StepCheck(1, "arithmetic", 3)
    assert format_worked_critique(check, ["1 + 2 = 3", ""]) == (
        "step 1: 1 + 2 = 3, correct\nstep 2: wrong, arithmetic\nverdict: wrong")
    with pytest.raises(ValueError, match="3 step notes for 2 listed steps"):
        format_worked_critique(check, ["a", "b", "c"])
    for note in ("looks Correct", "wrong sum", "two\nlines"):
        with pytest.raises(ValueError, match="must be one line without the words"):
            format_worked_critique(check, ["1 + 2 = 3", note])


def test_target_format_errors(examples):
    p, sol = examples[0].problem, examples[0].solutions[0]
    with pytest.raises(ValueError, match=r"target_format='fancy': expected one of \('plain', 'worked'\)"):
        make_example(TASK, p, sol, "reference", "fancy")
    gsm = get_task("gsm8k")
    q = Problem("gsm8k/test/x", "What is 2 + 2?", "4", 1)
    assert make_example(gsm, q, "2 + 2 = 4\nanswer: 4", "policy").target.endswith("verdict: correct")
    with pytest.raises(NotImplementedError, match="task 'gsm8k' does not implement step_notes"):
        make_example(gsm, q, "2 + 2 = 4\nanswer: 4", "policy", "worked")


# ----------------------------------------------------------------------------- scorer


def test_score_critiques_on_known_answers(examples, np_rng):
    checks = [e.check for e in build_examples(TASK, examples, seed=2)]
    truth = [format_step_critique(c) for c in checks]
    kinds = sorted({c.kind for c in checks if not c.ok})
    assert len(kinds) >= 2
    per_kind = {f"{name}/{k}": 1.0 for k in kinds for name in ("acc_on_wrong", "first_wrong_acc")}
    perfect = {"verdict_acc": 1.0, "parse_fail": 0.0, "exact_match": 1.0, "n": float(len(checks)),
               "acc_on_correct": 1.0, "acc_on_wrong": 1.0, "first_wrong_acc": 1.0, **per_kind}
    assert score_critiques(truth, checks) == perfect
    worked = [e.target for e in build_examples(TASK, examples, seed=2, target_format="worked")]
    assert score_critiques(worked, checks) == perfect
    modes = np_rng.choice(["truth", "flip", "shift", "garbage"], len(checks))
    texts = []
    for c, mode in zip(checks, modes):
        if mode == "flip":  # same step lines, the other verdict
            texts.append(format_step_critique(c, correct=not c.ok))
        elif mode == "shift" and not c.ok:  # the right verdict, another step blamed
            other = (c.first_wrong + 1) % (c.n_steps + 1)
            texts.append(format_step_critique(StepCheck(other, c.kind, c.n_steps)))
        elif mode == "garbage":
            texts.append("step one is fine i think")
        else:
            texts.append(format_step_critique(c))
    ok = np.array([c.ok for c in checks])
    exact = np.array([m == "truth" or (m == "shift" and c.ok) for m, c in zip(modes, checks)])
    verdict = exact | ((modes == "shift") & ~ok)
    got = score_critiques(texts, checks)
    assert got["verdict_acc"] == pytest.approx(verdict.mean())
    assert got["parse_fail"] == pytest.approx((modes == "garbage").mean())
    assert got["exact_match"] == pytest.approx(exact.mean())
    assert got["acc_on_correct"] == pytest.approx(verdict[ok].mean())
    assert got["acc_on_wrong"] == pytest.approx(verdict[~ok].mean())
    assert got["first_wrong_acc"] == pytest.approx(exact[~ok].mean())
    kind = np.array([c.kind for c in checks])
    for k in kinds:
        assert got[f"acc_on_wrong/{k}"] == pytest.approx(verdict[kind == k].mean())
        assert got[f"first_wrong_acc/{k}"] == pytest.approx(exact[kind == k].mean())
    only_right = score_critiques([texts[i] for i in np.flatnonzero(ok)], [checks[i] for i in np.flatnonzero(ok)])
    assert "first_wrong_acc" not in only_right and "acc_on_wrong" not in only_right
    with pytest.raises(ValueError, match="2 texts but 1 checks"):
        score_critiques(texts[:2], checks[:1])


# ----------------------------------------------------------------------------- training


def tiny_config(tmp_path, **critic):
    c = default_config()
    c.unlock()
    c.task.n_train, c.task.n_test = 48, 16
    c.data_dir = str(tmp_path / "data")
    c.model.preset = "tiny"
    c.critic.update(preset="tiny", steps=4, batch_size=8, warmup_steps=0, log_every=1, eval_every=0,
                    checkpoint_every=100, eval_n_problems=4, eval_batch=8, n_logged_samples=2)
    c.critic.update(critic)
    c.log.update(tensorboard=False, progress=False)
    c.lock()
    return c


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CRITIQUE_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield tmp_path_factory.mktemp("critic")
    mp.undo()


@pytest.fixture(scope="module")
def runs(shared):
    """An uninterrupted 4-step run and one stopped after step 2, then resumed."""
    whole, split = str(shared / "whole"), str(shared / "split")
    train_critic(tiny_config(shared), whole)
    train_critic(tiny_config(shared), split, stop_at=2)
    stopped = read_metrics(split)
    assert not any((pathlib.Path(split) / "critic_policy").iterdir())  # no final critic yet
    train_critic(tiny_config(shared), split)
    return whole, split, stopped


def _final_params(config, workdir):
    critic = setup_critic(config, workdir)
    with Checkpointer(f"{workdir}/critic_policy", keep_last=1, keep_best=0, best_metric=None) as ck:
        restored, meta = ck.restore(like={"params": critic.run.abstract_params()})
    return critic, restored["params"], meta


def test_train_critic_writes_the_policy_and_metrics(runs, shared):
    whole, _, _ = runs
    metrics = read_metrics(whole)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(np.isfinite(m["critic/nll"]) for m in metrics)
    assert metrics[-1]["critic/nll"] < metrics[0]["critic/nll"]
    final = metrics[-1]
    for key in ("critic/verdict_acc", "critic/first_wrong_acc", "critic/parse_fail", "critic/acc_on_correct",
                "critic/acc_on_wrong", "critic/exact_match", "critic/target_match"):
        assert 0.0 <= final[key] <= 1.0, key
    assert final["critic/n"] == 8  # 4 held-out problems x (1 reference + 1 planted error)
    critic, params, meta = _final_params(tiny_config(shared), whole)
    assert meta["prompt_width"] == critic.prompt_width and meta["response_len"] == critic.response_len
    cfg = critic.run.model_cfg
    assert cfg.d_model == 64 and cfg.max_seq_len == critic.prompt_width + critic.response_len
    assert all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(params))
    samples = [json.loads(line) for line in open(f"{whole}/samples.jsonl")]
    assert len(samples) == 2
    # the default target is the worked format: a reference solution's first step is recomputed
    # next to the value it wrote
    first, written = samples[0]["solution"].splitlines()[0].split(" = ")
    assert samples[0]["target"].startswith(f"step 1: {first} is {written} vs {written}, ")
    # a finished run is left alone
    train_critic(tiny_config(shared), whole)
    assert read_metrics(whole) == metrics


def test_resumed_critic_equals_the_uninterrupted_one(runs, shared):
    whole, split, stopped = runs
    assert [m["step"] for m in stopped] == [1, 2]
    drop = lambda ms: [{k: v for k, v in m.items() if not k.startswith("perf/")} for m in ms]  # noqa: E731
    assert drop(read_metrics(split)) == drop(read_metrics(whole))
    _, a, _ = _final_params(tiny_config(shared), whole)
    _, b, _ = _final_params(tiny_config(shared), split)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_init_from_restores_a_checkpoint_and_checks_its_architecture(runs, shared):
    whole, _, _ = runs
    _, saved, _ = _final_params(tiny_config(shared), whole)
    critic = setup_critic(tiny_config(shared, init_from=f"{whole}/critic_policy"), str(shared / "init"))
    for x, y in zip(jax.tree.leaves(initial_params(critic, 0)), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    fresh = initial_params(setup_critic(tiny_config(shared), str(shared / "init")), 0)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(fresh), jax.tree.leaves(saved)))
    other = setup_critic(tiny_config(shared, init_from=f"{whole}/critic_policy", family="llama"), str(shared / "init"))
    with pytest.raises(ValueError, match=r"critic.init_from=.*do not fit critic.preset='tiny', critic.family='llama'"):
        initial_params(other, 0)
    missing = setup_critic(tiny_config(shared, init_from=str(shared / "nowhere")), str(shared / "init"))
    with pytest.raises(FileNotFoundError, match="critic.init_from=.*nowhere"):
        initial_params(missing, 0)


def test_policy_samples_join_the_training_data_and_the_evaluation(shared):
    """critic.policy_from: the SFT policy of a train run samples responses (real mistakes) for the
    critic's training set and one per held-out problem for critic/policy/*; critic/* stays the
    reference-and-planted benchmark."""
    from critique_jax.runs import train
    from critique_jax.runs.critic_run import evaluate_critic

    policy = shared / "policy"
    pc = tiny_config(shared)
    pc.unlock()
    pc.sft.update(steps=2, batch_size=8, warmup_steps=0)
    pc.rl.steps = 0
    pc.eval.update(n_problems=8, batch_prompts=8, group_size=2)
    pc.lock()
    train(pc, str(policy))
    cfg = tiny_config(shared, policy_from=str(policy), policy_samples=2)
    critic = setup_critic(cfg, str(shared / "with_policy"))
    sampled = [e for e in critic.train if e.source == "policy"]
    held = [e for e in critic.held_out if e.source == "policy"]
    assert sampled and len(held) == cfg.critic.eval_n_problems  # countdown's checker labels every sample
    assert {e.problem.uid for e in held} == {e.problem.uid for e in critic.held_out if e.source == "reference"}
    for e in sampled + held:
        assert e.check == TASK.check_steps(e.problem, e.solution) and e.target == make_example(
            TASK, e.problem, e.solution, "policy", "worked").target
    again = setup_critic(cfg, str(shared / "with_policy_again"))  # the same samples: a resumed run rebuilds them
    assert [e.solution for e in again.train] == [e.solution for e in critic.train]
    metrics = evaluate_critic(critic, initial_params(critic, 0), 0)
    assert metrics["critic/n"] == 2 * cfg.critic.eval_n_problems and metrics["critic/policy/n"] == len(held)
    only_held = setup_critic(tiny_config(shared, policy_from=str(policy)), str(shared / "held_only"))
    assert not any(e.source == "policy" for e in only_held.train) and len(only_held.held_out) == len(critic.held_out)
    with pytest.raises(ValueError, match=r"critic.policy_samples=2 needs critic.policy_from"):
        setup_critic(tiny_config(shared, policy_samples=2), str(shared / "bad"))
    with pytest.raises(FileNotFoundError, match=r"critic.policy_from='.*nowhere': .*config.json is missing"):
        setup_critic(tiny_config(shared, policy_from=str(shared / "nowhere")), str(shared / "bad"))


# ----------------------------------------------------------------------------- errors


def test_config_errors_name_the_key(shared):
    with pytest.raises(ValueError, match=r"critic.preset='huge': unknown model preset"):
        setup_critic(tiny_config(shared, preset="huge"), str(shared / "bad"))
    with pytest.raises(ValueError, match=r"critic.batch_size=6: must be a positive multiple of the 8"):
        setup_critic(tiny_config(shared, batch_size=6), str(shared / "bad"))
    with pytest.raises(ValueError, match=r"critic.target_format='fancy': expected one of"):
        setup_critic(tiny_config(shared, target_format="fancy"), str(shared / "bad"))
    with pytest.raises(ValueError, match=r"critic.eval_n_problems=17 exceeds the 16 test problems"):
        setup_critic(tiny_config(shared, eval_n_problems=17), str(shared / "bad"))
    with pytest.raises(AttributeError, match='Key "prset" does not exist'):
        default_config().critic.prset = "tiny"


def test_a_prompt_or_target_that_does_not_fit_is_an_error(shared):
    with pytest.raises(ValueError, match=r"critique prompt of \d+ tokens exceeds critic.prompt_width=12"):
        setup_critic(tiny_config(shared, prompt_width=12), str(shared / "bad"))
    with pytest.raises(ValueError, match=r"critique target of \d+ tokens exceeds critic.max_new_tokens=5"):
        setup_critic(tiny_config(shared, max_new_tokens=5), str(shared / "bad"))
    fits = setup_critic(tiny_config(shared), str(shared / "bad"))
    wide = setup_critic(tiny_config(shared, prompt_width=fits.prompt_width + 3), str(shared / "bad"))
    assert wide.prompt_width == fits.prompt_width + 3 and wide.response_len == fits.response_len


def test_a_trained_critic_writes_the_critiques_of_a_critique_grpo_step(runs, shared):
    """critique.type='model' end to end: the critic of a train_critic run is loaded frozen on the
    policy's mesh, samples as many tokens as its targets had, and its critiques are scored."""
    from critique_jax.runs import setup, train
    from critique_jax.runs.roles import load_critic

    whole, _, _ = runs
    cfg = tiny_config(shared)
    cfg.unlock()
    cfg.sft.update(steps=2, batch_size=8, warmup_steps=0)
    cfg.rl.update(steps=1, prompts_per_step=8, group_size=2, minibatches=1)
    cfg.eval.update(every=100, n_problems=8, batch_prompts=8, group_size=2)
    cfg.critique.update(type="model", critic_from=whole, prompt_buckets=(96,), refine_buckets=(160,))
    cfg.rl.loss.name = "critique_grpo"
    cfg.mesh.critic = "replicated"  # its own layout on the policy's mesh
    cfg.lock()
    run_dir = str(shared / "cgrpo_model")
    train(cfg, run_dir)
    step = [m for m in read_metrics(run_dir) if "critique/verdict_acc" in m]
    assert len(step) == 1 and 0.0 <= step[0]["critique/verdict_acc"] <= 1.0
    perf = step[0]
    assert perf["perf/critique_tokens_per_s"] > 0 and 0 < perf["perf/critique_s"] <= perf["perf/sample_s"]
    assert 0 < perf["perf/critique_share"] < 1
    critic = load_critic(setup(cfg, run_dir))
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(critic.model[1]))
    _, _, meta = _final_params(tiny_config(shared), whole)
    assert critic.sampler.max_new_tokens == meta["response_len"] > cfg.sampling.max_new_tokens // 2
