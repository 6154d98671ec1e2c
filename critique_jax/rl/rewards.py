"""RL rewards: the task's verifier plus user reward functions, weighted (config ``rl.rewards``).

A spec is a comma-separated list of ``name[:weight]`` (weight default 1)::

    correct                       the task's verifier: 1 when the answer is right (the default)
    format:0.1                    1 when the response has the task's answer format (Task.format_ok)
    confidence                    RLSF: the frozen reference policy's mean top-1 minus top-2 probability
                                  over the final-answer tokens, in [0, 1] (critique_jax.rl.confidence);
                                  with it the step also logs reward/confidence_auroc, its AUROC against
                                  the verifier's 0/1 reward (NaN when all are right or all wrong)
    my_rewards:brevity:0.05       function ``brevity`` of the importable module ``my_rewards``
    path/to/rewards.py:brevity    function ``brevity`` of that file

A user function is called as ``fn(problem, completion) -> float`` (``problem``: the
:class:`~critique_jax.tasks.base.Problem` record: ``uid``, ``question``, ``answer``,
``difficulty``, ``meta``; ``completion``: the decoded response text) and must return a finite
number. The reward of a response is the weighted sum; each term's batch mean is logged as
``reward/<name>``. A function that raises or returns something else stops the step with an error
naming the reward, the problem id and the completion: nothing is scored 0 silently.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
from typing import Callable, Sequence

import numpy as np

from critique_jax.tasks import Problem, Task

RewardFn = Callable[[Problem, str], float]
BUILTIN = ("correct", "format", "confidence")


@dataclasses.dataclass(frozen=True)
class Reward:
    """One term: ``name`` (as logged), ``fn`` (None for the built-ins) and ``weight``."""

    name: str
    weight: float
    fn: RewardFn | None = None


def _load(module: str, function: str, spec: str) -> RewardFn:
    try:
        if module.endswith(".py"):
            if not os.path.isfile(module):
                raise FileNotFoundError(f"no such file {module}")
            loader = importlib.util.spec_from_file_location(os.path.basename(module)[:-3], module)
            mod = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's spec to fix
        raise ValueError(f"config rl.rewards={spec!r}: cannot import {module!r} ({type(e).__name__}: {e})") from None
    fn = getattr(mod, function, None)
    if not callable(fn):
        raise ValueError(f"config rl.rewards={spec!r}: {module!r} has no function {function!r}")
    return fn


def parse_rewards(spec: str) -> list[Reward]:
    """The reward terms of ``spec`` (module docstring); errors name the config key and the term."""
    terms = [t.strip() for t in spec.split(",") if t.strip()]
    if not terms:
        raise ValueError("config rl.rewards is empty: expected e.g. 'correct' or 'correct,format:0.1'")
    out = []
    for term in terms:
        parts = term.split(":")
        weight = 1.0
        if len(parts) > 1:
            try:
                weight = float(parts[-1])
                parts = parts[:-1]
            except ValueError:
                pass
        if not math.isfinite(weight):
            raise ValueError(f"config rl.rewards={spec!r}: term {term!r} has a non-finite weight")
        if len(parts) == 1 and parts[0] in BUILTIN:
            out.append(Reward(parts[0], weight))
        elif len(parts) == 2:
            out.append(Reward(parts[1], weight, _load(parts[0], parts[1], spec)))
        else:
            raise ValueError(f"config rl.rewards={spec!r}: term {term!r}; expected 'correct', 'format', "
                             "'confidence' or 'module:function' (each optionally ':weight')")
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise ValueError(f"config rl.rewards={spec!r}: reward names {names} repeat")
    return out


def uses_confidence(rewards: Sequence[Reward]) -> bool:
    """Whether a term is the built-in ``confidence`` (the step then needs the reference policy)."""
    return any(r.name == "confidence" and r.fn is None for r in rewards)


def score_rewards(rewards: Sequence[Reward], task: Task, problems: Sequence[Problem], texts: Sequence[str],
                  group_size: int, correct: np.ndarray,
                  confidence: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """The weighted reward [N] of ``texts`` (text ``i`` answers ``problems[i // group_size]``) and
    each term's batch mean (``reward/<name>``). ``correct`` [N]: the verifier's rewards, already
    computed for the ``correct`` term and for the metrics; ``confidence`` [N]: the reference
    policy's answer confidences, for the ``confidence`` term."""
    total = np.zeros(len(texts), np.float64)
    means = {}
    for r in rewards:
        if r.name == "correct":
            values = np.asarray(correct, np.float64)
        elif r.name == "format" and r.fn is None:
            values = np.asarray([float(task.format_ok(t)) for t in texts])
        elif r.name == "confidence" and r.fn is None:
            if confidence is None:
                raise ValueError("reward 'confidence' needs the reference policy's confidences (score_rewards(..., "
                                 "confidence=)); none were given")
            values = np.asarray(confidence, np.float64)
        else:
            values = np.asarray([_call(r, problems[i // group_size], t) for i, t in enumerate(texts)])
        total += r.weight * values
        means[f"reward/{r.name}"] = float(values.mean())
    return total.astype(np.float32), means


def _call(r: Reward, problem: Problem, text: str) -> float:
    shown = text if len(text) <= 200 else text[:200] + "..."
    try:
        value = r.fn(problem, text)
    except Exception as e:  # noqa: BLE001 - reported with the problem and completion, then stops the run
        raise ValueError(f"reward {r.name!r} raised {type(e).__name__}: {e} on problem {problem.uid!r}, "
                         f"completion {shown!r}") from e
    if not isinstance(value, (int, float, np.number)) or not math.isfinite(float(value)):
        raise ValueError(f"reward {r.name!r} returned {value!r} (expected a finite number) on problem "
                         f"{problem.uid!r}, completion {shown!r}")
    return float(value)
