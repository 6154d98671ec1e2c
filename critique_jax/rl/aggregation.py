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


def part_weight(part_valid: Array, valid: Array, mode: str, constant: float | None = None) -> Array:
    """The weight of a block of rows in the aggregate of the whole batch: for ``x`` split into
    row blocks ``x_i`` (valid masks ``part_valid``, of ``valid``),
    ``aggregate(x, valid) = sum_i part_weight(valid_i, valid) * aggregate(x_i, valid_i)``.

    ``token-mean``: the block's share of the valid tokens; sequence means: its share of the
    sequences with a valid token; ``constant``: 1 with a given constant, else the block's share of
    the rows (its own default constant is its B_i x T). 0 when nothing in the batch is valid.
    """
    if mode == "token-mean":
        part, whole = masked_count(part_valid), masked_count(valid)
    elif mode == "constant":
        return jnp.asarray(1.0 if constant is not None else part_valid.shape[0] / valid.shape[0], jnp.float32)
    elif mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
        part, whole = jnp.any(part_valid, axis=-1).sum(), jnp.any(valid, axis=-1).sum()
    else:
        raise ValueError(f"aggregation mode {mode!r}: expected one of {list(AGG_MODES)}")
    return (part / jnp.maximum(whole, 1)).astype(jnp.float32)
