"""Token log-probs and entropies vs float64 NumPy references written here from the formulas.

Errors are measured norm-wise: max|got - want| / max|want| (element-wise relative error is
meaningless for gradient entries near zero). float32 paths must be within 1e-5; inputs are
O(1)-scaled logits over a small vocabulary so that H and logp are O(1) and the bound is tight
but achievable.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.ops import chunked_logprobs_and_entropy, entropy_from_logits, logprobs_and_entropy, scale_logits
from critique_jax.parallel.mesh import batch_sharding, make_mesh, replicated

B, T, D, V = 4, 13, 24, 97


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def ref_stats(logits, targets, temp, softcap, w_logp, w_ent):
    """float64 (logp, H, dL/dlogits, dL/dtemp) for L = sum(w_logp*logp + w_ent*H).

    temp: per-token [...]. Derivatives: dlogp/dz_j = 1[j=t] - p_j, dH/dz_j = -p_j (z_j - sum p z),
    dz/dlogits = (1 - tanh^2(x/c)) / temp, dz/dtemp = -z / temp.
    """
    x = np.asarray(logits, np.float64)
    temp = np.asarray(temp, np.float64)[..., None]
    s = softcap * np.tanh(x / softcap) if softcap else x
    z = s / temp
    m = z.max(-1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(-1, keepdims=True))
    p = np.exp(z - lse)
    mean_z = (p * z).sum(-1, keepdims=True)
    onehot = np.arange(x.shape[-1]) == np.asarray(targets)[..., None]
    logp = (z - lse)[onehot].reshape(targets.shape)
    ent = (lse - mean_z)[..., 0]
    dz = w_logp[..., None] * (onehot - p) - w_ent[..., None] * p * (z - mean_z)
    dlogits = dz / temp * ((1 - np.tanh(x / softcap) ** 2) if softcap else 1.0)
    dtemp = (dz * -z / temp).sum(-1)
    return logp, ent, dlogits, dtemp


def make_inputs(rng, dtype=np.float32):
    hidden = rng.normal(size=(B, T, D)).astype(dtype)
    unembed = (rng.normal(size=(D, V)) * 2 / np.sqrt(D)).astype(dtype)  # logits std ~2
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    w_logp, w_ent = rng.normal(size=(2, B, T))
    return hidden, unembed, targets, w_logp, w_ent


def loss_fn(fn, w_logp, w_ent):
    def loss(*args):
        logp, ent = fn(*args)
        return jnp.sum(w_logp * logp + w_ent * ent)

    return loss


TEMPS = {"t1": 1.0, "scalar": 0.7, "row": np.array([0.5, 0.8, 1.3, 2.0], np.float32)}
CASES = [("t1", None), ("scalar", None), ("row", None), ("row", 4.0)]


def per_token_temp(name):
    return np.broadcast_to(np.reshape(TEMPS[name], (-1, 1) if name == "row" else ()), (B, T))


def temp_grad_ref(name, dtemp):
    return dtemp.sum(-1) if name == "row" else dtemp.sum()


@pytest.mark.parametrize("temp_name,softcap", CASES)
def test_logprobs_and_entropy_vs_reference(np_rng, temp_name, softcap):
    hidden, unembed, targets, w_logp, w_ent = make_inputs(np_rng)
    logits = np.einsum("btd,dv->btv", hidden.astype(np.float64), unembed).astype(np.float32)
    temp = TEMPS[temp_name]
    logp, ent, dlogits, dtemp = ref_stats(logits, targets, per_token_temp(temp_name), softcap, w_logp, w_ent)

    fn = lambda l, t: logprobs_and_entropy(l, targets, t, softcap=softcap)  # noqa: E731
    got_logp, got_ent = jax.jit(fn)(logits, temp)
    assert got_logp.dtype == got_ent.dtype == jnp.float32
    assert rel_err(got_logp, logp) <= 1e-5 and rel_err(got_ent, ent) <= 1e-5
    got_dl, got_dt = jax.jit(jax.grad(loss_fn(fn, w_logp, w_ent), argnums=(0, 1)))(logits, jnp.asarray(temp))
    assert rel_err(got_dl, dlogits) <= 1e-5
    assert rel_err(got_dt, temp_grad_ref(temp_name, dtemp)) <= 1e-5
    np.testing.assert_allclose(
        jax.jit(lambda l, t: entropy_from_logits(l, t, softcap=softcap))(logits, temp), ent, rtol=1e-5
    )


@pytest.mark.parametrize("temp_name,softcap", CASES)
def test_chunked_vs_reference(np_rng, temp_name, softcap):
    hidden, unembed, targets, w_logp, w_ent = make_inputs(np_rng)
    h64 = hidden.astype(np.float64)
    logits = np.einsum("btd,dv->btv", h64, unembed.astype(np.float64))
    temp = TEMPS[temp_name]
    logp, ent, dlogits, dtemp = ref_stats(logits, targets, per_token_temp(temp_name), softcap, w_logp, w_ent)
    dhidden = np.einsum("btv,dv->btd", dlogits, unembed)
    dunembed = np.einsum("btd,btv->dv", h64, dlogits)

    fn = lambda h, w, t: chunked_logprobs_and_entropy(h, w, targets, t, chunk_size=12, softcap=softcap)  # noqa: E731
    got_logp, got_ent = jax.jit(fn)(hidden, unembed, temp)
    assert rel_err(got_logp, logp) <= 1e-5 and rel_err(got_ent, ent) <= 1e-5
    grads = jax.jit(jax.grad(loss_fn(fn, w_logp, w_ent), argnums=(0, 1, 2)))(hidden, unembed, jnp.asarray(temp))
    assert rel_err(grads[0], dhidden) <= 1e-5
    assert rel_err(grads[1], dunembed) <= 1e-5
    assert rel_err(grads[2], temp_grad_ref(temp_name, dtemp)) <= 1e-5


def test_bf16_inputs(np_rng):
    """bf16 hidden/unembed/logits: the forward is exact up to float32 rounding (products of bf16
    values are exact in f32), so it meets 1e-5 against a reference on the bf16-rounded values;
    gradients w.r.t. bf16 inputs are bf16 (the chunked path also rounds dL/dlogits to bf16 before
    its matmuls): 1e-2."""
    hidden, unembed, targets, w_logp, w_ent = make_inputs(np_rng)
    h16, u16 = jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(unembed, jnp.bfloat16)
    h64, u64 = np.asarray(h16, np.float64), np.asarray(u16, np.float64)
    logits64 = np.einsum("btd,dv->btv", h64, u64)
    temp = TEMPS["row"]
    logp, ent, dlogits, _ = ref_stats(logits64, targets, per_token_temp("row"), 4.0, w_logp, w_ent)

    chunked = lambda h, w: chunked_logprobs_and_entropy(h, w, targets, temp, chunk_size=8, softcap=4.0)  # noqa: E731
    got_logp, got_ent = jax.jit(chunked)(h16, u16)
    assert got_logp.dtype == jnp.float32
    assert rel_err(got_logp, logp) <= 1e-5 and rel_err(got_ent, ent) <= 1e-5
    dh, du = jax.jit(jax.grad(loss_fn(chunked, w_logp, w_ent), argnums=(0, 1)))(h16, u16)
    assert dh.dtype == du.dtype == jnp.bfloat16
    assert rel_err(dh, np.einsum("btv,dv->btd", dlogits, u64)) <= 1e-2
    assert rel_err(du, np.einsum("btd,btv->dv", h64, dlogits)) <= 1e-2

    # logits given in bf16 (the rounded values are the reference's input)
    l16 = jnp.asarray(logits64, jnp.bfloat16)
    logp, ent, dlogits, _ = ref_stats(np.asarray(l16, np.float64), targets, per_token_temp("row"), 4.0, w_logp, w_ent)
    naive = lambda l: logprobs_and_entropy(l, targets, temp, softcap=4.0)  # noqa: E731
    got_logp, got_ent = jax.jit(naive)(l16)
    assert rel_err(got_logp, logp) <= 1e-5 and rel_err(got_ent, ent) <= 1e-5
    dl = jax.jit(jax.grad(loss_fn(naive, w_logp, w_ent)))(l16)
    assert dl.dtype == jnp.bfloat16 and rel_err(dl, dlogits) <= 1e-2


def test_large_peaked_logits_keep_precise_entropy(np_rng):
    """Logits ~ +-500 at temperature 0.5: entropy is tiny and must not be lost to cancellation."""
    logits = (np_rng.normal(size=(3, V)) * 100).astype(np.float32)
    logits[:, 0] = 500.0
    logits[:, 1] = 497.0  # second-best 3 logits (6 after temperature) below the best
    targets = np.array([0, 1, 5], np.int32)
    logp, ent, _, _ = ref_stats(logits, targets, np.full(3, 0.5), None, np.zeros(3), np.zeros(3))
    got_logp, got_ent = logprobs_and_entropy(logits, targets, 0.5)
    assert np.all(ent > 1e-3) and rel_err(got_ent, ent) <= 1e-5
    assert rel_err(got_logp, logp) <= 1e-5


@pytest.mark.parametrize("chunk_size", [1, 5, 9, 26, 1000])
def test_chunked_equals_unchunked_for_any_chunk_size(np_rng, chunk_size):
    """chunk_size // B positions per row per step: 1 (B > chunk_size), 1, 2, 6, 13 (all of T)."""
    hidden, unembed, targets, w_logp, w_ent = make_inputs(np_rng)
    temp = TEMPS["row"]

    def naive(h, w):
        return logprobs_and_entropy(jnp.einsum("btd,dv->btv", h, w), targets, temp, softcap=4.0)

    def chunked(h, w):
        return chunked_logprobs_and_entropy(h, w, targets, temp, chunk_size=chunk_size, softcap=4.0)

    for want, got in zip(jax.jit(naive)(hidden, unembed), jax.jit(chunked)(hidden, unembed)):
        assert got.shape == (B, T) and rel_err(got, want) <= 1e-6
    g_naive = jax.jit(jax.grad(loss_fn(naive, w_logp, w_ent), argnums=(0, 1)))(hidden, unembed)
    g_chunked = jax.jit(jax.grad(loss_fn(chunked, w_logp, w_ent), argnums=(0, 1)))(hidden, unembed)
    for want, got in zip(g_naive, g_chunked):
        assert rel_err(got, want) <= 1e-5


