"""A run's policy, sampled again for analysis: per-token entropies, log-probs and covariances.

    policy = load_policy("runs/repro/sft", "sft")            # or "final", or an RL step
    sample = sample_policy(policy, problems(policy, "test", 64), group_size=8)
    sample.entropy, sample.mask                               # [N, L] per-token entropies (nats)

The policy is restored from the run's own checkpoints with the run's ``config.json`` and sampled
with the project's sampler (:func:`critique_jax.rl.rollout.sample_texts`: the same prompts,
buckets, temperature and verifier as training), so the entropies are those the trainer logs
and the forking-token mask thresholds (DESIGN §4.6). Nothing is written to the run directory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from critique_jax import config as config_lib
from critique_jax.ops import token_covariance
from critique_jax.parallel.mesh import batch_shards
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl import trainer
from critique_jax.rl.advantages import compute_advantages
from critique_jax.tasks import Problem
from critique_jax.text.templates import solve_prompt


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def load_run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The locked config of a run directory: its ``config.json`` over :func:`default_config`
    (keys the file lacks keep their defaults). Errors name the file and the key."""
    path = Path(workdir) / "config.json"
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
    """The finished steps of an orbax checkpoint directory (step folders holding ``state``),
    listed without opening a manager (which could clean up a running job's temporary folders)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "state").is_dir())


def restore_params(directory: str | Path, step: int, like: Any) -> Any:
    """Only the ``params`` of the checkpoint ``<directory>/<step>`` (a training state also holds
    optimiser moments, keys, ...): an orbax partial restore onto ``like``'s shardings."""
    path = Path(directory).resolve() / str(step) / "state"
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint {path}; steps in {directory}: {checkpoint_steps(directory)}")
    target = {"params": like}
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(path, args=args)["params"]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A restored policy: ``run`` (the trainer's :class:`~critique_jax.rl.trainer.Run`: config,
    task, tokenizer, mesh, model definition), ``params`` and where they came from."""

    run: trainer.Run
    params: nnx.State
    source: str


def load_policy(workdir: str | Path, which: str | int = "final") -> Policy:
    """The policy of a run directory: ``"sft"`` (its ``sft_policy/``, the SFT warm-up's end),
    ``"final"`` (the latest step of ``checkpoints/``) or an int step of ``checkpoints/``."""
    workdir = Path(workdir)
    config = load_run_config(workdir)
    if which == "sft":
        directory = Path(trainer.init_from_dir(str(workdir)))
    elif which == "final" or isinstance(which, int):
        directory = workdir / "checkpoints"
    else:
        raise ValueError(f"load_policy: which={which!r}; expected 'sft', 'final' or a step number")
    steps = checkpoint_steps(directory)
    if not steps:
        raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    step = steps[-1] if not isinstance(which, int) else which
    with tempfile.TemporaryDirectory(prefix="critique_jax_analysis_") as scratch:  # setup locks it as a run directory
        run = trainer.setup(config, scratch)
    params = restore_params(directory, step, trainer.init_params_abstract(run))
    return Policy(run=run, params=params, source=str(directory / str(step)))


def problems(policy: Policy, split: str, n: int) -> list[Problem]:
    """The first ``n`` problems of the run's ``train`` or ``test`` split, rounded down to a
    multiple of the mesh's batch shards (at least one multiple; the sampler splits prompts over them)."""
    source = {"train": policy.run.train, "test": policy.run.test}.get(split)
    if source is None:
        raise ValueError(f"split={split!r}: expected 'train' or 'test'")
    shards = batch_shards(policy.run.mesh)
    n = max(shards, min(n, len(source)) // shards * shards)
    if n > len(source):
        raise ValueError(f"the {split} split has {len(source)} problems, fewer than the {shards} batch shards")
    return [source[i].problem for i in range(n)]


@dataclasses.dataclass(frozen=True)
class TokenSample:
    """``group_size`` sampled responses per problem; sample ``i`` answers ``problems[i // group_size]``.

    tokens [N, L] int32; mask [N, L] bool (response tokens, end token included); logp [N, L]
    (log-prob under ``softmax(logits / T)``); entropy [N, L] (nats, same distribution);
    texts [N]; rewards [N] float32 (the task's verifier).
    """

    problems: tuple[Problem, ...]
    group_size: int
    tokens: np.ndarray
    mask: np.ndarray
    logp: np.ndarray
    entropy: np.ndarray
    texts: list[str]
    rewards: np.ndarray


def sample_policy(policy: Policy, probs: Sequence[Problem], group_size: int, seed: int = 0,
                  temperature: float | None = None) -> TokenSample:
    """Samples ``group_size`` responses per problem with the run's sampler settings
    (temperature: the run's ``sampling.temperature`` unless given) and scores them."""
    run = policy.run
    temp = run.config.sampling.temperature if temperature is None else temperature
    s = rollout_lib.sample_texts(run, (run.graphdef, policy.params), [solve_prompt(p.question) for p in probs],
                                 run.config.sampling.prompt_buckets, seed, group_size, temp)
    rewards = rollout_lib.score(run.task, probs, s.texts, group_size)
    return TokenSample(problems=tuple(probs), group_size=group_size, tokens=s.tokens, mask=s.mask.astype(bool),
                       logp=s.logp, entropy=s.entropy, texts=s.texts, rewards=rewards)


def rollout_covariance(sample: TokenSample, advantage: str = "grpo") -> np.ndarray:
    """Per-token covariance ``(logp - mean logp)(A - mean A)`` [N, L] float32 (0 off the mask), means
    over all valid tokens of the sample, ``A`` the ``advantage`` estimator over each group:
    what the trainer logs as ``train/cov_*`` (there per update minibatch), here on one batch."""
    groups = np.repeat(np.arange(len(sample.problems)), sample.group_size)
    return np.asarray(_covariance(advantage, sample.logp, sample.rewards, groups, sample.mask))


@functools.partial(jax.jit, static_argnums=0)
def _covariance(advantage: str, logp, rewards, groups, mask) -> jax.Array:
    adv = compute_advantages(advantage, rewards, groups)
    return token_covariance(logp, jnp.broadcast_to(adv[:, None], mask.shape), mask)


def token_context(policy: Policy, sample: TokenSample, row: int, col: int, before: int = 8) -> dict[str, Any]:
    """The token at ``(row, col)`` of ``sample`` with the text before it: ``question``,
    ``context`` (the previous ``before`` response tokens, decoded), ``token`` (its SentencePiece
    piece: ``▁`` is a space, ``⏎`` a newline, ``</s>`` the end), ``entropy`` and ``logp``."""
    tok = policy.run.tok
    ids = sample.tokens[row]
    piece = tok.id_to_piece(int(ids[col]))
    return dict(question=sample.problems[row // sample.group_size].question,
                context=tok.decode(ids[max(0, col - before):col]).replace("\n", " ⏎ "),
                token=piece.replace("\n", "⏎"),
                entropy=float(sample.entropy[row, col]), logp=float(sample.logp[row, col]))
