"""The RL trainer: sharded step = single-device step, exact resume, non-finite guard, config errors."""

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from critique_jax import config as config_lib
from critique_jax import validation
from critique_jax.checkpoint import Checkpointer
from critique_jax.metrics import read_metrics
from critique_jax.models import Transformer, load_pretrained, model_config, save_pretrained
from critique_jax.models.hf import load_config
from critique_jax.models.layer_scan import stack_layers
from critique_jax.parallel.mesh import batch_sharding, make_mesh
from critique_jax.parallel.sharding import param_shardings
from critique_jax.rl.losses import make_loss_config
from critique_jax.rl.train_step import (SequenceBatch, TrainState, make_optimizer, make_schedule, response_stats,
                                        rl_update)
from critique_jax.rl.policy_init import policy_model_config, policy_tokenizer
from critique_jax.runs import setup, train
from critique_jax.runs.rl_loop import rl_optimizer
from critique_jax.runs.roles import check_policy_run
from critique_jax.text import load_tokenizer

SCHEDULE_EARLY = True  # a long file: conftest schedules it early under pytest-xdist


def tiny_config(tmp_path, **overrides):
    c = config_lib.default_config()
    c.unlock()
    c.task.n_train, c.task.n_test = 96, 16
    c.data_dir = str(tmp_path / "data")
    c.model.preset = "tiny"
    c.sampling.max_new_tokens = 56
    c.sft.update(steps=3, batch_size=8, warmup_steps=0, log_every=1)
    c.rl.update(steps=6, prompts_per_step=8, group_size=4, minibatches=2, lr=1e-3)
    c.rl.loss.name = "clip_cov"
    c.rl.loss.clip_cov.ratio = 0.05
    c.rl.loss.ref_kl_coef = 0.01  # exercises the reference policy in checkpoints
    c.eval.update(every=3, n_problems=8, batch_prompts=8, group_size=2)
    c.checkpoint.update(every=3, async_save=True)
    c.log.update(tensorboard=False, progress=False)
    for k, v in overrides.items():
        node = c
        *path, leaf = k.split(".")
        for p in path:
            node = node[p]
        node[leaf] = v
    c.lock()
    return c


def _random_batch(rng, n, p, length, vocab):
    tokens = rng.integers(4, vocab, (n, p + length)).astype(np.int32)
    valid = np.ones((n, p + length), bool)
    valid[:, :2] = False  # left padding
    resp = np.arange(length)[None] < rng.integers(3, length + 1, (n, 1))
    valid[:, p:] = resp
    return dict(tokens=tokens, valid=valid, response_mask=resp,
                old_logp=(-rng.uniform(0.5, 4.0, (n, length)) * resp).astype(np.float32),
                ref_logp=(-rng.uniform(0.5, 4.0, (n, length)) * resp).astype(np.float32),
                advantages=rng.normal(size=n).astype(np.float32))


