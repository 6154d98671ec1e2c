"""The package imports and the test harness sees 8 virtual devices."""

import jax

from critique_jax.parallel import mesh as mesh_lib


def test_eight_virtual_devices():
    assert jax.device_count() == 8


def test_make_mesh_fills_minus_one():
    m = mesh_lib.make_mesh(data=-1, fsdp=2)
    assert dict(m.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert mesh_lib.batch_shards(m) == 8


def test_make_mesh_rejects_bad_sizes():
    import pytest

    with pytest.raises(ValueError, match="need 6 devices"):
        mesh_lib.make_mesh(data=3, fsdp=2)
    with pytest.raises(ValueError, match="not divisible by 3"):
        mesh_lib.make_mesh(data=-1, fsdp=3)


def test_a_tensor_axis_that_splits_heads_is_refused_before_compiling():
    import pytest
    from flax import nnx

    from critique_jax.models import ModelConfig, Transformer
    from critique_jax.runs import roles

    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=32, d_ff=64,
                      max_seq_len=16)
    with pytest.raises(ValueError, match=r"mesh.tensor=4 does not divide the model's 4 query / 2 key-value heads "
                                         r"\(tensor parallelism splits whole heads\): use mesh.tensor in \[1, 2\]"):
        roles.define(cfg, mesh_lib.make_mesh(data=2, tensor=4))
    _, graphdef, _ = roles.define(cfg, mesh_lib.make_mesh(data=4, tensor=2))  # 2 divides both
    # a tensor axis shards the projections: not concatenated (it would move shards between devices)
    abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))[1]
    assert cfg.fuse_projections and not nnx.merge(graphdef, abstract).cfg.fuse_projections
