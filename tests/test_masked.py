"""Masked reductions and rank-based selection (critique_jax.ops.masked) vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax.ops.masked import (
    floor_fraction,
    floor_fraction_static,
    kth_largest,
    masked_mean,
    masked_order_statistics,
    masked_quantiles,
    token_covariance,
    top_k_mask,
    top_quantile_count,
)


@pytest.mark.parametrize(
    "n, ratio, want",
    [(10000, 2e-4, 2), (9999, 2e-4, 1), (100, 0.29, 29), (7, 0.3, 2), (65536, 2e-3, 131), (0, 0.5, 0),
     (2**30, 1e-5, 10737)],
)
def test_floor_fraction_is_exact(n, ratio, want):
    # float32 gives floor(2e-4 * 10000) = 1 and Python floats int(0.29 * 100) = 28.
    assert int(floor_fraction(jnp.int32(n), ratio)) == want
    assert floor_fraction_static(n, ratio) == want


def test_floor_fraction_rejects_bad_ratio():
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="expected a number in"):
            floor_fraction(jnp.int32(3), bad)


def test_masked_mean_and_covariance(np_rng):
    x, y = np_rng.normal(size=(2, 5, 7))
    valid = np_rng.random((5, 7)) < 0.6
    np.testing.assert_allclose(masked_mean(x, valid), x[valid].mean(), rtol=1e-6)
    want = np.where(valid, (x - x[valid].mean()) * (y - y[valid].mean()), 0)
    np.testing.assert_allclose(token_covariance(x, y, valid), want, rtol=1e-5, atol=1e-7)
    assert float(masked_mean(x, np.zeros_like(valid))) == 0.0


def test_masked_quantiles_match_numpy(np_rng):
    x = np_rng.normal(size=(6, 50)).astype(np.float32)
    valid = np_rng.random((6, 50)) < 0.7
    qs = (0.0, 0.5, 0.99, 0.999, 1.0)
    got = jax.jit(lambda x, v: masked_quantiles(x, v, qs))(x, valid)
    np.testing.assert_allclose(got, np.quantile(x[valid].astype(np.float64), qs), rtol=1e-6, atol=1e-6)
    one = np.zeros_like(valid)
    one[2, 3] = True
    np.testing.assert_allclose(masked_quantiles(x, one, qs), np.full(5, x[2, 3]), rtol=1e-6)
    np.testing.assert_array_equal(masked_quantiles(x, np.zeros_like(valid), qs), np.zeros(5))


@pytest.mark.parametrize("k_max", [8, 5000])  # lax.top_k path and sort path
def test_top_k_mask_breaks_ties_by_index(k_max):
    score = np.array([[1.0, 3.0, 3.0, 2.0], [3.0, 0.5, 3.0, 9.0]], np.float32)
    valid = np.array([[True, True, True, True], [True, True, True, False]])
    got = np.asarray(top_k_mask(score, valid, jnp.int32(3), k_max))
    # valid scores by row-major index: 3 at (0,1), (0,2), (1,0), (1,2); the 9 is invalid.
    want = np.zeros_like(valid)
    want[0, 1] = want[0, 2] = want[1, 0] = True
    np.testing.assert_array_equal(got, want)
    # k larger than the number of valid entries selects all of them
    np.testing.assert_array_equal(top_k_mask(score, valid, jnp.int32(8), 8), valid)


def test_order_statistics_are_exact(np_rng):
    special = [0.0, -0.0, 1e-30, -1e-30, 5.0, 5.0, -np.inf]
    x = np.concatenate([np_rng.normal(0, 3, 60), special]).astype(np.float32)
    valid = np.ones_like(x, bool)
    valid[-1] = False
    want = np.sort(x[valid])
    ranks = np.arange(len(want), dtype=np.int32)
    np.testing.assert_array_equal(jax.jit(masked_order_statistics)(x, valid, ranks), want)


@pytest.mark.parametrize("k_max", [40, 5000])  # lax.top_k path and bisection path
def test_kth_largest_and_quantile_count(k_max, np_rng):
    x = (np_rng.permutation(40).astype(np.float32) - 20).reshape(5, 8)
    valid = np_rng.random((5, 8)) < 0.7
    vals = np.sort(x[valid])[::-1]
    for k in (1, 3, len(vals)):
        assert float(kth_largest(x, valid, jnp.int32(k), k_max)) == vals[k - 1]
    assert float(kth_largest(x, valid, jnp.int32(len(vals) + 1), k_max)) == -np.inf
    for rho in (0.2, 0.3, 0.5, 1.0):
        n = int(valid.sum())
        keep = int((x[valid] >= np.quantile(x[valid], 1 - rho)).sum())
        assert int(top_quantile_count(jnp.int32(n), rho)) == keep


def test_covariance_of_a_constant_is_exactly_zero(np_rng):
    # Exact zeros matter: top-k over rounding noise would pick arbitrary tokens.
    x = np_rng.normal(-1.5, 0.5, (3, 7)).astype(np.float32)
    y = np.full((3, 7), 0.1234567, np.float32)
    valid = np_rng.random((3, 7)) < 0.8
    assert not np.any(np.asarray(token_covariance(x, y, valid)))
