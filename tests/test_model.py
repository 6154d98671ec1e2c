"""Transformer: float64 NumPy reference, KV-cache consistency, padding, shapes, param counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from critique_jax.models import (FAMILIES, SIZES, KVCache, Transformer, model_config, param_count,
                                 positions_from_valid)

V = 97


def _model(family: str, **overrides) -> Transformer:
    if family == "gemma2":
        overrides.setdefault("sliding_window", 4)  # shorter than the test sequences
    cfg = model_config("tiny", V, family=family, **overrides)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    # Non-trivial norm weights and biases so every switch matters in the comparisons.
    rng = np.random.default_rng(1)
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param) and (path[-1] in ("weight", "bias")):
            p[...] = jnp.asarray(rng.normal(0, 0.3, p.shape), p.dtype) + (0.0 if cfg.norm_plus_one or path[-1] == "bias" else 1.0)
    return model


def _batch(rng: np.random.Generator, lengths: list[int], t: int):
    tokens = rng.integers(4, V, (len(lengths), t)).astype(np.int32)
    valid = np.zeros((len(lengths), t), bool)
    for b, n in enumerate(lengths):
        valid[b, t - n:] = True  # left padding
    return jnp.asarray(tokens), jnp.asarray(valid)


def _numpy_forward(model: Transformer, tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Independent float64 reference of the whole forward pass -> logits [B, T, V]."""
    cfg = model.cfg
    f = lambda a: np.asarray(a[...], np.float64)  # noqa: E731
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0)

    def norm(x, w):
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)
        return y * ((1 + f(w)) if cfg.norm_plus_one else f(w))

    def lin(x, layer):
        y = x @ f(layer.kernel)
        return y + f(layer.bias) if layer.bias is not None else y

    def rope(x):  # [B, T, H, D]
        half = x.shape[-1] // 2
        inv = cfg.rope_theta ** (-np.arange(half) / half)
        ang = pos[..., None, None] * inv
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang), x2 * np.cos(ang) + x1 * np.sin(ang)], -1)

    b, t = tokens.shape
    emb = f(model.embed.embedding)
    x = emb[tokens] * (np.sqrt(cfg.d_model) if cfg.embed_scale else 1.0)
    causal = np.tril(np.ones((t, t), bool))
    for i, blk in enumerate(model.layers):
        h = norm(x, blk.input_norm.weight)
        a = blk.attn
        q = lin(h, a.q_proj).reshape(b, t, cfg.n_heads, cfg.head_dim)
        k = lin(h, a.k_proj).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = norm(q, a.q_norm.weight), norm(k, a.k_norm.weight)
        q, k = rope(q), rope(k)
        v = lin(h, a.v_proj).reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
        rep = cfg.n_heads // cfg.n_kv_heads
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
        s = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(cfg.query_pre_attn_scalar or cfg.head_dim)
        if cfg.attn_logit_softcap:
            s = cfg.attn_logit_softcap * np.tanh(s / cfg.attn_logit_softcap)
        allowed = causal[None, None] & valid[:, None, None, :]
        if cfg.sliding_window and i % 2 == 0:
            allowed = allowed & ~np.tril(np.ones((t, t), bool), -cfg.sliding_window)[None, None]
        s = np.where(allowed, s, -1e300)  # padding query rows: finite garbage, ignored
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p = p / p.sum(-1, keepdims=True)
        o = np.einsum("bhts,bshd->bthd", p, v).reshape(b, t, -1)
        o = lin(o, a.o_proj)
        x = x + (norm(o, blk.attn_out_norm.weight) if cfg.sandwich_norms else o)
        h = norm(x, blk.post_attn_norm.weight)
        g = lin(h, blk.mlp.gate_proj)
        if cfg.mlp == "swiglu":
            act = g / (1 + np.exp(-g))
        else:
            act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        m = lin(act * lin(h, blk.mlp.up_proj), blk.mlp.down_proj)
        x = x + (norm(m, blk.mlp_out_norm.weight) if cfg.sandwich_norms else m)
    h = norm(x, model.final_norm.weight)
    w = emb.T if model.lm_head is None else f(model.lm_head.kernel)
    z = h @ w
    if cfg.final_logit_softcap:
        z = cfg.final_logit_softcap * np.tanh(z / cfg.final_logit_softcap)
    return z


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forward_matches_float64_numpy(family, np_rng):
    model = _model(family, qkv_bias=True) if family != "qwen2" else _model(family)
    tokens, valid = _batch(np_rng, [9, 5, 1], 9)
    hidden, _ = model(tokens, positions_from_valid(valid), valid)
    got = np.asarray(model.logits(hidden), np.float64)
    want = _numpy_forward(model, np.asarray(tokens), np.asarray(valid))
    m = np.asarray(valid)[..., None]
    err = np.abs(np.where(m, got - want, 0)).max() / np.abs(want).max()
    assert err < 1e-5, err


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kv_cache_decode_equals_teacher_forcing(family, np_rng):
    """Prefill a prefix, then decode one token at a time: logits equal the full forward."""
    model = _model(family)
    t, prefix = 12, 5
    tokens, valid = _batch(np_rng, [12, 8, 3, 10], t)
    pos = positions_from_valid(valid)
    hidden, _ = model(tokens, pos, valid)
    full = model.logits(hidden)

    step = nnx.jit(lambda m, tok, p, v, c: m(tok, p, v, c))
    cache = KVCache.zeros(model.cfg, tokens.shape[0], 16)
    h, cache = step(model, tokens[:, :prefix], pos[:, :prefix], valid[:, :prefix], cache)
    outs = [model.logits(h)]
    for i in range(prefix, t):
        h, cache = step(model, tokens[:, i:i + 1], pos[:, i:i + 1], valid[:, i:i + 1], cache)
        outs.append(model.logits(h))
    inc = jnp.concatenate(outs, axis=1)
    assert int(cache.end) == t
    diff = jnp.where(valid[..., None], inc - full, 0.0)
    assert float(jnp.abs(diff).max()) <= 1e-4