def test_sharded_rl_step_equals_single_device(np_rng):
    cfg = model_config("tiny", 128, n_layers=1)  # 1 layer: compiles fast; every parameter kind is sharded
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    # SGD, not Adam: the key-projection bias has an identically zero gradient (softmax is
    # shift-invariant), and Adam scales its float32 noise (~1e-9, different per sharding) up
    # to +-lr, which says nothing about whether the sharded computation is right.
    optimizer = optax.sgd(0.5)
    # A wide covariance band so Clip-Cov's random selection is exercised whatever the batch.
    loss_cfg = make_loss_config("clip_cov", ratio=0.05, cov_lb=-10.0, cov_ub=10.0, ref_kl_coef=0.01)
    arrays = _random_batch(np_rng, 16, 6, 10, 128)
    key = jax.random.key(3)

    def run(params, batch, mesh):
        state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
        step = jax.jit(functools.partial(rl_update, graphdef, optimizer, loss_cfg, epochs=2, minibatches=2, mesh=mesh))
        return step(state, batch, key)

    single_state, single_m = run(params, SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}), None)
    mesh = make_mesh(data=4, fsdp=2)
    sharded_params = jax.device_put(params, param_shardings(params, mesh))
    batch = SequenceBatch(**{k: jax.device_put(v, batch_sharding(mesh, v.ndim)) for k, v in arrays.items()})
    mesh_state, mesh_m = run(sharded_params, batch, mesh)
    assert single_m.keys() == mesh_m.keys()
    for k in single_m:
        # Quantiles pick a rank: float32 noise between near-tied covariances can move them more.
        tol = dict(rtol=1e-3, atol=1e-4) if k.startswith("cov_p") else dict(rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mesh_m[k], single_m[k], err_msg=k, **tol)
    assert float(single_m["selected_frac"]) > 0  # Clip-Cov detached tokens in both
    for a, b in zip(jax.tree.leaves(single_state.params), jax.tree.leaves(mesh_state.params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_cfg", [
    make_loss_config("ppo", entropy_coef=0.01, ref_kl_coef=0.05),
    make_loss_config("ppo", agg="seq-mean-token-mean", ref_kl_coef=0.05),
    make_loss_config("gppo", agg="seq-mean-token-sum"),
    make_loss_config("ppo", agg="constant"),
    make_loss_config("critique_grpo", agg="constant", agg_constant=37.0),
], ids=["token-mean", "seq-mean-token-mean", "gppo-seq-sum", "constant", "critique_grpo"])
def test_micro_batches_give_the_same_update(np_rng, loss_cfg):
    """rl.micro_batches=4 (the gradient summed over row blocks, weighted by their share of the
    aggregation) against one pass per minibatch: the same parameters and metrics to float32
    rounding, for every aggregation mode (responses of different lengths, so the blocks' shares
    differ) and a loss on refinement rows; a loss with batch statistics is refused."""
    cfg = model_config("tiny", 128, n_layers=1)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    optimizer = optax.sgd(0.5)  # as in the sharded test: Adam would amplify float32 noise
    arrays = _random_batch(np_rng, 16, 6, 10, 128)
    arrays["is_refinement"] = np.arange(16) % 3 == 0
    for row in (5, 11):  # rows without a response token: sequence means skip them, so blocks' shares differ
        arrays["response_mask"][row] = arrays["valid"][row, 6:] = False
        arrays["old_logp"][row] = arrays["ref_logp"][row] = 0.0
    batch = SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})

    def run(micro_batches):
        state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
        step = jax.jit(functools.partial(rl_update, graphdef, optimizer, loss_cfg, epochs=2, minibatches=2,
                                         micro_batches=micro_batches))
        return step(state, batch, jax.random.key(3))

    (one_state, one_m), (micro_state, micro_m) = run(1), run(4)
    assert one_m.keys() == micro_m.keys()
    for k in one_m:
        np.testing.assert_allclose(micro_m[k], one_m[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(jax.tree.leaves(one_state.params), jax.tree.leaves(micro_state.params)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(one_state.params["embed"]["embedding"] - params["embed"]["embedding"]).max()) > 1e-3
    with pytest.raises(ValueError, match=r"micro_batches=2: loss 'kl_cov' \(or its forking mask\) reads statistics"):
        rl_update(graphdef, optimizer, make_loss_config("kl_cov"), run(1)[0], batch, jax.random.key(3), micro_batches=2)


def test_nonfinite_update_is_skipped(np_rng):
    cfg = model_config("tiny", 64, n_layers=1)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    optimizer, _ = make_optimizer(1e-2, 0, 10)
    arrays = _random_batch(np_rng, 8, 4, 6, 64)
    arrays["advantages"][3] = np.nan
    state = TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))
    new, m = rl_update(graphdef, optimizer, config_lib.loss_config(config_lib.default_config()), state,
                       SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()}), jax.random.key(0))
    assert float(m["skipped"]) == 1.0  # the minibatch holding the NaN; the other one updates
    assert int(new.step) == 0 or int(new.step) == 1
    for leaf in jax.tree.leaves(new.params):
        assert np.isfinite(np.asarray(leaf)).all()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    os.environ["CRITIQUE_JAX_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")
    train(tiny_config(tmp), str(tmp / "run"))
    return tmp


