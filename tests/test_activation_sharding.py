"""Activation and KV-cache sharding constraints (critique_jax.parallel.activations): where they
put arrays under a mesh, and that a (data x fsdp x tensor) update with them equals one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from critique_jax.models import Transformer, model_config
from critique_jax.models.kv_cache import KVCache
from critique_jax.parallel.activations import BATCH, HEADS, constrain
from critique_jax.parallel.mesh import batch_sharding, make_mesh
from critique_jax.parallel.sharding import param_shardings
from critique_jax.rl.losses import make_loss_config
from critique_jax.rl.train_step import SequenceBatch, TrainState, rl_update

from test_trainer import _random_batch


def _spec(x: jax.Array) -> tuple:
    """The partition spec of ``x`` padded with None to its rank (P() == P(None, None, ...))."""
    spec = tuple(x.sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def test_constrain_places_dims_and_leaves_undivided_ones_to_xla():
    x = jnp.ones((8, 3, 4))
    assert constrain(x, BATCH, None, HEADS) is x  # no mesh set: identity
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: constrain(a * 2, BATCH, None, HEADS))(x)
        assert _spec(y) == (BATCH, None, HEADS)
        # 3 rows do not divide 4 batch shards: that dimension is left to XLA, not an error
        z = jax.jit(lambda a: constrain(a * 2, BATCH, None, HEADS))(jnp.ones((3, 3, 4)))
        assert z.shape == (3, 3, 4) and _spec(z)[2] == HEADS
    with jax.set_mesh(make_mesh(data=1, fsdp=1, tensor=1, devices=jax.devices()[:1])):
        assert constrain(x, BATCH, None, HEADS) is x  # every axis of size 1: nothing to constrain


def test_prefill_cache_and_hidden_are_sharded_over_batch_and_heads():
    cfg = model_config("tiny", 64, n_layers=1, fuse_projections=False)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.ones((8, 5), jnp.int32)
    valid = jnp.ones((8, 5), bool)
    positions = jnp.broadcast_to(jnp.arange(5), (8, 5))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)

    @jax.jit
    def prefill(tokens, positions, valid):
        return model(tokens, positions, valid, KVCache.zeros(cfg, 8, 8))

    with jax.set_mesh(mesh):
        hidden, cache = prefill(tokens, positions, valid)
    assert _spec(hidden) == (BATCH, None, None)
    assert _spec(cache.k[0]) == (BATCH, HEADS, None, None)  # [B, kv, hd, S]
    assert _spec(cache.v[0]) == (BATCH, HEADS, None, None)  # [B, kv, S, hd]


@pytest.mark.parametrize("scan_layers,micro_batches", [(False, 1), (True, 2)])
def test_data_fsdp_tensor_update_with_constraints_equals_single_device(np_rng, scan_layers, micro_batches):
    """With ``scan_layers`` (2 layers stacked) the layer axis stays unsharded; with micro-batches
    each row block keeps the batch's sharding."""
    # Tensor parallelism needs unfused projections (roles.define turns them off for mesh.tensor > 1).
    cfg = model_config("tiny", 128, n_layers=1 + scan_layers, fuse_projections=False, scan_layers=scan_layers)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    optimizer = optax.sgd(0.5)  # see test_trainer: Adam amplifies zero-gradient float32 noise
    loss_cfg = make_loss_config("ppo", ref_kl_coef=0.01)
    arrays = _random_batch(np_rng, 16, 6, 10, 128)

    def run(params, batch, mesh):
        state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
        step = jax.jit(functools.partial(rl_update, graphdef, optimizer, loss_cfg, minibatches=2,
                                         micro_batches=micro_batches, mesh=mesh))
        return step(state, batch, jax.random.key(3))

    single_state, single_m = run(params, SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}), None)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    batch = SequenceBatch(**{k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()})
    with jax.set_mesh(mesh):
        mesh_state, mesh_m = run(jax.device_put(params, param_shardings(params, mesh)), batch, mesh)
    for k in single_m:
        np.testing.assert_allclose(mesh_m[k], single_m[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(single_state.params), jax.tree.leaves(mesh_state.params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    if scan_layers:
        q = mesh_state.params["layers"]["attn"]["q_proj"]["kernel"]
        assert q.shape[0] == 2 and _spec(q) == (None, "fsdp", "tensor")
