"""Checkpointer: bit-exact round trips onto shardings, retention, crash safety."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from critique_jax.checkpoint import Checkpointer
from critique_jax.parallel.mesh import make_mesh

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes_equal(a, b) -> bool:
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _state(np_rng):
    model = nnx.Linear(4, 8, rngs=nnx.Rngs(int(np_rng.integers(1 << 30))))
    params = nnx.state(model, nnx.Param)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    # One real update so the adam moments and count are non-trivial.
    grads = jax.tree.map(lambda p: jnp.asarray(np_rng.normal(size=p.shape), p.dtype), params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {
        "params": params,
        "opt": opt_state,
        "f32": jnp.asarray(np_rng.normal(size=(8, 3)), jnp.float32),
        "bf16": jnp.asarray(np_rng.normal(size=(16,)), jnp.bfloat16),
        "i32": jnp.asarray(np_rng.integers(-(2**31), 2**31 - 1, size=(8, 2)), jnp.int32),
        "step": jnp.asarray(7, jnp.int32),
        "key": jax.random.key(int(np_rng.integers(1 << 30))),
        "raw_key": jax.random.PRNGKey(3),
    }


def test_round_trip_bit_identical_onto_shardings(tmp_path, np_rng):
    state = _state(np_rng)
    meta = {"config": {"lr": 1e-2, "name": "x"}, "data": {"epoch": 1, "index": 42}}
    with Checkpointer(tmp_path, best_metric=None) as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(5, state, meta)
        ckpt.wait()
        assert ckpt.all_steps() == [5]

        # Restore into shape/dtype/sharding templates on an 8-device mesh.
        mesh = make_mesh(data=4, fsdp=2)
        row = NamedSharding(mesh, P(("data", "fsdp")))
        rep = NamedSharding(mesh, P())

        def target(path, x):
            name = jax.tree_util.keystr(path)
            sharding = row if name in ("['f32']", "['bf16']", "['i32']") else rep
            if "kernel" in name:
                sharding = NamedSharding(mesh, P(None, "fsdp"))
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

        like = jax.tree_util.tree_map_with_path(target, state)
        restored, restored_meta = ckpt.restore(like=like)

    assert restored_meta == meta
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    assert isinstance(restored["params"], nnx.State)
    for (path, a), b, t in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(restored), jax.tree.leaves(like)
    ):
        assert _bytes_equal(a, b), jax.tree_util.keystr(path)
        assert b.sharding == t.sharding, jax.tree_util.keystr(path)
    assert restored["key"].dtype == state["key"].dtype
    # The restored key draws the same numbers as the original one.
    assert _bytes_equal(jax.random.bits(state["key"], 4), jax.random.bits(restored["key"], 4))
    # nnx.update with the restored State reproduces the model's outputs.
    model = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
    nnx.update(model, jax.device_get(restored["params"]))
    x = jnp.asarray(np_rng.normal(size=(2, 4)), jnp.float32)
    ref = np.asarray(x, np.float64) @ np.asarray(state["params"]["kernel"][...], np.float64)
    ref += np.asarray(state["params"]["bias"][...], np.float64)
    np.testing.assert_allclose(np.asarray(model(x)), ref, rtol=1e-6, atol=1e-6)


def test_missing_step_and_empty_directory(tmp_path):
    like = {"x": jnp.zeros((2,), jnp.float32)}
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(FileNotFoundError, match=r"empty.*available steps: \[\]"):
            ckpt.restore(like=like)
    with Checkpointer(tmp_path / "one", async_save=False) as ckpt:
        ckpt.save(1, like, {})
        with pytest.raises(FileNotFoundError, match=r"step 2 in .*one.*available steps: \[1\]"):
            ckpt.restore(2, like=like)
        with pytest.raises(ValueError, match="meta for step 2"):
            ckpt.save(2, like, {"bad": float("nan")})
        assert not ckpt.save(1, like, {})  # not newer than the latest step: skipped


def test_keep_last_plus_best(tmp_path):
    x = {"x": jnp.arange(4, dtype=jnp.float32)}
    # pass@1 per step; steps 4 and 9 have none (not best candidates), step 6 is NaN.
    scores = {1: 0.1, 2: 0.5, 3: 0.9, 4: None, 5: 0.3, 6: float("nan"), 7: 0.2, 8: 0.4, 9: None}
    with Checkpointer(tmp_path, keep_last=2, keep_best=2, async_save=False) as ckpt:
        for step, score in scores.items():
            metrics = {"train/reward": 1.0} if score is None else {"eval/pass@1": score}
            assert ckpt.save(step, x, {"step": step}, metrics)
        # best two by pass@1: 3 (0.9) and 2 (0.5); latest two: 8 and 9.
        assert ckpt.all_steps() == [2, 3, 8, 9]
        assert ckpt.best_step() == 3
    assert sorted(int(n) for n in os.listdir(tmp_path) if n.isdigit()) == [2, 3, 8, 9]
    # A reopened manager ranks the old steps from their stored metrics.
    with Checkpointer(tmp_path, keep_last=2, keep_best=2, async_save=False) as ckpt:
        assert ckpt.best_step() == 3
        ckpt.save(10, x, {}, {"eval/pass@1": 0.7})
        assert ckpt.all_steps() == [3, 9, 10]  # 0.7 displaces 0.5; 9 and 10 are the latest
        _, meta = ckpt.restore(3, like=x)
        assert meta == {"step": 3}
    with Checkpointer(tmp_path / "min", keep_last=1, best_mode="min", async_save=False) as ckpt:
        for step, loss in enumerate([0.5, 0.2, 0.9, 0.7], start=1):
            ckpt.save(step, x, {}, {"eval/pass@1": loss})
        assert ckpt.all_steps() == [2, 4]


_CRASH_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import jax, jax.numpy as jnp
    from critique_jax.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], async_save=True)
    ckpt.save(1, {"a": jnp.arange(1024, dtype=jnp.float32)}, {"step": 1})
    ckpt.wait()
    # 2 x 128 MiB of incompressible data: the write takes far longer than the poll interval.
    big = jax.random.bits(jax.random.key(0), (2, 32 * 1024 * 1024), jnp.uint32)
    big.block_until_ready()
    print("saving", flush=True)
    ckpt.save(2, {"a": big}, {"step": 2})
    ckpt.wait()
    print("committed", flush=True)
    """
)


