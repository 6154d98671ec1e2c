"""A run's policy, sampled again for analysis: per-token entropies, log-probs and covariances.

    policy = critique_jax.runs.load_policy("runs/repro/sft", "sft")   # or "final", or an RL step
    sample = sample_policy(policy, problems(policy, "test", 64), group_size=8)
    sample.entropy, sample.mask                               # [N, L] per-token entropies (nats)

The policy is sampled with the project's sampler (:func:`critique_jax.rl.rollout.sample_texts`:
the same prompts, buckets, temperature and verifier as training), so the entropies are those
the trainer logs and the forking-token mask thresholds (arXiv:2506.01939).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from critique_jax.ops import token_covariance
from critique_jax.parallel.mesh import batch_shards
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.advantages import compute_advantages
from critique_jax.tasks import Problem


@dataclasses.dataclass(frozen=True)
class Policy:
    """A restored policy: ``run`` (a :class:`~critique_jax.runs.run.Run`: config, task, data,
    tokenizer, mesh, model definition), ``params`` and where they came from
    (:func:`critique_jax.runs.load_policy`)."""

    run: Any
    params: nnx.State
    source: str


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
    temp = run.sampling.temperature if temperature is None else temperature
    s = rollout_lib.sample_texts(run, (run.graphdef, policy.params), [run.prompts.solve(p.question) for p in probs],
                                 run.sampling.prompt_buckets, seed, group_size, temp)
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