def _compare_runs(dir_a, dir_b, cfg):
    ma = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(dir_a)]
    mb = [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_metrics(dir_b)]
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        for k in ra:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f"step {ra['step']} {k}")
    last = cfg.sft.steps + cfg.rl.steps
    pa = Checkpointer(f"{dir_a}/checkpoints").restore(last, like=_full_like(dir_a, last))[0]["params"]
    pb = Checkpointer(f"{dir_b}/checkpoints").restore(last, like=_full_like(dir_b, last))[0]["params"]
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _full_like(workdir, step):
    """Restore target read from the checkpoint's own metadata (shapes and dtypes)."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(f"{workdir}/checkpoints/{step}/state")
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), tree)


def test_exact_resume_and_no_recompiles(straight_run, tmp_path):
    cfg = tiny_config(straight_run)
    resumed = tmp_path / "run"
    stop = cfg.sft.steps + 3
    train(cfg, str(resumed), stop_at=stop)
    assert Checkpointer(resumed / "checkpoints").latest_step() == stop
    assert max(r["step"] for r in read_metrics(resumed)) == stop
    train(cfg, str(resumed))  # resume and finish
    _compare_runs(straight_run / "run", resumed, cfg)
    # After the first RL step nothing compiles again (evaluation and checkpoints included).
    rows = [r for r in read_metrics(straight_run / "run") if "perf/compiles" in r]
    assert len(rows) == cfg.rl.steps
    assert all(r["perf/compiles"] == 0 for r in rows[1:]), [r["perf/compiles"] for r in rows]


def test_a_cloud_run_directory_round_trips(straight_run, gcs_bucket):
    """A run on ``gs://`` (a local GCS server, conftest): config, metrics, samples and checkpoints
    written there, a crash-free stop and resume, and the same numbers as the local straight run."""
    from etils import epath

    from critique_jax.analysis.run_summary import plot_curves
    from critique_jax.runs.policies import final_policy

    cfg = tiny_config(straight_run)
    run = f"{gcs_bucket}/run"
    stop = cfg.sft.steps + 3
    train(cfg, run, stop_at=stop)
    assert Checkpointer(f"{run}/checkpoints").latest_step() == stop
    assert max(r["step"] for r in read_metrics(run)) == stop
    train(cfg, run)  # resume and finish
    _compare_runs(straight_run / "run", run, cfg)
    local, remote = straight_run / "run", epath.Path(run)
    assert json.loads((remote / "config.json").read_text()) == json.loads((local / "config.json").read_text())
    assert (remote / "samples.jsonl").read_text().count("\n") == (local / "samples.jsonl").read_text().count("\n")
    assert {p.name for p in remote.iterdir()} >= {"config.json", "metrics.jsonl", "samples.jsonl", "checkpoints",
                                                  "sft_policy"}
    # What the analysis reads from a run directory: its latest policy, its curves (written there).
    assert final_policy(run) == cfg.sft.steps + cfg.rl.steps
    assert plot_curves(run) == f"{run}/curves.png" and (remote / "curves.png").read_bytes()[:4] == b"\x89PNG"


def _infinite_lr(monkeypatch, phase: str) -> None:
    """Makes the optimiser of ``phase`` ("sft": the one without grad_clip, "rl") step with an
    infinite learning rate, which the config itself refuses."""
    from critique_jax.runs import rl_loop, supervised

    def make(lr, *args, **kw):
        return make_optimizer(float("inf") if ("grad_clip" in kw) == (phase == "rl") else lr, *args, **kw)

    for module in (rl_loop, supervised):
        monkeypatch.setattr(module, "make_optimizer", make)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_flags_one_bad_element_in_any_leaf(bad):
    """The optimiser step's finiteness test (read off the tree's norm) over float32 and bfloat16 leaves."""
    from critique_jax.rl.train_step import _all_finite

    def tree(a_bad=False, c_bad=False):
        a, c = jnp.ones((3, 4)), jnp.full((5,), 2.0, jnp.bfloat16)
        return {"a": a.at[0, 0].set(bad) if a_bad else a, "b": {"c": c.at[0].set(bad) if c_bad else c}}

    assert bool(_all_finite(tree()))
    assert not bool(_all_finite(tree(a_bad=True))) and not bool(_all_finite(tree(c_bad=True)))


def test_nonfinite_run_stops_without_nan_checkpoint(tmp_path, monkeypatch):
    _infinite_lr(monkeypatch, "rl")
    cfg = tiny_config(tmp_path, **{"rl.max_bad_steps": 2, "rl.steps": 4, "sft.steps": 1, "checkpoint.every": 1})
    with pytest.raises(FloatingPointError, match=r"2 consecutive RL steps .*\(rl.max_bad_steps=2\)"):
        train(cfg, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run")
    assert [r["train/skipped"] for r in rows if "train/skipped" in r] == [2.0, 2.0]
    ck = Checkpointer(tmp_path / "run" / "checkpoints")
    for step in ck.all_steps():
        state, _ = ck.restore(step, like=_full_like(tmp_path / "run", step))
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize("key,value,message", [
    ("rl.prompts_per_step", 6, r"rl.prompts_per_step=6: must be a positive multiple of the 8 batch shards"),
    ("rl.group_size", 1, r"rl.group_size=1: group-relative advantages \(grpo\) need a group of >= 2"),
    ("rl.minibatches", 3, r"rl.minibatches=3"),
    ("rl.micro_batches", 4, r"rl.micro_batches=4: a minibatch of 16 samples must split into micro-batches that are "
                            r"multiples of the 8 batch shards"),
    ("rl.micro_batches", 2, r"rl.micro_batches=2 with rl.loss.name='clip_cov': its statistics span the minibatch"),
    ("sampling.top_p", 1.5, r"sampling.top_p=1.5"),
    ("sampling.decode_phases", 1000, r"sampling.decode_phases=1000: expected 0 \(automatic\) or at most sampling.max_new"),
    ("rl.loss.name", "ppo2", r"rl.loss.name='ppo2': unknown loss; registered: \['ppo'"),
    ("rl.loss.clip_cov.cov_ub", 0.5, r"config rl.loss \(clip_cov\): ClipCovConfig.cov_lb=1.0 >= cov_ub=0.5"),
    ("sft.warmup_steps", 10, r"sft.warmup_steps=10: expected between 0 and sft.steps=3"),
])
def test_config_errors_name_the_key(tmp_path, key, value, message):
    cfg = tiny_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=message):
        validation.validate(cfg, 8)


def test_nonfinite_sft_stops(tmp_path, monkeypatch):
    _infinite_lr(monkeypatch, "sft")
    cfg = tiny_config(tmp_path, **{"sft.max_bad_steps": 2, "rl.steps": 0})
    with pytest.raises(FloatingPointError, match=r"2 consecutive SFT steps .*\(sft.max_bad_steps=2\)"):
        train(cfg, str(tmp_path / "run"))
    assert Checkpointer(tmp_path / "run" / "sft_policy").latest_step() is None


def test_init_from_is_checked_before_anything_runs(tmp_path):
    source = tmp_path / "source"
    (source / "sft_policy").mkdir(parents=True)
    (source / "config.json").write_text(tiny_config(tmp_path, **{"tokenizer.seed": 1}).to_json())
    cfg = tiny_config(tmp_path, **{"init_from": str(source), "model.preset": "small", "model.scan_layers": True})
    with pytest.raises(ValueError, match=r"config model.preset='small' differs from the init_from run's "
                                         r"model.preset='tiny'; model.scan_layers=True differs from .* "
                                         r"model.scan_layers=False; tokenizer.seed=0 differs from .* tokenizer.seed=1"):
        train(cfg, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value,message", [
    ("rl.lr", -1.0, r"rl.lr=-1.0: expected a number in \(0, 1\]"),
    ("rl.lr", 0.0, r"rl.lr=0.0: expected a number in \(0, 1\]"),
    ("rl.lr", 1e6, r"rl.lr=1000000.0: expected a number in \(0, 1\]"),
    ("rl.lr", float("nan"), r"rl.lr=nan: expected a finite number"),
    ("rl.lr", float("inf"), r"rl.lr=inf: expected a finite number"),
    ("rl.weight_decay", float("nan"), r"rl.weight_decay=nan: expected a finite number"),
    ("rl.grad_clip", -1.0, r"rl.grad_clip=-1.0: expected a number in \(0, inf\]"),
    ("rl.grad_clip", 0.0, r"rl.grad_clip=0.0: expected a number in \(0, inf\]"),
    ("sft.lr", float("nan"), r"sft.lr=nan: expected a finite number"),
    ("critic.lr", 2.0, r"critic.lr=2.0: expected a number in \(0, 1\]"),
    ("seed", -1, r"config seed=-1: expected a number >= 0"),
    ("task.n_train", 0, r"task.n_train=0: expected a number >= 1"),
    ("task.difficulties", (1, 0), r"task.difficulties=\(1, 0\): expected numbers >= 1"),
    ("eval.n_problems", 0, r"eval.n_problems=0: expected a number >= 1"),
    ("rl.loss.clip_cov.ratio", float("nan"), r"rl.loss.clip_cov.ratio=nan: expected a finite number"),
    ("model.preset", "huge", r"model.preset='huge': expected one of"),
])
def test_numbers_are_checked(tmp_path, key, value, message):
    cfg = tiny_config(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=message):
        validation.validate(cfg, 8)


def test_longer_sequences_than_the_preset_are_announced(tmp_path, caplog):
    cfg = tiny_config(tmp_path, **{"sampling.max_new_tokens": 2000})
    with caplog.at_level("WARNING", logger="critique_jax"):
        validation.warn_sequence_length(cfg, 2024)
    assert "sampling.max_new_tokens=2000 with prompt buckets up to 24 tokens needs 2024 positions: more than " \
           "model.preset='tiny''s max_seq_len=256" in caplog.text


def test_unknown_config_key_is_rejected():
    c = config_lib.default_config()
    with pytest.raises(AttributeError, match='Key "grop_size" does not exist'):
        c.rl.grop_size = 4


# ----------------------------------------------------------------------------- schedules and entropy metrics


def test_rl_schedule_counts_optimizer_updates(tmp_path):
    """A cosine schedule spans all rl.steps x epochs x minibatches updates (it used to end at
    the floor halfway through a run with 2 updates per step); the default is constant."""
    cfg = tiny_config(tmp_path, **{"rl.lr_schedule": "cosine", "rl.steps": 40, "rl.epochs": 2, "rl.minibatches": 2})
    _, schedule = rl_optimizer(cfg)
    updates = 40 * 2 * 2
    lr, end = cfg.rl.lr, cfg.rl.lr * cfg.rl.end_lr_ratio
    assert float(schedule(updates // 2)) == pytest.approx((lr + end) / 2, rel=1e-5)  # mid-run: halfway down
    assert float(schedule(updates - 1)) == pytest.approx(end, rel=1e-3)  # the last update: at the floor
    assert float(schedule(updates - 1)) > end
    _, constant = rl_optimizer(tiny_config(tmp_path, **{"rl.steps": 40}))
    assert [float(constant(i)) for i in (0, 79, 159)] == pytest.approx([cfg.rl.lr] * 3, rel=1e-6)
    _, warm = rl_optimizer(tiny_config(tmp_path, **{"rl.steps": 40, "rl.warmup_steps": 4}))  # 4 steps = 8 updates
    assert [float(warm(i)) for i in (0, 4, 8, 159)] == pytest.approx([0.0, cfg.rl.lr / 2, cfg.rl.lr, cfg.rl.lr], rel=1e-6)
    # a cosine schedule that is all warm-up (e.g. sft.steps = sft.warmup_steps = 20) ramps up and stops there
    assert [float(make_schedule(1.0, 20, 20)(i)) for i in (0, 10, 20)] == pytest.approx([0.0, 0.5, 1.0])
    # no warm-up: optax's warm-up-cosine schedule with 0 warm-up steps, without its notice
    before = optax.warmup_cosine_decay_schedule(init_value=1.0, peak_value=1.0, warmup_steps=0, decay_steps=30,
                                                end_value=0.1)
    assert [float(make_schedule(1.0, 0, 30)(i)) for i in range(0, 35, 3)] == \
        pytest.approx([float(before(i)) for i in range(0, 35, 3)], rel=1e-6)


def test_rl_update_logs_applied_lr_and_same_batch_entropy(np_rng):
    cfg = model_config("tiny", 64, n_layers=1)  # 1 layer: compiles fast
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    optimizer, schedule = make_optimizer(1e-2, 0, 8)  # cosine over 8 updates
    arrays = _random_batch(np_rng, 8, 4, 6, 64)
    arrays["is_refinement"] = np.arange(8) % 4 == 3  # refinement rows are left out of the entropy
    batch = SequenceBatch(**{k: jnp.asarray(v) for k, v in arrays.items()})
    state = TrainState(params, optimizer.init(params), jnp.asarray(2, jnp.int32))  # 2 updates already taken
    loss_cfg = config_lib.loss_config(config_lib.default_config())
    update = jax.jit(functools.partial(rl_update, graphdef, optimizer, loss_cfg, minibatches=2, lr_schedule=schedule,
                                       entropy_after=True))
    new, m = update(state, batch, jax.random.key(0))
    assert float(m["lr"]) == pytest.approx((float(schedule(2)) + float(schedule(3))) / 2, rel=1e-6)
    model = nnx.merge(graphdef, new.params)
    _, ent = response_stats(model, batch)
    mask = arrays["response_mask"] & ~arrays["is_refinement"][:, None]
    want = float((np.asarray(ent, np.float64) * mask).sum() / mask.sum())
    assert float(m["entropy_after"]) == pytest.approx(want, rel=1e-5)


def test_run_logs_rollout_entropy_lr_and_entropy_change(straight_run):
    """train/entropy is the rollouts' (not overwritten by the update's), the update's entropy has
    its own name, the same-batch change is logged, and the logged lr is the configured one."""
    cfg = tiny_config(straight_run)
    rows = read_metrics(straight_run / "run")
    rl_rows = [r for r in rows if "train/reward" in r]
    assert len(rl_rows) == cfg.rl.steps
    for r in rl_rows:
        assert r["train/lr"] == pytest.approx(cfg.rl.lr, rel=1e-6)  # constant by default
        assert np.isfinite([r["train/entropy"], r["train/update_entropy"], r["train/entropy_change"]]).all()
    assert any(r["train/entropy"] != r["train/update_entropy"] for r in rl_rows)
    sft_last = [r for r in rows if r["step"] == cfg.sft.steps and "sft/lr" in r][0]
    want = make_schedule(cfg.sft.lr, cfg.sft.warmup_steps, cfg.sft.steps)(cfg.sft.steps - 1)
    assert sft_last["sft/lr"] == pytest.approx(float(want), rel=1e-6)


def test_resume_refuses_a_changed_config_and_records_allowed_changes(straight_run, tmp_path):
    import shutil

    from critique_jax.rundir import CHANGES_FILE, CONFIG_FILE, save_config

    workdir = tmp_path / "run"
    shutil.copytree(straight_run / "run", workdir)
    saved = (workdir / CONFIG_FILE).read_text()
    with pytest.raises(ValueError, match=r"config rl.lr=0.0005 \(the run has 0.001\); rl.loss.name='ppo' \(the run "
                                         r"has 'clip_cov'\): resuming"):
        train(tiny_config(straight_run, **{"rl.lr": 5e-4, "rl.loss.name": "ppo"}), str(workdir))
    with pytest.raises(FileExistsError, match="resume is off"):
        train(tiny_config(straight_run, **{"rl.lr": 5e-4}), str(workdir), resume=False)
    assert (workdir / CONFIG_FILE).read_text() == saved
    # A finished run resumed with more log lines and a later evaluation: allowed, and recorded.
    save_config(tiny_config(straight_run, **{"eval.every": 4, "sft.log_every": 2}), str(workdir), resume=True)
    changes = [json.loads(line) for line in (workdir / CHANGES_FILE).read_text().splitlines()]
    assert [sorted(c["changes"]) for c in changes] == [["eval.every", "sft.log_every"]]
    assert changes[0]["changes"]["eval.every"] == {"from": 3, "to": 4}
    assert json.loads((workdir / CONFIG_FILE).read_text())["eval"]["every"] == 4


def test_rerun_after_sft_policy_keeps_the_post_sft_logs(straight_run, tmp_path):
    """Killed after sft_policy was saved and before the first RL checkpoint: the newest
    checkpoint is an SFT one, older than the SFT logs and the post-SFT evaluation."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(straight_run / "run", workdir)
    cfg = tiny_config(straight_run, **{"rl.steps": 0})  # nothing left to train: only the re-run's truncation
    for step in Checkpointer(workdir / "checkpoints").all_steps():
        shutil.rmtree(workdir / "checkpoints" / str(step))
    with Checkpointer(workdir / "checkpoints", async_save=False) as ckpt:
        ckpt.save(cfg.sft.steps - 1, {"x": jnp.zeros(1)}, {"phase": "sft"})
    train(cfg, str(workdir))
    sft_logs = [r for r in read_metrics(straight_run / "run") if r["step"] <= cfg.sft.steps]
    assert "eval/pass@1" in sft_logs[-1]
    assert read_metrics(workdir) == sft_logs


