"""One Critique-GRPO batch (Critique-GRPO, arXiv:2506.03106), in one of two scopes
(``critique.scope``):

* ``all`` (the paper's layout): per prompt, sample ``G - n_refine`` initial responses; critique
  every one of them with the run's :mod:`critique source <critique_jax.critique.sources>`
  (rules, the critique model, or the policy itself); the policy writes one refinement per
  response from ``(question, response, critique)``; per prompt ``n_refine`` refinements are
  kept (those of failed responses first, correct ones before wrong ones: first correct, else
  best) and placed in the group as responses *to the original prompt* (critique removed).
* ``all_wrong``: per prompt, sample ``G`` responses; only in groups where all ``G`` failed
  (where GRPO's advantages are zero and give no gradient) is every response critiqued and
  refined, and one refinement (the first correct, else the first) replaces the response it
  refines. The cost grows with the failures, not with the batch.

The group of ``G`` is scored together; the trainer computes advantages over it and the
``critique_grpo`` loss shapes the refinement tokens. With the ``resample`` type the
"refinement" is a fresh sample of the original prompt (no critique), kept as an ordinary
response: the compute-matched control.

Every sampling call is the one jitted sampler with fixed shapes (one prompt bucket per kind;
``all_wrong`` pads the critiqued groups to a power of two, so at most ``log2(B) + 1`` refinement
programs compile, each once). Only token ids and texts cross to the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from critique_jax.critique.feedback import refinement_reward
from critique_jax.critique.sources import CritiqueSource
from critique_jax.parallel.mesh import batch_shards
from critique_jax.perf import timed
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.rollout import Sampled, Sampling, masked_mean, sample_texts
from critique_jax.tasks import Problem


def select_refinements(initial_rewards: np.ndarray, refine_rewards: np.ndarray, n_refine: int) -> np.ndarray:
    """Indices [B, n_refine] into each prompt's refinements: failed-response refinements first,
    and among them correct before wrong (stable, so "first correct, else first")."""
    b, n0 = initial_rewards.shape
    if n_refine > n0:
        raise ValueError(f"n_refine={n_refine} exceeds the {n0} initial responses per prompt")
    # Sort key: (initial correct?, refinement wrong?) ascending, stable by position.
    order_key = (initial_rewards >= 1).astype(int) * 2 + (refine_rewards < 1).astype(int)
    return np.argsort(order_key, axis=1, kind="stable")[:, :n_refine]


def pass1_on_failed(initial_rewards: np.ndarray) -> float:
    """The policy's own pass@1 on the prompts of its failed responses: the baseline a
    refinement's success on failed responses is compared with.

    initial_rewards: [B, n0] 0/1 rewards of the initial responses. For each failed response,
    the mean reward of the other ``n0 - 1`` responses to its prompt (leave-one-out, so the
    failure itself does not count); averaged over failed responses. NaN when nothing failed
    or ``n0 < 2``.
    """
    r = np.asarray(initial_rewards, np.float64)
    failed = r < 1
    if r.shape[1] < 2 or not failed.any():
        return float("nan")
    others = (r.sum(1, keepdims=True) - r) / (r.shape[1] - 1)
    return float(others[failed].mean())


@dataclasses.dataclass(frozen=True)
class RefineSettings:
    """Critique-GRPO's group layout, from the config once per run: ``group_size`` G
    (``rl.group_size``), ``n_refine`` refinements kept per group (``critique.n_refine``),
    ``prompts_per_step`` (``rl.prompts_per_step``, the held-out evaluation's chunk) and the
    refinement prompts' ``refine_buckets`` (``critique.refine_buckets``)."""

    group_size: int
    n_refine: int
    prompts_per_step: int
    refine_buckets: tuple[int, ...]
    scope: str = "all"

    @classmethod
    def from_config(cls, c: Any) -> RefineSettings:
        return cls(int(c.rl.group_size), int(c.critique.n_refine), int(c.rl.prompts_per_step),
                   tuple(int(b) for b in c.critique.refine_buckets), str(c.critique.scope))


#: ``critique.scope`` values (module docstring).
SCOPES = ("all", "all_wrong")


@dataclasses.dataclass(frozen=True)
class Refinements:
    """``n0`` initial responses to each of ``B`` prompts, their critiques and one refinement of
    each (rows prompt-major: response ``j`` of prompt ``i`` is row ``i * n0 + j``)."""

    initial: Sampled              # B·n0 initial responses
    rewards: np.ndarray           # [B, n0] their 0/1 rewards
    critiques: list[str]          # B·n0 critiques, as the policy reads them
    refined: Sampled              # B·n0 refinements
    refine_rewards: np.ndarray    # [B, n0] their rewards (``refinement_reward``: no shortcut answers)
    metrics: dict[str, float]     # perf/critique_* and, for generated critiques, critique accuracy


def refine(run: Sampling, params: Any, owners: Sequence[Problem], responses: Sequence[str], seed: int,
           source: CritiqueSource, refine_buckets: Sequence[int],
           times: dict[str, float]) -> tuple[list[str], Sampled, np.ndarray, dict[str, float]]:
    """Critiques of ``responses`` (response ``i`` answers ``owners[i]``) and one refinement of
    each: ``(critiques, refinements, their rewards [N], critique metrics)``. Critiques are
    written with seeds from ``seed + 1``, refinements sampled with ``seed + 2``. The
    ``resample`` type writes no critique and samples the original prompt again."""
    task, temp = run.task, run.sampling.temperature
    if source.kind == "resample":
        critiques, metrics = [""] * len(responses), {}
        prompts, buckets = [run.prompts.solve(p.question) for p in owners], run.sampling.prompt_buckets
    else:
        written = source.write(run, params, owners, responses, lambda j: seed + 1 + j, times=times)
        critiques, metrics = written.texts, written.metrics
        prompts = [run.prompts.refine(p.question, t, k) for p, t, k in zip(owners, responses, critiques)]
        buckets = refine_buckets
    refined = sample_texts(run, (run.graphdef, params), prompts, buckets, seed + 2, 1, temp, times)
    with timed(times, "perf/score_s"):
        rewards = np.asarray([refinement_reward(task, p, t, source.kind) for p, t in zip(owners, refined.texts)],
                             np.float32)
    return critiques, refined, rewards, metrics


def critique_and_refine(run: Sampling, params: Any, problems: Sequence[Problem], n0: int, seed: int,
                        source: CritiqueSource, refine_buckets: Sequence[int], times: dict[str, float]) -> Refinements:
    """Samples ``n0`` responses per problem, critiques each with ``source`` and has the policy
    refine each once (:func:`refine`). Sampling calls use seeds ``seed``, ``seed + 1``
    (critiques) and ``seed + 2`` (refinements); their wall time is added to ``times``
    (``perf/sample_s``, ``perf/score_s``)."""
    b = len(problems)
    initial = sample_texts(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                           run.sampling.prompt_buckets, seed, n0, run.sampling.temperature, times)
    with timed(times, "perf/score_s"):
        init_rewards = rollout_lib.score(run.task, problems, initial.texts, n0)
    owners = [problems[i // n0] for i in range(b * n0)]
    critiques, refined, ref_rewards, metrics = refine(run, params, owners, initial.texts, seed, source,
                                                      refine_buckets, times)
    return Refinements(initial=initial, rewards=init_rewards.reshape(b, n0), critiques=critiques, refined=refined,
                       refine_rewards=ref_rewards.reshape(b, n0), metrics=metrics)


def refinement_metrics(rewards: np.ndarray, refine_rewards: np.ndarray) -> dict[str, float]:
    """How refinements compare with fresh samples, from [B, n0] rewards of initial responses and
    of their refinements: ``refine_success_on_failed`` (mean refinement reward over failed
    responses), ``refine_success_on_correct``, and the baseline ``pass1_on_failed_prompts``
    (see ``pass1_on_failed``). NaN where a mean has no terms."""
    failed = rewards < 1
    return {"refine_success_on_failed": float(refine_rewards[failed].mean()) if failed.any() else float("nan"),
            "refine_success_on_correct": float(refine_rewards[~failed].mean()) if (~failed).any() else float("nan"),
            "pass1_on_failed_prompts": pass1_on_failed(rewards)}


def padded_groups(n: int, n_groups: int, group_size: int, shards: int) -> int:
    """Groups to sample for ``n`` critiqued groups out of ``n_groups``: the smallest power of two
    >= n whose rows (x ``group_size``) divide over ``shards`` batch shards, else ``n_groups``."""
    size = 1
    while size < n_groups and (size < n or size * group_size % shards):
        size *= 2
    return min(size, n_groups)


def critique_batch(run: Sampling, params: Any, problems: Sequence[Problem], seed: int, source: CritiqueSource,
                   settings: RefineSettings, times: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Host arrays of one Critique-GRPO batch and its critique metrics (sampling seeds from ``seed``;
    the layout of ``settings.scope``, module docstring).

    Returns ``tokens``, ``valid`` [B·G, P + L], ``response_mask`` [B·G, L], ``rewards`` [B·G],
    ``is_refinement`` [B·G] (group-major; ``all``: each prompt's initial responses, then its
    refinements), ``solved`` [B] (a correct initial response) and metrics under ``critique/``,
    plus ``perf/critique_s`` (seconds spent writing critiques, inside ``perf/sample_s`` for
    generated ones and ``perf/score_s`` for rule ones) and, for generated critiques,
    ``perf/critique_tokens_per_s``.
    """
    if settings.scope == "all_wrong":
        return _all_wrong_batch(run, params, problems, seed, source, settings, times)
    g, r = settings.group_size, settings.n_refine
    n0, b = g - r, len(problems)
    out = critique_and_refine(run, params, problems, n0, seed, source, settings.refine_buckets, times)
    initial, refined = out.initial, out.refined

    chosen = select_refinements(out.rewards, out.refine_rewards, r)  # [B, r]
    flat_chosen = (np.arange(b)[:, None] * n0 + chosen).reshape(-1)
    # Group-major layout: rows [i*g, i*g + n0) initial, [i*g + n0, (i+1)*g) refinements.
    resp_tokens = np.concatenate([initial.tokens.reshape(b, n0, -1), refined.tokens[flat_chosen].reshape(b, r, -1)], 1)
    resp_mask = np.concatenate([initial.mask.reshape(b, n0, -1), refined.mask[flat_chosen].reshape(b, r, -1)], 1)
    rewards = np.concatenate([out.rewards, out.refine_rewards.reshape(-1)[flat_chosen].reshape(b, r)], 1)
    is_ref = np.concatenate([np.zeros((b, n0), bool), np.full((b, r), source.kind != "resample")], 1)
    tokens, valid = rollout_lib.sequence_arrays(initial.prompts, g, resp_tokens.reshape(b * g, -1),
                                                resp_mask.reshape(b * g, -1))

    metrics = {f"critique/{k}": v for k, v in refinement_metrics(out.rewards, out.refine_rewards).items()}
    metrics |= {
        "critique/groups_rescued": float(((out.rewards < 1).all(1) & (rewards[:, n0:] >= 1).any(1)).mean()),
        "critique/initial_reward": float(out.rewards.mean()),
        "critique/initial_entropy": masked_mean(initial.entropy, initial.mask),
        "critique/refinement_entropy": masked_mean(refined.entropy, refined.mask),
    } | out.metrics
    return dict(tokens=tokens, valid=valid, response_mask=resp_mask.reshape(b * g, -1),
                rewards=rewards.reshape(-1).astype(np.float32), is_refinement=is_ref.reshape(-1),
                solved=(out.rewards >= 1).any(1)), metrics


def _all_wrong_batch(run: Sampling, params: Any, problems: Sequence[Problem], seed: int, source: CritiqueSource,
                     settings: RefineSettings,
                     times: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`critique_batch` in the ``all_wrong`` scope: ``G`` samples per prompt, every
    response of an all-wrong group critiqued and refined, one refinement per such group
    replacing the response it refines. Metrics add ``critique/groups_all_wrong`` (share of
    groups) and ``critique/refined`` (responses refined, padding excluded)."""
    g, b = settings.group_size, len(problems)
    initial = sample_texts(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                           run.sampling.prompt_buckets, seed, g, run.sampling.temperature, times)
    with timed(times, "perf/score_s"):
        rewards = rollout_lib.score(run.task, problems, initial.texts, g).reshape(b, g).astype(np.float32)
    resp_tokens, resp_mask = initial.tokens.copy(), initial.mask.copy()
    is_ref = np.zeros((b, g), bool)
    wrong = np.flatnonzero((rewards < 1).all(1))
    metrics = {"critique/groups_all_wrong": float(len(wrong) / b), "critique/refined": float(len(wrong) * g),
               "critique/initial_reward": float(rewards.mean()),
               "critique/initial_entropy": masked_mean(initial.entropy, initial.mask)}
    solved = (rewards >= 1).any(1)  # before any replacement
    rescued = 0
    if len(wrong):
        n_pad = padded_groups(len(wrong), b, g, batch_shards(run.mesh))
        groups = np.concatenate([wrong, np.full(n_pad - len(wrong), wrong[-1])])  # padding repeats the last group
        rows = (groups[:, None] * g + np.arange(g)).reshape(-1)
        _, refined, ref_rewards, written = refine(run, params, [problems[i // g] for i in rows],
                                                  [initial.texts[i] for i in rows], seed, source,
                                                  settings.refine_buckets, times)
        n = len(wrong) * g  # the padding's rows come last
        ref_rewards = ref_rewards[:n].reshape(-1, g)
        pick = select_refinements(np.zeros_like(ref_rewards), ref_rewards, 1)[:, 0]  # first correct, else first
        src = np.arange(len(wrong)) * g + pick
        dst = wrong * g + pick
        resp_tokens[dst], resp_mask[dst] = refined.tokens[src], refined.mask[src]
        rewards[wrong, pick] = ref_rewards[np.arange(len(wrong)), pick]
        is_ref[wrong, pick] = source.kind != "resample"
        rescued = int((ref_rewards.max(1) >= 1).sum())
        metrics |= {"critique/refine_success_on_failed": float(ref_rewards.mean()),
                    "critique/refinement_entropy": masked_mean(refined.entropy[:n], refined.mask[:n])} | written
    metrics["critique/groups_rescued"] = float(rescued / b)
    tokens, valid = rollout_lib.sequence_arrays(initial.prompts, g, resp_tokens, resp_mask)
    return dict(tokens=tokens, valid=valid, response_mask=resp_mask, rewards=rewards.reshape(-1),
                is_refinement=is_ref.reshape(-1), solved=solved), metrics


#: Seed offset of the held-out refinement evaluation's sampling, apart from the RL steps'.
EVAL_SEED = 1 << 30


def evaluate_refinement(run: Sampling, params: Any, source: CritiqueSource, settings: RefineSettings,
                        problems: Sequence[Problem], step: int) -> dict[str, float]:
    """Refinement against resampling on held-out problems: per problem ``G - n_refine`` samples,
    each failed one critiqued and refined once, as in an RL step (chunks of
    ``rl.prompts_per_step`` problems, the last padded and the padding dropped, so the shapes are
    the RL step's and nothing new compiles). Returns ``eval/critique/refine_success_on_failed``,
    ``.../refine_success_on_correct``, ``.../pass1_on_failed_prompts``, ``.../initial_reward``
    (the initial samples' mean reward) and ``.../n_failed`` (the failed responses behind the
    first)."""
    n0, bp = settings.group_size - settings.n_refine, settings.prompts_per_step
    rewards, refine_rewards = [], []
    for start in range(0, len(problems), bp):
        chunk = list(problems[start:start + bp])
        padded = chunk + [chunk[-1]] * (bp - len(chunk))
        out = critique_and_refine(run, params, padded, n0, EVAL_SEED + step * 1000 + start // bp, source,
                                  settings.refine_buckets, {})
        rewards.append(out.rewards[:len(chunk)])
        refine_rewards.append(out.refine_rewards[:len(chunk)])
    r, rr = np.concatenate(rewards), np.concatenate(refine_rewards)
    metrics = refinement_metrics(r, rr) | {"initial_reward": float(r.mean()), "n_failed": float((r < 1).sum())}
    return {f"eval/critique/{k}": v for k, v in metrics.items()}
