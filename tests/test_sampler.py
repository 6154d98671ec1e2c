"""Sampler: teacher-forcing consistency, greedy, truncation, determinism, sharding, no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from critique_jax.models import Transformer, model_config
from critique_jax.ops.token_stats import logprobs_and_entropy
from critique_jax.parallel.mesh import batch_sharding, make_mesh
from critique_jax.sampling import SamplerConfig, generate, pad_prompts, sample_keys
from critique_jax.sampling import sampler as sampler_lib

V, EOS, PAD = 61, 3, 0
BUCKETS = (8, 16)
CFG = SamplerConfig(max_new_tokens=12, eos_ids=(EOS,), pad_id=PAD, decode_phases=3)  # the decode in 3 phases


@pytest.fixture(scope="module")
def model() -> Transformer:
    m = Transformer(model_config("tiny", V, max_seq_len=64), rngs=nnx.Rngs(0))
    # Sharpen the (tied) output distribution so sampling is far from uniform.
    m.embed.embedding[...] = m.embed.embedding[...] * 40.0
    return m


def _prompts(rng, n, lo=2, hi=8):
    return pad_prompts([list(rng.integers(4, V, rng.integers(lo, hi + 1))) for _ in range(n)], BUCKETS, PAD)


def _teacher_forced(model, pb, rollout, group_size, temperature):
    """log-probs/entropies of the sampled responses by one full forward pass."""
    toks = np.concatenate([np.repeat(pb.tokens, group_size, 0), np.asarray(rollout.tokens)], 1)
    valid = np.concatenate([np.repeat(pb.valid, group_size, 0), np.asarray(rollout.mask)], 1)
    pos = np.maximum(np.cumsum(valid, 1) - 1, 0)
    hidden, _ = model(jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(valid))
    p = pb.tokens.shape[1]
    logits = model.logits(hidden[:, p - 1:-1])
    temp = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (toks.shape[0],))
    return logprobs_and_entropy(logits, jnp.asarray(rollout.tokens), temp[:, None]), logits


def test_logprobs_and_entropy_equal_teacher_forcing(model, np_rng):
    pb = _prompts(np_rng, 3)
    g = 4
    temp = jnp.asarray(np_rng.uniform(0.5, 1.5, 3 * g), jnp.float32)
    r = generate(model, pb.tokens, pb.valid, sample_keys(1, [0, 1, 2], g), CFG, group_size=g, temperature=temp)
    (lp, ent), _ = _teacher_forced(model, pb, r, g, temp)
    m = np.asarray(r.mask)
    assert m.sum() > 12
    np.testing.assert_allclose(np.where(m, r.logp, 0), np.where(m, lp, 0), atol=1e-4)
    np.testing.assert_allclose(np.where(m, r.entropy, 0), np.where(m, ent, 0), atol=1e-4)
    # Without truncation the sampling distribution is the policy distribution.
    np.testing.assert_allclose(r.sample_logp, r.logp, atol=1e-5)


def test_response_ends_at_first_eos(model, np_rng):
    pb = _prompts(np_rng, 4)
    r = generate(model, pb.tokens, pb.valid, sample_keys(2, range(4), 8), CFG, group_size=8, temperature=1.5)
    toks, mask = np.asarray(r.tokens), np.asarray(r.mask)
    for row_t, row_m, fin in zip(toks, mask, np.asarray(r.finished)):
        n = row_m.sum()
        assert row_m[:n].all() and not row_m[n:].any()  # a prefix
        assert (row_t[n:] == PAD).all()
        eos_at = np.flatnonzero(row_t[:n] == EOS)
        assert fin == (len(eos_at) > 0)
        if fin:
            assert eos_at[0] == n - 1  # the end token is the last masked token


def test_several_end_ids_and_a_nonzero_pad(model, np_rng):
    """A HF tokenizer's several end ids (Qwen: <|im_end|>, <|endoftext|>) each end a response;
    the pad need not be 0 (no pad token: the first end id)."""
    pb = _prompts(np_rng, 4)
    keys = sample_keys(2, range(4), 8)
    first = np.asarray(generate(model, pb.tokens, pb.valid, keys, CFG, group_size=8, temperature=1.5).tokens)[:, 0]
    ends = tuple(int(t) for t in np.unique(first)[:2])  # two tokens some responses start with
    cfg = SamplerConfig(max_new_tokens=12, eos_ids=ends, pad_id=ends[0])
    r = generate(model, pb.tokens, pb.valid, keys, cfg, group_size=8, temperature=1.5)
    toks, mask = np.asarray(r.tokens), np.asarray(r.mask)
    n = mask.sum(1)
    ended = [int(row[k - 1]) for row, k, fin in zip(toks, n, np.asarray(r.finished)) if fin]
    assert set(ended) == set(ends)  # each id ends some response
    for row, k in zip(toks, n):
        assert not np.isin(row[:k - 1], ends).any() and (row[k:] == ends[0]).all()


def test_greedy_equals_argmax_rollout(model, np_rng):
    pb = _prompts(np_rng, 2)
    r = generate(model, pb.tokens, pb.valid, sample_keys(0, [0, 1], 1), CFG, temperature=0.0)
    p, length = pb.tokens.shape[1], CFG.max_new_tokens
    # Fixed-width buffers (future slots invalid) so the full forward compiles once.
    toks = np.concatenate([pb.tokens, np.full((2, length), PAD, np.int32)], 1)
    valid = np.concatenate([pb.valid, np.zeros((2, length), bool)], 1)
    forward = nnx.jit(lambda m, tk, ps, vl: m.logits(m(tk, ps, vl)[0]))
    for t in range(length):
        pos = np.maximum(np.cumsum(valid, 1) - 1, 0)
        logits = forward(model, jnp.asarray(toks), jnp.asarray(pos), jnp.asarray(valid))
        nxt = np.asarray(jnp.argmax(logits[:, p + t - 1], -1))
        live = np.asarray(r.mask[:, t])
        np.testing.assert_array_equal(np.asarray(r.tokens[:, t])[live], nxt[live])
        toks[:, p + t] = nxt
        valid[:, p + t] = live
    assert float(jnp.abs(r.sample_logp).max()) == 0.0
    # temperature -> 0 samples the greedy tokens
    r_cold = generate(model, pb.tokens, pb.valid, sample_keys(5, [0, 1], 1), CFG, temperature=1e-6)
    np.testing.assert_array_equal(r_cold.tokens, r.tokens)


def test_top_k_top_p_tokens_lie_in_allowed_set(model, np_rng):
    pb = _prompts(np_rng, 4)
    g = 16
    n = 4 * g
    top_k = jnp.asarray(np.tile([0, 1, 3, 5], n // 4), jnp.int32)
    top_p = jnp.asarray(np.tile([0.3, 1.0, 0.9, 0.6], n // 4)[::-1].copy(), jnp.float32)
    r = generate(model, pb.tokens, pb.valid, sample_keys(3, range(4), g), CFG, group_size=g,
                 temperature=1.0, top_k=top_k, top_p=top_p)
    _, logits = _teacher_forced(model, pb, r, g, 1.0)
    logits = np.asarray(logits, np.float64)
    toks, mask = np.asarray(r.tokens), np.asarray(r.mask)
    k_np, p_np = np.asarray(top_k), np.asarray(top_p)
    checked = 0
    for i in range(n):
        for t in np.flatnonzero(mask[i]):
            z = logits[i, t]
            order = np.argsort(-z, kind="stable")
            k = k_np[i] if k_np[i] > 0 else V
            keep = order[:k]
            pr = np.exp(z[keep] - z[keep].max())
            pr /= pr.sum()
            before = np.cumsum(pr) - pr
            allowed = set(keep[(before < p_np[i]) | (np.arange(k) == 0)])
            assert toks[i, t] in allowed, (i, t)
            checked += 1
            # sample_logp is the log-prob under the renormalised truncated distribution
            zz = z[sorted(allowed)]
            ref = z[toks[i, t]] - np.log(np.exp(zz - zz.max()).sum()) - zz.max()
            assert abs(float(r.sample_logp[i, t]) - ref) < 1e-4
    assert checked > 200


def test_first_token_frequencies_follow_tempered_softmax(model):
    """Chi-square test: 4096 draws of the first response token vs softmax(logits / T)."""
    pb = pad_prompts([[5, 9, 11]], BUCKETS, PAD)
    g, temp = 4096, 4.0  # a high temperature spreads the mass over many tokens
    cfg1 = SamplerConfig(max_new_tokens=1, eos_ids=(EOS,), pad_id=PAD)
    r = generate(model, pb.tokens, pb.valid, sample_keys(7, [0], g), cfg1, group_size=g, temperature=temp)
    hidden, _ = model(jnp.asarray(pb.tokens), jnp.asarray(np.maximum(np.cumsum(pb.valid, 1) - 1, 0)), jnp.asarray(pb.valid))
    z = np.asarray(model.logits(hidden[0, -1]), np.float64) / temp
    p = np.exp(z - z.max())
    p /= p.sum()
    counts = np.bincount(np.asarray(r.tokens[:, 0]), minlength=V)
    expected = g * p
    big = expected >= 5  # pool the rare tokens into one cell
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    chi2 = ((obs - exp) ** 2 / np.maximum(exp, 1e-9)).sum()
    dof = len(obs) - 1
    assert dof >= 3
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # ~5 sigma


def test_samples_do_not_depend_on_batch_composition(model, np_rng):
    pb = _prompts(np_rng, 4, lo=5, hi=8)
    keys = sample_keys(11, [10, 11, 12, 13], 2)
    both = generate(model, pb.tokens, pb.valid, keys, CFG, group_size=2, temperature=1.0)
    alone = generate(model, pb.tokens[2:3], pb.valid[2:3], keys[4:6], CFG, group_size=2, temperature=1.0)
    np.testing.assert_array_equal(both.tokens[4:6], alone.tokens)
    np.testing.assert_allclose(both.logp[4:6], alone.logp, atol=1e-5)


def test_no_recompilation_across_knobs_and_contents(model, np_rng):
    graphdef, state = nnx.split(model)
    def run(seed):
        rng = np.random.default_rng(seed)
        pb = _prompts(rng, 4, lo=9, hi=16)  # always the 16 bucket
        return generate((graphdef, state), pb.tokens, pb.valid, sample_keys(seed, range(4), 2), CFG,
                        group_size=2, temperature=jnp.asarray(rng.uniform(0, 2, 8), jnp.float32),
                        top_p=float(rng.uniform(0.5, 1.0)), top_k=int(rng.integers(0, 10)))
    jax.block_until_ready(run(0))
    before = sampler_lib._generate._cache_size()
    for seed in range(1, 21):
        jax.block_until_ready(run(seed))
    assert sampler_lib._generate._cache_size() == before


@pytest.mark.parametrize("axes", [dict(data=4, fsdp=2), dict(data=2, fsdp=2, tensor=2)])
def test_sharded_mesh_equals_single_device(model, np_rng, axes):
    """Under the mesh (as the programs run it: activation constraints on), batch over data x fsdp
    and heads over tensor (the shared prompt cache and the samples' own cache split by key-value
    heads) give the single device's tokens, and its statistics up to float summation order."""
    pb = _prompts(np_rng, 8)
    keys = sample_keys(4, range(8), 2)
    temp = jnp.asarray(np_rng.uniform(0.5, 1.2, 16), jnp.float32)
    single = generate(model, pb.tokens, pb.valid, keys, CFG, group_size=2, temperature=temp, top_p=0.95)
    mesh = make_mesh(**axes)
    graphdef, state = nnx.split(model)
    put = lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x)))  # noqa: E731
    state_r = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    with jax.set_mesh(mesh):
        sharded = generate((graphdef, state_r), put(pb.tokens), put(pb.valid), put(keys), CFG, group_size=2,
                           temperature=put(temp), top_p=0.95, mesh=mesh)
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, single.tokens)
    np.testing.assert_allclose(sharded.logp, single.logp, atol=1e-5)
    np.testing.assert_allclose(sharded.entropy, single.entropy, atol=1e-5)


