"""User reward functions (rl.rewards): parsing, loading from a module or a file, weighting,
per-term metrics, and the errors of a spec that does not import or a reward that misbehaves."""

import numpy as np
import pytest

from critique_jax.config import default_config
from critique_jax.rl.rewards import parse_rewards, score_rewards
from critique_jax.tasks import Problem, get_task
from critique_jax.validation import validate

REWARDS_PY = '''
def brevity(problem, completion):
    return -len(completion) / 100.0

def boom(problem, completion):
    raise RuntimeError("no " + problem.uid)

def text(problem, completion):
    return "high"
'''


@pytest.fixture
def rewards_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS_PY)
    return str(path)


def _problems():
    return [Problem(uid=f"p{i}", question="3 + 4", answer="7", difficulty=1) for i in range(2)]


def test_weighted_terms_and_their_metrics(rewards_file):
    task = get_task("arithmetic")
    texts = ["3 + 4 = 7\nanswer: 7", "answer: 8", "no answer", "3 + 4 = 7\nanswer: 7"]
    correct = np.asarray([task.reward(_problems()[i // 2], t) for i, t in enumerate(texts)], np.float32)
    rewards = parse_rewards(f"correct, format:0.5, {rewards_file}:brevity:2")
    assert [(r.name, r.weight) for r in rewards] == [("correct", 1.0), ("format", 0.5), ("brevity", 2.0)]
    total, terms = score_rewards(rewards, task, _problems(), texts, 2, correct)
    fmt = np.asarray([float(task.format_ok(t)) for t in texts])
    want = correct + 0.5 * fmt + 2 * np.asarray([-len(t) / 100 for t in texts])
    np.testing.assert_allclose(total, want, rtol=1e-6)
    assert terms == pytest.approx({"reward/correct": correct.mean(), "reward/format": fmt.mean(),
                                   "reward/brevity": np.mean([-len(t) / 100 for t in texts])})
    only, _ = score_rewards(parse_rewards("correct"), task, _problems(), texts, 2, correct)
    np.testing.assert_array_equal(only, correct)  # the default is the verifier's reward, bit for bit


def test_bad_specs_and_bad_rewards_are_errors(rewards_file):
    task = get_task("arithmetic")
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module_xyz'"):
        parse_rewards("no_such_module_xyz:f")
    with pytest.raises(ValueError, match=r"has no function 'missing'"):
        parse_rewards(f"{rewards_file}:missing")
    with pytest.raises(ValueError, match=r"no such file"):
        parse_rewards("nowhere/r.py:f")
    with pytest.raises(ValueError, match=r"reward names .* repeat"):
        parse_rewards("correct,correct:2")
    with pytest.raises(ValueError, match=r"is empty"):
        parse_rewards(" , ")
    texts = ["answer: 7"] * 4
    correct = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"reward 'boom' raised RuntimeError: no p0 on problem 'p0', completion "
                                         r"'answer: 7'"):
        score_rewards(parse_rewards(f"{rewards_file}:boom"), task, _problems(), texts, 2, correct)
    with pytest.raises(ValueError, match=r"reward 'text' returned 'high' \(expected a finite number\)"):
        score_rewards(parse_rewards(f"{rewards_file}:text"), task, _problems(), texts, 2, correct)


def test_config_validates_the_spec(rewards_file):
    c = default_config()
    c.rl.rewards = f"correct,{rewards_file}:brevity:0.1"
    validate(c, 1)
    c.rl.rewards = "correct,missing_module_abc:f"
    with pytest.raises(ValueError, match=r"config rl.rewards=.*cannot import"):
        validate(c, 1)
    c.rl.rewards = f"correct,{rewards_file}:brevity"
    c.critique.type, c.rl.loss.name = "rule_step", "critique_grpo"
    with pytest.raises(ValueError, match=r"user rewards apply to runs without critique"):
        validate(c, 1)
