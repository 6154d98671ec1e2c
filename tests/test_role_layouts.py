"""Each model role's parameter layout on the one mesh (``mesh.reference``, ``mesh.critic``):
the shardings, their per-device memory, the errors, and the same numbers in every layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from critique_jax.analysis.state_memory import tree_bytes
from critique_jax.models import Transformer, model_config
from critique_jax.parallel.mesh import batch_sharding, make_mesh
from critique_jax.parallel.sharding import LAYOUTS, param_shardings
from critique_jax.rl.train_step import SequenceBatch, token_stats_fn


def test_layouts_shard_the_model_width_over_their_axes():
    cfg = model_config("tiny", 128)
    abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    sh = {layout: param_shardings(abstract, mesh, layout) for layout in LAYOUTS}
    assert sh["train"]["embed"]["embedding"].value.spec == P("tensor", "fsdp")
    assert sh["sharded"]["embed"]["embedding"].value.spec == P("tensor", ("data", "fsdp"))
    assert sh["replicated"]["embed"]["embedding"].value.spec == P()
    size = {layout: tree_bytes(abstract, s) for layout, s in sh.items()}
    total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    assert size["replicated"] == total
    # the projections and embeddings (all but the norms) over 4 devices in train, over 8 sharded
    assert size["train"] < total / 3 and size["sharded"] < size["train"] * 0.6
    with pytest.raises(ValueError, match=r"expected one of \['train', 'replicated', 'sharded'\]"):
        param_shardings(abstract, mesh, "zero3")


def test_a_layout_the_mesh_cannot_take_is_a_one_line_error():
    cfg = model_config("tiny", 128, d_model=36)  # 36 splits over 4, not 8
    abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]
    mesh = make_mesh(data=2, fsdp=4)
    param_shardings(abstract, mesh, "train")
    with pytest.raises(ValueError, match=r"parameter embed/embedding of shape \(128, 36\) \(sharded layout\): "
                                         r"dimension 36 is not divisible by mesh axis \('data', 'fsdp'\) of size 8"):
        param_shardings(abstract, mesh, "sharded")


def test_the_reference_gives_the_same_log_probs_in_every_layout(np_rng):
    cfg = model_config("tiny", 128, n_layers=1)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    n, length = 16, 20
    tokens = np_rng.integers(4, 128, (n, length)).astype(np.int32)
    valid = np.ones((n, length), bool)
    valid[:, :3] = False  # left padding
    response = np.zeros((n, length), bool)
    response[:, 8:] = True
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    arrays = dict(tokens=tokens, valid=valid, response_mask=response[:, 8:])
    batch = SequenceBatch(**{k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()})
    stats = jax.jit(token_stats_fn, static_argnums=0)
    want = stats(graphdef, params, SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}))
    for layout in LAYOUTS:
        laid = jax.device_put(params, param_shardings(params, mesh, layout))
        with jax.set_mesh(mesh):
            got = stats(graphdef, laid, batch)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5, err_msg=layout)
