"""The uncached forward's blocks as one ``lax.scan`` (``ModelConfig.scan_layers``).

The parameters stay one tree per layer (the layout of checkpoints, the Hugging Face loader and
the sharding rules); the scan stacks them inside the step, into ``[n_layers, ...]`` arrays that
keep each parameter's sharding on the other dimensions (one more copy of the block parameters
while the step runs, and of their gradients). What it buys:

- the model's compile time flat in depth (one block is compiled, not ``n_layers``; the optimiser
  step over the per-layer trees still grows with them);
- with ``remat``, each layer's recomputation runs inside the backward loop, so no compiler can
  schedule every layer's recomputation before the first layer's backward (XLA's CPU scheduler
  did: the compiled update kept every layer's attention scores).

Gemma 2's alternating sliding-window layers are a per-layer flag scanned with the parameters.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def scan_blocks(blocks: Sequence[nnx.Module], x: jax.Array, positions: jax.Array, mask: jax.Array,
                local: jax.Array | None, policy: Callable | None) -> jax.Array:
    """``x`` [B, T, d] through ``blocks`` (identical in structure) without a cache; layer ``i``
    attends with ``local`` (the sliding-window mask) when it is given and ``i`` is even, else
    ``mask``. ``policy``: the ``jax.checkpoint`` policy of each step (None = no remat)."""
    splits = [nnx.split(block) for block in blocks]
    graphdef = splits[0][0]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(state for _, state in splits))
    sliding = jnp.asarray([local is not None and i % 2 == 0 for i in range(len(blocks))])

    def step(h: jax.Array, layer: tuple[nnx.State, jax.Array]) -> tuple[jax.Array, None]:
        state, is_sliding = layer
        layer_mask = mask if local is None else jnp.where(is_sliding, local, mask)
        return nnx.merge(graphdef, state)(h, positions, layer_mask, None, None)[0], None

    if policy is not None:
        step = jax.checkpoint(step, policy=policy)
    return jax.lax.scan(step, x, (stacked, sliding))[0]
