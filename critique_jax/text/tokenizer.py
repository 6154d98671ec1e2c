"""SentencePiece tokenizer: deterministic training, exact round trips, cached per task.

Model choice: BPE. Task text is a tiny synthetic language; BPE's greedy merges turn the
frequent template words (``step``, ``: correct``, ``verdict:``, ``answer:``) into single
tokens, encoding is deterministic (no sampling) and training has no EM step, so the same
corpus gives the same model bytes (checked by the tests). Measured on countdown/arithmetic
prompts, unigram needs ~1.2x the tokens for questions and solutions and ~2x for critiques,
and its only extra, subword-regularisation sampling, is unused here.

Exact round trip: no normalisation (``identity``), no whitespace removal, no dummy prefix;
``\\n`` and ``\\t`` are user-defined symbols (one token each), runs of spaces are kept as
``▁`` pieces; digits are split (one token per digit). Every printable ASCII character is in
the vocabulary (``required_chars``), so ASCII text round-trips exactly; other characters of
the training corpus are covered too (``character_coverage=1``). Unseen non-ASCII characters
become ``<unk>`` unless ``byte_fallback=True`` (which spends 256 ids on bytes).

Ids: ``pad=0, unk=1, bos=2, eos=3``, then ``\\n``, ``\\t`` and the prompt markers of
:data:`critique_jax.text.templates.MARKERS` (one id each, see :meth:`Tokenizer.marker_id`).
``vocab_size`` is an upper bound: training stops early when the corpus has no more merges.
"""

from __future__ import annotations

import io
import os
import string
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

import critique_jax.tasks  # noqa: F401  (registers the tasks)
from critique_jax.tasks.base import Problem, get_task, iter_problems
from critique_jax.tasks.files import files_digest, load_split
from critique_jax.text import templates

DEFAULT_VOCAB_SIZE = 512
#: Bump when the task corpus recipe changes (it is part of the cache file name).
CORPUS_VERSION = 1
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
NEWLINE = "\n"
_USER_SYMBOLS = (NEWLINE, "\t", *templates.MARKERS.values())
# Space and other whitespace cannot be required chars (space is the ▁ meta symbol).
_REQUIRED_CHARS = "".join(c for c in string.printable if not c.isspace())