def test_left_padding_does_not_change_outputs(np_rng):
    model = _model("llama")
    tokens, valid = _batch(np_rng, [4, 7], 7)
    hidden, _ = model(tokens, positions_from_valid(valid), valid)
    alone = tokens[0:1, 3:]
    h_alone, _ = model(alone, jnp.arange(4)[None], jnp.ones((1, 4), bool))
    np.testing.assert_allclose(hidden[0, 3:], h_alone[0], atol=1e-5)


@pytest.mark.parametrize("family,attention", [("qwen2", "reference"), ("gemma2", "reference"), ("llama", "xla")])
def test_a_shared_prefix_equals_teacher_forcing(family, attention, np_rng):
    """G = 3 samples continue each of 2 left-padded prompts from one copy of the prompt's keys and
    values (``KVCache.shared``): one token per call (the float32 decode path; ``xla``: the general
    one) then three at once (the general path); logits equal the full forward of prompt +
    continuation (Gemma 2: with sliding windows shorter than the sequences)."""
    model = _model(family, attention=attention)
    g, p, new = 3, 6, 5
    prompt, pvalid = _batch(np_rng, [6, 3], p)
    cont = jnp.asarray(np_rng.integers(4, V, (2 * g, new)), jnp.int32)
    tokens = jnp.concatenate([jnp.repeat(prompt, g, 0), cont], 1)
    valid = jnp.concatenate([jnp.repeat(pvalid, g, 0), jnp.ones((2 * g, new), bool)], 1)
    pos = positions_from_valid(valid)
    full = model.logits(model(tokens, pos, valid)[0])[:, p:]
    _, prompt_cache = model(prompt, pos[::g, :p], pvalid, KVCache.zeros(model.cfg, 2, p))
    cache = prompt_cache.shared(model.cfg, g, 8)
    assert cache.k[0].shape[0] == 2 * g and cache.prefix.k[0].shape[0] == 2
    outs = []
    for i in range(2):
        h, cache = model(cont[:, i:i + 1], pos[:, p + i:p + i + 1], valid[:, p + i:p + i + 1], cache)
        outs.append(model.logits(h))
    h, cache = model(cont[:, 2:], pos[:, p + 2:], valid[:, p + 2:], cache)
    outs.append(model.logits(h))
    assert int(cache.end) == new and cache.prefix is not None
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shapes_and_dtypes(dtype):
    model = Transformer(model_config("tiny", V, dtype=dtype), rngs=nnx.Rngs(0))
    tokens = jnp.zeros((2, 5), jnp.int32)
    valid = jnp.ones((2, 5), bool)
    hidden, cache = model(tokens, positions_from_valid(valid), valid)
    assert cache is None
    assert hidden.shape == (2, 5, 64) and hidden.dtype == jnp.dtype(dtype)
    logits = model.logits(hidden)
    assert logits.shape == (2, 5, V) and logits.dtype == jnp.float32
    assert model.embed.embedding[...].dtype == jnp.float32  # params stay float32
    assert model.unembed().shape == (64, V)


