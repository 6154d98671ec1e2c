"""Group-relative advantage estimators (outcome rewards, one scalar per response).

All take ``rewards`` [B], ``group_ids`` [B] (any integers; equal id = same prompt group) and
an optional ``valid`` [B] bool (padding rows / filtered samples: excluded from their group's
statistics and given advantage 0). Shapes are static: groups are found with
``jnp.unique(..., size=B)``, statistics with segment sums, so the functions jit.

Semantics follow verl's ``compute_grpo_outcome_advantage`` / ``compute_rloo_outcome_advantage``:
the std is the unbiased one (ddof = 1, ``torch.std``), eps = 1e-6 is added to it, and a group
with a single valid member keeps its raw reward (mean 0, std 1).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _group_stats(rewards: Array, group_ids: Array, valid: Array | None):
    """Per-sample (count, mean, unbiased std) of the sample's group over valid members."""
    b = rewards.shape[0]
    if rewards.shape != (b,) or group_ids.shape != (b,):
        raise ValueError(
            f"rewards {rewards.shape} and group_ids {group_ids.shape}: expected two [B] arrays"
        )
    if valid is None:
        valid = jnp.ones((b,), bool)
    elif valid.shape != (b,):
        raise ValueError(f"valid {valid.shape}: expected [B] = ({b},)")
    valid = valid.astype(bool)
    r = jnp.where(valid, rewards.astype(jnp.float32), 0.0)
    _, seg = jnp.unique(group_ids, return_inverse=True, size=b)
    seg = seg.reshape(b)
    w = valid.astype(jnp.float32)
    count = jax.ops.segment_sum(w, seg, num_segments=b)[seg]
    mean = jax.ops.segment_sum(r, seg, num_segments=b)[seg] / jnp.maximum(count, 1.0)
    sq = jax.ops.segment_sum(w * (r - mean) ** 2, seg, num_segments=b)[seg]
    std = jnp.sqrt(sq / jnp.maximum(count - 1.0, 1.0))
    single = count <= 1
    return r, valid, count, jnp.where(single, 0.0, mean), jnp.where(single, 1.0, std)


def grpo_advantages(rewards: Array, group_ids: Array, valid: Array | None = None, eps: float = 1e-6) -> Array:
    """GRPO: ``(r - mean_group) / (std_group + eps)``. Returns [B] float32."""
    r, valid, _, mean, std = _group_stats(rewards, group_ids, valid)
    return jnp.where(valid, (r - mean) / (std + eps), 0.0)


def drgrpo_advantages(rewards: Array, group_ids: Array, valid: Array | None = None) -> Array:
    """Dr.GRPO (arXiv:2503.20783): ``r - mean_group``, no std division. Returns [B] float32."""
    r, valid, _, mean, _ = _group_stats(rewards, group_ids, valid)
    return jnp.where(valid, r - mean, 0.0)


def rloo_advantages(rewards: Array, group_ids: Array, valid: Array | None = None) -> Array:
    """RLOO: ``r_i - mean_{j != i} r_j`` = ``n / (n - 1) * (r_i - mean)``. Returns [B] float32."""
    r, valid, count, mean, _ = _group_stats(rewards, group_ids, valid)
    scale = jnp.where(count > 1, count / jnp.maximum(count - 1.0, 1.0), 1.0)
    return jnp.where(valid, scale * (r - mean), 0.0)


ESTIMATORS: dict[str, Callable[..., Array]] = {
    "grpo": grpo_advantages,
    "drgrpo": drgrpo_advantages,
    "rloo": rloo_advantages,
}


def compute_advantages(name: str, rewards: Array, group_ids: Array, valid: Array | None = None) -> Array:
    """Advantages [B] by estimator ``name`` (``grpo``, ``drgrpo``, ``rloo``).

    Critique-GRPO uses ``drgrpo`` over the mixed group (initial responses + refinement).
    """
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; expected one of {list(ESTIMATORS)}")
    return ESTIMATORS[name](rewards, group_ids, valid)