def test_decode_phases_change_nothing(model, np_rng):
    """The phased decode (a growing cache) gives the one-phase decode's tokens, and its statistics
    up to float summation order, with samples ending in different phases."""
    assert CFG.phase_ends() == (4, 8, 12)
    assert SamplerConfig(64, (EOS,), PAD).phase_ends() == (16, 32, 48, 64)  # the default: 16-token phases, <= 4
    assert SamplerConfig(10, (EOS,), PAD).phase_ends() == (10,)
    assert SamplerConfig(10, (EOS,), PAD, decode_phases=3).phase_ends() == (4, 7, 10)
    pb = _prompts(np_rng, 4)
    keys, temp = sample_keys(5, range(4), 4), 1.5
    toks = np.asarray(generate(model, pb.tokens, pb.valid, keys, CFG, group_size=4, temperature=temp).tokens)

    def lengths(end: int) -> np.ndarray:  # response lengths if ``end`` ended responses (earlier tokens unchanged)
        hit = toks == end
        return np.where(hit.any(1), hit.argmax(1) + 1, 12)

    def spread(n: np.ndarray) -> bool:  # some response ends in each phase
        return (n <= 4).any() and ((n > 4) & (n <= 8)).any() and (n > 8).any()

    end = next(t for t in range(4, V) if spread(lengths(t)))
    phased = generate(model, pb.tokens, pb.valid, keys, SamplerConfig(12, (end,), PAD, decode_phases=3),
                      group_size=4, temperature=temp)
    one = generate(model, pb.tokens, pb.valid, keys, SamplerConfig(12, (end,), PAD, decode_phases=1),
                   group_size=4, temperature=temp)
    np.testing.assert_array_equal(phased.lengths, lengths(end))
    for field in ("tokens", "mask", "finished"):
        np.testing.assert_array_equal(getattr(phased, field), getattr(one, field))
    for field in ("logp", "sample_logp", "entropy"):
        np.testing.assert_allclose(getattr(phased, field), getattr(one, field), atol=1e-5)  # float summation order