def test_chunked_memory_is_a_fraction_of_naive():
    """Qwen2 vocab, 8192 tokens, compile only: temp memory of the chunked path <= 1/4 of naive."""
    vocab, dim, b, t = 152064, 896, 8, 1024
    args = (
        jax.ShapeDtypeStruct((b, t, dim), jnp.bfloat16),
        jax.ShapeDtypeStruct((dim, vocab), jnp.bfloat16),
        jax.ShapeDtypeStruct((b, t), jnp.int32),
        jax.ShapeDtypeStruct((b,), jnp.float32),
    )

    def naive(h, w, tg, temp):
        return logprobs_and_entropy(jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32), tg, temp)

    def chunked(h, w, tg, temp):
        return chunked_logprobs_and_entropy(h, w, tg, temp, chunk_size=1024)

    def fwd_bwd(fn):
        return jax.grad(lambda *a: sum(jnp.sum(x) for x in fn(*a)), argnums=(0, 1))

    def temp_bytes(fn):
        return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = b * t * vocab * 4
    assert temp_bytes(naive) >= logits_bytes  # the baseline really materialises [B, T, V] f32
    assert temp_bytes(chunked) <= temp_bytes(naive) / 4
    assert temp_bytes(fwd_bwd(chunked)) <= temp_bytes(fwd_bwd(naive)) / 4