class Tokenizer:
    """A loaded SentencePiece model. Build with :func:`train_tokenizer` or :meth:`load`."""

    def __init__(self, model_proto: bytes, path: str | os.PathLike | None = None):
        self._proto = bytes(model_proto)
        self.path = None if path is None else Path(path)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        for piece in _USER_SYMBOLS:
            if self._sp.id_to_piece(self._sp.piece_to_id(piece)) != piece:
                raise ValueError(f"tokenizer {self.path}: symbol {piece!r} is not in the vocab")
        self._markers = {n: self._sp.piece_to_id(p) for n, p in templates.MARKERS.items()}
        for want, got, what in [
            (PAD_ID, self._sp.pad_id(), "pad"),
            (BOS_ID, self._sp.bos_id(), "bos"),
            (EOS_ID, self._sp.eos_id(), "eos"),
        ]:
            if got != want:
                raise ValueError(f"tokenizer {self.path}: {what}_id is {got}, expected {want}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Loads a ``.model`` file; a missing file raises FileNotFoundError naming it."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {p}")
        return cls(p.read_bytes(), path=p)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model bytes to ``path`` atomically."""
        _write_atomic(Path(path), self._proto)

    @property
    def model_proto(self) -> bytes:
        """The serialised model (what ``.model`` files hold)."""
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a response (one here; an :class:`HFTokenizer` may have several)."""
        return (EOS_ID,)

    @property
    def newline_id(self) -> int:
        return self._sp.piece_to_id(NEWLINE)

    def marker_id(self, name: str) -> int:
        """Id of a prompt marker by name (``question``, ``solution``, ``critique``, ``refine``)."""
        if name not in self._markers:
            raise KeyError(f"unknown marker {name!r}; markers: {', '.join(self._markers)}")
        return self._markers[name]

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(self._check_id(i))

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally with bos first / eos last."""
        ids = self._sp.encode(text)
        return [BOS_ID] * bos + ids + [EOS_ID] * eos

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt, the start of a sequence (no bos: the project's models train without)."""
        return self.encode(text)

    def encode_batch(
        self, texts: Sequence[str], *, bos: bool = False, eos: bool = False
    ) -> list[list[int]]:
        return [
            [BOS_ID] * bos + ids + [EOS_ID] * eos for ids in self._sp.encode(list(texts))
        ]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` with pad/bos/eos dropped; ids outside the vocab raise ValueError."""
        keep = [self._check_id(int(i)) for i in np.asarray(ids).reshape(-1)]
        return self._sp.decode([i for i in keep if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def decode_batch(self, batch: Sequence[Sequence[int]] | np.ndarray) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def _check_id(self, i: int) -> int:
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocab [0, {self.vocab_size})")
        return i


def train_tokenizer(
    corpus: Iterable[str],
    path: str | os.PathLike | None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = 0,
    *,
    model_type: str = "bpe",
    byte_fallback: bool = False,
) -> Tokenizer:
    """Trains a SentencePiece model on ``corpus`` (each item one text; newlines allowed).

    Deterministic: one thread, no input sampling or shuffling, ``seed`` fixes SentencePiece's
    global RNG; the same corpus and arguments give identical model bytes. ``path``: where to
    write the ``.model`` file atomically (None: keep in memory only).
    """
    texts = list(corpus)
    if not texts:
        raise ValueError("train_tokenizer: empty corpus")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type={model_type!r}: expected 'bpe' or 'unigram'")
    spm.set_random_generator_seed(seed)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=out,
        model_type=model_type,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        split_by_unicode_script=False,
        user_defined_symbols=list(_USER_SYMBOLS),
        required_chars=_REQUIRED_CHARS,
        character_coverage=1.0,
        byte_fallback=byte_fallback,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_sentence_length=1 << 16,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    tok = Tokenizer(out.getvalue(), path=path)
    if path is not None:
        tok.save(path)
    return tok


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_cache_dir() -> Path:
    """``$CRITIQUE_JAX_CACHE`` or ``~/.cache/critique_jax``."""
    return Path(os.environ.get("CRITIQUE_JAX_CACHE", Path.home() / ".cache" / "critique_jax"))


def tokenizer_cache_path(
    task_name: str, vocab_size: int, seed: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    """``<cache_dir>/tokenizers/<task>-v<CORPUS_VERSION>-<vocab>-s<seed>.model``."""
    root = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return root / "tokenizers" / f"{task_name}-v{CORPUS_VERSION}-{vocab_size}-s{seed}.model"


def task_corpus(
    task_name: str,
    seed: int = 0,
    n_problems: int = 400,
    problems: Iterable[Problem] | None = None,
) -> list[str]:
    """Training texts for a task's tokenizer: full solve, critique and refine examples.

    Uses ``problems`` if given (file-backed tasks such as gsm8k), else draws ``n_problems``
    train problems over all difficulties. For each, two reference solutions and one planted
    error give a solve example, a critique of the wrong and of the right solution, and a
    refinement; so questions, solutions, critique words and markers appear in context.
    """
    task = get_task(task_name)
    if problems is None:
        problems = iter_problems(task, "train", seed, n_problems)
    texts = []
    for i, p in enumerate(problems):
        rng = np.random.default_rng([seed, i, CORPUS_VERSION])
        sols = task.solutions(p, rng, 2)
        bad = task.perturb(p, sols[0], rng).solution
        crit_bad = templates.format_step_critique(task.check_steps(p, bad))
        crit_good = templates.format_step_critique(task.check_steps(p, sols[-1]))
        texts += [
            templates.solve_prompt(p.question) + sols[-1],
            templates.critique_prompt(p.question, bad) + crit_bad,
            templates.critique_prompt(p.question, sols[-1]) + crit_good,
            templates.refine_prompt(p.question, bad, crit_bad) + sols[0],
        ]
    return texts


def tokenizer_for_task(
    task_name: str,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    train_files: Sequence[str | os.PathLike] = (),
) -> Tokenizer:
    """The tokenizer of a task: loaded from the cache, else trained on :func:`task_corpus`.
    A file-backed task (gsm8k, math) trains on the first 400 problems of ``train_files``; its
    cache name carries their content digest (``gsm8k-f<digest>-v1-512-s0.model``)."""
    task = get_task(task_name)
    name = task_name
    if not task.generative:
        if not train_files:
            raise ValueError(f"task {task_name!r} reads its problems from files: its tokenizer needs train_files")
        name = f"{task_name}-f{files_digest([('train', train_files)])}"
    path = tokenizer_cache_path(name, vocab_size, seed, cache_dir)
    if path.is_file():
        return Tokenizer.load(path)
    problems = None if task.generative else load_split(task, train_files, "train", limit=400)
    return train_tokenizer(task_corpus(task_name, seed, problems=problems), path, vocab_size, seed)
