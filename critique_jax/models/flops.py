"""Model FLOPs and bytes of the transformer: the numerators of model FLOPs utilisation (MFU) and
decode bandwidth utilisation against an accelerator's peak (``scripts/bench.py sample``).

Conventions (as in PaLM's MFU): a multiply-add is 2 FLOPs; only the matmuls count (projections,
MLP, unembedding, and attention's scores and weighted sum); norms, RoPE, softmax and the
embedding lookup are left out. ``context`` is the number of key positions a query attends to,
averaged over the tokens (``(T + 1) / 2`` for a causal pass over T tokens, ``prompt + t`` at
decode step t); a sliding-window layer attends to at most ``sliding_window`` of them.
"""

from __future__ import annotations

from critique_jax.models.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    """Weights one token multiplies in a forward pass: q/k/v/o projections and the gated MLP's
    three matrices per layer, plus the unembedding (``d_model x vocab``)."""
    d, q, kv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * cfg.d_ff
    return cfg.n_layers * per_layer + d * cfg.vocab_size


def _attended(cfg: ModelConfig, layer: int, context: float) -> float:
    window = cfg.sliding_window
    return min(context, window) if window is not None and layer % 2 == 0 else context


def forward_flops(cfg: ModelConfig, tokens: float, context: float) -> float:
    """FLOPs of a forward pass over ``tokens`` tokens that attend to ``context`` keys each (mean)."""
    attention = sum(4 * cfg.n_heads * cfg.head_dim * _attended(cfg, i, context) for i in range(cfg.n_layers))
    return tokens * (2 * matmul_params(cfg) + attention)


def decode_step_bytes(cfg: ModelConfig, batch: int, context: float, param_bytes: int = 4,
                      cache_bytes: int = 4, shared: tuple[int, float] = (0, 0.0)) -> float:
    """Bytes a decode step must read at least: every matmul weight once (``param_bytes`` per
    value) and, for each of ``batch`` sequences, the keys and values of ``context`` positions in
    every layer (``cache_bytes`` per value). ``shared = (rows, prefix)``: the first ``prefix``
    positions are a prefix held once per row for ``batch / rows`` sequences each (the sampler's
    prompt cache), so they are read ``rows`` times, not ``batch`` times (on a sliding-window layer,
    the window's keys are the sequence's own first)."""
    rows, prefix = shared
    per_value = 2 * cfg.n_kv_heads * cfg.head_dim * cache_bytes
    reads = 0.0
    for i in range(cfg.n_layers):
        attended = _attended(cfg, i, context)
        own = min(context - prefix, attended)
        reads += batch * own + rows * (attended - own)
    return matmul_params(cfg) * param_bytes + reads * per_value
