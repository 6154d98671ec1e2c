"""Host-side assembly of training batches: prompts in, scored sequences out.

The device work (sampling, log-probs, updates) is jitted elsewhere; this module turns problems
into token arrays, decodes sampled responses, scores them with the task's verifier and packs
everything into the fixed-shape :class:`~critique_jax.rl.train_step.SequenceBatch` layout:
``[prompt (width P, left-padded) | response (width L, right-padded)]``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from critique_jax.data import Example
from critique_jax.parallel.distributed import to_host
from critique_jax.sampling import PromptBatch, SamplerConfig, SamplingSettings, generate, pad_prompts, sample_keys
from critique_jax.tasks import Problem, Task
from critique_jax.text import Tokenizer
from critique_jax.text.prompt_format import PromptFormat


@dataclasses.dataclass(frozen=True)
class Sampled:
    """Host view of one sampling call over N = len(prompts) x group_size samples.

    prompts: the padded prompt batch [len(prompts), P]; tokens, mask, logp, entropy: [N, L];
    texts: decoded responses; finished: [N] (emitted an end token).
    """

    prompts: PromptBatch
    tokens: np.ndarray
    mask: np.ndarray
    logp: np.ndarray
    entropy: np.ndarray
    finished: np.ndarray
    texts: list[str]


class Sampling(Protocol):
    """What sampling and scoring need of a run (:class:`critique_jax.runs.run.Run` has it): the
    sampling settings, task, tokenizer, prompt format, mesh, the policy's graph, the default
    sampler and batch sharding."""

    sampling: SamplingSettings
    task: Task
    tok: Tokenizer
    prompts: PromptFormat
    mesh: Mesh
    graphdef: nnx.GraphDef
    sampler: SamplerConfig

    def shard(self, x: np.ndarray) -> Any: ...


def sample_texts(run: Sampling, model: tuple[nnx.GraphDef, Any], prompts: Sequence[str], buckets: Sequence[int],
                 seed: int, group_size: int, temperature: float, times: dict[str, float] | None = None,
                 sampler: SamplerConfig | None = None, first_id: int = 0) -> Sampled:
    """``group_size`` completions per prompt text with ``sampler`` (default: the run's).

    Sample ``j`` of prompt ``i`` uses key ``fold_in(fold_in(key(seed), first_id + i), j)``. The
    call's wall time is added to ``times["perf/sample_s"]`` when ``times`` is given.
    """
    t0 = time.perf_counter()
    pb = pad_prompts([run.tok.encode_prompt(p) for p in prompts], buckets, run.tok.pad_id)
    keys = sample_keys(seed, np.arange(first_id, first_id + len(prompts)), group_size)
    ro = generate(model, run.shard(pb.tokens), run.shard(pb.valid), run.shard(keys), sampler or run.sampler,
                  group_size=group_size, temperature=temperature, top_p=run.sampling.top_p, top_k=run.sampling.top_k,
                  mesh=run.mesh)
    tokens, mask = to_host(ro.tokens), to_host(ro.mask)
    if times is not None:
        times["perf/sample_s"] = times.get("perf/sample_s", 0.0) + time.perf_counter() - t0
    return Sampled(prompts=pb, tokens=tokens, mask=mask, logp=to_host(ro.logp), entropy=to_host(ro.entropy),
                   finished=to_host(ro.finished), texts=decode_responses(run.tok, tokens, mask))


@dataclasses.dataclass(frozen=True)
class Generated:
    """Texts of one batched sampling pass: texts / finished [N·G]; entropy: mean response-token
    entropy (nats); n_tokens: response tokens in all; lengths / entropy_sums [N·G]: each sample's
    response tokens and summed token entropy (nats)."""

    texts: list[str]
    finished: np.ndarray
    entropy: float
    n_tokens: float
    lengths: np.ndarray
    entropy_sums: np.ndarray


def sample_chunked(run: Sampling, model: tuple[nnx.GraphDef, Any], prompts: Sequence[str],
                   buckets: Sequence[int], group_size: int, temperature: float, chunk: int,
                   seed: Callable[[int], int], sampler: SamplerConfig | None = None,
                   global_ids: bool = False, times: dict[str, float] | None = None, first_id: int = 0) -> Generated:
    """:func:`sample_texts` over ``chunk`` prompts per call (the last call padded by repeating its
    last prompt, so every call has one shape); call ``i`` uses ``seed(i)`` and, with
    ``global_ids``, the prompts' positions in ``prompts`` plus ``first_id`` for their keys (else
    their positions in the call). No prompts: nothing sampled. ``times``: as for :func:`sample_texts`."""
    texts: list[str] = []
    finished, lengths, entropy_sums = [np.zeros(0, bool)], [np.zeros(0, np.float32)], [np.zeros(0, np.float32)]
    entropy_sum, n_tokens = 0.0, 0.0
    for i, start in enumerate(range(0, len(prompts), chunk)):
        part = list(prompts[start:start + chunk])
        n = len(part) * group_size
        s = sample_texts(run, model, part + [part[-1]] * (chunk - len(part)), buckets, seed(i), group_size,
                         temperature, times, sampler=sampler, first_id=first_id + start if global_ids else 0)
        texts += s.texts[:n]
        finished.append(s.finished[:n].astype(bool))
        per_sample = s.entropy[:n] * s.mask[:n]
        entropy_sum += float(per_sample.sum())
        n_tokens += float(s.mask[:n].sum())
        lengths.append(s.mask[:n].sum(1).astype(np.float32))
        entropy_sums.append(per_sample.sum(1).astype(np.float32))
    return Generated(texts, np.concatenate(finished), entropy_sum / max(n_tokens, 1.0), n_tokens,
                     np.concatenate(lengths), np.concatenate(entropy_sums))


def masked_mean(x: np.ndarray, mask: np.ndarray) -> float:
    return float((x * mask).sum() / max(mask.sum(), 1))


def decode_responses(tok: Tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Response texts (masked tokens only; the end token is dropped by the tokenizer)."""
    return [tok.decode([int(t) for t in row[m]]) for row, m in zip(tokens, mask.astype(bool))]


