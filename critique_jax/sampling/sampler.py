"""The one sampler: jitted prefill + ``lax.while_loop`` decode over a KV cache.

``generate`` is a pure function of ``(graphdef, state)`` (from ``nnx.split``), prompts and
per-sample knobs; it compiles once per (prompt bucket, batch size, group size, config) and
never again: temperatures, top-p and top-k are traced per-sample arrays.

Group sampling: the B prompts are prefilled once into a ``[B, P]``-slot KV cache that the
N = B·G samples read as a shared prefix (``KVCache.shared``; sample ``i`` answers prompt
``i // G``): the prompt is computed once and its keys and values held once, not G times.

Per-token outputs (all ``[N, L]``, L = ``max_new_tokens``):

* ``logp``: log-prob of the token under ``softmax(logits / T)`` over the full vocabulary:
  the policy log-prob that the RL loss recomputes by teacher forcing (verl's "old log-prob").
* ``sample_logp``: log-prob under the distribution actually sampled from (after top-k/top-p
  truncation and renormalisation); 0 for greedy rows.
* ``entropy``: full-vocabulary entropy (nats) of ``softmax(logits / T)``.

Greedy rows are those with ``T == 0``; their ``logp``/``entropy`` use ``T = 1``. Each sample
has its own PRNG key and draws its step-``t`` token with ``fold_in(key, t)``, so a sample's
tokens do not depend on which other samples share its batch.

The response of a sample ends with (and includes) its first end token; later positions are
``pad_id`` with ``mask == False``. Decoding stops when every sample has ended or after
``max_new_tokens`` tokens.

The decode runs in phases (``SamplerConfig.decode_phases``): phase ``i``'s steps ``s < end_i``
write the samples' own cache of ``end_i`` slots, grown (copied into a larger buffer, new slots
empty) between phases, so a step's attention reads the slots filled by its phase's end, not all
``max_new_tokens`` in every step. On the CPU (``small`` preset, 64 samples, 20-token prompts, 64
new tokens, medians of runs interleaved in one process) four phases took generation from 0.78
to 0.72 s and its compile from 3.3 to 5.1 s (each phase is its own loop body); the shared prompt
then ~4% more (~10% with 64-token prompts). The price in memory: while the cache grows into its
last size, the previous one is still held.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from critique_jax.models import KVCache, Transformer
from critique_jax.ops.token_stats import logprobs_and_entropy
from critique_jax.parallel.mesh import batch_shards


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Static sampling settings (changing them recompiles; per-sample knobs are traced).

    ``eos_ids``: every token that ends a response (a tokenizer's ``eos_ids``: Qwen and Llama 3
    have several); ``pad_id``: the id written after the end (masked; the tokenizer's pad).
    ``decode_phases``: the decode loop's phases (``phase_ends``; 0: one per 16 new tokens, at
    most 4). Phase ``i``'s steps attend to the prompt and the first ``end_i`` response slots
    only, not to the still-empty later ones: fewer cache reads, one more compiled loop body each.
    """

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int
    decode_phases: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplerConfig.max_new_tokens={self.max_new_tokens}: expected >= 1")
        if not self.eos_ids:
            raise ValueError("SamplerConfig.eos_ids is empty: decoding needs at least one end token")
        if not 0 <= self.decode_phases <= self.max_new_tokens:
            raise ValueError(f"SamplerConfig.decode_phases={self.decode_phases}: expected 0 (automatic) or "
                             f"1..max_new_tokens ({self.max_new_tokens})")

    def phase_ends(self) -> tuple[int, ...]:
        """The decode steps at which each phase ends (increasing, the last = ``max_new_tokens``)."""
        phases = self.decode_phases or min(4, max(1, self.max_new_tokens // 16))
        return tuple(sorted({-(-self.max_new_tokens * (i + 1) // phases) for i in range(phases)}))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rollout:
    """Sampled responses. ``N`` samples, ``L`` response slots; see the module docstring."""

    tokens: jax.Array       # [N, L] int32
    mask: jax.Array         # [N, L] bool, True up to and including the end token
    logp: jax.Array         # [N, L] float32
    sample_logp: jax.Array  # [N, L] float32
    entropy: jax.Array      # [N, L] float32
    finished: jax.Array     # [N] bool, True when the sample emitted an end token

    @property
    def lengths(self) -> jax.Array:
        return self.mask.sum(axis=1)


def sample_keys(seed: int, prompt_ids: Sequence[int] | np.ndarray, group_size: int) -> jax.Array:
    """Per-sample keys ``fold_in(fold_in(key(seed), prompt_id), g)`` -> [B·G] key array."""
    base = jax.random.key(seed)
    ids = jnp.asarray(np.asarray(prompt_ids, np.int32))
    per_prompt = jax.vmap(lambda i: jax.random.fold_in(base, i))(ids)
    per_sample = jax.vmap(lambda k: jax.vmap(lambda g: jax.random.fold_in(k, g))(jnp.arange(group_size)))(per_prompt)
    return per_sample.reshape(-1)


def truncation_mask(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Tokens allowed by top-k then top-p. logits [N, V]; top_k [N] int (0 = off); top_p [N].

    Top-k keeps the k highest logits; top-p keeps the smallest highest-probability set whose
    mass (under ``softmax(logits)``, after top-k) reaches ``top_p``. Returns [N, V] bool.
    """
    v = logits.shape[-1]
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_z = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(v)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)[:, None]
    in_k = rank < k
    probs = jax.nn.softmax(jnp.where(in_k, sorted_z, -jnp.inf), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = in_k & ((mass_before < top_p[:, None]) | (rank == 0))
    return jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)


def _choose(logits, keys, step, temperature, top_k, top_p):
    """One decoding step's tokens and statistics. logits [N, V] float32."""
    greedy = temperature <= 0.0
    t_safe = jnp.where(greedy, 1.0, temperature)
    z = logits / t_safe[:, None]
    needs_trunc = jnp.any((top_k > 0) | (top_p < 1.0))
    z_sample = jax.lax.cond(needs_trunc, lambda: jnp.where(truncation_mask(z, top_k, top_p), z, -jnp.inf), lambda: z)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    drawn = jax.vmap(jax.random.categorical)(step_keys, z_sample).astype(jnp.int32)
    token = jax.lax.cond(jnp.any(greedy), lambda: jnp.where(greedy, jnp.argmax(logits, axis=-1).astype(jnp.int32), drawn),
                         lambda: drawn)
    logp, entropy = logprobs_and_entropy(logits, token, t_safe)
    # Untruncated, the sampled distribution is softmax(logits / T): its log-prob is ``logp``.
    sample_logp = jax.lax.cond(
        needs_trunc, lambda: jnp.take_along_axis(jax.nn.log_softmax(z_sample, axis=-1), token[:, None], axis=-1)[:, 0],
        lambda: logp)
    return token, logp, jnp.where(greedy, 0.0, sample_logp), entropy


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "group_size"))
def _generate(graphdef, state, prompt_tokens, prompt_valid, keys, temperature, top_k, top_p, *, cfg, group_size):
    model: Transformer = nnx.merge(graphdef, state)
    b, p = prompt_tokens.shape
    n, length = b * group_size, cfg.max_new_tokens
    if p + length > model.cfg.max_seq_len:  # checked at trace time: shapes are static
        raise ValueError(f"prompt bucket {p} + max_new_tokens {length} exceeds the model's "
                         f"max_seq_len {model.cfg.max_seq_len}")
    positions = jnp.maximum(jnp.cumsum(prompt_valid.astype(jnp.int32), axis=1) - 1, 0)
    ends = cfg.phase_ends()
    hidden, prompt_cache = model(prompt_tokens, positions, prompt_valid, KVCache.zeros(model.cfg, b, p))
    logits = jnp.repeat(model.logits(hidden[:, -1]), group_size, axis=0)  # [N, V]
    cache = prompt_cache.shared(model.cfg, group_size, ends[0])
    next_pos = jnp.repeat(positions[:, -1] + 1, group_size)
    eos = jnp.asarray(cfg.eos_ids, jnp.int32)

    out = dict(
        tokens=jnp.full((n, length), cfg.pad_id, jnp.int32),
        mask=jnp.zeros((n, length), bool),
        logp=jnp.zeros((n, length), jnp.float32),
        sample_logp=jnp.zeros((n, length), jnp.float32),
        entropy=jnp.zeros((n, length), jnp.float32),
    )
    carry0 = (jnp.zeros((), jnp.int32), logits, cache, next_pos, jnp.zeros((n,), bool), out)

    def body(carry):
        step, logits, cache, pos, done, out = carry
        token, logp, sample_logp, entropy = _choose(logits, keys, step, temperature, top_k, top_p)
        live = ~done
        token = jnp.where(live, token, cfg.pad_id)
        cols = dict(tokens=token, mask=live, logp=jnp.where(live, logp, 0.0),
                    sample_logp=jnp.where(live, sample_logp, 0.0), entropy=jnp.where(live, entropy, 0.0))
        out = {k: jax.lax.dynamic_update_slice_in_dim(out[k], cols[k][:, None], step, axis=1) for k in out}
        done = done | jnp.isin(token, eos)
        hidden, cache = model(token[:, None], pos[:, None], live[:, None], cache)
        return step + 1, model.logits(hidden[:, 0]), cache, pos + 1, done, out

    carry = carry0
    for i, end in enumerate(ends):  # the phase's steps s < end write slot s of an end-slot cache
        if i:
            carry = (*carry[:2], carry[2].grow(end), *carry[3:])
        carry = jax.lax.while_loop(lambda c, end=end: (c[0] < end) & ~jnp.all(c[4]), body, carry)
    *_, done, out = carry
    return Rollout(finished=done, **out)


def check_batch(n_prompts: int, group_size: int, mesh: Mesh | None) -> None:
    """Validates the batch against the mesh's batch shards (clear errors instead of XLA ones)."""
    if group_size < 1:
        raise ValueError(f"group_size={group_size}: expected >= 1")
    if mesh is None:
        return
    shards = batch_shards(mesh)
    if n_prompts % shards:
        raise ValueError(
            f"{n_prompts} prompts cannot be split over the mesh's {shards} batch shards "
            f"(data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); use a multiple of {shards}"
        )


def generate(
    model_or_split: Transformer | tuple[nnx.GraphDef, nnx.State],
    prompt_tokens: jax.Array,
    prompt_valid: jax.Array,
    keys: jax.Array,
    cfg: SamplerConfig,
    *,
    group_size: int = 1,
    temperature: float | jax.Array = 1.0,
    top_k: int | jax.Array = 0,
    top_p: float | jax.Array = 1.0,
    mesh: Mesh | None = None,
) -> Rollout:
    """Samples ``group_size`` responses per prompt.

    prompt_tokens / prompt_valid: [B, P] left-padded (see ``pad_prompts``); keys: [B·G]
    (``sample_keys``); temperature / top_k / top_p: scalars or [B·G] arrays (0 temperature =
    greedy, 0 top_k = off, 1.0 top_p = off). With a ``mesh``, inputs should already carry
    batch shardings; the batch is checked against the mesh's batch shards.
    """
    graphdef, state = nnx.split(model_or_split) if isinstance(model_or_split, nnx.Module) else model_or_split
    b = prompt_tokens.shape[0]
    check_batch(b, group_size, mesh)
    n = b * group_size
    if keys.shape != (n,):
        raise ValueError(f"keys shape {keys.shape}: expected ({n},) = prompts x group_size")
    temperature = _per_sample(temperature, n, jnp.float32, "temperature")
    top_k = _per_sample(top_k, n, jnp.int32, "top_k")
    top_p = _per_sample(top_p, n, jnp.float32, "top_p")
    bad = np.asarray((top_p <= 0) | (top_p > 1))
    if bad.any():
        raise ValueError(f"top_p={np.asarray(top_p)[bad][0]} (sample {int(np.argmax(bad))}): expected a value in (0, 1]")
    if np.asarray((temperature < 0) | (top_k < 0)).any():
        raise ValueError("temperature and top_k must be >= 0")
    return _generate(graphdef, state, prompt_tokens, prompt_valid, keys, temperature, top_k, top_p,
                     cfg=cfg, group_size=group_size)


def _per_sample(x, n: int, dtype, name: str) -> jax.Array:
    arr = jnp.asarray(x, dtype)
    if arr.ndim == 0:
        return jnp.full((n,), arr)
    if arr.shape != (n,):
        raise ValueError(f"{name} shape {arr.shape}: expected a scalar or ({n},)")
    return arr
