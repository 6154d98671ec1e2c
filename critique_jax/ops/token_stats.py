"""Per-token log-probabilities and entropies over the full vocabulary, in float32 (formulas below).

Two entry points compute the same numbers:

* ``logprobs_and_entropy(logits, targets)`` from materialised logits ``[..., V]`` (the
  sampler's per-step logits, small test cases);
* ``chunked_logprobs_and_entropy(hidden, unembed, targets)`` from final hidden states
  ``[B, T, D]`` and the unembedding ``[D, V]``. It scans over chunks of tokens, so neither the
  forward nor the backward pass ever holds more than one chunk's ``[chunk, V]`` logits.

Logit transform (``scale_logits``, shared with the sampler): optional Gemma-2 final-logit
soft-capping ``c * tanh(x / c)`` of the raw model logits, *then* division by the sampling
temperature. Soft-capping is part of the model (HF ``Gemma2ForCausalLM`` applies it right
after ``lm_head``); the temperature is applied by the sampler to the model's output.

With ``z`` the transformed float32 logits, ``lse = logsumexp(z)`` and ``p = softmax(z)``::

    logp_t = z[target] - lse            H_t = lse - sum_v p_v z_v

Both are computed after shifting ``z`` by its row maximum, so a peaked distribution with
large logits keeps a precise small entropy. Gradients come from custom VJPs that need one
fused elementwise pass over the vocabulary::

    dlogp/dz_v = 1[v = target] - p_v     dH/dz_v = -p_v (z_v - sum_k p_k z_k)

Why a custom VJP for the chunked path rather than ``lax.scan`` over a ``jax.checkpoint``-ed
body: both keep one chunk of logits alive, but the custom VJP accumulates the unembedding
gradient in a float32 carry (autodiff accumulates it across chunks in the unembedding's dtype,
i.e. bfloat16 for bf16 weights) and its backward holds fewer ``[chunk, V]`` buffers. Compiled
temp memory for V=152064, D=896, 8192 bf16 tokens, chunk 1024 (CPU, ``python scripts/bench.py
stats --remat``): forward+backward naive 10.0 GiB, scan+checkpoint 2.9 GiB, this 1.7 GiB (of
which 0.5 GiB is the float32 unembedding-gradient carry); forward 4.6 GiB vs 0.6 GiB.
Forward-mode differentiation (``jax.jvp``) of these functions is not supported.

Targets must lie in ``[0, V)``; out-of-range targets (including negative ones) give NaN
log-probs rather than silently wrong numbers. Temperatures must be positive.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _row_temperature(temperature: float | jax.Array, batch_shape: Sequence[int]) -> jax.Array:
    """float32 temperature broadcast to ``batch_shape``.

    ``temperature`` is a scalar or an array whose shape is a prefix of ``batch_shape`` (size-1
    dims broadcast), e.g. per-row ``[B]`` for a batch ``[B, T]``.
    """
    t = jnp.asarray(temperature, _F32)
    batch_shape = tuple(batch_shape)
    if t.ndim > len(batch_shape) or any(a not in (1, b) for a, b in zip(t.shape, batch_shape)):
        raise ValueError(
            f"temperature shape {t.shape}: expected a scalar or a prefix of the batch shape "
            f"{batch_shape} (e.g. per-row [{batch_shape[0] if batch_shape else ''}])"
        )
    return jnp.broadcast_to(t.reshape(t.shape + (1,) * (len(batch_shape) - t.ndim)), batch_shape)


def _check_softcap(softcap: float | None) -> None:
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap={softcap!r}: expected a positive float or None")


def _transform(logits: jax.Array, temperature: jax.Array, softcap: float | None) -> jax.Array:
    """float32 ``softcap(logits) / temperature``; ``temperature`` broadcasts against logits."""
    x = logits.astype(_F32)
    if softcap is not None:
        x = softcap * jnp.tanh(x / softcap)
    return x / temperature


def scale_logits(
    logits: jax.Array, temperature: float | jax.Array = 1.0, softcap: float | None = None
) -> jax.Array:
    """The logits the sampler draws from: ``softcap(logits) / temperature`` in float32.

    logits: ``[..., V]`` any float dtype. temperature: scalar or a prefix of ``logits.shape[:-1]``
    (e.g. per-row ``[B]``), may be traced. softcap: Gemma-2 final-logit cap ``c`` (static) or None.
    Returns float32 ``[..., V]``.
    """
    _check_softcap(softcap)
    temp = _row_temperature(temperature, logits.shape[:-1])
    return _transform(logits, temp[..., None], softcap)


def _row_stats(z: jax.Array, targets: jax.Array):
    """(logp, entropy, shift, lse_shifted, mean_shifted), each ``z.shape[:-1]`` float32.

    shift = max_v z_v; the last two are logsumexp and softmax-mean of ``z - shift`` (kept for
    the backward pass).
    """
    shift = jax.lax.stop_gradient(jnp.max(z, axis=-1))
    zs = z - shift[..., None]
    # One variadic reduction for both sums: a single exp pass and no [.., V] exp buffer (two
    # jnp.sum calls either recompute exp, ~2x slower on CPU, or materialise it, 2x memory).
    e = jnp.exp(zs)
    sum_e, sum_ez = jax.lax.reduce(
        (e, e * zs), (_F32(0), _F32(0)), lambda a, b: (a[0] + b[0], a[1] + b[1]), (z.ndim - 1,)
    )
    lse_s = jnp.log(sum_e)
    mean_s = sum_ez / sum_e
    z_target = jnp.take_along_axis(
        zs, targets[..., None].astype(jnp.int32), axis=-1,
        mode="fill", fill_value=jnp.nan, wrap_negative_indices=False,
    )[..., 0]
    return z_target - lse_s, lse_s - mean_s, shift, lse_s, mean_s


def _row_stats_grad(z, targets, shift, lse_s, mean_s, g_logp, g_entropy) -> jax.Array:
    """Cotangent of z (float32 ``[..., V]``) given cotangents of logp and entropy."""
    zs = z - shift[..., None]
    p = jnp.exp(zs - lse_s[..., None])
    is_target = jax.lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1) == targets[..., None]
    return g_logp[..., None] * (is_target - p) - g_entropy[..., None] * p * (zs - mean_s[..., None])


@jax.custom_vjp
def _logp_entropy(z: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    return _row_stats(z, targets)[:2]


def _logp_entropy_fwd(z, targets):
    logp, entropy, *rows = _row_stats(z, targets)
    return (logp, entropy), (z, targets, *rows)


def _logp_entropy_bwd(res, g):
    z, targets, *rows = res
    return _row_stats_grad(z, targets, *rows, *g), None


_logp_entropy.defvjp(_logp_entropy_fwd, _logp_entropy_bwd)


def logprobs_and_entropy(
    logits: jax.Array,
    targets: jax.Array,
    temperature: float | jax.Array = 1.0,
    *,
    softcap: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Log-prob of ``targets`` and entropy (nats) of ``softmax(scale_logits(logits))``.

    logits: ``[..., V]`` any float dtype (computed in float32). targets: ``[...]`` int in
    ``[0, V)``. temperature: scalar or a prefix of ``targets.shape`` (e.g. per-row ``[B]``),
    may be traced. softcap: static Gemma-2 cap or None. Returns ``(logp, entropy)``, float32
    ``[...]``. Differentiable w.r.t. logits and temperature.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits shape {logits.shape}, targets shape {targets.shape}: expected logits shape "
            "= targets shape + (V,)"
        )
    return _logp_entropy(scale_logits(logits, temperature, softcap), targets)


def entropy_from_logits(
    logits: jax.Array, temperature: float | jax.Array = 1.0, *, softcap: float | None = None
) -> jax.Array:
    """Entropy (nats, float32 ``[...]``) of ``softmax(scale_logits(logits))``; logits ``[..., V]``."""
    targets = jnp.zeros(logits.shape[:-1], jnp.int32)
    return logprobs_and_entropy(logits, targets, temperature, softcap=softcap)[1]


# ----------------------------------------------------------------------------- chunked path
# Chunked arrays are laid out [n_chunks, B, chunk_len, ...]: the scan runs over the leading
# axis and each step sees every batch row, so a batch-sharded input stays sharded (each device
# works on its own rows every step, with no communication in the forward pass).


def _chunk_logits(h: jax.Array, unembed: jax.Array) -> jax.Array:
    """``[B, C, D] @ [D, V] -> [B, C, V]`` float32 (inputs may be bf16; f32 accumulation)."""
    return jnp.einsum("bcd,dv->bcv", h, unembed, preferred_element_type=_F32)


def _chunked_scan(hidden_c, unembed, targets_c, temp_c, softcap):
    def body(_, xs):
        h, tgt, temp = xs
        z = _transform(_chunk_logits(h, unembed), temp[..., None], softcap)
        return None, _row_stats(z, tgt)

    return jax.lax.scan(body, None, (hidden_c, targets_c, temp_c))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_core(hidden_c, unembed, targets_c, temp_c, softcap):
    return _chunked_scan(hidden_c, unembed, targets_c, temp_c, softcap)[:2]


def _chunked_core_fwd(hidden_c, unembed, targets_c, temp_c, softcap):
    logp, entropy, *rows = _chunked_scan(hidden_c, unembed, targets_c, temp_c, softcap)
    return (logp, entropy), (hidden_c, unembed, targets_c, temp_c, *rows)


def _chunked_core_bwd(softcap, res, g):
    hidden_c, unembed, targets_c, temp_c, *rows = res
    compute_dtype = jnp.result_type(hidden_c.dtype, unembed.dtype)

    def body(d_unembed, xs):
        h, tgt, temp, shift, lse_s, mean_s, g_logp, g_entropy = xs
        logits = _chunk_logits(h, unembed)
        z, transform_vjp = jax.vjp(lambda l, t: _transform(l, t, softcap), logits, temp[..., None])
        dz = _row_stats_grad(z, tgt, shift, lse_s, mean_s, g_logp, g_entropy)
        d_logits, d_temp = transform_vjp(dz)
        d_logits = d_logits.astype(compute_dtype)
        d_h = jnp.einsum("bcv,dv->bcd", d_logits, unembed, preferred_element_type=_F32)
        d_unembed = d_unembed + jnp.einsum("bcd,bcv->dv", h, d_logits, preferred_element_type=_F32)
        return d_unembed, (d_h.astype(h.dtype), d_temp[..., 0])

    d_unembed, (d_hidden, d_temp) = jax.lax.scan(
        body, jnp.zeros(unembed.shape, _F32), (hidden_c, targets_c, temp_c, *rows, *g)
    )
    return d_hidden, d_unembed.astype(unembed.dtype), None, d_temp


_chunked_core.defvjp(_chunked_core_fwd, _chunked_core_bwd)


def chunked_logprobs_and_entropy(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    temperature: float | jax.Array = 1.0,
    *,
    chunk_size: int = 1024,
    softcap: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``logprobs_and_entropy(hidden @ unembed, ...)`` without materialising ``[B, T, V]``.

    hidden: ``[B, T, D]`` final hidden states (after the final norm). unembed: ``[D, V]``
    (transpose of a tied embedding). Either may be bf16; the matmul accumulates in float32 and
    everything after it is float32. targets: ``[B, T]`` int in ``[0, V)``. temperature: scalar,
    per-row ``[B]`` or ``[B, T]``, may be traced. chunk_size: static, about how many tokens of
    the *global* batch one scan step handles: each step covers ``max(1, chunk_size // B)``
    positions of every row (T is zero-padded to a multiple of that), so peak memory holds about
    ``max(chunk_size, B) * V`` float32 logits, split over the batch shards of a mesh.
    softcap: static Gemma-2 final-logit cap or None.

    Returns ``(logp, entropy)``, float32 ``[B, T]``. Differentiable w.r.t. hidden, unembed and
    temperature; the unembedding gradient is accumulated over chunks in float32.
    """
    if hidden.ndim != 3 or unembed.ndim != 2 or unembed.shape[0] != hidden.shape[-1]:
        raise ValueError(
            f"hidden shape {hidden.shape}, unembed shape {unembed.shape}: expected [B, T, D] and [D, V]"
        )
    if targets.shape != hidden.shape[:2]:
        raise ValueError(f"targets shape {targets.shape}: expected [B, T] = {hidden.shape[:2]}")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size={chunk_size!r}: expected a positive int")
    _check_softcap(softcap)
    b, t = targets.shape
    temp = _row_temperature(temperature, (b, t))
    chunk_len = max(1, min(t, chunk_size // b))
    n_chunks = -(-t // chunk_len)
    pad = n_chunks * chunk_len - t

    def to_chunks(x: jax.Array, fill) -> jax.Array:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
        return jnp.moveaxis(x.reshape(b, n_chunks, chunk_len, *x.shape[2:]), 1, 0)

    def from_chunks(y: jax.Array) -> jax.Array:
        return jnp.moveaxis(y, 0, 1).reshape(b, n_chunks * chunk_len)[:, :t]

    targets_c = to_chunks(targets.astype(jnp.int32), 0)
    logp, entropy = _chunked_core(to_chunks(hidden, 0), unembed, targets_c, to_chunks(temp, 1.0), softcap)
    return from_chunks(logp), from_chunks(entropy)
