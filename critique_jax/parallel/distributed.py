"""Multi-process set-up and host <-> global-array transfers.

Every process holds the (small) *global* host batch — problems, prompt tokens, rewards —
computed identically from the same seeds, and devices hold only their shards of it:
``to_global`` builds a global array from the full host array (each process contributes its
addressable shards), ``to_host`` gathers a global array back to every process. This keeps
data order and verification identical on every host without exchanging strings.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, Sharding

from critique_jax.parallel.mesh import batch_sharding


def maybe_initialize(coordinator_address: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Calls ``jax.distributed.initialize`` for multi-process runs.

    Explicit arguments (from the config / flags) win; otherwise the environment variables
    ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` are used; with
    neither this is a single-process run. On Cloud TPU pods and SLURM clusters JAX detects
    everything itself: set ``JAX_DISTRIBUTED_AUTO=1`` to call ``initialize()`` without arguments.
    """
    addr = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    n = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if os.environ.get("JAX_DISTRIBUTED_AUTO") == "1":
        jax.distributed.initialize()
    elif addr:
        if n < 1 or pid < 0:
            raise ValueError(f"multi-process run at {addr!r}: num_processes={n} and process_id={pid} must be set "
                             "(config.distributed.* or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)


def to_global(x: np.ndarray, sharding: Sharding) -> jax.Array:
    """A global array from the full host array ``x`` (identical on every process)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def shard_batch(x: np.ndarray | jax.Array, mesh: Mesh) -> jax.Array:
    """A global array sharded over ``mesh``'s batch axes from a full host array (or an array of PRNG keys)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(shard_batch(np.asarray(jax.random.key_data(x)), mesh))
    return to_global(x, batch_sharding(mesh, np.ndim(x)))


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-process) global array on this host."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def is_main_process() -> bool:
    return jax.process_index() == 0
