"""The KV cache of the decoder: per-layer key and value buffers for ``S`` slots (its layouts are
the ones :func:`critique_jax.models.attention.attend_cached` reads), optionally after a shared
prefix: the prompt's keys and values, held once per prompt for the G samples that continue it."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from critique_jax.models.config import ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer for ``S`` slots.

    k: one [B, n_kv_heads, head_dim, S] array per layer (keys transposed), v: one
    [B, n_kv_heads, S, head_dim] per layer (tuples of L), in the compute dtype: the layouts the
    attention reads without a transpose (``critique_jax.models.attention``). Per-layer buffers,
    not one stacked [L, ...] array: a layer reads its keys right after writing them, and XLA
    (CPU) copied the whole stacked cache for each such read-after-write.
    valid: [B, S] bool, True where a slot holds a real (non-padding) token.
    end: int32 scalar, the next slot to write; slots ``[end, S)`` are free.
    prefix: None, or a cache of ``B / G`` rows read (never written) before these slots: row ``i``
    attends to the prefix's row ``i // G`` first (``shared``), as if those slots were its own first ones.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    end: jax.Array
    prefix: KVCache | None = None

    @property
    def size(self) -> int:
        return self.v[0].shape[2]

    @staticmethod
    def zeros(cfg: ModelConfig, batch: int, size: int) -> "KVCache":
        if size > cfg.max_seq_len:
            raise ValueError(f"KV cache size {size} exceeds max_seq_len={cfg.max_seq_len}")
        k_shape = (batch, cfg.n_kv_heads, cfg.head_dim, size)
        v_shape = (batch, cfg.n_kv_heads, size, cfg.head_dim)
        return KVCache(
            k=tuple(jnp.zeros(k_shape, cfg.jnp_dtype) for _ in range(cfg.n_layers)),
            v=tuple(jnp.zeros(v_shape, cfg.jnp_dtype) for _ in range(cfg.n_layers)),
            valid=jnp.zeros((batch, size), bool),
            end=jnp.zeros((), jnp.int32),
        )

    def shared(self, cfg: ModelConfig, group: int, size: int) -> "KVCache":
        """An empty cache of ``group`` rows per row of this one and ``size`` slots, with this cache
        as its prefix: the G samples of a prompt read the prompt's keys and values from one copy."""
        if cfg.max_seq_len < self.size + size:
            raise ValueError(f"KV cache size {self.size} + {size} exceeds max_seq_len={cfg.max_seq_len}")
        return dataclasses.replace(KVCache.zeros(cfg, self.valid.shape[0] * group, size), prefix=self)

    def grow(self, size: int) -> "KVCache":
        """The cache with empty slots appended up to ``size`` slots (a copy into new buffers; the
        prefix is kept as it is)."""
        if size < self.size:
            raise ValueError(f"KVCache.grow({size}): the cache already has {self.size} slots")
        extra = size - self.size
        return dataclasses.replace(
            self,
            k=tuple(jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) for x in self.k),
            v=tuple(jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0))) for x in self.v),
            valid=jnp.pad(self.valid, ((0, 0), (0, extra))),
        )
