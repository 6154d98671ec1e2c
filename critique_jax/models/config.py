"""Model configuration: one dataclass, architecture-family switches and size presets.

A config is ``family`` switches (Llama / Qwen2 / Gemma conventions, so real checkpoints
can be mapped onto the parameter tree later) combined with a size preset (``tiny`` for
tests, ``mini`` for the critic on a CPU, ``small`` for CPU experiments). The vocabulary size
comes from the tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
#: ``remat`` values: no rematerialisation; each block's activations recomputed in the backward
#: pass ("full"); or recomputed except matmul outputs ("dots_saveable", jax's policy of that name).
REMAT_POLICIES = ("none", "full", "dots_saveable")
#: ``attention`` values (critique_jax.models.attention): the einsum path; jax.nn.dot_product_attention
#: with XLA; the same with cuDNN (GPU only, bf16/f16 activations).
ATTENTION_IMPLS = ("reference", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer.

    Sizes: ``d_model`` hidden width, ``n_heads`` query heads, ``n_kv_heads`` key/value heads
    (grouped-query attention; must divide ``n_heads``), ``head_dim`` per head, ``d_ff`` MLP
    hidden width. ``max_seq_len`` bounds positions (prompt + response) and KV-cache length.

    Family switches: ``mlp`` ("swiglu": silu-gated, Llama/Qwen2; "geglu": tanh-gelu-gated,
    Gemma), ``qkv_bias`` (Qwen2), ``tie_embeddings``, ``embed_scale`` (Gemma multiplies
    embeddings by sqrt(d_model)), ``norm_plus_one`` (Gemma RMSNorm scales by 1 + w, w zero-init),
    ``final_logit_softcap`` (Gemma 2: ``c * tanh(z / c)`` on the output logits),
    ``rope_theta`` (RoPE base).

    Switches for real checkpoints (defaults = off): ``qk_norm`` (Qwen3: RMSNorm over
    head_dim on each query and key head, before RoPE), ``rope_llama3`` (Llama 3.1+ RoPE
    frequency scaling: ``(factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings)``), ``attn_logit_softcap`` (Gemma 2: ``c * tanh(s / c)``
    on the scaled attention scores), ``query_pre_attn_scalar`` (Gemma 2: scores are scaled by
    ``query_pre_attn_scalar ** -0.5`` instead of ``head_dim ** -0.5``), ``sliding_window``
    (Gemma 2: on even layers 0, 2, ... a query attends only to the ``sliding_window`` most
    recent slots, itself included; odd layers attend globally), ``sandwich_norms`` (Gemma 2:
    extra RMSNorms on the attention output and on the MLP output, before each residual add).

    Dtypes: ``param_dtype`` for stored parameters, ``dtype`` for activations and matmuls
    (attention softmax, norms and output log-probs are always computed in float32).

    Computation only (the parameters do not depend on them): ``remat``, one of
    :data:`REMAT_POLICIES`, rematerialises each block in the backward pass of the uncached
    forward; ``attention``, one of :data:`ATTENTION_IMPLS`, the attention implementation;
    ``fuse_projections``: q/k/v and the MLP's gate/up each as one matmul over concatenated kernels
    (faster on the CPU; off where a tensor axis shards those kernels, whose concatenation would
    move shards between devices: ``critique_jax.runs.roles.define`` decides).

    Layout: ``scan_layers`` holds the blocks' parameters stacked (``[n_layers, ...]`` per kind)
    and runs the uncached forward's blocks as one ``lax.scan`` (:mod:`critique_jax.models.layer_scan`:
    the update's compile time flat in depth, remat scheduled layer by layer); the same numbers, in
    another parameter (and checkpoint) layout.
    """

    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    d_ff: int = 192
    max_seq_len: int = 256
    mlp: str = "swiglu"
    qkv_bias: bool = False
    tie_embeddings: bool = True
    embed_scale: bool = False
    norm_plus_one: bool = False
    final_logit_softcap: float | None = None
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    qk_norm: bool = False
    rope_llama3: tuple[float, float, float, int] | None = None
    attn_logit_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    sandwich_norms: bool = False
    param_dtype: str = "float32"
    dtype: str = "float32"
    remat: str = "none"
    attention: str = "reference"
    fuse_projections: bool = True
    scan_layers: bool = False

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"ModelConfig: {msg}")

        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                  "d_ff", "max_seq_len"):
            v = getattr(self, f)
            need(isinstance(v, int) and v > 0, f"{f}={v!r}: expected a positive integer")
        need(self.n_heads % self.n_kv_heads == 0,
             f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        need(self.head_dim % 2 == 0, f"head_dim={self.head_dim}: RoPE needs an even head_dim")
        need(self.mlp in ("swiglu", "geglu"), f"mlp={self.mlp!r}: expected 'swiglu' or 'geglu'")
        for f in ("param_dtype", "dtype"):
            need(getattr(self, f) in _DTYPES,
                 f"{f}={getattr(self, f)!r}: expected one of {sorted(_DTYPES)}")
        need(self.remat in REMAT_POLICIES, f"remat={self.remat!r}: expected one of {list(REMAT_POLICIES)}")
        need(self.attention in ATTENTION_IMPLS,
             f"attention={self.attention!r}: expected one of {list(ATTENTION_IMPLS)}")
        need(self.attention == "reference" or self.attn_logit_softcap is None,
             f"attention={self.attention!r} has no attention-score soft-capping (attn_logit_softcap="
             f"{self.attn_logit_softcap}, Gemma 2): use attention='reference'")
        need(self.attention != "cudnn" or self.dtype in ("bfloat16", "float16"),
             f"attention='cudnn' needs dtype bfloat16 or float16, not {self.dtype!r}")
        for f in ("final_logit_softcap", "attn_logit_softcap", "query_pre_attn_scalar", "sliding_window"):
            v = getattr(self, f)
            need(v is None or v > 0, f"{f}={v!r}: expected None or > 0")
        if self.rope_llama3 is not None:
            need(len(self.rope_llama3) == 4 and self.rope_llama3[2] > self.rope_llama3[1],
                 f"rope_llama3={self.rope_llama3!r}: expected (factor, low_freq_factor, "
                 "high_freq_factor > low_freq_factor, original_max_position_embeddings)")

    @property
    def jnp_dtype(self) -> Any:
        return _DTYPES[self.dtype]

    @property
    def jnp_param_dtype(self) -> Any:
        return _DTYPES[self.param_dtype]


FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(mlp="swiglu", qkv_bias=False, tie_embeddings=False, embed_scale=False,
                  norm_plus_one=False, final_logit_softcap=None, rope_theta=500_000.0,
                  norm_eps=1e-5),
    "qwen2": dict(mlp="swiglu", qkv_bias=True, tie_embeddings=True, embed_scale=False,
                  norm_plus_one=False, final_logit_softcap=None, rope_theta=1_000_000.0,
                  norm_eps=1e-6),
    "qwen3": dict(mlp="swiglu", qkv_bias=False, tie_embeddings=True, embed_scale=False,
                  norm_plus_one=False, final_logit_softcap=None, rope_theta=1_000_000.0,
                  norm_eps=1e-6, qk_norm=True),
    # Gemma 1: no soft-capping anywhere.
    "gemma": dict(mlp="geglu", qkv_bias=False, tie_embeddings=True, embed_scale=True,
                  norm_plus_one=True, final_logit_softcap=None, rope_theta=10_000.0,
                  norm_eps=1e-6),
    "gemma2": dict(mlp="geglu", qkv_bias=False, tie_embeddings=True, embed_scale=True,
                   norm_plus_one=True, final_logit_softcap=30.0, rope_theta=10_000.0,
                   norm_eps=1e-6, attn_logit_softcap=50.0, sliding_window=4096,
                   sandwich_norms=True),
}

