"""Every config file under configs/ loads, validates and builds its loss config."""

import importlib.util
import pathlib

import pytest

from critique_jax.config import loss_config
from critique_jax.validation import PROGRAMS, validate

from critique_jax.critique.feedback import CRITIQUE_TYPES

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.py"))
# Config files with a variant argument (``--config=configs/x.py:<arg>``) and the args to check.
VARIANTS = {"countdown_critique_grpo": [t for t in CRITIQUE_TYPES if t != "model"]
                                      + ["rule_step,clip_cov", "rule_step,kl_cov", "none,clip_cov"],
            "self_train_countdown": ["rule_step", "none"],
            "countdown_collapse": ["ppo", "clip_cov", "kl_cov", "gppo"],
            "countdown_critique_collapse": ["none", "plan", "plan_hint", "resample", "rule_step", "indicative"]}
CASES = [(p, arg) for p in CONFIGS for arg in VARIANTS.get(p.stem, [None])]


@pytest.mark.parametrize("path, arg", CASES, ids=lambda x: x.stem if hasattr(x, "stem") else str(x))
def test_config_file_validates(path, arg, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config() if arg is None else module.get_config(arg)
    # File-backed tasks name their files relative to the working directory: validate where they exist.
    monkeypatch.chdir(tmp_path)
    for rel in (*config.task.train_files, *config.task.test_files):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    for devices in (1, 8):
        for program in PROGRAMS:  # every config carries the critic and self_train sections too
            if program == "self_train" and config.critique.type == "resample":  # an RL control only
                with pytest.raises(ValueError, match="critique.type='resample' is an RL control"):
                    validate(config, devices, program)
                continue
            validate(config, devices, program)
    loss = loss_config(config)
    assert loss.name == config.rl.loss.name
    if arg and "," in arg:  # type,loss: the loss is the critique_grpo base (or the whole loss without critique)
        assert getattr(loss, "base", loss).name == arg.split(",")[1]


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "countdown_grpo", "countdown_clip_cov", "countdown_kl_cov", "countdown_critique_grpo",
            "gsm8k", "math"} <= names


def test_critique_config_rejects_an_unknown_type():
    path = pathlib.Path(__file__).parent.parent / "configs" / "countdown_critique_grpo.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match=r"countdown_critique_grpo.py:oracle: critique type 'oracle', expected one of"):
        module.get_config("oracle")


def test_each_program_checks_its_own_sections():
    """RL settings are the train program's: a critic or self-training run does not fail on them,
    and each program fails on its own section, naming the key."""
    from critique_jax.config import default_config

    c = default_config()
    c.rl.prompts_per_step = 3  # not a multiple of the 8 batch shards
    with pytest.raises(ValueError, match=r"rl.prompts_per_step=3"):
        validate(c, 8, "train")
    validate(c, 8, "critic")
    validate(c, 8, "self_train")
    c.critic.batch_size = 3
    with pytest.raises(ValueError, match=r"critic.batch_size=3"):
        validate(c, 8, "critic")
    c.self_train.sft_batch_size = 3
    with pytest.raises(ValueError, match=r"self_train.sft_batch_size=3"):
        validate(c, 8, "self_train")
    validate(c, 8, "evaluate")  # sampling and model settings only
    with pytest.raises(ValueError, match=r"program='serve'"):
        validate(c, 8, "serve")
