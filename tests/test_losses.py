"""Policy losses vs float64 NumPy references written here from the papers' formulas
(the docstrings of ``critique_jax/rl/config.py`` and ``losses.py`` cite the paper or the verl
function each loss follows).

The reference computes, per token, the loss value and its derivative d(loss_t)/d(logp_t) from
the formulas (stop-gradients spelled out by hand), then the aggregation weights, so it checks
values and gradients of ``compute_loss`` independently. Errors are measured norm-wise: the
scalar loss against the sum of the absolute aggregated terms, gradients against max|grad|.
Padding positions hold NaN: they must not leak into values or gradients.
"""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from critique_jax import rl
from critique_jax.parallel.mesh import batch_sharding, make_mesh
from critique_jax.rl.aggregation import part_weight

B, T = 12, 10
TOL = 1e-5


# ----------------------------------------------------------------------------- inputs


def make_batch(rng, b=B, t=T, *, full=False, min_len=1):
    """float64 arrays of a random batch with NaN padding: row lengths in [min_len, t] and row 1
    all-masked if min_len < 2; every token valid if ``full``."""
    lengths = np.full(b, t) if full else rng.integers(min_len, t + 1, size=b)
    if not full and min_len < 2:
        lengths[1] = 0
    mask = np.arange(t)[None, :] < lengths[:, None]
    old = np.minimum(rng.normal(-1.5, 0.8, (b, t)), -1e-3)
    jump = rng.normal(0, 0.3, (b, t)) * rng.choice([1.0, 4.0], (b, t), p=[0.85, 0.15])
    batch = {
        "logp": np.minimum(old + jump, -1e-3),
        "old_logp": old,
        "adv": rng.normal(0, 1, b),
        "mask": mask,
        "entropy": rng.uniform(0, 3, (b, t)),
        "ref_logp": old + rng.normal(0, 0.2, (b, t)),
        "is_refinement": rng.random(b) < 0.4,
    }
    for name in ("logp", "old_logp", "entropy", "ref_logp"):
        batch[name] = np.where(mask, batch[name], np.nan)
    return batch


def to_inputs(batch) -> rl.LossInputs:
    f32 = lambda name: jnp.asarray(batch[name], jnp.float32)  # noqa: E731
    return rl.LossInputs(
        logp=f32("logp"),
        old_logp=f32("old_logp"),
        advantages=f32("adv"),
        mask=jnp.asarray(batch["mask"]),
        entropy=f32("entropy"),
        ref_logp=f32("ref_logp"),
        is_refinement=jnp.asarray(batch["is_refinement"]),
    )


def as_f64(batch):
    """The float32-rounded batch in float64 (what the JAX side actually sees)."""
    return {k: np.asarray(v, np.float32).astype(np.float64) if v.dtype.kind == "f" else v
            for k, v in batch.items()}


# ----------------------------------------------------------------------------- reference


def ref_ppo(cfg, a, r):
    """PPO clip-higher + dual clip: (loss, d/dlogp, clipped, dual)."""
    pg1 = -a * r
    pg2 = -a * np.clip(r, 1 - cfg.clip_low, 1 + cfg.clip_high)
    clipped = pg2 > pg1
    loss = np.where(clipped, pg2, pg1)
    grad = np.where(clipped, 0.0, -a * r)  # the clipped branch is constant in logp
    dual = np.zeros_like(clipped)
    if cfg.dual_clip_c is not None:
        dual = (a < 0) & (loss > -a * cfg.dual_clip_c)
        loss = np.where(dual, -a * cfg.dual_clip_c, loss)
        grad = np.where(dual, 0.0, grad)
    return loss, grad, clipped, dual


def exact_floor(ratio, n) -> int:
    """floor(ratio * n) on the decimal value of ratio (Python floats give int(0.29 * 100) = 28)."""
    return int(Fraction(repr(ratio)) * n)


