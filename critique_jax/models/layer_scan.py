"""Stacked layer parameters and the uncached forward's blocks as one ``lax.scan``
(``ModelConfig.scan_layers``).

With ``scan_layers`` the model holds its blocks as one block module whose parameters carry a
leading ``[n_layers]`` axis (``layers/attn/q_proj/kernel`` of shape ``[n_layers, d, X]``, the
layout of MaxText's scanned layers) instead of one tree per layer (``layers/0/attn/...``). The
train state, its checkpoints and the optimiser's moments follow that layout, so the update
compiles one block and one optimiser step per parameter kind, not ``n_layers`` of each:

- the update's compile time is flat in depth (per-layer trees cost ~1 s per layer on the CPU,
  most of it the optimiser step over the gradients sliced out of a stacked scan);
- no stacked copy of the parameters and of their gradients while the step runs;
- with ``remat``, each layer's recomputation runs inside the backward loop, so no compiler can
  schedule every layer's recomputation before the first layer's backward (XLA's CPU scheduler
  did: the compiled update kept every layer's attention scores).

The cached forward (the sampler) keeps a Python loop over the layers, taking layer ``i``'s
slice of the stacked parameters (:func:`unstack_blocks`). Hugging Face checkpoints and the
per-layer layout convert with :func:`stack_layers` / :func:`unstack_layers`. Gemma 2's
alternating sliding-window layers are a per-layer flag scanned with the parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _stack(trees: Sequence[Any]) -> Any:
    """Trees of one structure -> one tree of their leaves stacked on a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any) -> list[Any]:
    """The inverse of :func:`_stack`."""
    return [jax.tree.map(lambda a: a[i], tree) for i in range(jax.tree.leaves(tree)[0].shape[0])]


def stack_blocks(blocks: Sequence[nnx.Module]) -> nnx.Module:
    """One module of ``blocks``' structure whose parameters are theirs stacked on a new leading axis."""
    return nnx.merge(nnx.split(blocks[0])[0], _stack([nnx.split(b)[1] for b in blocks]))


def unstack_blocks(stacked: nnx.Module) -> list[nnx.Module]:
    """The layers of a :func:`stack_blocks` module, each a module with its slice of the parameters."""
    graphdef, state = nnx.split(stacked)
    return [nnx.merge(graphdef, layer) for layer in _unstack(state)]


def stack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """A pure parameter dict (``nnx.State.to_pure_dict()``) with per-layer ``layers`` (``{0: tree,
    1: tree, ...}``) -> the same with ``layers`` one tree of ``[n_layers, ...]`` arrays."""
    layers = params["layers"]
    return {**params, "layers": _stack([layers[i] for i in range(len(layers))])}


def unstack_layers(params: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`stack_layers`."""
    return {**params, "layers": dict(enumerate(_unstack(params["layers"])))}


def scan_blocks(stacked: nnx.Module, x: jax.Array, positions: jax.Array, mask: jax.Array,
                local: jax.Array | None, policy: Callable | None) -> jax.Array:
    """``x`` [B, T, d] through the layers of ``stacked`` (a :func:`stack_blocks` module) without a
    cache; layer ``i`` attends with ``local`` (the sliding-window mask) when it is given and ``i``
    is even, else ``mask``. ``policy``: the ``jax.checkpoint`` policy of each step (None = no remat)."""
    graphdef, state = nnx.split(stacked)
    n = jax.tree.leaves(state)[0].shape[0]
    sliding = jnp.asarray([local is not None and i % 2 == 0 for i in range(n)])

    def step(h: jax.Array, layer_params: tuple[nnx.State, jax.Array]) -> tuple[jax.Array, None]:
        state, is_sliding = layer_params
        layer_mask = mask if local is None else jnp.where(is_sliding, local, mask)
        return nnx.merge(graphdef, state)(h, positions, layer_mask, None, None)[0], None

    if policy is not None:
        step = jax.checkpoint(step, policy=policy)
    return jax.lax.scan(step, x, (state, sliding))[0]
