"""Group advantage estimators vs float64 NumPy loops written from the formulas in
``critique_jax/rl/advantages.py`` (GRPO arXiv:2402.03300, Dr.GRPO arXiv:2503.20783, verl's functions).

Conventions checked (verl's): unbiased std, eps added to the std, a group with one valid
member keeps its raw reward; invalid samples get 0 and do not enter their group's statistics.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from critique_jax import rl
from critique_jax.parallel.mesh import batch_sharding, make_mesh

EPS = 1e-6


def ref_advantages(name, rewards, group_ids, valid):
    out = np.zeros(len(rewards))
    for i in np.flatnonzero(valid):
        members = np.flatnonzero(valid & (group_ids == group_ids[i]))
        r = rewards[members]
        if len(r) == 1:
            out[i] = rewards[i] / (1 + EPS) if name == "grpo" else rewards[i]
        elif name == "grpo":
            out[i] = (rewards[i] - r.mean()) / (r.std(ddof=1) + EPS)
        elif name == "drgrpo":
            out[i] = rewards[i] - r.mean()
        else:  # rloo: baseline = mean of the other members
            others = [rewards[j] for j in members if j != i]
            out[i] = rewards[i] - np.mean(others)
    return out


def make_groups(rng, b=24):
    """Unsorted, arbitrary group ids of ragged sizes, a singleton group, masked samples."""
    ids = rng.choice(np.array([17, 3, 99, -5, 40]), size=b)
    ids[0] = 1234  # a singleton
    valid = rng.random(b) < 0.85
    valid[0] = True
    ids[1:3] = 555  # a group with only invalid members
    valid[1:3] = False
    binary = rng.random(b) < 0.5
    rewards = np.where(binary, (rng.random(b) < 0.5).astype(float), rng.normal(0, 2, b))
    return rewards.astype(np.float32), ids.astype(np.int32), valid


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_advantages_match_numpy(name, np_rng):
    rewards, ids, valid = make_groups(np_rng)
    got = jax.jit(lambda r, g, v: rl.compute_advantages(name, r, g, v))(rewards, ids, valid)
    want = ref_advantages(name, rewards.astype(np.float64), ids, valid)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert np.all(np.asarray(got)[~valid] == 0)


def test_constant_group_and_no_mask():
    rewards = np.array([1, 1, 1, 1, 0, 1, 0, 1], np.float32)
    ids = np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    np.testing.assert_array_equal(rl.grpo_advantages(rewards, ids)[:4], np.zeros(4))  # all correct: no signal
    want = ref_advantages("grpo", rewards.astype(np.float64), ids, np.ones(8, bool))
    np.testing.assert_allclose(rl.grpo_advantages(rewards, ids), want, rtol=1e-5)
    # RLOO = n / (n - 1) x Dr.GRPO within a full group
    drgrpo = np.asarray(rl.drgrpo_advantages(rewards, ids))
    np.testing.assert_allclose(rl.rloo_advantages(rewards, ids), 4 / 3 * drgrpo, rtol=1e-6)


def test_sharded_batch_gives_the_same_advantages(np_rng):
    mesh = make_mesh(data=4, fsdp=2)
    rewards, ids, valid = make_groups(np_rng, b=32)
    f = jax.jit(lambda r, g, v: rl.compute_advantages("grpo", r, g, v))
    put = lambda x: jax.device_put(jnp.asarray(x), batch_sharding(mesh, 1))  # noqa: E731
    want = f(rewards, ids, valid)
    np.testing.assert_allclose(f(put(rewards), put(ids), put(valid)), want, rtol=1e-6, atol=1e-7)


def test_bad_estimator_and_shapes():
    msg = r"unknown advantage estimator 'ppo'; expected one of \['grpo', 'drgrpo', 'rloo'\]"
    with pytest.raises(ValueError, match=msg):
        rl.compute_advantages("ppo", jnp.zeros(4), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"expected two \[B\] arrays"):
        rl.grpo_advantages(jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"valid \(3,\)"):
        rl.grpo_advantages(jnp.zeros(4), jnp.zeros(4, jnp.int32), jnp.ones(3, bool))
