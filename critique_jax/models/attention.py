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
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from critique_jax.models.config import ModelConfig

_MASKED = -1e30  # large finite negative: a fully masked row (a padding query) stays finite


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The explicit einsum path (see the module docstring); scores and softmax in float32."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
    if cfg.attn_logit_softcap is not None:
        scores = cfg.attn_logit_softcap * jnp.tanh(scores / cfg.attn_logit_softcap)
    scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig, cached: bool) -> jax.Array:
    """``cfg.attention``'s implementation; ``cached``: keys come from a KV cache (cuDNN -> XLA)."""
    if cfg.attention == "reference":
        return reference_attention(q, k, v, mask, cfg)
    impl = "xla" if cached or cfg.attention == "xla" else "cudnn"
    scale = 1.0 / math.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], scale=scale, implementation=impl)
