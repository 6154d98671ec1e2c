"""The RLSF confidence reward (arXiv:2507.21931): the frozen reference policy's confidence on a
sampled trace's final-answer span, and its agreement with the verifier (AUROC).

Confidence of a trace with answer-span tokens ``S`` (teacher-forced under the reference policy,
``p_t = softmax(z_t)`` in float32 over the full vocabulary, ``z_t`` its logits at temperature 1,
Gemma-2 soft-capping included)::

    conf = (1 / |S|) sum_{t in S} (p_t[(1)] - p_t[(2)])        in [0, 1]; 0 when S is empty

``p_t[(1)] >= p_t[(2)]`` the two largest probabilities at position ``t``. This is the answer-span
margin RLSF takes from CoT-decoding (Wang & Zhou, 2024): it is high where the reference puts its
mass on one continuation of the answer and low where two continuations compete, and it needs no
label. A trace without an answer has no span and confidence 0, the lowest reward.

The span (:func:`answer_char_span`), in characters of the decoded response, then tokens
(:func:`token_span`: the tokens whose decoded characters overlap it):

* tasks graded by their answer (``Task.answer_graded``: arithmetic, gsm8k, math): the value on the
  first ``answer:`` line, what :meth:`~critique_jax.tasks.base.Task.extract_answer` reads
  (MATH responses that only box their answer have no ``answer:`` line, hence no span);
* tasks whose steps decide (countdown: the answer is the target, copied from the question): the
  last reasoning line through the end of the answer value, the step that claims to reach it.

``rl.confidence_span="derivation"`` (answer-graded tasks only) takes the value where the trace
computes it instead: the last ``= <value>`` before the ``answer:`` line whose value is the answer
line's, character for character (``108 - 1 = 107`` in ``...\n108 - 1 = 107\nanswer: 107``).
The answer line repeats that value, so its margin measures copying (~1 on every trace); the
derivation's measures whether the reference is sure of the computation. A trace whose answer it
never derives has no span (confidence 0): there is no computation of that answer to be sure of.
"""

from __future__ import annotations

import bisect
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from critique_jax.ops.masked import masked_mean
from critique_jax.rl.train_step import SequenceBatch, response_hidden
from critique_jax.tasks import Task
from critique_jax.tasks.base import ANSWER_PREFIX
from critique_jax.text import Tokenizer


#: ``rl.confidence_span`` values (module docstring).
SPANS = ("answer", "derivation")


def answer_char_span(text: str, kind: str) -> tuple[int, int] | None:
    """``[start, end)`` characters of ``text``'s confidence span (module docstring), or None when it
    has none. ``kind``: ``"answer"`` (the answer value), ``"steps"`` (from the last reasoning line
    through the answer value) or ``"derivation"`` (the last ``= <answer value>`` before it)."""
    offset, last_step = 0, None
    for line in text.splitlines(keepends=True):
        body = line.strip()
        start = offset + len(line) - len(line.lstrip())
        offset += len(line)
        if not body:
            continue
        if body.lower().startswith(ANSWER_PREFIX):
            value = body[len(ANSWER_PREFIX):].strip()
            if not value:
                return None
            value_start = start + body.index(value, len(ANSWER_PREFIX))
            if kind == "derivation":
                # the value after "=" and spaces, not inside a longer number or word
                found = list(re.finditer(rf"=\s*({re.escape(value)})(?![\w.])", text[:start]))
                return found[-1].span(1) if found else None
            first = last_step if kind == "steps" and last_step is not None else value_start
            return first, value_start + len(value)
        last_step = start
    return None


def token_span(tok: Tokenizer, ids: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """Tokens ``[i, j)`` of ``ids`` whose decoded characters overlap ``[start, end)`` of
    ``tok.decode(ids)``, found by bisection on the lengths of decoded prefixes (which grow with
    the prefix: exact for the project tokenizer, byte-level tokenizers up to split characters)."""
    def chars(n: int) -> int:
        return len(tok.decode(ids[:n]))

    i = bisect.bisect_right(range(len(ids)), start, key=lambda n: chars(n + 1))
    j = bisect.bisect_left(range(len(ids) + 1), end, key=chars)
    return i, max(i, j)


def span_kind(task: Task, span: str) -> str:
    """The :func:`answer_char_span` kind of ``rl.confidence_span=span`` on ``task``: ``"steps"``
    where the steps decide (``"derivation"`` there is an error: the task's answer is not computed)."""
    if span not in SPANS:
        raise ValueError(f"rl.confidence_span={span!r}: expected one of {list(SPANS)}")
    if task.answer_graded:
        return span
    if span == "derivation":
        raise ValueError(f"rl.confidence_span='derivation' needs a task graded by its answer (arithmetic, gsm8k, "
                         f"math); {task.name}'s steps decide, its answer is not computed")
    return "steps"


def answer_span_mask(task: Task, tok: Tokenizer, tokens: np.ndarray, mask: np.ndarray,
                     texts: Sequence[str], span: str = "answer") -> np.ndarray:
    """[N, L] bool: the confidence-span tokens of each response (``tokens``/``mask`` [N, L], the
    sampled responses; ``texts`` [N] their decoded texts; ``span``: ``rl.confidence_span``)."""
    kind = span_kind(task, span)
    out = np.zeros(tokens.shape, bool)
    for row, (ids, m, text) in enumerate(zip(tokens, mask.astype(bool), texts)):
        chars = answer_char_span(text, kind)
        if chars is not None:
            i, j = token_span(tok, [int(t) for t in ids[m]], *chars)
            out[row, i:j] = True
    return out


def top2_margin(logits: jax.Array) -> jax.Array:
    """``p(1) - p(2)`` of ``softmax(logits)`` in float32: [..., V] -> [...] (V >= 2)."""
    top2 = jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), 2)[0]
    return top2[..., 0] - top2[..., 1]


@jax.jit
def answer_confidence(logits: jax.Array, span: jax.Array) -> jax.Array:
    """The confidence (module docstring) of each row: logits [B, T, V], span [B, T] bool -> [B]
    float32 (0 for a row with an empty span)."""
    return masked_mean(top2_margin(logits), span, axis=1)


def reference_confidence(graphdef: nnx.GraphDef, params: nnx.State, batch: SequenceBatch, span: jax.Array,
                         chunk: int = 512) -> jax.Array:
    """:func:`answer_confidence` of ``batch``'s responses under ``params`` ([N], span [N, L]),
    with the logits of ``chunk`` tokens at a time (never all [N, L, V] at once). Jit it."""
    model = nnx.merge(graphdef, params)
    h = response_hidden(model, batch)
    n, length, d = h.shape
    chunk = min(chunk, n * length)
    flat = jnp.pad(h.reshape(n * length, d), ((0, -(n * length) % chunk), (0, 0)))
    margins = jax.lax.map(lambda x: top2_margin(model.logits(x)), flat.reshape(-1, chunk, d))
    return masked_mean(margins.reshape(-1)[:n * length].reshape(n, length), span, axis=1)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` [N] for the 0/1 ``labels`` [N]: the probability that
    a random positive scores above a random negative, ties counting 1/2 (the Mann-Whitney U
    statistic over all pairs); NaN when either class is empty."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels) >= 1
    pos, neg = s[y][:, None], s[~y][None, :]
    if not pos.size or not neg.size:
        return float("nan")
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))
