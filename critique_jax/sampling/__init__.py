"""Jitted sampling with a KV cache, and host-side prompt bucketing."""

from critique_jax.sampling.prompts import PromptBatch, bucket_length, pad_prompts
from critique_jax.sampling.settings import SamplingSettings
from critique_jax.sampling.sampler import (Rollout, SamplerConfig, check_batch, generate, sample_keys,
                                           truncation_mask)

__all__ = ["PromptBatch", "Rollout", "SamplerConfig", "SamplingSettings", "bucket_length", "check_batch", "generate",
           "pad_prompts", "sample_keys", "truncation_mask"]
