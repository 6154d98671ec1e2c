"""Model computation options: bf16 activations over float32 parameters, per-block
rematerialisation, and attention through ``jax.nn.dot_product_attention``; each against the
default path (float32, no remat, reference attention) on the tiny model, and their config errors.

Tolerances (all relative to the largest |logit| of the float32 model, ``scale`` below):

* xla attention vs reference, float32: 1e-5. The same float32 operations in another order
  (scores multiplied by 1/sqrt(d) instead of divided by sqrt(d), masked scores at -0.7 x
  float32 max instead of -1e30: both exp to exactly 0); measured ~1e-6.
* remat vs none: 1e-6 for the loss and every gradient. Rematerialisation recomputes the same
  operations; measured bit-identical on the CPU, the bound allows another fusion order.
* bf16 activations vs float32 (same float32 parameters): 2^-5 = 3% for logits and entropies,
  2 x that for log-probs (|d logp| <= 2 max|d logit|). Every bf16 rounding has relative error
  up to 2^-9; a few of them per layer accumulate over the 2 blocks, measured ~0.6% of max|logit|.
  Gradients (float32, the master weights') agree to cosine > 0.999, measured 0.9999.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from critique_jax import config as config_lib
from critique_jax import validation
from critique_jax.models import KVCache, Transformer, model_config, positions_from_valid
from critique_jax.models.layer_scan import stack_layers, unstack_layers
from critique_jax.rl.policy_init import policy_model_config
from critique_jax.rl.train_step import SequenceBatch, make_optimizer, response_stats
from critique_jax.sampling import SamplerConfig, generate, pad_prompts, sample_keys

V = 97


def _model(family: str = "llama", **overrides) -> Transformer:
    """The tiny model with norm weights ~N(1, 0.3) and embeddings ~N(0, 0.2) (logits of a few
    units, far from uniform); the same parameters for every computation option."""
    model = Transformer(model_config("tiny", V, family=family, **overrides), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param) and path[-1] == "weight":
            p[...] = jnp.asarray(rng.normal(1.0, 0.3, p.shape), p.dtype)
    model.embed.embedding[...] = model.embed.embedding[...] * 10.0
    return model


def _batch(rng: np.random.Generator, lengths: list[int], t: int) -> tuple[jax.Array, jax.Array]:
    tokens = rng.integers(4, V, (len(lengths), t)).astype(np.int32)
    valid = np.zeros((len(lengths), t), bool)
    for b, n in enumerate(lengths):
        valid[b, t - n:] = True  # left padding
    return jnp.asarray(tokens), jnp.asarray(valid)


@nnx.jit
def _logits(model: Transformer, tokens: jax.Array, valid: jax.Array) -> jax.Array:
    hidden, _ = model(tokens, positions_from_valid(valid), valid)
    return model.logits(hidden)


def _max_diff(a: jax.Array, b: jax.Array, valid: jax.Array) -> float:
    return float(jnp.abs(jnp.where(valid[..., None] if a.ndim > valid.ndim else valid, a - b, 0.0)).max())


def _rl_like_loss(graphdef, params, batch: SequenceBatch):
    """A loss through the training path (teacher-forced forward, chunked log-probs/entropy)."""
    logp, entropy = response_stats(nnx.merge(graphdef, params), batch, chunk_size=8)
    m = batch.response_mask
    return (jnp.sum(jnp.where(m, -logp - 0.1 * entropy, 0.0)) / m.sum(), (logp, entropy))


def _seq_batch(rng: np.random.Generator) -> SequenceBatch:
    tokens, valid = _batch(rng, [12, 7, 10, 4], 12)  # prompts of 8 (left-padded) + 4 response slots
    return SequenceBatch(tokens=tokens, valid=valid, response_mask=valid[:, -4:])


def _loss_and_grads(model: Transformer, batch: SequenceBatch):
    """((loss, (logp, entropy)), grads) of :func:`_rl_like_loss`, jitted."""
    graphdef, params = nnx.split(model)
    return jax.jit(jax.value_and_grad(lambda p: _rl_like_loss(graphdef, p, batch), has_aux=True))(params)


@pytest.fixture(scope="module")
def batch() -> SequenceBatch:
    return _seq_batch(np.random.default_rng(0))


@pytest.fixture(scope="module")
def plain(batch):
    """The default model's (float32, no remat, reference attention) loss, stats and gradients."""
    return _loss_and_grads(_model(), batch)


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("overrides", [dict(), dict(sliding_window=4, query_pre_attn_scalar=24.0, qk_norm=True)],
                         ids=["gqa", "window-scalar-qknorm"])
def test_xla_attention_equals_reference_on_left_padded_batch(overrides, np_rng):
    tokens, valid = _batch(np_rng, [10, 6, 1], 10)
    want = _logits(_model(**overrides), tokens, valid)
    got = _logits(_model(attention="xla", **overrides), tokens, valid)
    assert _max_diff(got, want, valid) <= 1e-5 * float(jnp.abs(want).max())


