"""Sweeps: grid expansion, selection, a real two-run sweep that resumes, fails loudly and
summarises (scripts/sweep.py over critique_jax.train subprocesses)."""
import csv
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_COMPILE
from critique_jax import sweep as sweep_lib

ROOT = Path(__file__).resolve().parents[1]


def test_expand_grid_seeds_names_and_override_order():
    s = sweep_lib.expand(dict(
        name="t", base="b.py", common={"rl.steps": 5, "rl.lr": 1.0}, seeds=(0,),
        runs=[dict(label="grpo", set={"rl.lr": 2.0}, seeds=(0, 1)),
              dict(label="cc", grid={"rl.loss.clip_cov.ratio": (1e-3, 2e-2), "rl.group_size": 4}),
              dict(label="st", entry="self_train")]))
    assert [r.name for r in s.runs] == ["grpo_s0", "grpo_s1", "cc_ratio=0.001_s0", "cc_ratio=0.02_s0", "st_s0"]
    assert [r.label for r in s.runs][2:4] == ["cc_ratio=0.001", "cc_ratio=0.02"]  # only varying keys name it
    assert {r.group for r in s.runs[2:4]} == {"cc"}
    assert s.runs[1].overrides == {"rl.steps": 5, "rl.lr": 2.0, "seed": 1}
    assert s.runs[3].params == {"rl.loss.clip_cov.ratio": 2e-2, "rl.group_size": 4}
    assert s.runs[4].entry == "self_train"
    cmd = s.runs[3].command("b.py", "out/x")
    assert cmd[1:3] == ["-m", "critique_jax.train"]
    assert "--config.rl.loss.clip_cov.ratio=0.02" in cmd and cmd[-1] == "--config.seed=0"
    tup = sweep_lib.expand(dict(name="t", base="b", runs=[dict(label="a", set={"task.difficulties": (1,)})]))
    assert "--config.task.difficulties=(1,)" in tup.runs[0].command("b", "w")


@pytest.mark.parametrize("bad, match", [
    (dict(name="t", base="b", runs=[], extra=1), r"unknown key\(s\) \['extra'\]"),
    (dict(name="t", runs=[]), r"missing key 'base'"),
    (dict(name="t", base="b", runs=[dict(label="a", entry="rl")]), r"runs\[0\] \(a\): entry='rl'"),
    (dict(name="t", base="b", runs=[dict(label="a", sets={})]), r"runs\[0\] \(a\): unknown key\(s\) \['sets'\]"),
    (dict(name="t", base="b", runs=[dict(label="a"), dict(label="a")]), r"duplicate run names \['a_s0'\]"),
    (dict(name="t", base="b", runs=[dict(label="a", seeds=())]), r"runs\[0\] \(a\): seeds=\(\)"),
])
def test_expand_rejects_bad_sweeps(bad, match):
    with pytest.raises(ValueError, match=match):
        sweep_lib.expand(bad, where="sw.py")


def test_select_and_repo_sweep_files():
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.py")):
        s = sweep_lib.load_sweep(path)
        assert s.runs and (ROOT / s.base).is_file(), path
    s = sweep_lib.load_sweep(ROOT / "configs" / "sweeps" / "entropy.py")
    picked = sweep_lib.select(s, ["grpo", "kl_cov"], [1])
    assert [r.name for r in picked.runs] == ["grpo_s1", "kl_cov_s1"]
    with pytest.raises(ValueError, match=r"--labels \['nope'\] are not in sweep 'entropy'"):
        sweep_lib.select(s, ["nope"])


