"""One device mesh for everything: axes ``data``, ``fsdp``, ``tensor``.

We use GSPMD-style *Auto* axis types (what tunix and MaxText assume): arrays carry
``NamedSharding``s and XLA propagates shardings and inserts collectives. The batch
dimension is sharded over ``("data", "fsdp")``; parameters are sharded by logical-axis
rules (added with the trainer).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(
    data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh; one size may be -1 (= the remaining devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sum(s == -1 for s in sizes) > 1:
        raise ValueError(f"mesh sizes (data, fsdp, tensor)={tuple(sizes)}: at most one may be -1")
    for name, s in zip(AXES, sizes):
        if s != -1 and s < 1:
            raise ValueError(f"mesh size {name}={s}: expected a positive integer or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"mesh sizes (data, fsdp, tensor)={tuple(sizes)}: {len(devices)} devices are not "
                f"divisible by {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh sizes (data, fsdp, tensor)={tuple(sizes)} need {math.prod(sizes)} devices, "
            f"have {len(devices)}"
        )
    return Mesh(
        np.asarray(devices).reshape(sizes), AXES, axis_types=(AxisType.Auto,) * len(AXES)
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding for an array whose leading dimension is the batch."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return mesh.shape["data"] * mesh.shape["fsdp"]
