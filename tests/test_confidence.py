"""The RLSF confidence reward: the answer-span margin on a constructed distribution (vs float64
NumPy), the chunked reference-policy path, answer spans in characters and tokens, AUROC with ties,
and the reward term."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from critique_jax.config import default_config
from critique_jax.models import Transformer, model_config
from critique_jax.rl.confidence import (answer_char_span, answer_confidence, answer_span_mask, auroc,
                                        reference_confidence, token_span)
from critique_jax.rl.rewards import parse_rewards, score_rewards, uses_confidence
from critique_jax.rl.train_step import SequenceBatch, response_hidden
from critique_jax.tasks import Problem, get_task
from critique_jax.validation import validate


def _margin64(logits):
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = np.sort(p, -1)[..., ::-1]
    return top[..., 0] - top[..., 1]


def test_confidence_on_a_constructed_distribution():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 7)) * 3
    logits[0, 1] = [2.0, 2.0, -1.0, 0.0, 0.0, 0.0, 0.0]  # a tie at the top: margin 0
    logits[0, 2] = [40.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # peaked: margin 1 - 1e-17, in float32 1
    span = np.array([[True, True, True, False], [False, False, True, True], [False] * 4])
    bf16 = jnp.asarray(logits, jnp.bfloat16)  # the softmax runs in float32 whatever the logits' dtype
    got = np.asarray(answer_confidence(bf16, span))
    ref = _margin64(np.asarray(bf16.astype(jnp.float32)))
    want = [(ref[0, 0] + 0.0 + 1.0) / 3, ref[1, 2:].mean(), 0.0]  # an empty span: confidence 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert got.dtype == np.float32 and 0 <= got.min() and got.max() <= 1


def test_reference_confidence_in_chunks_equals_the_logits_path():
    cfg = model_config("tiny", 64, n_layers=1)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(1)
    tokens = rng.integers(4, 64, (3, 9)).astype(np.int32)
    valid = np.ones((3, 9), bool)
    valid[:, :2] = False
    batch = SequenceBatch(tokens=jnp.asarray(tokens), valid=jnp.asarray(valid), response_mask=jnp.ones((3, 5), bool))
    span = jnp.asarray(rng.random((3, 5)) < 0.5)
    got = reference_confidence(graphdef, params, batch, span, 4)  # 15 tokens in chunks of 4
    model = nnx.merge(graphdef, params)
    want = answer_confidence(model.logits(response_hidden(model, batch)), span)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_answer_spans_in_characters_and_tokens():
    text = "8 * 3 = 24\n  24 - 4 = 20\n answer:  20 \nanswer: 5"
    start, end = answer_char_span(text, "answer")
    assert text[start:end] == "20" and start == text.index("20 \n")
    start, end = answer_char_span(text, "steps")
    assert text[start:end] == "24 - 4 = 20\n answer:  20"  # the last step through the answer value
    assert answer_char_span("answer: 7", "steps") == (8, 9)  # no step: the value alone
    assert answer_char_span("8 * 3 = 24\n", "answer") is None and answer_char_span("answer:\n", "answer") is None

    class Pieces:  # a tokenizer whose ids decode to fixed pieces; id 0 is the end token (decodes to "")
        pieces = ["", "8 * 3", " = ", "24", "\n", "answer:", " 2", "4"]

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

    ids = [1, 2, 3, 4, 5, 6, 7, 0]
    text = Pieces().decode(ids)  # "8 * 3 = 24\nanswer: 24"
    assert token_span(Pieces(), ids, *answer_char_span(text, "answer")) == (5, 7)  # " 2" and "4"
    assert token_span(Pieces(), ids, 2, 3) == (0, 1)  # a span inside one token
    tokens = np.array([ids, [5, 6, 0, 0, 0, 0, 0, 0]])
    mask = np.array([[True] * 8, [True, True, True] + [False] * 5])
    texts = [text, "answer: 2"]
    got = answer_span_mask(get_task("arithmetic"), Pieces(), tokens, mask, texts)
    assert got.tolist() == [[False] * 5 + [True, True, False], [False, True] + [False] * 6]
    steps = answer_span_mask(get_task("countdown"), Pieces(), tokens, mask, texts)  # the steps decide
    assert steps[0].tolist() == [True] * 7 + [False] and steps[1].tolist() == got[1].tolist()
    derived = answer_span_mask(get_task("arithmetic"), Pieces(), tokens, mask, texts, "derivation")
    assert derived.tolist() == [[False] * 2 + [True] + [False] * 5, [False] * 8]  # "24" after " = "; none
    with pytest.raises(ValueError, match="rl.confidence_span='derivation' needs a task graded by its answer"):
        answer_span_mask(get_task("countdown"), Pieces(), tokens, mask, texts, "derivation")
    with pytest.raises(ValueError, match="rl.confidence_span='last': expected one of"):
        answer_span_mask(get_task("arithmetic"), Pieces(), tokens, mask, texts, "last")


@pytest.mark.parametrize("text, derived", [
    ("11 - 2 = 9\n9 * 12 = 108\n108 - 1 = 107\nanswer: 107", "108 - 1 = [107]"),
    ("17 * 4 = 68, so 68 + 3 + 9\n68 + 3 = 71, so 71 + 9\n71 + 9 = 80\nanswer: 80", "71 + 9 = [80]"),
    ("2 + 3 = 5\n5 * 1 = 5\nanswer: 5", "5 * 1 = [5]"),  # the last derivation, not the first
    ("6 * 5 = 30\n30 + 1 = 301\nanswer: 30", "6 * 5 = [30]"),  # 301 is another number
    ("6 * 5 = 30\nanswer: 31", None),  # an answer the trace never computes
    ("6 * 5 = 30\nanswer: 30\n30 = 30", "6 * 5 = [30]"),  # only before the answer line
    ("3 - 8 = -5\nanswer: -5", "3 - 8 = [-5]"),
])
def test_the_derivation_span_is_where_the_answer_is_computed(text, derived):
    span = answer_char_span(text, "derivation")
    if derived is None:
        assert span is None
    else:
        start, end = span
        line = text[:end].rsplit("\n", 1)[-1]
        assert f"{line[:len(line) - (end - start)]}[{text[start:end]}]" == derived


def test_auroc_with_ties():
    assert auroc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)  # the 0.5-0.5 pair counts 1/2
    assert auroc([0.3] * 4, [1, 0, 1, 0]) == 0.5
    assert auroc([0.1, 0.9], [1, 0]) == 0.0 and auroc([0.9, 0.1, 0.5], [1.0, 0.0, 0.0]) == 1.0
    assert np.isnan(auroc([0.2, 0.4], [1, 1])) and np.isnan(auroc([0.2, 0.4], [0, 0]))


def test_confidence_reward_term():
    rewards = parse_rewards("correct,confidence:0.5")
    assert uses_confidence(rewards) and not uses_confidence(parse_rewards("correct,format"))
    task, problems = get_task("arithmetic"), [Problem(uid="p", question="3 + 4", answer="7", difficulty=1)]
    conf, correct = np.array([0.2, 0.8]), np.array([1.0, 0.0], np.float32)
    total, terms = score_rewards(rewards, task, problems, ["a", "b"], 2, correct, conf)
    np.testing.assert_allclose(total, [1.1, 0.4], rtol=1e-6)
    assert terms == pytest.approx({"reward/correct": 0.5, "reward/confidence": 0.5})
    with pytest.raises(ValueError, match="reward 'confidence' needs the reference policy's confidences"):
        score_rewards(rewards, task, problems, ["a", "b"], 2, correct)


def test_config_needs_a_reference_policy():
    c = default_config()
    c.rl.rewards = "confidence"
    validate(c, 1)  # the SFT policy is the reference
    c.sft.steps = 0
    with pytest.raises(ValueError, match=r"rl.rewards='confidence': the confidence reward needs a reference policy"):
        validate(c, 1)


def test_config_checks_the_confidence_span():
    c = default_config()  # countdown: its steps decide, no derivation
    c.rl.rewards, c.rl.confidence_span = "confidence", "derivation"
    with pytest.raises(ValueError, match="rl.confidence_span='derivation' needs a task graded by its answer"):
        validate(c, 1)
    c.task.name = "arithmetic"
    validate(c, 1)
    c.rl.confidence_span = "answers"
    with pytest.raises(ValueError, match=r"rl.confidence_span='answers': expected one of \['answer', 'derivation'\]"):
        validate(c, 1)