def test_run_summary_fits_the_law_on_eval_points():
    a, b = 0.3, 0.9
    h = np.array([0.5, 0.4, 0.3, 0.2])
    rows = []
    for i, hi in enumerate(h):
        rows.append({"step": 10 * i + 1, "train/entropy": float(hi)})
        rows.append({"step": 10 * i + 1, "eval/pass@1": float(-a * np.exp(hi) + b), "eval/pass@k/2": 0.5 + i / 10,
                     "eval/pass@k/4": 0.6 + i / 10})
    s = sweep_lib.run_summary(rows)
    assert s["law_a"] == pytest.approx(a, rel=1e-9) and s["law_b"] == pytest.approx(b, rel=1e-9)
    assert s["k"] == 4 and s["pass@k_final"] == pytest.approx(0.9)
    assert s["entropy_first"] == 0.5 and s["entropy_final"] == 0.2
    assert s["pass@1_peak"] == pytest.approx(-a * np.exp(0.2) + b)
    assert math.isnan(s["distinct_final"])
    st = sweep_lib.run_summary([{"step": 0, "self_train/eval/solved": 0.1, "self_train/eval/solved/level_2": 0.0},
                                {"step": 1, "self_train/eval/solved": 0.3, "self_train/eval/solved/level_2": 0.2}])
    assert (st["solved_first/all"], st["solved_final/all"], st["solved_final/level_2"]) == (0.1, 0.3, 0.2)
    assert math.isnan(st["pass@1_final"]) and math.isnan(st["law_a"])



def test_manifests_go_through_the_validated_reader(tmp_path):
    """write_manifest merges and summarize reads manifest.json with analysis.sweeps.read_manifest:
    what the sweep writes reads back, and a malformed file fails in one line naming it."""
    from critique_jax.analysis import sweeps

    s = sweep_lib.expand(dict(name="t", base="b.py", runs=[dict(label="a", grid={"rl.lr": (1.0, 2.0)})]))
    sweep_lib.write_manifest(sweep_lib.select(s, ["a_lr=1"]), tmp_path)
    sweep_lib.write_manifest(s, tmp_path)  # merges with the listed run
    name, runs = sweeps.read_manifest(tmp_path / "manifest.json", {"params": dict})
    assert name == "t" and [r["name"] for r in runs] == ["a_lr=1_s0", "a_lr=2_s0"]
    assert runs[1]["params"] == {"rl.lr": 2.0} and runs[1]["workdir"] == "a_lr=2_s0"
    assert sweep_lib.summarize(tmp_path) == []  # no run finished
    path = tmp_path / "manifest.json"
    entry = {k: v for k, v in runs[0].items() if k != "params"}
    path.write_text(json.dumps({"sweep": "t", "runs": [entry]}))
    with pytest.raises(ValueError, match=r"manifest.json: runs\[0\] \(a_lr=1_s0\) has no 'params'$"):
        sweep_lib.summarize(tmp_path)
    path.write_text('{"runs": [')
    for call in (lambda: sweep_lib.write_manifest(s, tmp_path), lambda: sweep_lib.summarize(tmp_path)):
        with pytest.raises(ValueError, match=r"manifest.json:1: malformed JSON") as err:
            call()
        assert str(path) in str(err.value) and "\n" not in str(err.value)

TINY = """
def get_sweep():
    return dict(
        name="tiny", base={base!r},
        common={{"model.preset": "tiny", "task.n_train": 64, "task.n_test": 8, "data_dir": {data!r},
                 "sft.steps": 2, "sft.batch_size": 8, "sft.warmup_steps": 0, "rl.steps": 2, "rl.prompts_per_step": 8,
                 "rl.group_size": 2, "eval.every": 2, "eval.n_problems": 8, "eval.batch_prompts": 8,
                 "eval.group_size": 2, "checkpoint.every": 2, "log.progress": False, "log.tensorboard": False}},
        runs=[dict(label="grpo", set={{"rl.loss.name": "ppo"}}),
              dict(label="broken", set={{"rl.loss.name": "no_such_loss"}})])
"""


BACKGROUND_FIXTURE = "first_sweep"


