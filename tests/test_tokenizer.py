"""SentencePiece tokenizer (exact round trips, determinism, cache) and prompt templates."""

from __future__ import annotations

import numpy as np
import pytest

import critique_jax.tasks  # noqa: F401  (registers the tasks)
from critique_jax.tasks.base import StepCheck, get_task, iter_problems
from critique_jax.text import (
    CORPUS_VERSION,
    MARKERS,
    Tokenizer,
    critique_prompt,
    format_step_critique,
    parse_critique,
    refine_prompt,
    solve_prompt,
    task_corpus,
    tokenizer_cache_path,
    tokenizer_for_task,
    train_tokenizer,
)

TASKS = ("arithmetic", "countdown")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module", params=TASKS)
def task_tok(request, cache_dir):
    return request.param, tokenizer_for_task(request.param, cache_dir=cache_dir)


def _task_texts(name: str, n: int = 12) -> list[str]:
    """Solve/critique/refine prompts + targets for test-split problems (unseen in training)."""
    task = get_task(name)
    texts = []
    for i, p in enumerate(iter_problems(task, "test", 11, n)):
        rng = np.random.default_rng(i)
        sols = task.solutions(p, rng, 3)
        bad = task.perturb(p, sols[0], rng).solution
        crit = format_step_critique(task.check_steps(p, bad))
        texts += [solve_prompt(p.question) + s for s in sols]
        texts += [critique_prompt(p.question, bad) + crit, refine_prompt(p.question, bad, crit)]
    return texts


# ---------------------------------------------------------------- tokenizer


def test_round_trip_is_exact_on_task_text(task_tok):
    name, tok = task_tok
    texts = _task_texts(name)
    assert any(t.count("\n") >= 4 for t in texts)
    for t in texts:
        ids = tok.encode(t)
        assert tok.unk_id not in ids, t
        assert tok.decode(ids) == t
    edge = ["  two  spaces\n\n\nand blank lines \n", " lead", "trail  ", "a\tb", "", "\n"]
    for t in edge:
        assert tok.decode(tok.encode(t)) == t, repr(t)
    assert tok.encode_batch(texts[:5], eos=True) == [tok.encode(t) + [tok.eos_id] for t in texts[:5]]
    assert tok.decode_batch(tok.encode_batch(texts[:5])) == texts[:5]


def test_decode_drops_pad_bos_eos_and_checks_ids(task_tok):
    _, tok = task_tok
    text = "8 * 3 = 24\nanswer: 24"
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    padded = np.array([tok.pad_id] * 3 + ids + [tok.pad_id] * 2)
    assert tok.decode(padded) == text
    with pytest.raises(ValueError, match=str(tok.vocab_size)):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def test_markers_and_digits_are_single_tokens(task_tok):
    _, tok = task_tok
    ids = {tok.marker_id(name) for name in MARKERS}
    assert len(ids) == len(MARKERS)
    for name, piece in MARKERS.items():
        assert tok.encode(piece) == [tok.marker_id(name)]
        assert tok.encode(f"x{piece}7") [1] == tok.marker_id(name)
    assert tok.encode("\n") == [tok.newline_id]
    assert len(tok.encode("1234567890")) == 10
    with pytest.raises(KeyError, match="refinement"):
        tok.marker_id("refinement")
    assert tok.vocab_size <= 512


def test_training_is_deterministic(tmp_path):
    corpus = task_corpus("countdown", seed=0, n_problems=60)
    a = train_tokenizer(corpus, tmp_path / "a.model", vocab_size=300, seed=4)
    b = train_tokenizer(corpus, tmp_path / "sub" / "b.model", vocab_size=300, seed=4)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "sub" / "b.model").read_bytes()
    assert a.model_proto == b.model_proto
    c = train_tokenizer(corpus[: len(corpus) // 2], None, vocab_size=300, seed=4)
    assert c.model_proto != a.model_proto
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.model", "b.model", "sub"]


def test_load_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope" / "tok.model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        Tokenizer.load(missing)


def test_task_tokenizer_is_cached(task_tok, cache_dir, tmp_path):
    name, tok = task_tok
    path = tokenizer_cache_path(name, 512, 0, cache_dir)
    assert path.name == f"{name}-v{CORPUS_VERSION}-512-s0.model" and path.parent.name == "tokenizers"
    assert path.read_bytes() == tok.model_proto
    # A second call loads the cached file instead of training: plant a different model there.
    other = train_tokenizer(["just some other text\n123"], None, vocab_size=200)
    planted = tokenizer_cache_path(name, 512, 0, tmp_path)
    other.save(planted)
    assert tokenizer_for_task(name, cache_dir=tmp_path).model_proto == other.model_proto
    loaded = tokenizer_for_task(name, cache_dir=cache_dir)
    assert loaded.model_proto == tok.model_proto and loaded.path == path


# ---------------------------------------------------------------- templates


def test_prompt_formats():
    q, s, c = "Use 3, 8, 4 to make 20.", "8 * 3 = 24\n24 - 4 = 21\nanswer: 21", "verdict: wrong"
    assert solve_prompt(q) == "<question>Use 3, 8, 4 to make 20.\n<solution>"
    assert critique_prompt(q, s) == solve_prompt(q) + s + "\n<critique>"
    assert refine_prompt(q, s, c) == critique_prompt(q, s) + c + "\n<refine>"


def test_step_critique_format_and_parse(np_rng):
    assert format_step_critique(StepCheck(1, "arithmetic", 3)) == (
        "step 1: correct\nstep 2: wrong, arithmetic\nverdict: wrong"
    )
    assert format_step_critique(StepCheck(None, "ok", 2)) == (
        "step 1: correct\nstep 2: correct\nverdict: correct"
    )
    assert format_step_critique(StepCheck(0, "unavailable_number", 4), correct=True) == (
        "step 1: wrong, unavailable number\nverdict: correct"
    )
    for _ in range(50):
        n = int(np_rng.integers(0, 8))
        wrong = None if np_rng.random() < 0.3 else int(np_rng.integers(0, n + 1))
        check = StepCheck(wrong, "ok" if wrong is None else "wrong_answer", n)
        text = format_step_critique(check)
        assert parse_critique(text) == (wrong is None, wrong)
        assert len(text.splitlines()) == (n if wrong is None else wrong + 1) + 1
    with pytest.raises(ValueError, match="first_wrong=5"):
        format_step_critique(StepCheck(5, "arithmetic", 3))


def test_parse_critique_tolerates_model_output():
    assert parse_critique("") == (None, None)
    assert parse_critique("blah\nstep x: wrong\nverdict maybe") == (None, None)
    assert parse_critique("verdict: correct") == (True, None)
    assert parse_critique("Step 3 : Wrong, because\nstep 4: wrong\nVERDICT: wrong\nverdict: correct") == (
        False,
        2,
    )
    assert parse_critique("step 0: wrong\nstep 2: correct") == (None, None)