# ----------------------------------------------------------------------------- pretrained policies (model.hf_dir)

HF_TOKENIZER = Path(__file__).parent / "goldens" / "hf" / "tokenizer"


def _write_checkpoint(directory: Path, vocab_size: int = 384, max_seq_len: int = 128) -> Path:
    """A tiny random qwen2 checkpoint with the golden HF tokenizer (320 ids, several end ids, as
    Qwen's): vocab_size > the tokenizer's, as real checkpoints pad their embeddings."""
    cfg = model_config("tiny", vocab_size, family="qwen2", max_seq_len=max_seq_len, n_layers=1)  # 1 layer: compiles fast
    model = Transformer(cfg, rngs=nnx.Rngs(5))
    save_pretrained(model, directory, tokenizer=load_tokenizer(HF_TOKENIZER))
    return directory


def _hf_config(tmp_path, hf_dir, **overrides):
    """2 RL steps from the checkpoint. To compile little: data parallel only (sharded loading is
    tested in test_hf.py), a plain loss without the reference KL (the reference is the initial
    policy, checked apart), one minibatch, the sampler's log-probs, evaluation sampling in the
    shapes of RL's; short plain prompts (chat-template prompts: test_task_files.py)."""
    return tiny_config(tmp_path, **{"model.hf_dir": str(hf_dir), "sft.steps": 0, "rl.steps": 2, "rl.minibatches": 1,
                                    "rl.loss.name": "ppo", "rl.loss.ref_kl_coef": 0.0, "rl.recompute_old_logp": False,
                                    "rl.entropy_change": False, "eval.group_size": 4,
                                    "sampling.prompt_buckets": (56,), "prompt.format": "plain",
                                    "prompt.instruction": "Solve.", **overrides})