def score(task: Task, problems: Sequence[Problem], texts: Sequence[str], group_size: int) -> np.ndarray:
    """Verifier rewards [N] float32; sample ``i`` answers ``problems[i // group_size]`` (the task's
    batched :meth:`~critique_jax.tasks.base.Task.rewards`: in parallel where verification is slow)."""
    if len(texts) != len(problems) * group_size:
        raise ValueError(f"{len(texts)} responses for {len(problems)} problems x group {group_size}")
    return task.rewards([problems[i // group_size] for i in range(len(texts))], texts)


def sequence_arrays(prompts: PromptBatch, group_size: int, response_tokens: np.ndarray,
                    response_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tokens, valid`` [N, P + L] with each prompt repeated ``group_size`` times."""
    tokens = np.concatenate([np.repeat(prompts.tokens, group_size, 0), response_tokens], 1)
    valid = np.concatenate([np.repeat(prompts.valid, group_size, 0), response_mask.astype(bool)], 1)
    return tokens.astype(np.int32), valid


def pack_pairs(tok: Tokenizer, prompts: Sequence[str], targets: Sequence[str], prompt_width: int,
               response_len: int, names: Sequence[str] | None = None,
               width_key: str = "sampling.prompt_buckets") -> dict[str, np.ndarray]:
    """Supervised batch from (prompt text, target text) pairs; the target gets the end token.

    Returns ``tokens``, ``valid`` [N, P + L] (prompt left-padded to P, target right-padded to
    L) and ``response_mask`` [N, L]. A prompt or target that does not fit is an error naming
    the example (``names[i]``, e.g. a problem uid) and the config key to raise (``width_key``
    for the prompt width).
    """
    n = len(prompts)
    if len(targets) != n:
        raise ValueError(f"pack_pairs: {n} prompts but {len(targets)} targets")
    tokens = np.full((n, prompt_width + response_len), tok.pad_id, np.int32)
    valid = np.zeros(tokens.shape, bool)
    for i, (prompt_text, target_text) in enumerate(zip(prompts, targets)):
        prompt, resp = tok.encode_prompt(prompt_text), tok.encode(target_text, eos=True)
        name = names[i] if names is not None else f"example {i}"
        if len(prompt) > prompt_width:
            raise ValueError(f"{name}: prompt of {len(prompt)} tokens exceeds the largest prompt bucket "
                             f"{prompt_width} (config {width_key})")
        if len(resp) > response_len:
            raise ValueError(f"{name}: target of {len(resp)} tokens exceeds sampling.max_new_tokens={response_len}")
        tokens[i, prompt_width - len(prompt):prompt_width] = prompt
        valid[i, prompt_width - len(prompt):prompt_width] = True
        tokens[i, prompt_width:prompt_width + len(resp)] = resp
        valid[i, prompt_width:prompt_width + len(resp)] = True
    return dict(tokens=tokens, valid=valid, response_mask=valid[:, prompt_width:].copy())


def sft_arrays(tok: Tokenizer, prompt_format: PromptFormat, examples: Sequence[Example], rng: np.random.Generator,
               prompt_width: int, response_len: int) -> dict[str, np.ndarray]:
    """One SFT batch: each example's solve prompt and one of its reference solutions.

    The solution is drawn uniformly from the example's solutions, so SFT sees every style.
    """
    prompts = [prompt_format.solve(ex.problem.question) for ex in examples]
    targets = [ex.solutions[int(rng.integers(len(ex.solutions)))] for ex in examples]
    return pack_pairs(tok, prompts, targets, prompt_width, response_len, [ex.problem.uid for ex in examples])
