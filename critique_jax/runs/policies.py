"""A finished (or running) train run's policy, loaded again for analysis, read-only.

    policy = load_policy("runs/repro/sft", "sft")            # or "final", or an RL step
    sample = token_entropy.sample_policy(policy, token_entropy.problems(policy, "test", 64), group_size=8)

The policy is restored from the run's own checkpoints with the run's ``config.json`` (a
read-only :class:`~critique_jax.checkpoint.Checkpointer`: safe on a live run's directory) and
sampled with the project's sampler (:mod:`critique_jax.analysis.token_entropy`). Nothing is
written to the run directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import ml_collections

from critique_jax import config as config_lib, storage
from critique_jax.analysis.token_entropy import Policy
from critique_jax.runs import roles
from critique_jax.runs.layout import CHECKPOINTS, RunDir, reader
from critique_jax.runs.run import Run, setup


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The locked config of a run directory: its ``config.json`` over :func:`default_config`
    (keys the file lacks keep their defaults). Errors name the file and the key."""
    path = storage.path(RunDir(str(workdir)).config_file, "run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a run directory of critique_jax.train")
    c = config_lib.default_config()  # locked: an unknown key raises
    for key, value in _flatten(json.loads(path.read_text())):
        try:
            c.update_from_flattened_dict({key: value})
        except (KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{path}: key {key}={value!r} does not fit this version's config ({e})") from None
    return c


def checkpoint_steps(directory: str | Path) -> list[int]:
    """The finished steps of a checkpoint directory (none when it does not exist), read-only."""
    if not storage.path(directory, "checkpoint directory").is_dir():
        return []
    with reader(str(directory)) as ckpt:
        return ckpt.all_steps()


def saved_policies(workdir: str | Path) -> tuple[int | None, list[int]]:
    """What a run directory holds, read-only: the step of its SFT policy (``sft_policy/``; None
    when it has none, as a run with ``init_from`` has) and the finished steps of ``checkpoints/``."""
    sft = checkpoint_steps(roles.init_from_dir(str(workdir)))
    return (sft[-1] if sft else None), checkpoint_steps(RunDir(str(workdir)) / CHECKPOINTS)


def starting_policy(workdir: str | Path) -> tuple[str, int | None]:
    """The folder of the policy a run's RL started from and its global step in this run: the run's
    own ``sft_policy/`` and its step, or for a run with ``init_from`` (which has none) that run's
    ``sft_policy/`` at step 0; step None when the folder holds no finished checkpoint."""
    own = roles.init_from_dir(str(workdir))
    steps = checkpoint_steps(own)
    if steps:
        return own, steps[-1]
    if storage.path(RunDir(str(workdir)).config_file).is_file() and (source := load_run_config(workdir).init_from):
        theirs = roles.init_from_dir(source)
        return theirs, (0 if checkpoint_steps(theirs) else None)
    return own, None


def final_policy(workdir: str | Path) -> str | int | None:
    """Which policy of a run directory is its latest: the last step of ``checkpoints/``, or ``"sft"``
    when ``sft_policy/`` is later (an SFT-only run, ``rl.steps=0``, saves its last SFT step there and
    keeps only earlier periodic steps in ``checkpoints/``); None when the run holds neither."""
    sft, steps = saved_policies(workdir)
    if steps and (sft is None or steps[-1] >= sft):
        return steps[-1]
    return "sft" if sft is not None else None


def load_policy(workdir: str | Path, which: str | int = "final", run: Run | None = None) -> Policy:
    """The policy of a run directory: ``"sft"`` (its ``sft_policy/``, the SFT warm-up's end, or for a
    run with ``init_from`` the policy it started from, :func:`starting_policy`),
    ``"final"`` (the latest policy, :func:`final_policy`) or an int step of ``checkpoints/``.
    ``run``: the set-up of another policy of this run to reuse (several policies of one run then
    share one set-up, and their sampler compiles once); None sets one up."""
    workdir = str(workdir)
    config = load_run_config(workdir) if run is None else None
    if which == "final":
        which = final_policy(workdir) or "final"  # neither: the error below names checkpoints/
    if which == "sft":
        directory = starting_policy(workdir)[0]
    elif which == "final" or isinstance(which, int):
        directory = RunDir(workdir) / CHECKPOINTS
    else:
        raise ValueError(f"load_policy: which={which!r}; expected 'sft', 'final' or a step number")
    if not checkpoint_steps(directory):
        raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    if run is None:  # set up in a scratch folder: setup locks its folder as a run directory
        with tempfile.TemporaryDirectory(prefix="critique_jax_analysis_") as scratch:
            run = setup(config, scratch)
    with reader(directory) as ckpt:
        step = ckpt.latest_step() if not isinstance(which, int) else which
        params = ckpt.restore(step, like={"params": run.abstract_params()}, partial=True)[0]["params"]
    return Policy(run=run, params=params, source=os.path.join(directory, str(step)))