@pytest.mark.parametrize("scan_layers", [False, True])
def test_rl_from_a_pretrained_checkpoint_resumes_exactly(tmp_path, scan_layers):
    """sft.steps=0 from a HF checkpoint: the run starts from its weights (the reference policy
    too), samples with its tokenizer's end ids and pad, and resumes to the straight run's metrics;
    with ``model.scan_layers`` all of it in the stacked layout (the checkpoints too), and the
    update's gradient in 2 micro-batches (``rl.micro_batches``)."""
    hf_dir = _write_checkpoint(tmp_path / "ckpt")
    cfg = _hf_config(tmp_path, hf_dir, **{"model.scan_layers": scan_layers, "rl.micro_batches": 1 + scan_layers})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(cfg, str(straight))
    run = setup(cfg, str(straight))
    want_cfg = load_config(hf_dir, max_seq_len=56 + cfg.sampling.max_new_tokens)
    assert run.model_cfg == dataclasses.replace(want_cfg, scan_layers=scan_layers)
    assert (run.sampler.eos_ids, run.sampler.pad_id) == ((3, 4), 0)
    want = nnx.state(load_pretrained(hf_dir)).to_pure_dict()
    want = stack_layers(want) if scan_layers else want
    got = Checkpointer(straight / "sft_policy").restore(like={"params": run.abstract_params()})[0]["params"]
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert [r["step"] for r in read_metrics(straight) if "eval/pass@1" in r] == [0, 2]
    train(cfg, str(resumed), stop_at=1)
    train(cfg, str(resumed))
    _compare_runs(straight, resumed, cfg)


