"""Decoder-only transformer (Flax NNX), its config presets and KV cache."""

from critique_jax.models.config import FAMILIES, SIZES, ModelConfig, model_config, param_count
from critique_jax.models.transformer import KVCache, Transformer, positions_from_valid

__all__ = ["FAMILIES", "SIZES", "KVCache", "ModelConfig", "Transformer", "model_config",
           "param_count", "positions_from_valid"]