def ref_policy(cfg, x, selected=None):
    """Per-token (loss, dloss/dlogp, info) of the policy loss of ``cfg`` alone, float64."""
    valid = x["mask"]
    lp = np.where(valid, x["logp"], 0.0)
    old = np.where(valid, x["old_logp"], 0.0)
    a = np.where(valid, x["adv"][:, None], 0.0)
    lr = np.clip(lp - old, -20, 20)
    r = np.exp(lr)
    n = int(valid.sum())
    cov = np.zeros_like(lp)
    if n:
        cov = np.where(valid, (lp - lp[valid].mean()) * (a - a[valid].mean()), 0.0)
    info = {"cov": cov, "clipped": np.zeros_like(valid), "dual": np.zeros_like(valid),
            "selected": np.zeros_like(valid)}

    if cfg.name == "critique_grpo":
        # The base loss on the initial responses alone (its statistics over their tokens), then
        # the shaping on refinement tokens.
        refine = valid & x["is_refinement"][:, None]
        loss, grad, base_info = ref_policy(cfg.base, x | {"mask": valid & ~refine}, selected)
        p = np.exp(lp)
        w = np.minimum(r, cfg.importance_cap) if cfg.importance_correction else np.ones_like(p)
        shaped = refine
        if cfg.refinement_forking_rho is not None:  # the top-rho entropy quantile of refinement tokens
            h = x["entropy"]
            shaped = refine & (np.where(refine, h, -np.inf) >= np.quantile(h[refine], 1 - cfg.refinement_forking_rho))
        loss = np.where(shaped, -a * w * p / (p + cfg.gamma), np.where(refine, 0.0, loss))
        grad = np.where(shaped, -a * w * cfg.gamma * p / (p + cfg.gamma) ** 2, np.where(refine, 0.0, grad))
        return loss, grad, base_info | {"cov": cov, "refine": refine, "shaped": shaped}
    if cfg.name in ("ppo", "clip_cov"):
        loss, grad, info["clipped"], info["dual"] = ref_ppo(cfg, a, r)
    if cfg.name == "clip_cov":
        band = valid & ~info["clipped"] & ~info["dual"] & (cov > cfg.cov_lb) & (cov < cfg.cov_ub)
        k = max(1, exact_floor(cfg.ratio, n))
        assert selected is not None
        assert not np.any(selected & ~band), "Clip-Cov selected a token outside the band"
        assert selected.sum() == min(k, band.sum())
        loss, grad = np.where(selected, 0.0, loss), np.where(selected, 0.0, grad)
        info |= {"selected": selected, "band": band}
    if cfg.name == "kl_cov":
        k = max(1, exact_floor(cfg.ratio, n))
        order = np.argsort(-cov[valid], kind="stable")[:k]
        sel = np.zeros(valid.size, bool)
        sel[np.flatnonzero(valid.ravel())[order]] = True
        sel = sel.reshape(valid.shape)
        loss = -a * r + cfg.kl_coef * np.abs(lr) * sel
        grad = -a * r + cfg.kl_coef * np.sign(lr) * sel
        info["selected"] = sel
    if cfg.name == "gppo":
        lo, hi = 1 - cfg.clip_low, 1 + cfg.clip_high
        low, high = valid & (a < 0) & (r < lo), valid & (a > 0) & (r > hi)
        loss = np.where(low, -a * lo, np.where(high, -a * hi, -a * r))
        grad = np.where(low, -a * lo * cfg.beta_low, np.where(high, -a * hi * cfg.beta_high, -a * r))
        dual = (a < 0) & (loss > -a * cfg.dual_clip_c)
        loss, grad = np.where(dual, -a * cfg.dual_clip_c, loss), np.where(dual, 0.0, grad)
        info |= {"clipped": low | high, "dual": dual}
    return loss, grad, info


def ref_tokens(cfg, x, selected=None):
    """Per-token (loss, dloss/dlogp, keep, info) of one batch or shard, float64."""
    valid = x["mask"]
    loss, grad, info = ref_policy(cfg, x, selected)
    keep = valid
    if cfg.forking_rho is not None and valid.any():
        h = x["entropy"]
        top = np.where(valid, h, -np.inf) >= np.quantile(h[valid], 1 - cfg.forking_rho)
        keep = valid & (~top if cfg.forking_complement else top)
    return np.where(valid, loss, 0.0), np.where(valid, grad, 0.0), keep, info


def agg_weights(valid, mode, constant=None):
    lens = valid.sum(1)
    n_seq = max(int((lens > 0).sum()), 1)
    if mode == "token-mean":
        return valid / max(int(valid.sum()), 1)
    if mode == "seq-mean-token-sum":
        return valid / n_seq
    if mode == "seq-mean-token-mean":
        return valid / (n_seq * np.maximum(lens, 1)[:, None])
    return valid / (constant or valid.size)


