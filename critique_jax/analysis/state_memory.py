"""Memory of a model's training state, from shapes alone (``jax.eval_shape``, no weights).

For a HF ``config.json`` (or a published shape, :data:`~critique_jax.models.hf.published.PUBLISHED`)
and each parameter dtype: parameter bytes, AdamW state bytes (the project's optimiser,
:func:`~critique_jax.rl.train_step.make_optimizer`: two moments in the parameter dtype), and
per-device bytes of parameters + AdamW state on an ``fsdp``-only mesh of each size, placed by
the rules of :mod:`critique_jax.parallel.sharding`. Not counted: activations, gradients, the KV
cache of sampling, and the frozen reference policy (one more parameter copy when
``rl.loss.ref_kl_coef > 0``).

    python -m critique_jax.memory Qwen2.5-0.5B path/to/config.json ...
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh

from critique_jax.models.config import ModelConfig
from critique_jax.models.hf.config import config_from_hf
from critique_jax.models.hf.published import PUBLISHED
from critique_jax.models.transformer import Transformer
from critique_jax.parallel.mesh import AXES
from critique_jax.parallel.sharding import param_shardings, tree_shardings_like
from critique_jax.rl.train_step import make_optimizer

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes of one model in one parameter dtype: ``params``, ``adam`` (whole, unsharded) and
    ``per_device`` (mesh size -> parameters + AdamW state on one device of an fsdp mesh; None
    when a sharded dimension is not divisible by that size)."""

    params: int
    adam: int
    per_device: dict[int, int | None]


def tree_bytes(tree: Any, shardings: Any = None) -> int:
    """Total bytes of ``tree``'s leaves, or of one device's shards of them under ``shardings``."""
    leaves = jax.tree.leaves(tree)
    shapes = ([x.shape for x in leaves] if shardings is None
              else [s.shard_shape(x.shape) for x, s in zip(leaves, jax.tree.leaves(shardings))])
    return sum(int(np.prod(shape)) * x.dtype.itemsize for x, shape in zip(leaves, shapes))


def estimate(cfg: ModelConfig, mesh_sizes: Iterable[int] = (1, 8, 32)) -> Estimate:
    """The memory of ``cfg``'s parameters and AdamW state (in ``cfg.param_dtype``)."""
    params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]
    optimizer, _ = make_optimizer(1e-4, 0, 1)
    adam = jax.eval_shape(optimizer.init, params)
    per_device: dict[int, int | None] = {}
    for n in mesh_sizes:
        mesh = AbstractMesh((1, n, 1), AXES)
        try:
            param_sh = param_shardings(params, mesh)
        except ValueError:  # a dimension the fsdp axis does not divide
            per_device[n] = None
            continue
        adam_sh = tree_shardings_like(adam, params, param_sh, mesh)
        per_device[n] = tree_bytes(params, param_sh) + tree_bytes(adam, adam_sh)
    return Estimate(params=tree_bytes(params), adam=tree_bytes(adam), per_device=per_device)


def load_shape(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """A published shape by name, or a ``config.json`` path (a file or its directory)."""
    if name_or_path in PUBLISHED:
        return name_or_path, PUBLISHED[name_or_path][1]
    path = Path(name_or_path)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{name_or_path}: neither a published shape ({', '.join(PUBLISHED)}) "
                                "nor a config.json file or directory")
    return str(path), json.loads(path.read_text())


def table(names: Iterable[str], mesh_sizes: tuple[int, ...] = (1, 8, 32),
          dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> str:
    """A Markdown table: one row per model and parameter dtype, sizes in GiB."""
    head = ["model", "params", "param dtype", "params GiB", "AdamW GiB"] + [f"per device, fsdp={n}" for n in mesh_sizes]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        label, config = load_shape(name)
        for dtype in dtypes:
            cfg = config_from_hf(config, dtype=dtype, source=label)
            e = estimate(cfg, mesh_sizes)
            n_params = e.params // cfg.jnp_param_dtype.dtype.itemsize
            cells = [label, f"{n_params / 1e9:.2f}B", dtype, f"{e.params / GIB:.2f}", f"{e.adam / GIB:.2f}"]
            cells += ["n/a" if b is None else f"{b / GIB:.2f}" for b in e.per_device.values()]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
