"""Host-side prompt batching: left-pad token lists into the smallest fitting length bucket.

Bucketing keeps the set of prompt shapes small and fixed, so the jitted sampler compiles
once per bucket and never again.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PromptBatch:
    """Left-padded prompts. tokens: [B, P] int32; valid: [B, P] bool (False = padding)."""

    tokens: np.ndarray
    valid: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.valid.sum(axis=1)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; an over-long prompt is an error naming both numbers."""
    fitting = [b for b in sorted(buckets) if b >= n]
    if not fitting:
        raise ValueError(
            f"prompt of {n} tokens is longer than the largest prompt bucket {max(buckets)}; "
            f"raise the largest bucket (buckets={sorted(buckets)}) or shorten the prompt"
        )
    return fitting[0]


def pad_prompts(prompts: Sequence[Sequence[int]], buckets: Sequence[int], pad_id: int) -> PromptBatch:
    """Left-pads token lists to ``bucket_length(max length)``. Empty prompts are rejected."""
    if not prompts:
        raise ValueError("pad_prompts: empty list of prompts")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"pad_prompts: prompt {lengths.index(0)} is empty")
    width = bucket_length(max(lengths), buckets)
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    valid = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = p
        valid[i, width - len(p):] = True
    return PromptBatch(tokens=tokens, valid=valid)