def ref_objective(cfg, x, selected=None, shards=1):
    """float64 (loss, dloss/dlogp, scale, per-token info) of the whole objective."""
    rows = np.array_split(np.arange(x["mask"].shape[0]), shards)
    parts = [ref_tokens(cfg, {k: v[idx] for k, v in x.items()},
                        None if selected is None else selected[idx]) for idx in rows]
    loss_t, grad_t, keep = (np.concatenate([p[i] for p in parts]) for i in range(3))
    info = {k: np.concatenate([p[3][k] for p in parts]) for k in parts[0][3]}
    valid = x["mask"]
    w = agg_weights(valid, cfg.agg, cfg.agg_constant)
    # The policy term is normalised over the kept tokens (the forking paper's code) unless "all".
    kept_only = cfg.forking_rho is not None and cfg.forking_normalizer == "kept"
    w_pg = agg_weights(keep, cfg.agg, cfg.agg_constant) if kept_only else w
    terms = w_pg * loss_t * keep
    loss, grad, scale = terms.sum(), w_pg * grad_t * keep, np.abs(terms).sum()
    h = np.where(valid, x["entropy"], 0.0)
    if cfg.entropy_coef:
        loss -= cfg.entropy_coef * (w * h).sum()
        scale += abs(cfg.entropy_coef) * (w * h).sum()
    lp, ref = np.where(valid, x["logp"], 0.0), np.where(valid, x["ref_logp"], 0.0)
    if cfg.ref_kl_type == "k1":
        kl, dkl = lp - ref, np.ones_like(lp)
    else:  # verl low_var_kl: d = clip(ref - lp, +-20), value clipped to [-10, 10]
        d = ref - lp
        raw = np.exp(d) - d - 1
        kl = np.minimum(raw, 10.0)
        dkl = np.where(raw < 10.0, 1 - np.exp(d), 0.0)
        assert np.all(np.abs(d) < 20)
    info["ref_kl"] = (w * kl).sum()
    if cfg.ref_kl_coef:
        loss += cfg.ref_kl_coef * info["ref_kl"]
        grad = grad + cfg.ref_kl_coef * w * dkl
        scale += cfg.ref_kl_coef * np.abs(w * kl).sum()
    info["keep"] = keep
    return loss, grad, scale, info


# ----------------------------------------------------------------------------- helpers


def rel_err(got, want, scale=None) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.max(np.abs(want)) if scale is None else scale
    return float(np.max(np.abs(got - want)) / max(scale, 1e-30))


def value_grad_fn(cfg, mesh=None, with_terms=False):
    """(inputs, key) -> (loss, metrics, dloss/dlogp[, per-token terms])."""

    def f(inputs, key):
        def scalar(logp):
            return rl.compute_loss(cfg, inputs.replace(logp=logp), key, mesh=mesh)

        (loss, metrics), grad = jax.value_and_grad(scalar, has_aux=True)(inputs.logp)
        if with_terms:
            return loss, metrics, grad, rl.policy_token_terms(cfg, inputs, key, mesh=mesh)
        return loss, metrics, grad

    return f


def loss_and_grad(cfg, mesh=None, with_terms=False):
    return jax.jit(value_grad_fn(cfg, mesh, with_terms))


def token_terms(cfg, mesh=None):
    return jax.jit(lambda inputs, key: rl.policy_token_terms(cfg, inputs, key, mesh=mesh))


def selected_mask(terms) -> np.ndarray:
    return np.asarray(terms.stats["selected_frac"], bool)


CASES = {
    "ppo": ("ppo", dict(entropy_coef=0.01, ref_kl_coef=0.05)),
    "ppo_nodual_forking": ("ppo", dict(agg="seq-mean-token-mean", dual_clip_c=None, forking_rho=0.3)),
    "ppo_forking_bottom": ("ppo", dict(forking_rho=0.2, forking_complement=True)),
    "ppo_forking_all_tokens": ("ppo", dict(forking_rho=0.2, forking_normalizer="all")),
    "clip_cov": ("clip_cov", dict(agg="seq-mean-token-sum", ratio=0.05, cov_lb=0.05, cov_ub=2.0,
                                  forking_rho=0.5)),
    "clip_cov_k1": ("clip_cov", dict(ratio=2e-4, cov_lb=0.0, cov_ub=10.0)),
    "clip_cov_empty_band": ("clip_cov", dict(cov_lb=100.0, cov_ub=200.0)),
    "kl_cov": ("kl_cov", dict(agg="seq-mean-token-mean", ratio=0.1, ref_kl_coef=0.1, ref_kl_type="k1")),
    "kl_cov_k1": ("kl_cov", dict(ratio=2e-4)),
    "gppo": ("gppo", dict(agg="constant")),
    "gppo_betas": ("gppo", dict(beta_low=1.0, beta_high=0.5, agg="constant", agg_constant=37.0)),
    "critique_grpo": ("critique_grpo", dict(forking_rho=0.2)),
    "critique_grpo_refinement_forking": ("critique_grpo", dict(refinement_forking_rho=0.3)),
    "critique_grpo_is": ("critique_grpo", dict(importance_correction=True, importance_cap=1.1,
                                               agg="seq-mean-token-sum")),
    # Entropy control on the initial responses, shaping on the refinements.
    "critique_grpo_clip_cov": ("critique_grpo", dict(base=rl.ClipCovConfig(ratio=0.05, cov_lb=0.05, cov_ub=2.0),
                                                     entropy_coef=0.01)),
    "critique_grpo_kl_cov": ("critique_grpo", dict(base=rl.KLCovConfig(ratio=0.1), forking_rho=0.3)),
    "critique_grpo_gppo": ("critique_grpo", dict(base=rl.GPPOConfig(beta_low=0.5), agg="seq-mean-token-mean")),
}