SIZES: dict[str, dict[str, int]] = {
    # < 1M parameters at a 512-token vocabulary: unit tests.
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=192,
                 max_seq_len=256),
    # ~0.8M parameters: the critic on a CPU (about 5x faster per step than small, so it can
    # take the many more steps a critic needs; configs/critic_countdown.py).
    "mini": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=384,
                 max_seq_len=256),
    # ~6M parameters: CPU experiments (SFT + RL in minutes on 2 cores).
    "small": dict(d_model=256, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=32, d_ff=768,
                  max_seq_len=256),
}


# Fields ``model.overrides`` may change on a preset, with their types. Not here: vocab_size (the
# tokenizer's), max_seq_len (the run's widths), the dtypes, remat, attention, scan_layers (their own keys),
# fuse_projections (the mesh's) and rope_llama3 (a tuple; real Llama 3 checkpoints bring it in their
# config.json).
_NOT_OVERRIDABLE = ("vocab_size", "max_seq_len", "param_dtype", "dtype", "remat", "attention", "fuse_projections",
                    "scan_layers", "rope_llama3")
_OPTIONAL_TYPES = {"final_logit_softcap": float, "attn_logit_softcap": float, "query_pre_attn_scalar": float,
                   "sliding_window": int}
OVERRIDABLE: dict[str, type] = {f.name: _OPTIONAL_TYPES.get(f.name) or type(f.default)
                                for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_OVERRIDABLE}


def model_config(preset: str, vocab_size: int, family: str = "qwen2", **overrides: Any) -> ModelConfig:
    """``SIZES[preset]`` + ``FAMILIES[family]`` + ``overrides``; unknown names list the valid ones."""
    if preset not in SIZES:
        raise KeyError(f"unknown model preset {preset!r}; valid presets: {', '.join(sorted(SIZES))}")
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; valid families: {', '.join(sorted(FAMILIES))}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise KeyError(f"unknown ModelConfig field(s) {bad}; valid fields: {', '.join(sorted(fields))}")
    return ModelConfig(vocab_size=vocab_size, **{**SIZES[preset], **FAMILIES[family], **overrides})


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters, from the architecture alone (checked against the model in tests)."""
    d, h, kv, hd, ff, v = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                           cfg.vocab_size)
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    if cfg.qkv_bias:
        attn += h * hd + 2 * kv * hd
    mlp = 3 * d * ff
    norms = (4 if cfg.sandwich_norms else 2) * d + (2 * hd if cfg.qk_norm else 0)
    embed = v * d * (1 if cfg.tie_embeddings else 2)
    return cfg.n_layers * (attn + mlp + norms) + d + embed