def test_killed_during_save_keeps_previous_step(tmp_path):
    directory = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASH_CHILD, str(directory)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not any(p.name.startswith("2.orbax-checkpoint-tmp") for p in directory.iterdir()):
            assert proc.poll() is None, "child exited before step 2 was being written"
            assert time.monotonic() < deadline, "no temporary folder for step 2 appeared"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (directory / "2").exists()  # killed before orbax's commit rename

    like = {"a": jnp.zeros((1024,), jnp.float32)}
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(like=like)
        assert meta == {"step": 1}
        assert _bytes_equal(restored["a"], jnp.arange(1024, dtype=jnp.float32))
        # The next save waits for the removal of the killed write's temporary folder.
        assert ckpt.save(2, like, {"step": 2})
    assert sorted(p.name for p in directory.iterdir() if p.name[0].isdigit()) == ["1", "2"]


@pytest.mark.parametrize("fault", ["deleted", "overwritten"])
def test_damaged_latest_step_falls_back_to_intact_one(tmp_path, fault, caplog):
    like = {"a": jnp.zeros((256,), jnp.float32)}
    with Checkpointer(tmp_path / "ck", keep_last=3, async_save=True) as ckpt:
        for step in (1, 2):
            ckpt.save(step, {"a": jnp.full((256,), step, jnp.float32)}, {"step": step})
    files = [p for p in (tmp_path / "ck" / "2" / "state").rglob("*") if p.is_file() and p.stat().st_size > 100]
    victim = max(files, key=lambda p: p.stat().st_size)
    if fault == "deleted":
        victim.unlink()
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="critique_jax"), Checkpointer(tmp_path / "ck", keep_last=3) as ckpt:
        assert ckpt.latest_step() == 1
        restored, meta = ckpt.restore(like=like)
        assert meta == {"step": 1} and _bytes_equal(restored["a"], jnp.full((256,), 1, jnp.float32))
        assert ckpt.save(2, {"a": jnp.full((256,), 5, jnp.float32)}, {"step": 2})  # the step is free again
    assert f"checkpoint step 2 in {tmp_path / 'ck'} is damaged ({'missing' if fault == 'deleted' else 'changed'}: " \
           f"state/" in caplog.text
    assert [p.name.split("-")[0] for p in (tmp_path / "ck-damaged").iterdir()] == ["2"]


def test_read_only_opening_restores_params_and_touches_nothing(tmp_path):
    """A read-only checkpointer (analysis of a live run) lists steps, reads the meta alone,
    restores a subset of the state, refuses to save and leaves a running save's temporary
    folder in place."""
    d = tmp_path / "ckpt"
    with Checkpointer(d, keep_last=2, keep_best=0, best_metric=None, async_save=False) as ck:
        ck.save(3, {"params": {"w": jnp.arange(4.0)}, "opt": {"m": jnp.ones(2)}}, {"phase": "rl", "n": 3})
    in_flight = d / "5.orbax-checkpoint-tmp-1234"
    in_flight.mkdir()
    with Checkpointer(d, read_only=True) as ro:
        assert ro.all_steps() == [3] and ro.latest_step() == 3
        assert ro.read_meta() == {"phase": "rl", "n": 3}
        like = {"params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}}
        state, meta = ro.restore(like=like, partial=True)
        np.testing.assert_array_equal(state["params"]["w"], np.arange(4.0))
        assert set(state) == {"params"} and meta["n"] == 3
        with pytest.raises(PermissionError, match="read-only"):
            ro.save(4, {"params": {"w": jnp.zeros(4)}}, {})
    assert in_flight.is_dir()