def test_xla_attention_in_cached_decode(np_rng):
    """Prefill a left-padded prefix, decode one token at a time with attention='xla': the
    logits equal the reference attention's full (uncached) forward."""
    t, prefix = 12, 5
    tokens, valid = _batch(np_rng, [12, 8, 3, 10], t)
    want = _logits(_model(sliding_window=4), tokens, valid)
    model = _model(attention="xla", sliding_window=4)
    pos = positions_from_valid(valid)
    step = nnx.jit(lambda m, tok, p, v, c: m(tok, p, v, c))
    h, cache = step(model, tokens[:, :prefix], pos[:, :prefix], valid[:, :prefix], KVCache.zeros(model.cfg, 4, 16))
    outs = [model.logits(h)]
    for i in range(prefix, t):
        h, cache = step(model, tokens[:, i:i + 1], pos[:, i:i + 1], valid[:, i:i + 1], cache)
        outs.append(model.logits(h))
    assert _max_diff(jnp.concatenate(outs, axis=1), want, valid) <= 1e-5 * float(jnp.abs(want).max())


# ----------------------------------------------------------------------------- remat


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_gives_the_same_loss_and_gradients(remat, batch, plain):
    model = _model(remat=remat)
    graphdef, params = nnx.split(model)
    # the blocks are rematerialised (jax.checkpoint's primitive is "remat")
    assert "remat" in str(jax.make_jaxpr(lambda p: _rl_like_loss(graphdef, p, batch)[0])(params))
    (l0, _), g0 = plain
    (l1, _), g1 = _loss_and_grads(model, batch)
    assert abs(float(l1 - l0)) <= 1e-6 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert float(jnp.abs(a - b).max()) <= 1e-6 * max(float(jnp.abs(a).max()), 1e-12)


def _scanned(model: Transformer, **overrides) -> Transformer:
    """``model`` with ``scan_layers`` (and ``overrides``): its parameters, the layers stacked."""
    cfg = dataclasses.replace(model.cfg, scan_layers=True, **overrides)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(params, stack_layers(nnx.state(model).to_pure_dict()))
    return nnx.merge(graphdef, params)


@pytest.mark.parametrize("remat", ["none", "full"])
@pytest.mark.parametrize("overrides", [dict(), dict(sliding_window=3)])  # sliding: layers 0 and 2 local
def test_scanned_layers_give_the_same_loss_and_gradients(remat, overrides, batch):
    """The blocks as one lax.scan over the stacked parameters (3 layers, so the sliding / global
    alternation is scanned too): the loss and gradients of the Python loop within 1e-6, the
    gradients stacked as the parameters are."""
    plain = _model(n_layers=3, **overrides)
    (l0, _), g0 = _loss_and_grads(plain, batch)
    model = _scanned(plain, remat=remat)
    graphdef, params = nnx.split(model)
    assert params["layers"]["attn"]["q_proj"]["kernel"].shape[0] == 3
    assert "scan" in str(jax.make_jaxpr(lambda p: _rl_like_loss(graphdef, p, batch)[0])(params))
    (l1, _), g1 = _loss_and_grads(model, batch)
    assert abs(float(l1 - l0)) <= 1e-6 * abs(float(l0))
    g0 = stack_layers(g0.to_pure_dict())
    g1 = g1.to_pure_dict()
    assert jax.tree.structure(g0) == jax.tree.structure(g1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert float(jnp.abs(a - b).max()) <= 1e-6 * max(float(jnp.abs(a).max()), 1e-12)
    assert jax.tree.all(jax.tree.map(jnp.array_equal, unstack_layers(stack_layers(nnx.state(plain).to_pure_dict())),
                                     nnx.state(plain).to_pure_dict()))


def test_scanned_layers_in_cached_decode(np_rng):
    """The cached forward takes each layer's slice of the stacked parameters: prefill then one
    token at a time equals the loop model's uncached forward (sliding windows on layers 0, 2)."""
    t, prefix = 10, 4
    tokens, valid = _batch(np_rng, [10, 7, 3], t)
    plain = _model(n_layers=3, sliding_window=3)
    want = _logits(plain, tokens, valid)
    model = _scanned(plain)
    pos = positions_from_valid(valid)
    step = nnx.jit(lambda m, tok, p, v, c: m(tok, p, v, c))
    h, cache = step(model, tokens[:, :prefix], pos[:, :prefix], valid[:, :prefix], KVCache.zeros(model.cfg, 3, t))
    outs = [model.logits(h)]
    for i in range(prefix, t):
        h, cache = step(model, tokens[:, i:i + 1], pos[:, i:i + 1], valid[:, i:i + 1], cache)
        outs.append(model.logits(h))
    assert _max_diff(jnp.concatenate(outs, axis=1), want, valid) <= 1e-5 * float(jnp.abs(want).max())


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: q/k/v biases
def test_fused_projections_give_the_same_loss_and_gradients(family, batch):
    """q/k/v and gate/up as one matmul each (the default) vs one matmul per projection: the same
    dot products, summed in another blocking; measured ~1e-7 relative."""
    (l0, _), g0 = _loss_and_grads(_model(family, fuse_projections=False), batch)
    (l1, _), g1 = _loss_and_grads(_model(family), batch)
    assert abs(float(l1 - l0)) <= 1e-5 * abs(float(l0))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert float(jnp.abs(a - b).max()) <= 1e-5 * max(float(jnp.abs(a).max()), 1e-12)


# ----------------------------------------------------------------------------- precision


def test_bf16_activations_over_float32_params_agree_with_float32(batch, plain):
    """Logits, then the training path's log-probs, entropies and gradients (_model has float32
    parameters; the bf16 one computes with bf16 copies of them)."""
    tokens, valid = batch.tokens, batch.valid
    bf16 = _model(dtype="bfloat16")
    z32, z16 = _logits(_model(), tokens, valid), _logits(bf16, tokens, valid)
    scale = float(jnp.abs(z32).max())
    assert 2.0 < scale < 100.0  # logits far from uniform, so the comparison means something
    assert z16.dtype == jnp.float32 and _max_diff(z16, z32, valid) <= 2 ** -5 * scale

    (_, (lp32, ent32)), g32 = plain
    (_, (lp16, ent16)), g16 = _loss_and_grads(bf16, batch)
    m = batch.response_mask
    assert lp16.dtype == ent16.dtype == jnp.float32
    assert _max_diff(lp16, lp32, m) <= 2 * 2 ** -5 * scale
    assert _max_diff(ent16, ent32, m) <= 2 ** -5 * scale
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))  # master weights' gradients
    a, b = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (g32, g16))
    assert float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b))) > 0.999