def test_token_separable_is_false_exactly_where_batch_statistics_are_read():
    """What ``rl.micro_batches`` may split: no forking mask, no covariance top-k or band, no
    refinement entropy quantile, in the loss or its wrapped base loss."""
    separable = {case for case, (name, options) in CASES.items()
                 if rl.token_separable(rl.make_loss_config(name, **options))}
    assert separable == {"ppo", "gppo", "gppo_betas", "critique_grpo_is", "critique_grpo_gppo"}


@pytest.mark.parametrize("mode,constant", [("token-mean", None), ("seq-mean-token-sum", None),
                                           ("seq-mean-token-mean", None), ("constant", None), ("constant", 37.0)])
def test_part_weights_recombine_the_whole_batch_aggregate(mode, constant, np_rng):
    """Row blocks' aggregation weights (float64 reference ``agg_weights``) scaled by ``part_weight``
    are the whole batch's, so the weighted block aggregates sum to the batch's; rows without a
    valid token included."""
    valid = np_rng.random((12, 7)) < 0.6
    valid[[3, 4]] = False
    want = agg_weights(valid, mode, constant)
    for idx in (np.arange(j, 12, 4) for j in range(4)):
        w = float(part_weight(jnp.asarray(valid[idx]), jnp.asarray(valid), mode, constant))
        np.testing.assert_allclose(w * agg_weights(valid[idx], mode, constant), want[idx], rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------- value + gradient


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_match_numpy(case, np_rng):
    name, options = CASES[case]
    cfg = rl.make_loss_config(name, **options)
    batch = make_batch(np_rng)
    inputs, x = to_inputs(batch), as_f64(batch)
    key = jax.random.key(int(np_rng.integers(2**31)))
    loss, metrics, grad, terms = loss_and_grad(cfg, with_terms=True)(inputs, key)
    draws_selection = "clip_cov" in (name, getattr(cfg, "base", cfg).name)
    selected = selected_mask(terms) if draws_selection else None

    want, want_grad, scale, info = ref_objective(cfg, x, selected)
    assert rel_err(loss, want, scale) <= TOL
    assert rel_err(grad, want_grad) <= TOL
    assert np.all(np.isfinite(np.asarray(grad)))

    valid = x["mask"]
    n = valid.sum()
    cov = info["cov"][valid]
    checks = {
        "clipfrac": info["clipped"].sum() / n,
        "clipfrac_dual": info["dual"].sum() / n,
        "selected_frac": info["selected"].sum() / n,
        "entropy": x["entropy"][valid].mean(),
        "approx_kl": (x["old_logp"] - x["logp"])[valid].mean(),
        "forking_kept_frac": info["keep"].sum() / n,
        "ref_kl": info["ref_kl"],
        "cov_mean": cov.mean(),
        "cov_p50": np.quantile(cov, 0.5),
        "cov_p99": np.quantile(cov, 0.99),
        "cov_p99.9": np.quantile(cov, 0.999),
        "n_tokens": n,
    }
    for key_, value in checks.items():
        assert abs(float(metrics[key_]) - value) <= TOL * max(1.0, abs(value)), key_
    assert float(metrics["loss"]) == float(loss)
    if case == "kl_cov_k1":  # N * ratio < 1: exactly one token penalised
        assert info["selected"].sum() == 1
    if case == "clip_cov_k1":
        assert info["selected"].sum() == 1 <= info["band"].sum()
    if case == "clip_cov_empty_band":
        assert info["band"].sum() == 0 and float(metrics["selected_frac"]) == 0.0
    if name == "critique_grpo":
        refine = info["refine"]
        assert abs(float(metrics["refinement_frac"]) - refine.sum() / n) <= TOL
        p = np.exp(x["logp"][refine])
        assert abs(float(metrics["refinement_prob"]) - p.mean()) <= TOL
        assert abs(float(metrics["refinement_shaping"]) - (p / (p + cfg.gamma)).mean()) <= TOL
        assert abs(float(metrics["refinement_shaped_frac"]) - info["shaped"].sum() / refine.sum()) <= TOL
        if cfg.refinement_forking_rho is not None:
            assert 0 < info["shaped"].sum() < refine.sum()
        if cfg.base.name in ("clip_cov", "kl_cov"):  # the base selects among initial tokens only
            assert info["selected"].any() and not (info["selected"] & refine).any()


def test_empty_batch_is_zero_and_finite(np_rng):
    batch = make_batch(np_rng)
    batch["mask"][:] = False
    fns = {name: value_grad_fn(rl.make_loss_config(name, forking_rho=0.2, entropy_coef=0.01, ref_kl_coef=0.1))
           for name in rl.registered_losses()}
    out = jax.jit(lambda inputs, key: {name: f(inputs, key) for name, f in fns.items()})(
        to_inputs(batch), jax.random.key(0))
    for name, (loss, metrics, grad) in out.items():
        assert float(loss) == 0.0 and not np.any(np.asarray(grad)), name
        assert all(np.isfinite(float(v)) for v in metrics.values()), name


def test_string_name_uses_default_config(np_rng):
    inputs = to_inputs(make_batch(np_rng))
    both = jax.jit(lambda i: (rl.compute_loss("gppo", i)[0], rl.compute_loss(rl.GPPOConfig(), i)[0]))
    got, want = both(inputs)
    assert float(got) == float(want)


# ----------------------------------------------------------------------------- Clip-Cov selection


def band_batch(rng, n_band, n_clipped_band):
    """All-valid batch with logp == old_logp except for ``n_clipped_band`` of the ``n_band``
    highest-covariance tokens, whose old_logp is moved so that PPO clips them (the covariance
    depends on logp and A only, so it is unchanged). Returns (batch, cfg, band, clipped)."""
    b, t = 10, 10
    batch = make_batch(rng, b, t, full=True)
    batch["logp"] = rng.normal(-1.5, 0.8, (b, t))
    batch["old_logp"] = batch["logp"].copy()
    x = as_f64(batch)
    a = np.broadcast_to(x["adv"][:, None], (b, t))
    cov = (x["logp"] - x["logp"].mean()) * (a - a.mean())
    order = np.argsort(-cov.ravel())
    band = np.zeros(b * t, bool)
    band[order[:n_band]] = True
    band = band.reshape(b, t)
    lb = (cov.ravel()[order[n_band - 1]] + cov.ravel()[order[n_band]]) / 2
    clipped = np.zeros(b * t, bool)
    clipped[order[:n_band][rng.permutation(n_band)[:n_clipped_band]]] = True
    clipped = clipped.reshape(b, t)
    batch["old_logp"] = np.where(clipped, batch["logp"] - 0.5 * np.sign(a), batch["old_logp"])
    cfg = rl.ClipCovConfig(clip_low=0.2, clip_high=0.28, ratio=0.03, cov_lb=float(lb), cov_ub=1e6)
    return batch, cfg, band & ~clipped, clipped


def clip_cov_draws(cfg, inputs, keys):
    draw = lambda key: rl.policy_token_terms(cfg, inputs, key).stats["selected_frac"]  # noqa: E731
    return np.asarray(jax.jit(jax.vmap(draw))(keys))


def test_clip_cov_selects_exactly_k_uniformly_from_the_unclipped_band():
    # Fixed seeds: a statistical test must not fail at random (p-value threshold 1e-3).
    batch, cfg, band, clipped = band_batch(np.random.default_rng(0), n_band=30, n_clipped_band=10)
    inputs = to_inputs(batch)
    k = max(1, int(cfg.ratio * batch["mask"].sum()))  # 3 of 100 tokens
    assert k == 3 and band.sum() == 20
    draws = clip_cov_draws(cfg, inputs, jax.random.split(jax.random.key(7), 3000))
    _, _, _, info = ref_objective(cfg, as_f64(batch), draws[0])  # the reference agrees on the band
    np.testing.assert_array_equal(info["band"], band)
    assert np.all(draws.sum((1, 2)) == k), "not exactly k tokens detached"
    assert not np.any(draws & ~band), "a token outside the band (or PPO-clipped) was detached"
    assert not np.any(draws & clipped)
    # 3000 draws from C(20, 3) = 1140 subsets hit ~1058 distinct ones
    assert len({d.tobytes() for d in draws}) > 900, "selection does not vary with the key"
    counts = draws.sum(0)[band]
    assert scipy.stats.chisquare(counts).pvalue > 1e-3, counts


def test_clip_cov_takes_the_whole_band_when_smaller_than_k(np_rng):
    batch, cfg, band, _ = band_batch(np_rng, n_band=4, n_clipped_band=2)
    draws = clip_cov_draws(cfg, to_inputs(batch), jax.random.split(jax.random.key(1), 4))
    assert np.all(draws == band[None])


def test_clip_cov_needs_a_key(np_rng):
    with pytest.raises(ValueError, match="PRNG key"):
        rl.compute_loss("clip_cov", to_inputs(make_batch(np_rng)))


# ----------------------------------------------------------------------------- KL-Cov


def test_kl_cov_ties_go_to_the_lower_index(np_rng):
    b, t = 4, 10
    batch = make_batch(np_rng, b, t, full=True)
    batch["adv"] = np.array([1.0, 1.0, -3.0, 0.5])
    batch["logp"] = np.tile(np.array([-0.5, -3.0, -3.0, -2.0, -3.0, -1.0, -3.0, -3.0, -3.0, -1.0]), (b, 1))
    batch["old_logp"] = batch["logp"] - 0.1
    cfg = rl.KLCovConfig(ratio=0.1)  # k = 4 among 40 tokens; the top covariance value occurs 6 times
    terms = token_terms(cfg)(to_inputs(batch), None)
    cov = np.asarray(terms.cov)
    top = cov.max()
    assert (cov == top).sum() == 6
    want = np.zeros(b * t, bool)
    want[np.argsort(-cov.ravel(), kind="stable")[:4]] = True
    np.testing.assert_array_equal(selected_mask(terms), want.reshape(b, t))
    assert np.all(cov[selected_mask(terms)] == top)


def test_kl_cov_penalty_has_zero_gradient_at_ratio_one(np_rng):
    batch = make_batch(np_rng)
    batch["old_logp"] = batch["logp"].copy()
    cfg = rl.KLCovConfig(ratio=0.5, kl_coef=3.0)
    loss, metrics, grad = loss_and_grad(cfg)(to_inputs(batch), None)
    x = as_f64(batch)
    w = agg_weights(x["mask"], "token-mean")
    a = np.where(x["mask"], x["adv"][:, None], 0.0)
    assert float(metrics["selected_frac"]) == pytest.approx(0.5, abs=0.02)
    assert rel_err(grad, -a * w) <= 1e-6  # d(-A r)/dlogp = -A at r = 1; the penalty adds nothing
    assert rel_err(loss, (-a * w).sum(), np.abs(a * w).sum()) <= 1e-6


# ----------------------------------------------------------------------------- GPPO, Critique-GRPO


def test_gppo_forward_is_ppo_and_clipped_tokens_keep_gradient(np_rng):
    inputs = to_inputs(make_batch(np_rng))
    # GPPO's forward is clip-higher PPO: compare with PPO at the same clips (0.2 / 0.28).
    ppo, _, ppo_grad = loss_and_grad(rl.PPOConfig(clip_high=rl.GPPOConfig().clip_high))(inputs, None)
    gppo, metrics, gppo_grad = loss_and_grad(rl.GPPOConfig(beta_low=0.5))(inputs, None)
    assert abs(float(gppo) - float(ppo)) <= 1e-6 * max(1.0, abs(float(ppo)))
    clipped_ppo_zero = (np.asarray(ppo_grad) == 0) & np.asarray(inputs.mask)
    assert float(metrics["clipfrac"]) > 0
    assert np.count_nonzero(np.asarray(gppo_grad)[clipped_ppo_zero]) > 0


def test_critique_grpo_shaping_gradient(np_rng):
    batch = make_batch(np_rng)
    batch["is_refinement"][:] = True
    cfg = rl.CritiqueGRPOConfig(gamma=0.3)
    _, _, grad = loss_and_grad(cfg)(to_inputs(batch), None)
    x = as_f64(batch)
    valid = x["mask"]
    p = np.exp(x["logp"][valid])
    a = np.broadcast_to(x["adv"][:, None], valid.shape)[valid]
    dloss_dp = np.asarray(grad, np.float64)[valid] / p * valid.sum()  # dlogp = dp / p; token-mean
    np.testing.assert_allclose(dloss_dp / -a, cfg.gamma / (p + cfg.gamma) ** 2, rtol=1e-5)


def test_critique_grpo_needs_refinement_flags(np_rng):
    batch = to_inputs(make_batch(np_rng)).replace(is_refinement=None)
    with pytest.raises(ValueError, match="is_refinement"):
        rl.compute_loss("critique_grpo", batch)


# ----------------------------------------------------------------------------- forking mask


@pytest.mark.parametrize("rho", [0.2, 0.35, 1.0])
def test_forking_mask_keeps_top_rho(rho, np_rng):
    valid = np_rng.random((8, 16)) < 0.8
    h = np_rng.uniform(0, 4, (8, 16)).astype(np.float32)
    n = int(valid.sum())
    keep = np.asarray(rl.forking_mask(h, valid, rho))
    assert keep.sum() == 1 + exact_floor(rho, n - 1)
    np.testing.assert_array_equal(keep, valid & (h >= np.quantile(h[valid].astype(np.float64), 1 - rho)))
    tied = np.round(h)  # 5 distinct values: ties at the threshold are all kept
    keep = np.asarray(rl.forking_mask(tied, valid, rho))
    np.testing.assert_array_equal(keep, valid & (tied >= np.quantile(tied[valid], 1 - rho)))
    assert keep.sum() >= 1 + exact_floor(rho, n - 1)


# ----------------------------------------------------------------------------- sharding


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py sets 8 virtual CPU devices"
    return make_mesh(data=4, fsdp=2)


def shard(inputs, mesh):
    return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim)), inputs)