def _sweep_cmd(tmp: Path) -> tuple[list[str], dict, Path]:
    out = tmp / "sweep"
    cmd = [sys.executable, str(ROOT / "scripts" / "sweep.py"), "--config", str(tmp / "tiny.py"), "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", CRITIQUE_JAX_CACHE=str(tmp / "cache"),
               XLA_FLAGS="--xla_force_host_platform_device_count=2 " + FAST_COMPILE)
    return cmd, env, out


def start_background(tmp_path_factory) -> dict:
    """The sweep's first run (its two runs train), started by conftest when the tests are collected
    so that it runs while the other tests do."""
    tmp = tmp_path_factory.mktemp("sweep")
    (tmp / "tiny.py").write_text(textwrap.dedent(TINY.format(base=str(ROOT / "configs" / "quickstart.py"),
                                                             data=str(tmp / "data"))))
    cmd, env, _ = _sweep_cmd(tmp)
    with open(tmp / "first.out", "w") as stdout, open(tmp / "first.err", "w") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=stderr, text=True)
    return {"procs": [proc], "tmp": tmp}


@pytest.fixture(scope="module")
def first_sweep(background):
    """(the sweep's temporary folder, its first run's exit status, stdout, stderr)."""
    job = background(sys.modules[__name__])
    proc, tmp = job["procs"][0], job["tmp"]
    try:
        proc.wait(timeout=600)
    finally:
        proc.kill()
    return tmp, proc.wait(), (tmp / "first.out").read_text(), (tmp / "first.err").read_text()


def test_sweep_runs_skips_finished_runs_reports_failures_and_summarises(first_sweep):
    tmp, returncode, stdout, stderr = first_sweep
    cmd, env, out = _sweep_cmd(tmp)
    assert returncode == 1, stdout + stderr
    assert "1 run(s) failed: broken_s0" in stderr
    assert "no_such_loss" in (out / "broken_s0" / "sweep.log").read_text()
    assert not (out / "broken_s0" / "done.json").exists()
    done = {"grpo_s0": (out / "grpo_s0" / "done.json").stat().st_mtime_ns}

    again = subprocess.run(cmd + ["--labels", "grpo"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 done, 0 to run" in again.stdout
    assert {n: (out / n / "done.json").stat().st_mtime_ns for n in done} == done

    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == ["grpo_s0", "broken_s0"]
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["grpo_s0"]
    for r in rows:
        assert 0.0 <= float(r["pass@1_final"]) <= 1.0 and float(r["k"]) == 2 and float(r["entropy_final"]) > 0
    assert (out / "summary.md").read_text().startswith("| name | label | seed |")

    printed = subprocess.run(cmd + ["--print"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 1 and "--config.rl.loss.name=no_such_loss" in lines[0]
    assert lines[0].endswith(f"> {out / 'broken_s0' / 'done.json'}")


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its new parent, is not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


RUNNER = """
import sys
from critique_jax import sweep as s

marker = sys.argv[1]
s.RunSpec.command = lambda self, base, workdir: [sys.executable, "-c", "import os, time; "
                                                 f"open({marker!r}, 'w').write(str(os.getpid())); time.sleep(300)"]
s.run_sweep(s.Sweep("t", "base.py", (s.RunSpec("a_s0", "a", "a", 0, {}, "train", {}),)), sys.argv[2])
"""


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_stopped_runner_stops_its_runs(tmp_path, how):
    """SIGTERM: the runner stops its runs' process groups and exits 128 + 15. SIGKILL (no handler
    runs): each run gets SIGTERM from the kernel as its runner dies (PR_SET_PDEATHSIG)."""
    import signal
    import time

    marker = tmp_path / "child.pid"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(marker), str(tmp_path / "sweep")], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 60
    while not (marker.exists() and marker.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child = int(marker.read_text())
    try:
        runner.send_signal(getattr(signal, how))
        assert runner.wait(timeout=60) == (128 + signal.SIGTERM if how == "SIGTERM" else -signal.SIGKILL)
        deadline = time.time() + 10
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child)
    finally:
        runner.kill()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass
