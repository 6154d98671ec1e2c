"""Weights & Biases logging (``log.wandb``): what the run's writer sends (a recording stand-in for
the ``wandb`` module), a real offline W&B run, and the config checks."""

import glob
import importlib.util
import math
import sys
import types

import pytest

from critique_jax import config as config_lib
from critique_jax.metrics import read_metrics
from critique_jax.runs.layout import RunDir
from critique_jax.validation import validate
from critique_jax.wandb_log import WANDB_ID_FILE, check_wandb


def _config(**log):
    c = config_lib.default_config()
    c.unlock()
    c.log.update(log)
    c.lock()
    return c


class _FakeRun:
    def __init__(self, calls, kwargs):
        self.calls = calls
        calls.append(("init", kwargs))

    def log(self, values, step):
        self.calls.append(("log", step, values))

    def finish(self):
        self.calls.append(("finish",))


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []
    module = types.SimpleNamespace(init=lambda **kw: _FakeRun(calls, kw))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_the_run_writer_sends_every_step_to_one_wandb_run_across_resumes(tmp_path, fake_wandb):
    c = _config(wandb="proj", wandb_mode="offline", tensorboard=False)
    workdir = tmp_path / "grpo_s0"
    with RunDir(str(workdir)).writer(c, -1) as w:
        w.write(1, {"train/entropy": 0.5, "eval/pass@1": math.nan})
        w.write(2, {"train/entropy": 0.25})
    with RunDir(str(workdir)).writer(c, 1) as w:  # resumed after step 1: the same W&B run
        w.write(2, {"train/entropy": 0.125})
    inits = [call[1] for call in fake_wandb if call[0] == "init"]
    run_id = (workdir / WANDB_ID_FILE).read_text().strip()
    assert len(run_id) == 8
    assert [(i["project"], i["id"], i["resume"], i["mode"], i["name"], i["dir"]) for i in inits] == \
        [("proj", run_id, "allow", "offline", "grpo_s0", str(workdir))] * 2
    assert inits[0]["config"] == c.to_dict()
    logs = [call[1:] for call in fake_wandb if call[0] == "log"]
    assert logs[0][0] == 1 and logs[0][1]["train/entropy"] == 0.5 and math.isnan(logs[0][1]["eval/pass@1"])
    assert logs[1:] == [(2, {"train/entropy": 0.25}), (2, {"train/entropy": 0.125})]
    assert [call[0] for call in fake_wandb].count("finish") == 2
    assert [r["train/entropy"] for r in read_metrics(workdir)] == [0.5, 0.125]  # metrics.jsonl unchanged


def test_no_wandb_run_without_the_setting(tmp_path, fake_wandb):
    with RunDir(str(tmp_path)).writer(_config(tensorboard=False), -1) as w:
        w.write(1, {"train/entropy": 0.5})
    assert fake_wandb == [] and not (tmp_path / WANDB_ID_FILE).exists()


def test_a_real_offline_wandb_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with RunDir(str(tmp_path)).writer(_config(wandb="critique_jax_test", wandb_mode="offline", tensorboard=False),
                                      -1) as w:
        for step in (1, 2, 3):
            w.write(step, {"train/entropy": 0.1 * step, "eval/pass@1": math.nan})
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    files = glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    assert len(files) == 1 and open(files[0], "rb").read()  # the offline run, ready for `wandb sync`


def test_bad_wandb_settings_are_refused_before_anything_runs(monkeypatch):
    with pytest.raises(ValueError, match=r"config log.wandb_mode='cloud': expected one of \['online', 'offline'\]"):
        validate(_config(wandb="proj", wandb_mode="cloud"), 1)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"config log.wandb='proj': the wandb package is not installed"):
        check_wandb(_config(wandb="proj"))
    check_wandb(_config())  # off: no package needed
