"""Every config file under configs/ loads, validates and builds its loss config."""

import importlib.util
import pathlib

import pytest

from critique_jax.config import loss_config, validate
from critique_jax.critique.critic import validate_critic

CONFIGS = sorted((pathlib.Path(__file__).parent.parent / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_file_validates(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for devices in (1, 8):
        validate(config, devices)
        validate_critic(config, devices)  # every config carries the critic section too
    assert loss_config(config).name == config.rl.loss.name


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"quickstart", "countdown_grpo", "countdown_clip_cov", "countdown_kl_cov"} <= names
