"""The ``sampling`` config section as a typed, frozen object, built once per run and passed to
the code that samples (nothing below the runtime reads the config itself)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """prompt_buckets: solve-prompt widths (tokens); max_new_tokens: response length (tokens);
    temperature (> 0 for RL), top_p in (0, 1], top_k (0 = off)."""

    prompt_buckets: tuple[int, ...]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int

    @classmethod
    def from_section(cls, s: Mapping[str, Any]) -> SamplingSettings:
        return cls(prompt_buckets=tuple(int(b) for b in s["prompt_buckets"]), max_new_tokens=int(s["max_new_tokens"]),
                   temperature=float(s["temperature"]), top_p=float(s["top_p"]), top_k=int(s["top_k"]))
