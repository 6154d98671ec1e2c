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