def test_sharded_equals_single_device(np_rng):
    mesh = make_mesh(data=-1)
    b = 8
    hidden = np_rng.normal(size=(b, T, D)).astype(np.float32)
    unembed = (np_rng.normal(size=(D, V)) * 2 / np.sqrt(D)).astype(np.float32)
    targets = np_rng.integers(0, V, size=(b, T)).astype(np.int32)
    temp = np_rng.uniform(0.5, 1.5, size=b).astype(np.float32)
    w_logp, w_ent = np_rng.normal(size=(2, b, T))

    def chunked(h, w, tg, t):
        return chunked_logprobs_and_entropy(h, w, tg, t, chunk_size=16, softcap=4.0)

    def naive(h, w, tg, t):
        return logprobs_and_entropy(jnp.einsum("btd,dv->btv", h, w), tg, t, softcap=4.0)

    sharded_args = (
        jax.device_put(hidden, batch_sharding(mesh, 3)),
        jax.device_put(unembed, replicated(mesh)),
        jax.device_put(targets, batch_sharding(mesh, 2)),
        jax.device_put(temp, batch_sharding(mesh, 1)),
    )
    one_device = jax.devices()[0]
    local_args = tuple(jax.device_put(a, one_device) for a in (hidden, unembed, targets, temp))
    for fn in (chunked, naive):
        grad_fn = jax.grad(loss_fn(fn, w_logp, w_ent), argnums=(0, 1, 3))
        want = jax.jit(fn)(*local_args), jax.jit(grad_fn)(*local_args)
        compiled = jax.jit(fn).lower(*sharded_args).compile()
        got = compiled(*sharded_args), jax.jit(grad_fn)(*sharded_args)
        assert got[0][0].sharding.is_equivalent_to(batch_sharding(mesh, 2), 2)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert rel_err(g, w) <= 1e-6
        # each device works on its own rows: the forward needs no communication
        assert not any(c in compiled.as_text() for c in ("all-gather", "all-reduce", "all-to-all"))


def test_out_of_range_targets_give_nan():
    logits = jnp.zeros((3, 5))
    logp, ent = logprobs_and_entropy(logits, jnp.array([-1, 5, 4]))
    assert np.isnan(logp[:2]).all() and np.isfinite(logp[2]) and np.allclose(ent, np.log(5))


def test_bad_arguments_are_named():
    logits = jnp.zeros((2, 3, 5))
    with pytest.raises(ValueError, match=r"temperature shape \(3,\)"):
        scale_logits(logits, jnp.ones(3))
    with pytest.raises(ValueError, match="softcap=0.0"):
        scale_logits(logits, softcap=0.0)
    with pytest.raises(ValueError, match=r"targets shape \(2,\)"):
        logprobs_and_entropy(logits, jnp.zeros(2, jnp.int32))
    hidden, targets = jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="chunk_size=0"):
        chunked_logprobs_and_entropy(hidden, jnp.zeros((4, 5)), targets, chunk_size=0)
    with pytest.raises(ValueError, match=r"unembed shape \(3, 5\)"):
        chunked_logprobs_and_entropy(hidden, jnp.zeros((3, 5)), targets)
