"""One Critique-GRPO batch (Critique-GRPO, arXiv:2506.03106; DESIGN §3 steps 2-6, §4.7).

Per prompt: sample ``G - n_refine`` initial responses; critique every one of them (rules, the
critique model, or the policy itself); the policy writes one refinement per response from
``(question, response, critique)``; per prompt ``n_refine`` refinements are kept — those of
failed responses first, correct ones before wrong ones (first correct, else best) — and
placed in the group as responses *to the original prompt* (critique removed). The group of
``G`` is scored together; the trainer computes advantages over it and the ``critique_grpo``
loss shapes the refinement tokens.

Every sampling call is the one jitted sampler with fixed shapes (one prompt bucket per
kind), so a run compiles three (four with a critique model) sampler programs once.
Only token ids and texts cross to the host.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from critique_jax.critique.feedback import RULE_TYPES, refinement_reward, rule_critiques, score_critiques
from critique_jax.rl import rollout as rollout_lib
from critique_jax.perf import timed
from critique_jax.rl.rollout import masked_mean, sample_texts
from critique_jax.tasks import Problem
from critique_jax.text.templates import condense_critique, critique_prompt, refine_prompt, solve_prompt


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


def critique_batch(run, params: Any, problems: Sequence[Problem], step: int, critic: Any | None,
                   times: dict[str, float]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Host arrays of one Critique-GRPO batch and its critique metrics.

    Returns ``tokens``, ``valid`` [B·G, P + L], ``response_mask`` [B·G, L], ``rewards`` [B·G],
    ``is_refinement`` [B·G] (group-major: each prompt's initial responses, then its
    refinements) and metrics under ``critique/``, plus ``perf/critique_s`` (seconds spent
    writing critiques, inside ``perf/sample_s`` for generated ones and ``perf/score_s`` for
    rule ones) and, for generated critiques, ``perf/critique_tokens_per_s``.
    """
    c, task = run.config, run.task
    kind, g, r = c.critique.type, c.rl.group_size, c.critique.n_refine
    n0, b = g - r, len(problems)
    policy = (run.graphdef, params)
    seed = c.seed * 1_000_003 + step
    temp = c.sampling.temperature

    initial = sample_texts(run, policy, [solve_prompt(p.question) for p in problems], c.sampling.prompt_buckets,
                           seed, n0, temp, times)
    with timed(times, "perf/score_s"):
        init_rewards = rollout_lib.score(task, problems, initial.texts, n0)
    owners = [problems[i // n0] for i in range(b * n0)]

    critique_perf: dict[str, float] = {}
    if kind in RULE_TYPES:
        with timed(times, "perf/score_s"), timed(critique_perf, "perf/critique_s"):
            critiques = rule_critiques(kind, task, problems, initial.texts, n0, c.critique.format)
    else:
        if kind == "model" and critic is None:
            raise ValueError(f"critique.type={kind!r} needs a critique model (critique.critic_from)")
        model, sampler = (policy, None) if kind == "self" else (critic.model, critic.sampler)
        with timed(critique_perf, "perf/critique_s"):
            prompts = [critique_prompt(p.question, t) for p, t in zip(owners, initial.texts)]
            generated = sample_texts(run, model, prompts, c.critique.prompt_buckets, seed + 1, 1, 0.0, times,
                                     sampler)  # greedy
        critique_perf["perf/critique_tokens_per_s"] = float(generated.mask.sum()) / max(
            critique_perf["perf/critique_s"], 1e-9)
        # The policy reads step critiques in critique.format: a worked critique's notes are dropped
        # (all of them, or all but the first wrong step's).
        critiques = [condense_critique(t, c.critique.format == "explained") for t in generated.texts]
    refined = sample_texts(run, policy, [refine_prompt(p.question, t, k) for p, t, k in
                                         zip(owners, initial.texts, critiques)],
                           c.critique.refine_buckets, seed + 2, 1, temp, times)
    with timed(times, "perf/score_s"):
        ref_rewards = np.asarray([refinement_reward(task, p, t, kind) for p, t in zip(owners, refined.texts)],
                                 np.float32)

    chosen = select_refinements(init_rewards.reshape(b, n0), ref_rewards.reshape(b, n0), r)  # [B, r]
    flat_chosen = (np.arange(b)[:, None] * n0 + chosen).reshape(-1)
    # Group-major layout: rows [i*g, i*g + n0) initial, [i*g + n0, (i+1)*g) refinements.
    resp_tokens = np.concatenate([initial.tokens.reshape(b, n0, -1), refined.tokens[flat_chosen].reshape(b, r, -1)], 1)
    resp_mask = np.concatenate([initial.mask.reshape(b, n0, -1), refined.mask[flat_chosen].reshape(b, r, -1)], 1)
    rewards = np.concatenate([init_rewards.reshape(b, n0), ref_rewards[flat_chosen].reshape(b, r)], 1)
    is_ref = np.concatenate([np.zeros((b, n0), bool), np.ones((b, r), bool)], 1)
    tokens, valid = rollout_lib.sequence_arrays(initial.prompts, g, resp_tokens.reshape(b * g, -1),
                                                resp_mask.reshape(b * g, -1))

    failed = init_rewards < 1
    metrics = {
        "critique/refine_success_on_failed": float(ref_rewards[failed].mean()) if failed.any() else float("nan"),
        "critique/refine_success_on_correct": float(ref_rewards[~failed].mean()) if (~failed).any() else float("nan"),
        "critique/groups_rescued": float(((init_rewards.reshape(b, n0) < 1).all(1)
                                          & (rewards[:, n0:] >= 1).any(1)).mean()),
        "critique/initial_reward": float(init_rewards.mean()),
        "critique/pass1_on_failed_prompts": pass1_on_failed(init_rewards.reshape(b, n0)),
        "critique/initial_entropy": masked_mean(initial.entropy, initial.mask),
        "critique/refinement_entropy": masked_mean(refined.entropy, refined.mask),
    } | critique_perf
    if kind not in RULE_TYPES:
        metrics |= critique_accuracy(task, owners, initial.texts, critiques)
    return dict(tokens=tokens, valid=valid, response_mask=resp_mask.reshape(b * g, -1),
                rewards=rewards.reshape(-1).astype(np.float32), is_refinement=is_ref.reshape(-1)), metrics


def critique_accuracy(task, problems: Sequence[Problem], responses: Sequence[str],
                      critiques: Sequence[str]) -> dict[str, float]:
    """Generated critiques scored against the step checker (see ``score_critiques``)."""
    scores = score_critiques(critiques, [task.check_steps(p, r) for p, r in zip(problems, responses)])
    return {f"critique/{k}": v for k, v in scores.items() if k in ("verdict_acc", "first_wrong_acc", "parse_fail")}