def test_pretrained_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config model.hf_dir='.*nowhere': no such directory"):
        policy_tokenizer(_hf_config(tmp_path, tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/config.json: missing file"):
        policy_tokenizer(_hf_config(tmp_path, empty))
    hf_dir = _write_checkpoint(tmp_path / "ckpt", vocab_size=256)
    with pytest.raises(ValueError, match=r"ckpt/tokenizer.json has 320 tokens but .*ckpt/config.json has "
                                         r"vocab_size=256: the tokenizer does not belong to this model"):
        policy_tokenizer(_hf_config(tmp_path, hf_dir))
    with pytest.raises(ValueError, match=r"config.json: max_position_embeddings=128 is below the run's 248 positions"):
        policy_model_config(_hf_config(tmp_path, hf_dir), None, 248)
    (hf_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt: missing file model.safetensors"):
        policy_tokenizer(_hf_config(tmp_path, hf_dir))
    validation.validate(_hf_config(tmp_path, hf_dir, **{"sft.warmup_steps": 20}), 8)  # no SFT: its warm-up is moot
    with pytest.raises(ValueError, match=r"model.overrides \{'d_model': 32\} with model.hf_dir=.*unset the overrides"):
        validation.validate(_hf_config(tmp_path, hf_dir, **{"model.overrides.d_model": 32}), 8)


def test_model_overrides_change_a_preset(tmp_path):
    tok = load_tokenizer(HF_TOKENIZER)
    plain = tiny_config(tmp_path)
    assert policy_model_config(plain, tok, 100) == model_config("tiny", 320, max_seq_len=100)
    wide = tiny_config(tmp_path, **{"model.overrides.d_model": 32, "model.overrides.tie_embeddings": False})
    assert policy_model_config(wide, tok, 100) == model_config("tiny", 320, max_seq_len=100, d_model=32,
                                                               tie_embeddings=False)


def test_init_from_needs_the_same_overrides_and_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "sft_policy").mkdir(parents=True)
    theirs = tiny_config(tmp_path)
    (run / "config.json").write_text(theirs.to_json())
    assert check_policy_run(tiny_config(tmp_path), str(run), "init_from") == str(run / "sft_policy")
    with pytest.raises(ValueError, match=r"model.overrides=\{.*'d_model': 32.*\} differs from the init_from run's"):
        check_policy_run(tiny_config(tmp_path, **{"model.overrides.d_model": 32}), str(run), "init_from")
    with pytest.raises(ValueError, match=r"model.hf_dir='ckpt' differs from the init_from run's model.hf_dir=''"):
        check_policy_run(tiny_config(tmp_path, **{"model.hf_dir": "ckpt"}), str(run), "init_from")
    old = json.loads(theirs.to_json())
    del old["model"]["overrides"], old["model"]["hf_dir"]  # a run from before these keys: their defaults
    (run / "config.json").write_text(json.dumps(old))
    assert check_policy_run(tiny_config(tmp_path), str(run), "init_from") == str(run / "sft_policy")


def test_kill_9_after_sft_policy_keeps_the_post_sft_logs(tmp_path):
    """A real kill -9 in the window after sft_policy is saved and before the first RL checkpoint:
    the re-run keeps the SFT logs and the post-SFT evaluation (it used to truncate them to the
    last SFT checkpoint)."""
    import signal
    import subprocess
    import sys
    import time

    # SFT checkpoint at step 4, sft_policy at 5, the first RL checkpoint at step 8: kill at step 6 or 7.
    overrides = {"sft.steps": 5, "rl.steps": 1000, "checkpoint.every": 4, "eval.every": 1000}
    cfg, workdir = tiny_config(tmp_path, **overrides), tmp_path / "run"
    script = (f"import pathlib, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from test_trainer import tiny_config; from critique_jax.runs import train; "
              f"train(tiny_config(pathlib.Path({str(tmp_path)!r}), **{overrides!r}), {str(workdir)!r})")
    # The session's compilation cache and matmul precision: the programs straight_run compiled
    # (evaluation, RL) are not compiled again.
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    if jax.config.jax_compilation_cache_dir:
        env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    if jax.config.jax_default_matmul_precision:
        env["JAX_DEFAULT_MATMUL_PRECISION"] = str(jax.config.jax_default_matmul_precision)
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            rows = read_metrics(workdir) if (workdir / "metrics.jsonl").is_file() else []
            if any(r["step"] > cfg.sft.steps for r in rows):  # RL has started: sft_policy is saved
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    sft_logs = [r for r in read_metrics(workdir) if r["step"] <= cfg.sft.steps]
    assert "eval/pass@1" in sft_logs[-1] and Checkpointer(workdir / "checkpoints").latest_step() == 4
    train(tiny_config(tmp_path, **{**overrides, "rl.steps": 0}), str(workdir))  # re-run: only the truncation
    assert read_metrics(workdir) == sft_logs