def test_global_scope_on_8_devices_equals_single_device(mesh, np_rng):
    inputs = to_inputs(make_batch(np_rng, 16, 8))
    extra = {"clip_cov": dict(ratio=0.05, cov_lb=0.0), "kl_cov": dict(ratio=0.05)}
    cfgs = {name: rl.make_loss_config(name, forking_rho=0.3, **extra.get(name, {}))
            for name in rl.registered_losses()}
    cfgs["critique_grpo_clip_cov"] = rl.CritiqueGRPOConfig(base=rl.ClipCovConfig(**extra["clip_cov"]), forking_rho=0.3)

    @jax.jit
    def all_losses(inputs, key):
        return {name: value_grad_fn(cfg)(inputs, key) for name, cfg in cfgs.items()}

    key = jax.random.key(3)
    single = all_losses(inputs, key)
    sharded = all_losses(shard(inputs, mesh), key)
    for name in cfgs:
        (l1, m1, g1), (l2, m2, g2) = single[name], sharded[name]
        assert abs(float(l1) - float(l2)) <= 1e-6 * max(1.0, abs(float(l1))), name
        assert rel_err(g2, g1) <= 1e-6, name
        for k in m1:
            assert abs(float(m1[k]) - float(m2[k])) <= 1e-6 * max(1.0, abs(float(m1[k]))), (name, k)
    assert float(single["clip_cov"][1]["selected_frac"]) > 0
    assert float(single["critique_grpo_clip_cov"][1]["selected_frac"]) > 0


