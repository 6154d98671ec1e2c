"""The attention core: softmax(q kᵀ · scale) v over a boolean mask, by one of three implementations.

``model.attention`` (``ModelConfig.attention``) chooses:

* ``"reference"`` (default): explicit einsums, float32 scores ``[B, kv, g, T, S]``, masked
  entries set to ``-1e30``, float32 softmax, probabilities cast to v's dtype. Supports Gemma 2
  score soft-capping.
* ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")``: the same float32 scores
  and softmax (masked entries at ``-0.7 * float32 max``), written by JAX; the form XLA and TPU
  compilers pattern-match. No soft-capping.
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's fused
  flash-attention kernel: GPU only, bf16/f16 activations only, no soft-capping. Used for the
  uncached forward (training, teacher-forced log-probs), where the ``[T, S]`` scores dominate
  memory; KV-cached calls (prefill and decode) use ``"xla"``. Not run on a GPU in this
  repository's tests (they run on the CPU).

All take q ``[B, T, H, D]``, k and v ``[B, S, K, D]`` (grouped-query: H = K·G, query head ``h``
reads kv head ``h // G``) and mask ``[B, T, S]`` bool (True = attend), and return
``[B, T, H, D]`` in v's dtype. A query row with nothing to attend (a padding token) gets a
uniform average of v in every implementation: finite, and ignored downstream.

:func:`attend_cached` reads a KV cache's layouts, keys transposed ``kt [B, K, D, S]`` and values
``v [B, K, S, D]``. A float32 single-token reference step there (decode, T = 1: the CPU's case)
computes the same sums as broadcast products reduced over a non-minor axis (d of ``kt``, then s
of ``v``), with the scores and probabilities kept out of each other's fusions: XLA's CPU dot for
these [G, D] x [D, S] shapes with the fusions it chose around them took ~7x longer (``small``
preset, 64 samples, 84 slots: 3.3 ms -> 0.45 ms per layer). Every other cached call (prefill,
other dtypes) transposes the cache to ``[B, S, K, D]`` and takes :func:`attend`, the reference
path's score operands upcast to float32 (exact: the same products and float32 sums; XLA turns
bf16 ones, there or in a product-reduce, into a bf16 x bf16 -> f32 dot its CPU runtime lacks).

A cache with a shared prefix (``KVCache.prefix``: the prompt's keys and values, once per prompt
for its G samples) is read by the same sums split in two, the prefix's slots then the row's own,
under one softmax: in every implementation the reference math (``jax.nn.dot_product_attention``
takes one key set), the prefix's products as per-prompt matmuls over the group's queries.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from critique_jax.models.config import ModelConfig

_MASKED = -1e30  # large finite negative: a fully masked row (a padding query) stays finite

#: A shared prefix's per-layer keys (transposed) ``[Bp, K, D, P]``, values ``[Bp, K, P, D]`` and mask ``[Bp, T, P]``.
Prefix = tuple[jax.Array, jax.Array, jax.Array]


def _scores_to_probs(scores: jax.Array, mask: jax.Array, cfg: ModelConfig, dtype) -> jax.Array:
    """Scale, soft-cap, mask and softmax float32 scores [B, K, G, T, S] -> probabilities in ``dtype``."""
    scores = scores / math.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
    if cfg.attn_logit_softcap is not None:
        scores = cfg.attn_logit_softcap * jnp.tanh(scores / cfg.attn_logit_softcap)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    return jax.nn.softmax(scores, axis=-1).astype(dtype)


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The explicit einsum path (see the module docstring); scores and softmax in float32."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    probs = _scores_to_probs(scores, mask, cfg, v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def _decode_attention(q: jax.Array, kt: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig,
                      prefix: Prefix | None) -> jax.Array:
    """The reference sums for one float32 query token over the cache layouts (module docstring)."""
    b, _, h, d = q.shape
    q = q.reshape(b, kt.shape[1], h // kt.shape[1], d)  # [B, K, g, D]
    scores = jnp.sum(q[..., None] * kt[:, :, None], axis=-2)  # [B, K, g, S]
    if prefix is not None:
        pkt, pv, pmask = prefix
        grouped = lambda x: x.reshape(pkt.shape[0], -1, *x.shape[1:])  # noqa: E731  [B, ...] -> [Bp, G, ...]
        pscores = jnp.sum(grouped(q)[..., None] * pkt[:, None, :, None], axis=-2)  # [Bp, G, K, g, P]
        scores = jnp.concatenate([pscores.reshape(*q.shape[:3], -1), scores], axis=-1)
        mask = jnp.concatenate([jnp.repeat(pmask, b // pkt.shape[0], axis=0), mask], axis=-1)
    probs = _scores_to_probs(jax.lax.optimization_barrier(scores)[:, :, :, None], mask, cfg, v.dtype)
    probs = jax.lax.optimization_barrier(probs[:, :, :, 0])
    if prefix is None:
        return jnp.sum(probs[..., None] * v[:, :, None], axis=-2).reshape(b, 1, h, d)
    p = pkt.shape[-1]
    own = jnp.sum(probs[..., p:, None] * v[:, :, None], axis=-2)
    shared = jnp.sum(grouped(probs[..., :p, None]) * pv[:, None, :, None], axis=-2).reshape(own.shape)
    return (shared + own).reshape(b, 1, h, d)


def _prefixed_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, prefix: Prefix,
                        cfg: ModelConfig) -> jax.Array:
    """:func:`reference_attention` over a shared prefix's slots then the rows' own (k, v ``[N, S, K, D]``):
    the prefix's scores and weighted values are per-prompt matmuls over the G samples' queries."""
    n, t, h, d = q.shape
    pkt, pv, pmask = prefix
    bp, kv, p = pkt.shape[0], pkt.shape[1], pkt.shape[-1]
    q = q.reshape(n, t, kv, h // kv, d)
    grouped = q.reshape(bp, n // bp, t, kv, h // kv, d)
    pscores = jnp.einsum("bjtkgd,bkdp->bjkgtp", grouped, pkt, preferred_element_type=jnp.float32)
    scores = jnp.concatenate([pscores.reshape(n, kv, h // kv, t, p),
                              jnp.einsum("ntkgd,nskd->nkgts", q, k, preferred_element_type=jnp.float32)], axis=-1)
    mask = jnp.concatenate([jnp.repeat(pmask, n // bp, axis=0), mask], axis=-1)
    probs = _scores_to_probs(scores, mask, cfg, v.dtype)
    own = jnp.einsum("nkgts,nskd->ntkgd", probs[..., p:], v)
    shared = jnp.einsum("bjkgtp,bkpd->bjtkgd", probs[..., :p].reshape(bp, n // bp, kv, h // kv, t, p), pv)
    return (shared.reshape(own.shape) + own).reshape(n, t, h, d)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig, cached: bool = False) -> jax.Array:
    """``cfg.attention``'s implementation; ``cached``: keys come from a KV cache (cuDNN -> XLA)."""
    if cfg.attention == "reference":
        return reference_attention(q, k, v, mask, cfg)
    impl = "xla" if cached or cfg.attention == "xla" else "cudnn"
    scale = 1.0 / math.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation=impl)


def attend_cached(q: jax.Array, kt: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig,
                  prefix: Prefix | None = None) -> jax.Array:
    """:func:`attend` over a KV cache's layouts: ``kt [B, K, D, S]``, ``v [B, K, S, D]``; with a
    ``prefix`` (a shared prefix's ``kt [Bp, K, D, P]``, ``v [Bp, K, P, D]``, mask ``[Bp, T, P]``;
    row ``i`` reads prefix row ``i // (B / Bp)``), over the prefix's slots then these."""
    if cfg.attention == "reference" and q.shape[1] == 1 and q.dtype == kt.dtype == v.dtype == jnp.float32:
        return _decode_attention(q, kt, v, mask, cfg, prefix)
    k, v = jnp.transpose(kt, (0, 3, 1, 2)), jnp.swapaxes(v, 1, 2)
    if cfg.attention == "reference" or prefix is not None:  # float32 score operands: exact, and a dot
        q, k = q.astype(jnp.float32), k.astype(jnp.float32)  # XLA's CPU runtime has for bf16
    if prefix is not None:
        return _prefixed_attention(q, k, v, mask, (prefix[0].astype(jnp.float32), *prefix[1:]), cfg)
    return attend(q, k, v, mask, cfg, cached=True)
