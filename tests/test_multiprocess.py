"""A 2-process run equals a 1-process run on the same 8-device mesh (README, "Multi-device and multi-host").

Two processes with 4 virtual CPU devices each, joined by ``jax.distributed.initialize`` over
loopback (cross-process collectives over gloo), run the real CLI
(``python -m critique_jax.train``) on the tiny config ``tests/mp_config.py`` into one shared
workdir: SFT, evaluation, RL (KL-Cov's global top-k, a reference-KL pass), and an orbax
checkpoint every step.
A third process runs the same config alone with 8 devices. Both form a ``data=4 x fsdp=2``
mesh over the same program, so everything must agree up to float reduction order: every
logged non-``perf/`` metric, the decoded samples, and every leaf of every checkpoint
(policy and reference parameters, optimiser moments, step counter, PRNG key).

All three processes run concurrently and compile with XLA's cheapest CPU back-end settings
(compilation dominates their run time; the runs stay comparable because all use the same
flags). The pytest process itself imports no trainer and keeps its own 8 devices.
They start as soon as the tests are collected (conftest's ``start_background``), so they run
while the other tests do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import FAST_COMPILE
from critique_jax.checkpoint import Checkpointer
from critique_jax.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tests" / "mp_config.py"
TIMEOUT_S = 600  # from the launch; the runs share the CPUs with the rest of the suite
# Float reduction order differs between gloo and in-process collectives: agreement is to
# float32 rounding. A real divergence (a wrong shard, a missing reduction) moves metrics at
# the 1e-3 level and parameters by about one Adam step (lr = 1e-3) per step.
RTOL, ATOL = 1e-5, 1e-6
PARAM_ATOL = 1e-5  # parameters are O(0.1-1)
# The key projection's bias has a zero gradient in exact arithmetic (it adds q.b to every score of a
# query's row, which the softmax removes): its gradient is rounding noise, which Adam scales up to
# steps of up to lr, so the two runs' values differ by their different rounding (seen: 1e-5). A tenth
# of one Adam step (lr = 1e-3) still catches a wrong shard or reduction.
NOISE_ONLY_ATOL = {"k_proj']['bias": 1e-4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir: Path, cache: Path, n_devices: int, log: Path, *flags: str) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", CRITIQUE_JAX_CACHE=str(cache),
               JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",  # jax 0.10's default; explicit here
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices} {FAST_COMPILE}")
    cmd = [sys.executable, "-m", "critique_jax.train", f"--config={CONFIG}", f"--workdir={workdir}",
           f"--config.data_dir={cache / 'data'}", *flags]
    out = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc, log


def _wait_all(procs: list[tuple[subprocess.Popen, Path]], started: float) -> None:
    """Waits for every process; at the first failure (or the timeout) stops the rest and fails
    with the logs of every process that did not finish cleanly."""
    deadline = started + TIMEOUT_S
    pending, problems = list(procs), {}
    try:
        while pending and not problems:
            proc, log = pending.pop(0)
            try:
                if proc.wait(timeout=1) != 0:
                    problems[log] = f"exit status {proc.returncode}"
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    problems[log] = f"no exit within {TIMEOUT_S} s"
                pending.append((proc, log))
    finally:
        for proc, log in pending:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                problems.setdefault(log, "stopped after another process failed")
    if problems:
        report = []
        for log, why in problems.items():
            lines = [ln for ln in log.read_text().splitlines() if not ln.startswith("[Gloo]")]
            report.append(f"--- {log.name}: {why}; last lines:\n" + "\n".join(lines[-40:]))
        pytest.fail("training subprocess failed\n" + "\n".join(report), pytrace=False)


BACKGROUND_FIXTURE = "runs"


def start_background(tmp_path_factory) -> dict:
    """Starts the 2-process run ("multi") and the 1-process run ("single"); conftest calls this when
    the tests are collected, so they run while the other tests do."""
    root = tmp_path_factory.mktemp("multiprocess")
    multi, single = root / "multi", root / "single"
    port = _free_port()
    started = time.monotonic()
    procs = [
        _launch(multi, root / "cache_multi", 4, root / f"multi_{i}.log",
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}")
        for i in range(2)
    ]
    procs.append(_launch(single, root / "cache_single", 8, root / "single.log"))
    return {"procs": [p for p, _ in procs], "logs": procs, "started": started, "multi": multi, "single": single}


@pytest.fixture(scope="module")
def runs(background) -> dict[str, Path]:
    """Workdirs of the 2-process run ("multi") and the 1-process run ("single")."""
    job = background(sys.modules[__name__])
    _wait_all(job["logs"], job["started"])
    return {"multi": job["multi"], "single": job["single"]}


def _load_checkpoint(directory: Path, step: int) -> tuple[dict, dict]:
    """A checkpoint's state as NumPy arrays (structure from orbax's metadata) and its meta."""
    tree = ocp.StandardCheckpointer().metadata(directory / str(step) / "state").item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    with Checkpointer(directory, keep_best=0) as ckpt:
        state, meta = ckpt.restore(step, like=like)
    return jax.tree.map(np.asarray, state), meta


def _assert_trees_close(multi: dict, single: dict, what: str) -> None:
    assert jax.tree.structure(multi) == jax.tree.structure(single), what
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(multi), jax.tree.leaves(single)):
        name = f"{what}{jax.tree_util.keystr(path)}"
        if np.issubdtype(b.dtype, np.floating):
            atol = next((tol for key, tol in NOISE_ONLY_ATOL.items() if key in name), PARAM_ATOL)
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_metrics_match(runs):
    multi, single = read_metrics(runs["multi"]), read_metrics(runs["single"])
    steps = [r["step"] for r in single]
    # SFT steps 1-2, the SFT evaluation (step 2 again), RL steps 3-4.
    assert steps == [1, 2, 2, 3, 4]
    assert [r["step"] for r in multi] == steps
    compared = 0
    for m, s in zip(multi, single):
        keys = sorted(k for k in s if not k.startswith("perf/"))
        assert sorted(k for k in m if not k.startswith("perf/")) == keys, f"step {s['step']}"
        for k in keys:
            # NaN where a metric is undefined in both (distinct correct solutions when nothing was solved).
            assert m[k] == pytest.approx(s[k], rel=RTOL, abs=ATOL, nan_ok=True), f"step {s['step']} {k}: {m[k]} vs {s[k]}"
            compared += 1
    assert compared > 50
    rl = [r for r in single if "train/grad_norm" in r]
    assert len(rl) == 2 and all(r["train/grad_norm"] > 1e-3 for r in rl), "the RL updates must move the policy"


def test_samples_match(runs):
    read = lambda d: [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    single = read(runs["single"])
    assert len(single) > 0
    assert read(runs["multi"]) == single  # decoded greedy and sampled responses, rewards


def test_checkpoints_match(runs):
    ckpt_multi, ckpt_single = runs["multi"] / "checkpoints", runs["single"] / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt_single.iterdir() if p.name.isdigit())
    assert steps == [3, 4]  # keep_last=2 of the saves at steps 1, 3, 4 (step 1: SFT)
    assert sorted(int(p.name) for p in ckpt_multi.iterdir() if p.name.isdigit()) == steps
    for step in steps:
        (multi, meta_m), (single, meta_s) = _load_checkpoint(ckpt_multi, step), _load_checkpoint(ckpt_single, step)
        assert meta_m == meta_s
        _assert_trees_close(multi, single, f"checkpoint {step} ")
    sft_m, _ = _load_checkpoint(runs["multi"] / "sft_policy", 2)
    sft_s, _ = _load_checkpoint(runs["single"] / "sft_policy", 2)
    _assert_trees_close(sft_m, sft_s, "sft_policy ")
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single["params"]),
                                                                jax.tree.leaves(sft_s["params"])))
    assert moved > 1e-4, "RL left the SFT parameters unchanged: the comparison would be vacuous"