@pytest.mark.parametrize("name, options", [
    ("kl_cov", dict(ratio=0.1, forking_rho=0.3)),
    ("ppo", dict(forking_rho=0.5, agg="seq-mean-token-mean")),
])
def test_per_shard_scope_matches_per_shard_numpy(name, options, mesh, np_rng):
    cfg = rl.make_loss_config(name, scope="per_shard", **options)
    # >= 2 tokens per row, so no shard has a constant advantage (all-tied covariance: which
    # tokens win the tie would be decided by rounding, differently in float32 and float64)
    batch = make_batch(np_rng, 16, 8, min_len=2)
    loss, metrics, grad = loss_and_grad(cfg, mesh)(shard(to_inputs(batch), mesh), None)
    want, want_grad, scale, info = ref_objective(cfg, as_f64(batch), shards=8)
    assert rel_err(loss, want, scale) <= TOL
    assert rel_err(grad, want_grad) <= TOL
    n = batch["mask"].sum()
    assert abs(float(metrics["selected_frac"]) - info["selected"].sum() / n) <= TOL
    assert abs(float(metrics["forking_kept_frac"]) - info["keep"].sum() / n) <= TOL
    global_want, _, _, _ = ref_objective(cfg, as_f64(batch), shards=1)
    assert abs(want - global_want) > 10 * TOL * scale  # the scope really changes the statistics