def test_bf16_sampler_matches_bf16_teacher_forcing(np_rng):
    """The sampler with a bf16 KV cache: float32 log-probs/entropies that the training path
    (teacher forcing, bf16 activations) reproduces within bf16 rounding of the logits."""
    model = _model(dtype="bfloat16", max_seq_len=32)
    cfg = SamplerConfig(max_new_tokens=6, eos_ids=(3,), pad_id=0)
    pb = pad_prompts([list(np_rng.integers(4, V, n)) for n in (3, 7)], (8,), 0)
    r = generate(model, pb.tokens, pb.valid, sample_keys(0, [0, 1], 2), cfg, group_size=2, temperature=1.0)
    assert r.logp.dtype == r.entropy.dtype == jnp.float32
    tokens = jnp.concatenate([jnp.repeat(pb.tokens, 2, 0), r.tokens], 1)
    valid = jnp.concatenate([jnp.repeat(pb.valid, 2, 0), r.mask], 1)
    lp, ent = nnx.jit(response_stats)(model, SequenceBatch(tokens=tokens, valid=valid, response_mask=r.mask))
    scale = float(jnp.abs(_logits(model, tokens, valid)).max())
    assert _max_diff(r.logp, lp, r.mask) <= 2 * 2 ** -5 * scale
    assert _max_diff(r.entropy, ent, r.mask) <= 2 ** -5 * scale


def test_adam_first_moment_dtype():
    params = {"w": jnp.ones((3,), jnp.float32)}
    opt, _ = make_optimizer(1e-2, 0, 10, mu_dtype="bfloat16")
    state = opt.init(params)
    adam = state[1][0]
    assert adam.mu["w"].dtype == jnp.bfloat16 and adam.nu["w"].dtype == jnp.float32
    updates, _ = opt.update({"w": jnp.full((3,), 0.5)}, state, params)
    assert updates["w"].dtype == jnp.float32


# ----------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("key, value, match", [
    ("remat", "dots", r"config model\.remat='dots': expected one of \['none', 'full', 'dots_saveable'\]"),
    ("attention", "flash", r"config model\.attention='flash': expected one of \['reference', 'xla', 'cudnn'\]"),
    ("attention", "cudnn", r"config model\.attention='cudnn' needs a GPU"),
])
def test_bad_model_option_is_a_config_error(key, value, match):
    c = config_lib.default_config()
    c.model[key] = value
    with pytest.raises(ValueError, match=match):
        validation.validate(c, n_devices=1)


@pytest.mark.parametrize("bad", ["fp8", "float64"])
def test_bad_adam_mu_dtype_is_a_config_error(bad):
    c = config_lib.default_config()
    c.rl.adam_mu_dtype = bad
    with pytest.raises(ValueError, match=r"config rl\.adam_mu_dtype="):
        validation.validate(c, n_devices=1)


def test_model_options_reach_the_policy_and_errors_name_the_field():
    c = config_lib.default_config()
    c.model.preset, c.model.remat, c.model.attention = "tiny", "full", "xla"

    class Tok:
        vocab_size = V

    cfg = policy_model_config(c, Tok(), 64)
    assert (cfg.remat, cfg.attention, cfg.max_seq_len) == ("full", "xla", 64)
    with pytest.raises(ValueError, match="attention='xla' has no attention-score soft-capping"):
        model_config("tiny", V, family="gemma2", attention="xla")
    with pytest.raises(ValueError, match="attention='cudnn' needs dtype bfloat16 or float16"):
        model_config("tiny", V, attention="cudnn")
