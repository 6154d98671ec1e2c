"""The RL loop: from the SFT policy (or the latest RL checkpoint), every step samples a batch
(with critiques and refinements when configured), scores it, computes group advantages,
recomputes old and reference log-probs when needed and runs ``rl.epochs x rl.minibatches``
jitted updates (:func:`critique_jax.rl.train_step.rl_update`). Evaluation, logging and
checkpoints are hooks on the loop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from critique_jax import config as config_lib
from critique_jax.checkpoint import Checkpointer
from critique_jax.critique.loop import RefineSettings, critique_batch
from critique_jax.data import BatchIterator
from critique_jax.metrics import Progress
from critique_jax.ops.masked import masked_mean
from critique_jax.parallel.distributed import to_host
from critique_jax.perf import CompileCounter, timed
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.advantages import compute_advantages
from critique_jax.rl.guard import NonFiniteGuard
from critique_jax.rl.confidence import answer_span_mask, auroc, reference_confidence
from critique_jax.rl.rewards import Reward, parse_rewards, score_rewards, uses_confidence
from critique_jax.rl.train_step import SequenceBatch, initial_response_mask, make_optimizer, rl_update, token_stats_fn
from critique_jax.runs.evaluate import evaluate
from critique_jax.runs.loop import Loop, Step
from critique_jax.critique.sources import CritiqueSource
from critique_jax.runs import roles
from critique_jax.runs.run import Run, rl_pool
from critique_jax.runs.state import (all_finite, checkpoint_state, init_state, replicated_key,
                                     restored_state, scalars, state_shardings)
from critique_jax.tasks import Problem, verifier

log = logging.getLogger("critique_jax")


#: The reference policy's answer confidences [N] of a batch (response_mask: the responses) and its
#: answer-span mask [N, L] (:func:`critique_jax.rl.confidence.reference_confidence`, on the host).
Confidence = Callable[[SequenceBatch, Any], np.ndarray]


def plain_batch(run: Run, params: nnx.State, problems: list[Problem], step: int, rewards_spec: list[Reward],
                times: dict[str, float], confidence: Confidence | None = None) -> tuple[dict, dict]:
    """GRPO rollouts: ``G`` samples per prompt, scored by the weighted ``rl.rewards`` terms
    (``reward/<name>``: each term's batch mean; with the ``confidence`` term also
    ``reward/confidence_auroc``, its AUROC against the verifier). Host arrays (see ``critique_batch``)."""
    c = run.config
    g = c.rl.group_size
    s = rollout_lib.sample_texts(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                                 c.sampling.prompt_buckets, c.seed * 1_000_003 + step, g, c.sampling.temperature,
                                 times)
    tokens, valid = rollout_lib.sequence_arrays(s.prompts, g, s.tokens, s.mask)
    with timed(times, "perf/score_s"):
        correct = rollout_lib.score(run.task, problems, s.texts, g)
        conf = None
        if confidence is not None:
            span = answer_span_mask(run.task, run.tok, s.tokens, s.mask, s.texts, c.rl.confidence_span)
            seqs = SequenceBatch(tokens=run.shard(tokens), valid=run.shard(valid), response_mask=run.shard(s.mask))
            conf = confidence(seqs, run.shard(span))
        rewards, terms = score_rewards(rewards_spec, run.task, problems, s.texts, g, correct, conf)
    arrays = dict(tokens=tokens, valid=valid, response_mask=s.mask, old_logp=s.logp, rewards=rewards,
                  solved=correct.reshape(len(problems), g).max(1) >= 1)
    metrics = {"train/entropy": rollout_lib.masked_mean(s.entropy, s.mask),
               "train/finished_frac": float(s.finished.mean())}
    if conf is not None:
        terms["reward/confidence_auroc"] = auroc(conf, correct)
    return arrays, metrics | (terms if len(rewards_spec) > 1 or conf is not None else {})


def rl_batch(run: Run, params: nnx.State, source: CritiqueSource | None, problems: list[Problem],
             step: int, rewards_spec: list[Reward], refine: RefineSettings,
             confidence: Confidence | None = None) -> tuple[SequenceBatch, dict, np.ndarray]:
    """Samples (with critiques and refinements if configured), scores and packs one RL batch
    (``confidence``: for the ``confidence`` reward term). Returns the batch, its metrics and
    which prompts [B] had a correct initial response (refinements and resamples not counted)."""
    c = run.config
    g = c.rl.group_size
    times: dict[str, float] = {"perf/sample_s": 0.0, "perf/score_s": 0.0}
    if source is None:
        arrays, metrics = plain_batch(run, params, problems, step, rewards_spec, times, confidence)
    else:
        arrays, metrics = critique_batch(run, params, problems, c.seed * 1_000_003 + step, source,
                                         refine, times)
        metrics["train/entropy"] = metrics["critique/initial_entropy"]
    rewards = arrays["rewards"]
    groups = np.repeat(np.arange(len(problems)), g)
    adv = np.asarray(compute_advantages(c.rl.advantage, jnp.asarray(rewards), jnp.asarray(groups)), np.float32)
    batch = SequenceBatch(tokens=run.shard(arrays["tokens"]), valid=run.shard(arrays["valid"]),
                          response_mask=run.shard(arrays["response_mask"]),
                          old_logp=run.shard(arrays["old_logp"]) if "old_logp" in arrays else None,
                          advantages=run.shard(adv),
                          is_refinement=run.shard(arrays["is_refinement"]) if "is_refinement" in arrays else None)
    timeouts = verifier.take_timeout_count()  # answer checks cut by their timeout this step (scored wrong)
    if timeouts:
        metrics["train/verify_timeouts"] = float(timeouts)
    per_group = rewards.reshape(-1, g).mean(1)
    mask = arrays["response_mask"]
    metrics |= {
        "train/reward": float(rewards.mean()),
        "train/response_len": float(mask.sum(1).mean()),
        "train/groups_all_correct": float((per_group == 1).mean()),
        "train/groups_none_correct": float((per_group == 0).mean()),
        "perf/sample_tokens_per_s": float(mask.sum()) / max(times["perf/sample_s"], 1e-9),
    } | times
    return batch, metrics, arrays["solved"]


class PoolCoverage:
    """Whether each prompt had a correct initial response at its latest visit (uid -> bool);
    ``train/pool_coverage`` is the share of the prompts visited so far (the whole pool once
    every prompt was drawn). Its state goes into the checkpoints' metadata, so a resumed run
    continues it."""

    def __init__(self, state: dict[str, bool] | None = None):
        self.last = dict(state or {})

    def update(self, problems: list[Problem], solved: np.ndarray) -> float:
        self.last |= {p.uid: bool(v) for p, v in zip(problems, solved)}
        return float(np.mean(list(self.last.values())))


def rl_optimizer(c: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Any]:
    """RL's optimiser and schedule. The schedule counts optimiser updates, ``rl.epochs x
    rl.minibatches`` per RL step, so warm-up and decay span the configured RL steps."""
    updates = c.rl.epochs * c.rl.minibatches
    return make_optimizer(c.rl.lr, c.rl.warmup_steps * updates, max(c.rl.steps, 1) * updates,
                          weight_decay=c.rl.weight_decay, grad_clip=c.rl.grad_clip,
                          schedule=c.rl.lr_schedule, end_lr_ratio=c.rl.end_lr_ratio, mu_dtype=c.rl.adam_mu_dtype)


def run_rl(run: Run, ckpt: Checkpointer, sft_params: nnx.State, source: CritiqueSource | None, progress: Progress,
           stop_at: int | None = None) -> None:
    """The RL loop, from the SFT policy or from the latest RL checkpoint (``source``: the run's
    critique source, None for plain GRPO-family runs)."""
    c = run.config
    s = c.sft.steps if not c.init_from else 0
    loss_cfg = config_lib.loss_config(c)
    optimizer, schedule = rl_optimizer(c)
    rewards_spec, refine = parse_rewards(c.rl.rewards), RefineSettings.from_config(c)  # built once per run
    # The reference policy (the KL term's, the confidence reward's).
    needs_ref = loss_cfg.ref_kl_coef > 0 or uses_confidence(rewards_spec)
    ref_params = roles.reference_params(run, sft_params) if needs_ref else None
    state = init_state(run, sft_params, optimizer)
    key = replicated_key(run, c.seed + 7)
    it = BatchIterator(rl_pool(run), c.rl.prompts_per_step, seed=c.seed + 1)
    latest = ckpt.latest_step()
    start = s
    coverage = PoolCoverage()
    if latest is not None and latest > s:
        restored, meta = ckpt.restore(latest, like=checkpoint_state(state, key=key, ref_params=ref_params))
        state = restored_state(restored)
        key = jax.random.wrap_key_data(restored["key"])
        ref_params = restored.get("ref_params", ref_params)
        it.set_state(meta["iterator"])
        coverage = PoolCoverage(meta.get("pool_solved"))
        start = latest
        log.info("resumed RL at step %d", start)
    elif c.init_from:  # the SFT run evaluated this policy in its own directory; log it here too
        run.writer.write(s, evaluate(run, state.params, s, source))
    update = jax.jit(functools.partial(rl_update, run.graphdef, optimizer, loss_cfg, epochs=c.rl.epochs,
                                       minibatches=c.rl.minibatches, micro_batches=c.rl.micro_batches,
                                       temperature=c.sampling.temperature, mesh=run.mesh, lr_schedule=schedule, entropy_after=c.rl.entropy_change),
                     donate_argnums=0,
                     out_shardings=(state_shardings(run, state.params, optimizer), None))
    stats_fn = jax.jit(functools.partial(token_stats_fn, run.graphdef, temperature=c.sampling.temperature))
    initial_mean = jax.jit(lambda ent, b: masked_mean(ent, initial_response_mask(b)))
    guard = NonFiniteGuard("RL", c.rl.max_bad_steps, "rl.max_bad_steps")
    conf_fn = jax.jit(functools.partial(reference_confidence, run.graphdef))
    confidence = (lambda b, span: to_host(conf_fn(ref_params, b, span))) if uses_confidence(rewards_spec) else None
    live = {"state": state, "key": key}

    def step(n: int) -> dict[str, float]:
        t0 = time.perf_counter()
        with CompileCounter() as compiles:
            problems = [ex.problem for ex in next(it)]
            batch, metrics, solved = rl_batch(run, live["state"].params, source, problems, n, rewards_spec,
                                              refine, confidence)
            metrics["train/pool_coverage"] = coverage.update(problems, solved)
            times: dict[str, float] = {}
            with timed(times, "perf/update_s"):
                # The entropy of the batch's initial responses before the update: the recompute's
                # (critique runs: always recomputed), else the rollouts' own (train/entropy).
                h_before = metrics["train/entropy"]
                if batch.old_logp is None or c.rl.recompute_old_logp:
                    old_logp, old_entropy = stats_fn(live["state"].params, batch)
                    batch = dataclasses.replace(batch, old_logp=old_logp)
                    h_before = initial_mean(old_entropy, batch)
                if loss_cfg.ref_kl_coef > 0:
                    batch = dataclasses.replace(batch, ref_logp=stats_fn(ref_params, batch)[0])
                live["key"], sub = jax.random.split(live["key"])
                live["state"], m = update(live["state"], batch, sub)
                m = jax.device_get(m)
        m["update_entropy"] = m.pop("entropy")  # over the update's rows (refinements included)
        if "entropy_after" in m:  # same batch, same tokens: the change update t made (Cov vs -dH)
            m["entropy_change"] = m.pop("entropy_after") - float(h_before)
        metrics |= scalars(m, "train") | times | {"perf/step_s": time.perf_counter() - t0,
                                                  "perf/compiles": float(compiles.count)}
        if "perf/critique_s" in metrics:
            metrics["perf/critique_share"] = metrics["perf/critique_s"] / metrics["perf/step_s"]
        try:
            guard.check(n, m["skipped"])
        except FloatingPointError:
            run.writer.write(n, metrics)
            raise
        return metrics

    def save(s_: Step, with_metrics: bool) -> None:
        st = live["state"]
        evals = {k: v for k, v in s_.log.items() if k.startswith("eval/")} if with_metrics else {}
        ckpt.save(s_.n, checkpoint_state(st, key=live["key"], ref_params=ref_params),
                  {"phase": "rl", "iterator": it.get_state(), "pool_solved": coverage.last}, metrics=evals or None)

    def checkpoint(s_: Step) -> None:
        if not bool(all_finite(live["state"].params)):
            raise FloatingPointError(f"step {s_.n}: parameters are not finite; no checkpoint written")
        save(s_, True)

    def stop(s_: Step) -> bool:
        if stop_at is None or s_.n < stop_at:
            return False
        save(s_, False)
        log.info("stopping at step %d (stop_at); re-run to resume", s_.n)
        return True

    def write(s_: Step) -> None:
        run.writer.write(s_.n, s_.log)
        progress.update(s_.n, s_.log)

    loop = Loop(start + 1, s + c.rl.steps)
    loop.add_hook(lambda s_: s_.log.update(s_.raw))
    loop.add_hook(lambda s_: s_.log.update(evaluate(run, live["state"].params, s_.n, source)), c.eval.every,
                  at_end=True)
    loop.add_hook(write)
    loop.add_hook(checkpoint, c.checkpoint.every, at_end=True)
    loop.add_hook(stop)
    loop.run(step)