def test_per_shard_clip_cov_selects_k_per_shard(mesh, np_rng):
    cfg = rl.ClipCovConfig(ratio=0.1, cov_lb=-10.0, cov_ub=10.0, scope="per_shard")
    batch = make_batch(np_rng, 16, 8)
    terms = token_terms(cfg, mesh)(shard(to_inputs(batch), mesh), jax.random.key(5))
    selected = selected_mask(terms)
    x = as_f64(batch)
    for idx in np.array_split(np.arange(16), 8):
        part = {k: v[idx] for k, v in x.items()}
        ref_tokens(cfg, part, selected[idx])  # asserts: inside the shard's band, min(k, |band|) of them


def test_per_shard_needs_a_mesh(np_rng):
    cfg = rl.PPOConfig(scope="per_shard")
    with pytest.raises(ValueError, match="mesh"):
        rl.compute_loss(cfg, to_inputs(make_batch(np_rng)))


# ----------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("make, match", [
    (lambda: rl.make_loss_config("grpo_plus"),
     r"unknown policy loss 'grpo_plus'; registered losses: \['ppo', 'clip_cov', "),
    (lambda: rl.make_loss_config("ppo", clip_ratio=0.2), r"unknown option\(s\) \['clip_ratio'\]"),
    (lambda: rl.ClipCovConfig(ratio=0.0), r"ClipCovConfig.ratio=0.0: expected a number in \(0, 1\]"),
    (lambda: rl.ClipCovConfig(ratio=1.5), r"ratio=1.5"),
    (lambda: rl.KLCovConfig(ratio=-2e-3), r"KLCovConfig.ratio=-0.002"),
    (lambda: rl.PPOConfig(forking_rho=0.0), r"forking_rho=0.0"),
    (lambda: rl.PPOConfig(forking_rho=1.2), r"forking_rho=1.2"),
    (lambda: rl.PPOConfig(forking_complement=True), r"forking_complement=True needs forking_rho"),
    (lambda: rl.ClipCovConfig(cov_lb=5.0, cov_ub=5.0), r"cov_lb=5.0 >= cov_ub=5.0"),
    (lambda: rl.ClipCovConfig(cov_lb=6.0), r"cov_lb=6.0 >= cov_ub=5.0"),
    (lambda: rl.CritiqueGRPOConfig(gamma=0.0), r"gamma=0.0: expected a number in \(0, inf\]"),
    (lambda: rl.CritiqueGRPOConfig(gamma=-0.1), r"gamma=-0.1"),
    (lambda: rl.CritiqueGRPOConfig(importance_correction="yes"), r"importance_correction='yes'"),
    (lambda: rl.CritiqueGRPOConfig(base=rl.CritiqueGRPOConfig()), r"base=CritiqueGRPOConfig\(.*expected the config "
                                                                     r"of another registered loss"),
    (lambda: rl.CritiqueGRPOConfig(base=rl.ClipCovConfig(entropy_coef=0.01)),
     r"base \(clip_cov\) sets the shared term\(s\) \['entropy_coef'\]: set them on the critique_grpo config"),
    (lambda: rl.PPOConfig(agg="mean"), r"agg='mean': expected one of \['token-mean'"),
    (lambda: rl.PPOConfig(dual_clip_c=1.0), r"dual_clip_c=1.0"),
    (lambda: rl.PPOConfig(scope="micro"), r"scope='micro'"),
    (lambda: rl.PPOConfig(ref_kl_type="k2"), r"ref_kl_type='k2'"),
    (lambda: rl.GPPOConfig(beta_low=float("nan")), r"beta_low=nan: expected a finite number"),
])
def test_bad_config_raises_at_config_time(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_are_hashable_static_args():
    a, b = rl.make_loss_config("clip_cov", ratio=1e-3), rl.ClipCovConfig(ratio=1e-3)
    assert a == b and hash(a) == hash(b) and a != rl.PPOConfig()
    assert set(rl.registered_losses()) == {"ppo", "clip_cov", "kl_cov", "gppo", "critique_grpo"}
