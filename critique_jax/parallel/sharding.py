"""Parameter sharding rules: a parameter's path -> a ``PartitionSpec`` over the mesh.

FSDP shards the model width (``d_model``) over ``fsdp``; tensor parallelism shards heads,
MLP width and vocabulary over ``tensor``. Norm weights and biases are replicated (biases of
head-sharded projections follow their heads). Optimiser state takes the sharding of the
parameter it belongs to (optax states mirror the parameter tree, so the same rules apply).

Each model role (policy, frozen reference, critic) takes one of :data:`LAYOUTS` on the one mesh
(``mesh.reference``, ``mesh.critic``; the policy trains in ``train``):

* ``train``: the rules above;
* ``replicated``: every device holds the whole model (no gathers in its forward; the most memory);
* ``sharded``: the rules with the model width over ``data`` x ``fsdp`` (ZeRO-3 across the data axis
  too): a frozen model's least memory, 1 / (data x fsdp x tensor) of it per device.

A dimension that an axis of size > 1 does not divide is an error naming the parameter, not
a silent replication.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# First matching rule wins; paths are "/"-joined keys, e.g. "layers/0/attn/q_proj/kernel". With
# stacked layers (``model.scan_layers``: "layers/attn/q_proj/kernel", a leading [n_layers] axis)
# the rule applies to the dimensions after the layer axis, which stays unsharded.
RULES: tuple[tuple[str, P], ...] = (
    (r"embed/embedding$", P("tensor", "fsdp")),                               # [V, D]
    (r"lm_head/kernel$", P("fsdp", "tensor")),                                # [D, V]
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel$", P("fsdp", "tensor")),  # [D, X]
    (r"(o_proj|down_proj)/kernel$", P("tensor", "fsdp")),                     # [X, D]
    (r"(q_proj|k_proj|v_proj)/bias$", P("tensor")),                           # [X]
    (r".*", P()),                                                             # norms, scalars
)

LAYOUTS = ("train", "replicated", "sharded")
STACKED = re.compile(r"layers/(?!\d+/)")  # the parameters of stacked layers (models.layer_scan)


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


def spec_for(path: str, shape: tuple[int, ...], mesh: Mesh, layout: str = "train") -> P:
    """The spec of one parameter in ``layout`` (module docstring), checked against its shape and the mesh."""
    if layout not in LAYOUTS:
        raise ValueError(f"parameter layout {layout!r}: expected one of {list(LAYOUTS)}")
    if layout == "replicated":
        return P()
    for pattern, spec in RULES:
        if re.search(pattern, path):
            break
    if len(spec) > len(shape):
        spec = P()  # e.g. a scalar that happens to match: nothing to shard
    if STACKED.match(path):
        spec = P(None, *spec)
    if layout == "sharded":
        spec = P(*(("data", "fsdp") if axis == "fsdp" else axis for axis in spec))
    for dim, axis in zip(shape, spec):
        size = math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis or ()))
        if dim % size:
            raise ValueError(
                f"parameter {path} of shape {shape} ({layout} layout): dimension {dim} is not divisible by mesh "
                f"axis {axis!r} of size {size}; change the model size, the mesh or the layout"
            )
    return spec


def param_shardings(params: Any, mesh: Mesh, layout: str = "train") -> Any:
    """A tree of ``NamedSharding`` matching ``params`` (arrays or ShapeDtypeStructs) in ``layout``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, spec_for(_path_str(path), tuple(x.shape), mesh, layout)), params
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