@pytest.mark.parametrize("preset", sorted(SIZES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_param_count_formula(preset, family):
    cfg = model_config(preset, 512, family=family)
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == param_count(cfg)


def test_preset_sizes():
    assert param_count(model_config("tiny", 512)) < 1_000_000
    assert 500_000 <= param_count(model_config("mini", 512)) <= 1_500_000
    assert 5_000_000 <= param_count(model_config("small", 512)) <= 20_000_000


def test_bad_config_errors():
    with pytest.raises(KeyError, match="valid presets: mini, small, tiny"):
        model_config("huge", V)
    with pytest.raises(KeyError, match="valid families: gemma, gemma2, llama, qwen2, qwen3"):
        model_config("tiny", V, family="gpt2")
    with pytest.raises(KeyError, match="unknown ModelConfig field"):
        model_config("tiny", V, n_layer=3)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        model_config("tiny", V, n_kv_heads=3)
    with pytest.raises(ValueError, match="dtype='fp8'"):
        model_config("tiny", V, dtype="fp8")
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        KVCache.zeros(model_config("tiny", V), 1, 10_000)


def test_model_flops_match_xla_cost_analysis():
    """forward_flops counts the matmuls XLA compiles (the uncached forward computes every [T, T]
    score, so context = T here) to within the elementwise work it leaves out; decode bytes and the
    sliding window by hand."""
    from critique_jax.models import flops

    cfg = model_config("tiny", 512, d_model=128, d_ff=512, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32)
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    b, t = 2, 64

    def logits(state, tokens, positions, valid):
        model = nnx.merge(graphdef, state)
        return model(tokens, positions, valid)[0] @ model.unembed()

    tokens = jnp.zeros((b, t), jnp.int32)
    args = (state, tokens, jnp.broadcast_to(jnp.arange(t), (b, t)), jnp.ones((b, t), bool))
    cost = jax.jit(logits).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    expected = flops.forward_flops(cfg, b * t, context=t)
    assert expected == b * t * (2 * (2 * (128 * 128 * 2 + 2 * 128 * 64 + 3 * 128 * 512) + 128 * 512) + 2 * 4 * 128 * t)
    assert expected <= cost["flops"] <= 1.05 * expected
    assert flops.decode_step_bytes(cfg, batch=3, context=10, param_bytes=2, cache_bytes=1) == \
        2 * flops.matmul_params(cfg) + 3 * 2 * (2 * 2 * 32 * 10)
    # A 6-position prefix held once for the 3 sequences: 3 x 4 own + 1 x 6 shared positions per layer.
    assert flops.decode_step_bytes(cfg, batch=3, context=10, param_bytes=2, cache_bytes=1, shared=(1, 6)) == \
        2 * flops.matmul_params(cfg) + 2 * (2 * 2 * 32) * (3 * 4 + 6)
    windowed = model_config("tiny", 512, family="gemma2", sliding_window=4)
    full = model_config("tiny", 512, family="gemma2", sliding_window=None)
    layers = windowed.n_layers
    attn = 4 * windowed.n_heads * windowed.head_dim
    saved = flops.forward_flops(full, 1, 10) - flops.forward_flops(windowed, 1, 10)
    assert saved == attn * (10 - 4) * ((layers + 1) // 2)  # the even layers attend to 4 keys, not 10
