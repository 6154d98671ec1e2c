"""Hugging Face ``config.json`` <-> :class:`ModelConfig` for qwen2, qwen3, llama, gemma, gemma2.

Only fields that change the math are read; a value our model cannot reproduce exactly (an
unknown RoPE scaling, attention or MLP biases on Llama, Qwen sliding windows, ...) is a
``ValueError`` naming the file and the field. Absent optional fields take transformers'
defaults for that ``model_type``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from critique_jax.models.config import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM"}
_GEMMA = ("gemma", "gemma2")
# transformers' defaults for optional fields (head_dim None = hidden_size // num_attention_heads).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(head_dim=None, tie_word_embeddings=False, max_position_embeddings=2048),
    "qwen2": dict(head_dim=None, tie_word_embeddings=False, max_position_embeddings=32768),
    "qwen3": dict(head_dim=128, tie_word_embeddings=False, max_position_embeddings=32768),
    "gemma": dict(head_dim=256, tie_word_embeddings=True, max_position_embeddings=8192),
    "gemma2": dict(head_dim=256, tie_word_embeddings=True, max_position_embeddings=8192),
}
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def config_from_hf(config_json: dict[str, Any], *, dtype: str = "float32",
                   source: str = "config.json") -> ModelConfig:
    """A transformers ``config.json`` (as a dict) -> ``ModelConfig`` with ``dtype`` for params and
    activations. ``source`` names the file in errors."""
    c = config_json
    mt = c.get("model_type")
    if mt not in _DEFAULTS:
        raise ValueError(f"{source}: model_type={mt!r} is not supported; supported: {', '.join(sorted(_DEFAULTS))}")

    def fail(field: str, why: str) -> None:
        raise ValueError(f"{source}: {field}={c.get(field)!r}: {why} (model_type {mt!r})")

    def get(field: str, default: Any = None) -> Any:
        v = c.get(field)
        return _DEFAULTS[mt].get(field, default) if v is None else v

    for f in _REQUIRED:
        if c.get(f) is None:
            raise ValueError(f"{source}: missing field {f!r} (model_type {mt!r})")
    for f in ("attention_bias", "mlp_bias", "use_sliding_window", "use_bidirectional_attention"):
        if c.get(f):
            fail(f, "not supported (changes the math)")
    act_field = "hidden_activation" if mt == "gemma2" else "hidden_act"
    act = get(act_field, "gelu_pytorch_tanh" if mt in _GEMMA else "silu")
    want_act = ("gelu_pytorch_tanh", "gelu") if mt == "gemma" else (
        ("gelu_pytorch_tanh",) if mt == "gemma2" else ("silu",))
    if act not in want_act:
        fail(act_field, f"expected {' or '.join(want_act)}")

    rope_field = "rope_parameters" if c.get("rope_parameters") else "rope_scaling"
    rope = c.get(rope_field) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", get("rope_theta", 10_000.0))
    if rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) != 1.0:
        fail("partial_rotary_factor", "only full rotary embeddings are supported")
    llama3 = None
    if rope_type == "llama3" and mt == "llama":
        llama3 = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                  int(rope.get("original_max_position_embeddings", get("max_position_embeddings"))))
    elif rope_type != "default":
        fail(rope_field, f"RoPE type {rope_type!r} is not supported (only 'default', and 'llama3' for llama)")

    heads = int(c["num_attention_heads"])
    head_dim = int(get("head_dim") or c["hidden_size"] // heads)
    layer_types = c.get("layer_types")
    sliding = None
    if mt == "gemma2":
        sliding = c.get("sliding_window", 4096)
        pattern = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(c["num_hidden_layers"])]
        if layer_types is not None and list(layer_types) != pattern and sliding is not None:
            fail("layer_types", "only sliding attention on even layers (transformers' default) is supported")
    elif layer_types is not None and any(t != "full_attention" for t in layer_types):
        fail("layer_types", "only full attention is supported")
    scalar = c.get("query_pre_attn_scalar", 256) if mt == "gemma2" else None
    return ModelConfig(
        vocab_size=int(c["vocab_size"]), d_model=int(c["hidden_size"]), n_layers=int(c["num_hidden_layers"]),
        n_heads=heads, n_kv_heads=int(get("num_key_value_heads", heads)), head_dim=head_dim,
        d_ff=int(c["intermediate_size"]), max_seq_len=int(get("max_position_embeddings")),
        mlp="geglu" if mt in _GEMMA else "swiglu", qkv_bias=mt == "qwen2",
        tie_embeddings=bool(get("tie_word_embeddings")), embed_scale=mt in _GEMMA, norm_plus_one=mt in _GEMMA,
        final_logit_softcap=c.get("final_logit_softcapping", 30.0) if mt == "gemma2" else None,
        rope_theta=float(theta), norm_eps=float(get("rms_norm_eps", 1e-6)), qk_norm=mt == "qwen3",
        rope_llama3=llama3,
        attn_logit_softcap=c.get("attn_logit_softcapping", 50.0) if mt == "gemma2" else None,
        query_pre_attn_scalar=None if scalar in (None, head_dim) else float(scalar),
        sliding_window=sliding, sandwich_norms=mt == "gemma2", param_dtype=dtype, dtype=dtype,
    )


def model_type(cfg: ModelConfig) -> str:
    """The transformers ``model_type`` whose architecture ``cfg`` is (checked by :func:`hf_config`)."""
    if cfg.sandwich_norms:
        return "gemma2"
    if cfg.embed_scale:
        return "gemma"
    if cfg.qk_norm:
        return "qwen3"
    return "qwen2" if cfg.qkv_bias else "llama"


def hf_config(cfg: ModelConfig, **token_ids: Any) -> dict[str, Any]:
    """``cfg`` as a transformers ``config.json`` dict (plus ``token_ids``: bos_token_id, ...).

    Raises ``ValueError`` when no supported ``model_type`` reproduces ``cfg`` exactly.
    """
    mt = model_type(cfg)
    out: dict[str, Any] = dict(
        architectures=[ARCHITECTURES[mt]], model_type=mt, vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="gelu_pytorch_tanh" if cfg.mlp == "geglu" else "silu", torch_dtype=cfg.param_dtype,
    )
    if cfg.rope_llama3 is not None:
        factor, low, high, original = cfg.rope_llama3
        out["rope_scaling"] = dict(rope_type="llama3", factor=factor, low_freq_factor=low,
                                   high_freq_factor=high, original_max_position_embeddings=original)
    if mt == "gemma2":
        out.update(hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=cfg.final_logit_softcap,
                   attn_logit_softcapping=cfg.attn_logit_softcap, sliding_window=cfg.sliding_window,
                   query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar or cfg.head_dim))
    out.update({k: v for k, v in token_ids.items() if v is not None})
    back = config_from_hf(out, dtype=cfg.dtype, source=f"hf_config({mt})")
    back = dataclasses.replace(back, param_dtype=cfg.param_dtype, remat=cfg.remat, attention=cfg.attention,
                               scan_layers=cfg.scan_layers, fuse_projections=cfg.fuse_projections)
    diff = [f.name for f in dataclasses.fields(cfg) if getattr(back, f.name) != getattr(cfg, f.name)]
    if diff:
        raise ValueError(f"ModelConfig is not a Hugging Face {mt} model: {', '.join(diff)} would differ "
                         f"({', '.join(f'{n}={getattr(cfg, n)!r}' for n in diff)})")
    return out


def _int_if_whole(x: float) -> float | int:
    """transformers' strict configs type some fields ``int``; keep whole numbers ints."""
    return int(x) if float(x).is_integer() else x
