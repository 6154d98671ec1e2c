"""Decoder-only transformer (Flax NNX), its config presets, KV cache and HF checkpoint I/O."""

from critique_jax.models.config import FAMILIES, SIZES, ModelConfig, model_config, param_count
from critique_jax.models.kv_cache import KVCache
from critique_jax.models.transformer import Transformer, positions_from_valid
from critique_jax.models.hf import config_from_hf, load_pretrained, save_pretrained

__all__ = ["FAMILIES", "SIZES", "KVCache", "ModelConfig", "Transformer", "config_from_hf",
           "load_pretrained", "model_config", "param_count", "positions_from_valid", "save_pretrained"]
