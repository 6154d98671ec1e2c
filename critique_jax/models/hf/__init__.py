"""Hugging Face checkpoints in and out (qwen2, qwen3, llama, gemma, gemma2), without torch."""

from critique_jax.models.hf.config import config_from_hf, hf_config
from critique_jax.models.hf.weights import hf_names, load_config, load_pretrained, save_pretrained

__all__ = ["config_from_hf", "hf_config", "hf_names", "load_config", "load_pretrained", "save_pretrained"]
