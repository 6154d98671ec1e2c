"""Per-token losses [B, T] -> scalar, in the aggregation modes of verl's ``agg_loss``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from critique_jax.ops.masked import masked_count, masked_mean, masked_sum
from critique_jax.rl.config import AGG_MODES

Array = jax.Array


def aggregate(x: Array, valid: Array, mode: str, constant: float | None = None) -> Array:
    """Reduces per-token values ``x`` [B, T] over the valid tokens to a scalar.

    Modes:
      ``token-mean``: sum / #valid tokens of the batch.
      ``seq-mean-token-sum``: mean over sequences of each sequence's token sum.
      ``seq-mean-token-mean``: mean over sequences of each sequence's token mean.
      ``constant``: sum / ``constant`` (default B * T, Dr.GRPO's batch x max length).
    Sequence means run over sequences with at least one valid token, so all-padding rows added
    to fill a static batch do not dilute the loss (verl's ``exclude_fully_masked_seq``).
    Every mode returns 0 when nothing is valid.
    """
    if mode == "token-mean":
        return masked_mean(x, valid)
    if mode == "constant":
        return masked_sum(x, valid) / (x.size if constant is None else constant)
    if mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        seq = masked_sum(x, valid, axis=-1)
        if mode == "seq-mean-token-mean":
            seq = seq / jnp.maximum(masked_count(valid, axis=-1), 1).astype(seq.dtype)
        return masked_mean(seq, jnp.any(valid, axis=-1))
    raise ValueError(f"aggregation mode {mode!r}: expected one of {list(AGG_MODES)}")
