"""Sharding constraints on activations and the KV cache, under the ambient mesh.

Parameters carry their shardings (:mod:`critique_jax.parallel.sharding`) but XLA's propagation
decides the activations' alone, and on an fsdp mesh it kept the batch whole on every device
(the partitioned RL update of Qwen2.5-0.5B at 64 x 2,048 tokens on 8 devices had [64, ...]
activations and ~69 GiB of temporaries per device for two layers). The model marks its
activations with :func:`constrain`: the batch over ``("data", "fsdp")``, attention heads and
the MLP width over ``tensor``.

The constraint reads the mesh set with ``jax.set_mesh`` (the programs set the run's mesh);
without one it is the identity, so a model applied outside a mesh (tests, notebooks) runs as
before. A dimension that its axes do not divide (a batch of 1 on 8 devices) is left to XLA
for that dimension only: the constraint is a layout hint, never a change of the math.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

from critique_jax.parallel.mesh import BATCH_AXES

BATCH = BATCH_AXES  # the batch dimension's axes
HEADS = "tensor"  # attention heads, kv heads, MLP width


def constrain(x: jax.Array, *axes: str | tuple[str, ...] | None) -> jax.Array:
    """``x`` constrained to ``PartitionSpec(*axes)`` on the ambient mesh; identity without one.

    ``axes``: one entry per dimension of ``x`` (``None`` = replicated); an entry whose mesh axes
    do not divide its dimension becomes ``P.UNCONSTRAINED`` (that dimension left to XLA).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = []
    for dim, a in zip(x.shape, axes):
        names = () if a is None else (a,) if isinstance(a, str) else tuple(a)
        size = math.prod(mesh.shape[n] for n in names)
        spec.append(None if size == 1 else a if dim % size == 0 else P.UNCONSTRAINED)
    if all(s is None or s is P.UNCONSTRAINED for s in spec):
        return x
    return jax.lax.with_sharding_constraint(x, P(*spec))
