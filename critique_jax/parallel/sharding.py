"""Parameter sharding rules: a parameter's path -> a ``PartitionSpec`` over the mesh.

FSDP shards the model width (``d_model``) over ``fsdp``; tensor parallelism shards heads,
MLP width and vocabulary over ``tensor``. Norm weights and biases are replicated (biases of
head-sharded projections follow their heads). Optimiser state takes the sharding of the
parameter it belongs to (optax states mirror the parameter tree, so the same rules apply).

A dimension that an axis of size > 1 does not divide is an error naming the parameter, not
a silent replication.
"""

from __future__ import annotations

import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# First matching rule wins; paths are "/"-joined keys, e.g. "layers/0/attn/q_proj/kernel".
RULES: tuple[tuple[str, P], ...] = (
    (r"embed/embedding$", P("tensor", "fsdp")),                               # [V, D]
    (r"lm_head/kernel$", P("fsdp", "tensor")),                                # [D, V]
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", P("fsdp", "tensor")),  # [D, X]
    (r"(o_proj|down_proj)/kernel$", P("tensor", "fsdp")),                     # [X, D]
    (r"(q_proj|k_proj|v_proj)/bias$", P("tensor")),                           # [X]
    (r".*", P()),                                                             # norms, scalars
)


def _path_str(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        parts.append(str(k))
    if parts and parts[-1] == "value":  # nnx.Variable leaves flatten to their .value
        parts.pop()
    return "/".join(parts)


def check_heads(n_heads: int, n_kv_heads: int, mesh: Mesh) -> None:
    """Tensor parallelism splits whole attention heads: ``mesh.tensor`` must divide the key/value
    heads (and so the query heads). A one-line error before anything compiles, naming both."""
    t = mesh.shape["tensor"]
    if n_kv_heads % t:  # (n_kv_heads divides n_heads: ModelConfig checks it)
        fits = [d for d in range(1, n_kv_heads + 1) if n_kv_heads % d == 0]
        raise ValueError(f"mesh.tensor={t} does not divide the model's {n_heads} query / {n_kv_heads} key-value heads "
                         f"(tensor parallelism splits whole heads): use mesh.tensor in {fits}")


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The rule's spec for one parameter, checked against its shape and the mesh."""
    for pattern, spec in RULES:
        if re.search(pattern, path):
            break
    if len(spec) > len(shape):
        spec = P()  # e.g. a scalar that happens to match: nothing to shard
    for dim, axis in zip(shape, spec):
        if axis is not None and dim % mesh.shape[axis]:
            raise ValueError(
                f"parameter {path} of shape {shape}: dimension {dim} is not divisible by mesh axis "
                f"{axis!r} of size {mesh.shape[axis]}; change the model size or the mesh"
            )
    return spec


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A tree of ``NamedSharding`` matching ``params`` (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(_path_str(path), tuple(x.shape), mesh)), params
    )


def tree_shardings_like(tree: Any, params: Any, param_sh: Any, mesh: Mesh) -> Any:
    """Shardings for a tree (e.g. optimiser state) whose leaves mirror ``params`` where shapes match.

    Leaves whose path ends with a parameter's path and has its shape take that parameter's
    sharding; everything else (step counters, scalars) is replicated.
    """
    by_path = {}
    for (path, x), sh in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(param_sh)):
        by_path[_path_str(path)] = (tuple(x.shape), sh)

    def pick(path, x):
        p = _path_str(path)
        for key, (shape, sh) in by_path.items():
            if (p == key or p.endswith("/" + key)) and tuple(x.shape) == shape:
                return sh
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(pick, tree)