def test_bad_inputs_raise_clear_errors(model, np_rng):
    with pytest.raises(ValueError, match="longer than the largest prompt bucket 16"):
        pad_prompts([list(range(4, 24))], BUCKETS, PAD)
    pb = _prompts(np_rng, 2)
    keys = sample_keys(0, [0, 1], 2)
    with pytest.raises(ValueError, match=r"top_p=1.5 .*expected a value in \(0, 1\]"):
        generate(model, pb.tokens, pb.valid, keys, CFG, group_size=2, top_p=1.5)
    with pytest.raises(ValueError, match=r"top_p=0.0 "):
        generate(model, pb.tokens, pb.valid, keys, CFG, group_size=2, top_p=0.0)
    with pytest.raises(ValueError, match="2 prompts cannot be split over the mesh's 8 batch shards"):
        generate(model, pb.tokens, pb.valid, keys, CFG, group_size=2, mesh=make_mesh(data=8))
    with pytest.raises(ValueError, match=r"keys shape \(4,\): expected \(6,\)"):
        generate(model, pb.tokens, pb.valid, keys, CFG, group_size=3)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 64"):
        generate(model, pb.tokens, pb.valid, keys, SamplerConfig(60, (EOS,), PAD), group_size=2)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        SamplerConfig(0, (EOS,), PAD)
    with pytest.raises(ValueError, match=r"decode_phases=13: expected 0 \(automatic\) or 1..max_new_tokens \(12\)"):
        SamplerConfig(12, (EOS,), PAD, decode_phases=13)
