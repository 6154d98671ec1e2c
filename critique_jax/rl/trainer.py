"""The training run: SFT warm-up, then the RL loop with evaluation, checkpoints and metrics.

Phases share one global step counter: SFT steps ``1..S``, RL steps ``S+1..S+R``. The final
SFT policy is also saved apart (``<workdir>/sft_policy``): it is the frozen reference policy
of the KL term and can initialise other runs (``init_from``), so a sweep shares one warm-up.

Every RL step: sample G responses per prompt (jitted) -> decode and verify on the host ->
group advantages -> old log-probs (recompute pass, or the sampler's) and reference log-probs
-> ``epochs x minibatches`` jitted updates. Only token ids and rewards cross to the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from critique_jax import config as config_lib
from critique_jax.analysis.diversity import distinct_correct_solutions, distinct_per_solved
from critique_jax.analysis.passk import pass_at_k
from critique_jax.checkpoint import Checkpointer
from critique_jax.critique.feedback import rule_critique
from critique_jax.critique.loop import critique_batch, evaluate_refinement
from critique_jax.data import BatchIterator, TaskSource, build_task_dataset
from critique_jax.metrics import MetricsWriter, Progress
from critique_jax.models import ModelConfig, Transformer, model_config
from critique_jax.parallel.distributed import is_main_process, to_global, to_host
from critique_jax.parallel.mesh import batch_sharding, make_mesh, replicated
from critique_jax.parallel.sharding import param_shardings, tree_shardings_like
from critique_jax.perf import CompileCounter, timed
from critique_jax.rl import policy_init
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.advantages import compute_advantages
from critique_jax.ops.masked import masked_mean
from critique_jax.rl.guard import NonFiniteGuard
from critique_jax.rl.train_step import (SequenceBatch, TrainState, _all_finite, initial_response_mask, make_optimizer,
                                        rl_update, sft_update, token_stats_fn)
from critique_jax.rundir import save_config
from critique_jax.runlock import lock_run_dir
from critique_jax.sampling import SamplerConfig, generate, sample_keys
from critique_jax.tasks import Problem, Task, get_task
from critique_jax.text import Tokenizer, default_cache_dir, refine_prompt, solve_prompt

log = logging.getLogger("critique_jax")


@dataclasses.dataclass
class Run:
    """Everything a training run holds that is not the train state."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    task: Task
    tok: Tokenizer
    train: TaskSource
    test: TaskSource
    model_cfg: ModelConfig
    graphdef: nnx.GraphDef
    param_sh: Any
    sampler: SamplerConfig
    writer: MetricsWriter | None = None  # set by ``train`` once the resume step is known

    def shard(self, x: np.ndarray | jax.Array) -> jax.Array:
        """A global batch-sharded array from a full host array (or an array of PRNG keys)."""
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(self.shard(np.asarray(jax.random.key_data(x))))
        return to_global(x, batch_sharding(self.mesh, np.ndim(x)))

    @property
    def prompt_width(self) -> int:
        return max(self.config.sampling.prompt_buckets)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates the config, locks the run directory, builds data, tokenizer, mesh and model
    definition (the entry point then checks and writes config.json, :func:`rundir.save_config`)."""
    config_lib.validate(config, jax.device_count())
    if config.critique.type == "model":
        check_critic_source(config)
    os.makedirs(workdir, exist_ok=True)
    if is_main_process():
        lock_run_dir(workdir)
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    task = get_task(config.task.name)
    data_dir = config.data_dir or os.path.join(default_cache_dir(), "data")

    def data_and_tokenizer():
        splits = build_task_dataset(config.task.name, data_dir, seed=config.task.data_seed,
                                    n_train=config.task.n_train, n_test=config.task.n_test,
                                    difficulties=list(config.task.difficulties), n_solutions=config.task.n_solutions)
        tok = policy_init.policy_tokenizer(config)
        return splits, tok

    if jax.process_count() > 1:  # process 0 builds the dataset and tokenizer; the others then load them
        if is_main_process():
            data_and_tokenizer()
        multihost_utils.sync_global_devices("critique_jax: data and tokenizer ready")
    splits, tok = data_and_tokenizer()
    check_lengths(splits["train"], tok, config)
    max_seq_len = max(prompt_buckets(config)) + config.sampling.max_new_tokens
    config_lib.warn_sequence_length(config, max_seq_len)
    model_cfg = policy_init.policy_model_config(config, tok, max_seq_len)
    abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract)
    sampler = SamplerConfig(max_new_tokens=config.sampling.max_new_tokens, eos_ids=tok.eos_ids, pad_id=tok.pad_id)
    return Run(config=config, workdir=workdir, mesh=mesh, task=task, tok=tok, train=splits["train"],
               test=splits["test"], model_cfg=model_cfg, graphdef=graphdef,
               param_sh=param_shardings(abstract_params, mesh), sampler=sampler)


def prompt_buckets(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Every prompt bucket the run samples with (solve, and critique/refine when critiquing)."""
    buckets = tuple(config.sampling.prompt_buckets)
    if config.critique.type != "none" or config.critique.sft_refine_every:
        buckets += tuple(config.critique.prompt_buckets) + tuple(config.critique.refine_buckets)
    return buckets


def check_lengths(source: TaskSource, tok: Tokenizer, config: ml_collections.ConfigDict) -> None:
    """Fails before training when prompts or reference solutions do not fit the configured widths."""
    prompts = max(len(tok.encode_prompt(solve_prompt(source[i].problem.question))) for i in range(len(source)))
    solutions = max(len(tok.encode(s, eos=True)) for i in range(len(source)) for s in source[i].solutions)
    if prompts > max(config.sampling.prompt_buckets):
        raise ValueError(f"the longest {config.task.name} prompt has {prompts} tokens: raise the largest "
                         f"sampling.prompt_buckets entry (now {max(config.sampling.prompt_buckets)})")
    if solutions > config.sampling.max_new_tokens:
        raise ValueError(f"the longest {config.task.name} reference solution has {solutions} tokens (with the end "
                         f"token): raise sampling.max_new_tokens (now {config.sampling.max_new_tokens})")


# ----------------------------------------------------------------------------- state


def init_params(run: Run, seed: int) -> nnx.State:
    """Freshly initialised policy parameters, created directly in their shardings."""
    cfg = run.model_cfg
    make = jax.jit(lambda: nnx.split(Transformer(cfg, rngs=nnx.Rngs(seed)))[1], out_shardings=run.param_sh)
    return make()


def state_shardings(run: Run, params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    """Where each part of the train state lives (optimiser moments follow their parameters)."""
    abstract_opt = jax.eval_shape(optimizer.init, params)
    opt_sh = tree_shardings_like(abstract_opt, params, run.param_sh, run.mesh)
    return TrainState(params=run.param_sh, opt_state=opt_sh, step=replicated(run.mesh))


def init_state(run: Run, params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    sh = state_shardings(run, params, optimizer)
    opt_state = jax.jit(optimizer.init, out_shardings=sh.opt_state)(params)
    return TrainState(params=params, opt_state=opt_state, step=jax.device_put(jnp.zeros((), jnp.int32), sh.step))


def sft_step_fn(run: Run, params: nnx.State, optimizer: optax.GradientTransformation, schedule=None):
    """The jitted supervised step ``(state, batch) -> (state, metrics)``: donates the state and
    keeps it in its shardings (policy SFT, critic training and self-training all use it).
    ``schedule``: the optimiser's learning-rate schedule, logged as the metric ``lr``."""
    return jax.jit(functools.partial(sft_update, run.graphdef, optimizer, lr_schedule=schedule), donate_argnums=0,
                   out_shardings=(state_shardings(run, params, optimizer), None))


_all_finite_jit = jax.jit(_all_finite)


def _replicated_key(run: Run, seed: int) -> jax.Array:
    """A PRNG key replicated over the mesh (device_put cannot place key arrays across processes)."""
    return jax.jit(lambda: jax.random.key(seed), out_shardings=replicated(run.mesh))()


_copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def _scalars(metrics: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in jax.device_get(metrics).items()}


# ----------------------------------------------------------------------------- evaluation


def evaluate(run: Run, params: nnx.State, step: int, critic: CritiqueModel | None = None) -> dict[str, float]:
    """Greedy and sampled pass@k on the first ``eval.n_problems`` test problems; logs samples.
    In a run with Critique-GRPO steps, also refinement against resampling on the same problems
    (``eval/critique/*``, see ``evaluate_refinement``; ``critic``: the loaded critique model
    for ``critique.type = "model"``). An SFT-only run (``rl.steps = 0``) skips it: its
    critique settings may be sized for self-training, which leaves over-long prompts out."""
    c = run.config
    n = min(c.eval.n_problems, len(run.test))
    problems = [run.test[i].problem for i in range(n)]
    g, bp = c.eval.group_size, c.eval.batch_prompts
    greedy_ok, correct, distinct, entropy_sum, token_count, samples = [], [], [], 0.0, 0.0, []
    for start in range(0, n, bp):
        chunk = problems[start:start + bp]
        padded = chunk + [chunk[-1]] * (bp - len(chunk))  # fixed shapes: no recompiles
        pb = rollout_lib.encode_solve_prompts(run.tok, padded, c.sampling.prompt_buckets)
        tokens, valid = run.shard(pb.tokens), run.shard(pb.valid)
        ids = np.arange(start, start + bp)
        greedy = generate((run.graphdef, params), tokens, valid, run.shard(sample_keys(c.seed, ids, 1)), run.sampler,
                          group_size=1, temperature=0.0, mesh=run.mesh)
        sampled = generate((run.graphdef, params), tokens, valid, run.shard(sample_keys(c.seed + 1, ids, g)),
                           run.sampler, group_size=g, temperature=c.sampling.temperature, top_p=c.sampling.top_p,
                           top_k=c.sampling.top_k, mesh=run.mesh)
        g_texts = rollout_lib.decode_responses(run.tok, to_host(greedy.tokens), to_host(greedy.mask))
        s_mask = to_host(sampled.mask)
        s_texts = rollout_lib.decode_responses(run.tok, to_host(sampled.tokens), s_mask)
        g_rew = rollout_lib.score(run.task, padded, g_texts, 1)[:len(chunk)]
        s_rew = rollout_lib.score(run.task, padded, s_texts, g).reshape(bp, g)[:len(chunk)]
        greedy_ok += list(g_rew)
        correct += list(s_rew.sum(1))
        distinct += [distinct_correct_solutions(run.task, p, s_texts[i * g:(i + 1) * g]) for i, p in enumerate(chunk)]
        keep = s_mask[:len(chunk) * g]
        entropy_sum += float((to_host(sampled.entropy)[:len(chunk) * g] * keep).sum())
        token_count += float(keep.sum())
        for i, p in enumerate(chunk):
            if len(samples) < c.eval.n_logged_samples:
                samples.append(dict(uid=p.uid, question=p.question, greedy=g_texts[i], greedy_reward=float(g_rew[i]),
                                    sampled=s_texts[i * g], sampled_reward=float(s_rew[i, 0])))
    correct_arr = np.asarray(correct, np.int64)
    metrics = {"eval/pass@1_greedy": float(np.mean(greedy_ok)),
               "eval/pass@1": float(pass_at_k(g, correct_arr, 1).mean()),
               "eval/entropy": entropy_sum / max(token_count, 1.0),
               "eval/response_len": token_count / (n * g)}
    metrics["eval/distinct_correct"] = distinct_per_solved(correct_arr, distinct)
    for k in range(2, g + 1):  # pass@k for every k = 1..G (pass@1 above)
        metrics[f"eval/pass@k/{k}"] = float(pass_at_k(g, correct_arr, k).mean())
    if c.critique.type != "none" and c.rl.steps > 0:
        metrics |= evaluate_refinement(run, params, critic, problems, step)
    run.writer.write_samples(step, samples)
    return metrics


# ----------------------------------------------------------------------------- SFT


def _ckpt_state(state: TrainState, key: jax.Array, ref_params: nnx.State | None) -> dict:
    out = {"params": state.params, "opt_state": state.opt_state, "step": state.step, "key": jax.random.key_data(key)}
    if ref_params is not None:
        out["ref_params"] = ref_params
    return out


def run_sft(run: Run, ckpt: Checkpointer, progress: Progress) -> nnx.State:
    """Supervised warm-up on reference solutions; returns the final SFT parameters."""
    c = run.config
    params = (policy_init.pretrained_params(c.model.hf_dir, run.model_cfg, run.mesh, run.param_sh) if c.model.hf_dir
              else init_params(run, c.seed))
    if c.sft.steps == 0:  # no optimiser state: a pretrained policy's Adam moments would triple its memory
        return params
    optimizer, schedule = make_optimizer(c.sft.lr, c.sft.warmup_steps, c.sft.steps, weight_decay=c.sft.weight_decay)
    state = init_state(run, params, optimizer)
    it = BatchIterator(run.train, c.sft.batch_size, seed=c.seed)
    key = _replicated_key(run, c.seed)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:  # resuming inside SFT
        restored, meta = ckpt.restore(latest, like=_ckpt_state(state, key, None))
        state = TrainState(restored["params"], restored["opt_state"], restored["step"])
        it.set_state(meta["iterator"])
        start = latest
        log.info("resumed SFT at step %d", start)
    step_fn = sft_step_fn(run, state.params, optimizer, schedule)
    guard = NonFiniteGuard("SFT", c.sft.max_bad_steps, "sft.max_bad_steps")
    for step in range(start + 1, c.sft.steps + 1):
        examples = next(it)
        rng = np.random.default_rng([c.seed, 1, step])
        if c.critique.sft_refine_every and step % c.critique.sft_refine_every == 0:
            arrays = refine_sft_arrays(run, examples, rng)
        else:
            arrays = rollout_lib.sft_arrays(run.tok, examples, rng, run.prompt_width, c.sampling.max_new_tokens)
        batch = SequenceBatch(**{k: run.shard(v) for k, v in arrays.items()})
        state, m = step_fn(state, batch)
        guard.check(step, float(m["skipped"]))
        if step % c.sft.log_every == 0 or step == c.sft.steps:
            metrics = _scalars(m, "sft")
            run.writer.write(step, metrics)
            progress.update(step, metrics)
        if step % c.checkpoint.every == 0 and step < c.sft.steps:
            ckpt.save(step, _ckpt_state(state, key, None), {"phase": "sft", "iterator": it.get_state()})
    return state.params


def refine_sft_arrays(run: Run, examples: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A refinement-format SFT batch: (question, planted wrong solution, its step critique in
    ``critique.format``) -> a correct solution, so the policy learns to use critiques before RL
    asks it to. ``critique.sft_refine_target``: ``any`` = a random reference solution of the
    problem (write a correct solution), ``source`` = the one the error was planted in (keep the
    steps the critique accepts, repair the one it flags)."""
    c = run.config.critique
    prompts, targets = [], []
    for ex in examples:
        p = ex.problem
        source = ex.solutions[int(rng.integers(len(ex.solutions)))]
        wrong = run.task.perturb(p, source, rng).solution
        prompts.append(refine_prompt(p.question, wrong, rule_critique("rule_step", run.task, p, wrong, c.format)))
        target = source if c.sft_refine_target == "source" else ex.solutions[int(rng.integers(len(ex.solutions)))]
        targets.append(target)
    return rollout_lib.pack_pairs(run.tok, prompts, targets, max(run.config.critique.refine_buckets),
                                  run.config.sampling.max_new_tokens, [ex.problem.uid for ex in examples],
                                  width_key="critique.refine_buckets")


# ----------------------------------------------------------------------------- RL


def plain_batch(run: Run, params: nnx.State, problems: list[Problem], step: int,
                times: dict[str, float]) -> tuple[dict, dict]:
    """GRPO rollouts: ``G`` samples per prompt, scored. Host arrays (see ``critique_batch``)."""
    c = run.config
    g = c.rl.group_size
    s = rollout_lib.sample_texts(run, (run.graphdef, params), [solve_prompt(p.question) for p in problems],
                                 c.sampling.prompt_buckets, c.seed * 1_000_003 + step, g, c.sampling.temperature,
                                 times)
    with timed(times, "perf/score_s"):
        rewards = rollout_lib.score(run.task, problems, s.texts, g)
    tokens, valid = rollout_lib.sequence_arrays(s.prompts, g, s.tokens, s.mask)
    arrays = dict(tokens=tokens, valid=valid, response_mask=s.mask, old_logp=s.logp, rewards=rewards)
    metrics = {"train/entropy": rollout_lib.masked_mean(s.entropy, s.mask),
               "train/finished_frac": float(s.finished.mean())}
    return arrays, metrics


def rl_batch(run: Run, params: nnx.State, critic, problems: list[Problem], step: int) -> tuple[SequenceBatch, dict]:
    """Samples (with critiques and refinements if configured), scores and packs one RL batch."""
    c = run.config
    g = c.rl.group_size
    times: dict[str, float] = {"perf/sample_s": 0.0, "perf/score_s": 0.0}
    if c.critique.type == "none":
        arrays, metrics = plain_batch(run, params, problems, step, times)
    else:
        arrays, metrics = critique_batch(run, params, problems, c.seed * 1_000_003 + step, critic, times)
        metrics["train/entropy"] = metrics["critique/initial_entropy"]
    rewards = arrays["rewards"]
    groups = np.repeat(np.arange(len(problems)), g)
    adv = np.asarray(compute_advantages(c.rl.advantage, jnp.asarray(rewards), jnp.asarray(groups)), np.float32)
    batch = SequenceBatch(tokens=run.shard(arrays["tokens"]), valid=run.shard(arrays["valid"]),
                          response_mask=run.shard(arrays["response_mask"]),
                          old_logp=run.shard(arrays["old_logp"]) if "old_logp" in arrays else None,
                          advantages=run.shard(adv),
                          is_refinement=run.shard(arrays["is_refinement"]) if "is_refinement" in arrays else None)
    per_group = rewards.reshape(-1, g).mean(1)
    mask = arrays["response_mask"]
    metrics |= {
        "train/reward": float(rewards.mean()),
        "train/response_len": float(mask.sum(1).mean()),
        "train/groups_all_correct": float((per_group == 1).mean()),
        "train/groups_none_correct": float((per_group == 0).mean()),
        "perf/sample_tokens_per_s": float(mask.sum()) / max(times["perf/sample_s"], 1e-9),
    } | times
    return batch, metrics


def rl_optimizer(c: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Any]:
    """RL's optimiser and schedule. The schedule counts optimiser updates, ``rl.epochs x
    rl.minibatches`` per RL step, so warm-up and decay span the configured RL steps."""
    updates = c.rl.epochs * c.rl.minibatches
    return make_optimizer(c.rl.lr, c.rl.warmup_steps * updates, max(c.rl.steps, 1) * updates,
                          weight_decay=c.rl.weight_decay, grad_clip=c.rl.grad_clip,
                          schedule=c.rl.lr_schedule, end_lr_ratio=c.rl.end_lr_ratio)


def run_rl(run: Run, ckpt: Checkpointer, sft_params: nnx.State, critic: CritiqueModel | None, progress: Progress,
           stop_at: int | None = None) -> None:
    """The RL loop, from the SFT policy or from the latest RL checkpoint (``critic``: the
    critique model of ``critique.type = "model"``, else None)."""
    c = run.config
    s = c.sft.steps if not c.init_from else 0
    loss_cfg = config_lib.loss_config(c)
    optimizer, schedule = rl_optimizer(c)
    # The update donates the train state's buffers, so the reference policy gets its own copy.
    ref_params = _copy(sft_params) if loss_cfg.ref_kl_coef > 0 else None
    state = init_state(run, sft_params, optimizer)
    key = _replicated_key(run, c.seed + 7)
    pool = run.train.head(c.rl.pool_size) if c.rl.pool_size else run.train  # a fixed pool, revisited
    it = BatchIterator(pool, c.rl.prompts_per_step, seed=c.seed + 1)
    latest = ckpt.latest_step()
    start = s
    if latest is not None and latest > s:
        restored, meta = ckpt.restore(latest, like=_ckpt_state(state, key, ref_params))
        state = TrainState(restored["params"], restored["opt_state"], restored["step"])
        key = jax.random.wrap_key_data(restored["key"])
        ref_params = restored.get("ref_params", ref_params)
        it.set_state(meta["iterator"])
        start = latest
        log.info("resumed RL at step %d", start)
    elif c.init_from:  # the SFT run evaluated this policy in its own directory; log it here too
        run.writer.write(s, evaluate(run, state.params, s, critic))
    update = jax.jit(functools.partial(rl_update, run.graphdef, optimizer, loss_cfg, epochs=c.rl.epochs,
                                       minibatches=c.rl.minibatches, temperature=c.sampling.temperature,
                                       mesh=run.mesh, lr_schedule=schedule, entropy_after=c.rl.entropy_change),
                     donate_argnums=0,
                     out_shardings=(state_shardings(run, state.params, optimizer), None))
    stats_fn = jax.jit(functools.partial(token_stats_fn, run.graphdef, temperature=c.sampling.temperature))
    initial_mean = jax.jit(lambda ent, b: masked_mean(ent, initial_response_mask(b)))
    guard = NonFiniteGuard("RL", c.rl.max_bad_steps, "rl.max_bad_steps")
    for step in range(start + 1, s + c.rl.steps + 1):
        t0 = time.perf_counter()
        with CompileCounter() as compiles:
            problems = [ex.problem for ex in next(it)]
            batch, metrics = rl_batch(run, state.params, critic, problems, step)
            times: dict[str, float] = {}
            with timed(times, "perf/update_s"):
                # The entropy of the batch's initial responses before the update: the recompute's
                # (critique runs: always recomputed), else the rollouts' own (train/entropy).
                h_before = metrics["train/entropy"]
                if batch.old_logp is None or c.rl.recompute_old_logp:
                    old_logp, old_entropy = stats_fn(state.params, batch)
                    batch = dataclasses.replace(batch, old_logp=old_logp)
                    h_before = initial_mean(old_entropy, batch)
                if ref_params is not None:
                    batch = dataclasses.replace(batch, ref_logp=stats_fn(ref_params, batch)[0])
                key, sub = jax.random.split(key)
                state, m = update(state, batch, sub)
                m = jax.device_get(m)
        m["update_entropy"] = m.pop("entropy")  # over the update's rows (refinements included)
        if "entropy_after" in m:  # same batch, same tokens: the change update t made (Cov vs -dH)
            m["entropy_change"] = m.pop("entropy_after") - float(h_before)
        metrics |= _scalars(m, "train") | times | {"perf/step_s": time.perf_counter() - t0,
                                                   "perf/compiles": float(compiles.count)}
        if "perf/critique_s" in metrics:
            metrics["perf/critique_share"] = metrics["perf/critique_s"] / metrics["perf/step_s"]
        try:
            guard.check(step, m["skipped"])
        except FloatingPointError:
            run.writer.write(step, metrics)
            raise
        if step % c.eval.every == 0 or step == s + c.rl.steps:
            metrics |= evaluate(run, state.params, step, critic)
        run.writer.write(step, metrics)
        progress.update(step, metrics)
        if step % c.checkpoint.every == 0 or step == s + c.rl.steps:
            if not bool(_all_finite_jit(state.params)):
                raise FloatingPointError(f"step {step}: parameters are not finite; no checkpoint written")
            ckpt.save(step, _ckpt_state(state, key, ref_params), {"phase": "rl", "iterator": it.get_state()},
                      metrics={k: v for k, v in metrics.items() if k.startswith("eval/")} or None)
        if stop_at is not None and step >= stop_at:
            ckpt.save(step, _ckpt_state(state, key, ref_params), {"phase": "rl", "iterator": it.get_state()})
            log.info("stopping at step %d (stop_at); re-run to resume", step)
            return


# ----------------------------------------------------------------------------- entry


def train(config: ml_collections.ConfigDict, workdir: str, resume: bool = True, stop_at: int | None = None) -> str:
    """Runs SFT (unless done or ``init_from``) and RL in ``workdir``; returns the workdir.

    ``stop_at``: end the run after RL step ``stop_at`` (global numbering) with a checkpoint,
    as a preemption would; running again resumes exactly where it stopped.
    """
    policy_dir = check_policy_run(config, config.init_from, "init_from") if config.init_from else None
    run = setup(config, workdir)
    c = config
    ckpt_dir = os.path.join(workdir, "checkpoints")
    sft_dir = os.path.join(workdir, "sft_policy")
    if not resume:
        for d in (ckpt_dir, sft_dir):
            if os.path.isdir(d) and os.listdir(d):
                raise FileExistsError(f"{d} holds checkpoints and resume is off: use a new --workdir or --resume")
    save_config(config, workdir, resume, write=is_main_process())
    ckpt = Checkpointer(ckpt_dir, keep_last=c.checkpoint.keep_last, keep_best=c.checkpoint.keep_best,
                        best_metric=c.checkpoint.best_metric, async_save=c.checkpoint.async_save)
    sft_ckpt = Checkpointer(policy_dir or sft_dir, keep_last=1, keep_best=0, best_metric=None, async_save=False)
    total = (0 if c.init_from else c.sft.steps) + c.rl.steps
    latest = ckpt.latest_step()
    # Logs past the step we resume from (or all logs, when nothing was saved) belong to a
    # crashed attempt and are dropped, so the resumed run's logs equal an uninterrupted run's.
    # A saved sft_policy is the step after SFT and its evaluation, even when the latest
    # checkpoint is an older SFT one (killed before the first RL checkpoint).
    sft_done = c.sft.steps if sft_ckpt.latest_step() is not None and not c.init_from else -1
    done = max(latest if latest is not None else -1, sft_done)
    run.writer = MetricsWriter(workdir, enabled=is_main_process(), tensorboard=c.log.tensorboard, resume_step=done)
    progress = Progress(total=total, initial=latest or 0, enabled=c.log.progress,
                        keys=("sft/nll", "train/reward", "train/entropy", "eval/pass@1"))
    like = {"params": init_params_abstract(run)}
    critic = load_critic(run) if c.critique.type == "model" else None
    if sft_ckpt.latest_step() is not None:
        sft_params = sft_ckpt.restore(like=like)[0]["params"]
    elif c.init_from:
        raise FileNotFoundError(f"init_from={c.init_from!r}: no SFT policy checkpoint in {init_from_dir(c.init_from)}")
    else:
        sft_params = run_sft(run, ckpt, progress)
        metrics = evaluate(run, sft_params, c.sft.steps, critic)
        run.writer.write(c.sft.steps, metrics)
        sft_ckpt.save(c.sft.steps, {"params": sft_params}, {"phase": "sft_final"}, force=True)
        sft_ckpt.wait()
    if c.rl.steps:
        run_rl(run, ckpt, sft_params, critic, progress, stop_at)
    ckpt.wait()
    ckpt.close()
    sft_ckpt.close()
    progress.close()
    run.writer.close()
    return workdir


def check_critic_source(config: ml_collections.ConfigDict) -> None:
    """Fails before anything trains when ``critique.critic_from`` is not a critic for this run:
    no train_critic run there, or one trained on another task or tokenizer (a vocabulary that
    does not match the policy's, whose critique tokens would decode to other text)."""
    src = config.critique.critic_from
    path = os.path.join(src, "config.json")
    if not os.path.isfile(path) or not os.path.isdir(os.path.join(src, "critic_policy")):
        raise FileNotFoundError(f"critique.critic_from={src!r}: expected a train_critic run directory with "
                                "config.json and critic_policy/")
    with open(path) as f:
        theirs = json.load(f)
    for key, ours in (("task.name", config.task.name), ("tokenizer.vocab_size", config.tokenizer.vocab_size),
                      ("tokenizer.seed", config.tokenizer.seed)):
        section, field = key.split(".")
        if theirs[section][field] != ours:
            raise ValueError(f"critique.critic_from={src!r}: the critic was trained with {key}="
                             f"{theirs[section][field]!r} but this run has {key}={ours!r}; its vocabulary does not "
                             "match the policy's tokenizer (train a critic with the same task and tokenizer)")


@dataclasses.dataclass(frozen=True)
class CritiqueModel:
    """A loaded critique model: ``model`` = (graphdef, params) on the run's mesh, and the sampler
    its critiques are generated with (as many new tokens as its training targets had)."""

    model: tuple[nnx.GraphDef, nnx.State]
    sampler: SamplerConfig


def load_critic(run: Run) -> CritiqueModel:
    """The frozen critique model of ``critique.critic_from`` (a train_critic run), on this mesh."""
    src = run.config.critique.critic_from
    with open(os.path.join(src, "config.json")) as f:
        critic_cfg = json.load(f)["critic"]
    ckpt = Checkpointer(os.path.join(src, "critic_policy"), keep_last=1, keep_best=0, best_metric=None,
                        async_save=False)

    def definition(max_seq_len: int) -> tuple[nnx.GraphDef, nnx.State]:
        cfg = model_config(critic_cfg["preset"], run.tok.vocab_size, family=critic_cfg["family"],
                           max_seq_len=max_seq_len)
        return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))

    _, abstract = definition(run.model_cfg.max_seq_len)  # the parameters do not depend on the length
    sh = param_shardings(abstract, run.mesh)
    like = {"params": jax.tree.map(lambda x, s_: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s_), abstract, sh)}
    state, meta = ckpt.restore(like=like)
    ckpt.close()
    response_len = int(meta["response_len"])  # the critic's longest training target
    graphdef, _ = definition(max(run.config.critique.prompt_buckets) + response_len)
    return CritiqueModel((graphdef, state["params"]), dataclasses.replace(run.sampler, max_new_tokens=response_len))


def init_from_dir(path: str) -> str:
    return os.path.join(path, "sft_policy")


#: Fields a policy run (``init_from``, ``critic.policy_from``) must share with the config that loads
#: its policy: the policy's shapes and vocabulary.
POLICY_MATCHING_KEYS = ("task.name", "model.preset", "model.family", "model.overrides", "model.hf_dir",
                        "tokenizer.vocab_size", "tokenizer.seed")


def check_policy_run(config: ml_collections.ConfigDict, path: str, key: str) -> str:
    """The ``sft_policy`` directory of the train run ``path`` (the value of config ``key``), after
    checking that the run's :data:`POLICY_MATCHING_KEYS` equal this config's; errors name ``key``,
    and every differing field with both values."""
    cfg_file, policy_dir = os.path.join(path, "config.json"), init_from_dir(path)
    for f in (cfg_file, policy_dir):
        if not os.path.exists(f):
            raise FileNotFoundError(f"{key}={path!r}: {f} is missing; expected a train run directory "
                                    "(python -m critique_jax.train) with its config.json and sft_policy/")
    with open(cfg_file) as f:
        theirs = json.load(f)
    differ = []
    for field_key in POLICY_MATCHING_KEYS:
        section, field = field_key.split(".")
        # As JSON values (model.overrides is a dict); a run from before a key existed had its default.
        mine = json.loads(json.dumps(config[section][field], default=dict))
        other = theirs.get(section, {}).get(field, json.loads(config_lib.default_config().to_json())[section][field])
        if mine != other:
            differ.append(f"{field_key}={mine!r} differs from the {key} run's {field_key}={other!r}")
    if differ:
        raise ValueError(f"config {'; '.join(differ)} ({cfg_file})")
    return policy_dir


def restore_policy(run: Run, policy_dir: str) -> nnx.State:
    """The ``{"params"}`` checkpoint of ``policy_dir`` (an ``sft_policy/``) in the run's shardings."""
    with Checkpointer(policy_dir, keep_last=1, keep_best=0, best_metric=None, async_save=False) as ckpt:
        return ckpt.restore(like={"params": init_params_abstract(run)})[0]["params"]


def init_params_abstract(run: Run) -> Any:
    """Shape/dtype/sharding structs of the policy parameters (restore targets)."""
    abstract = nnx.split(nnx.eval_shape(lambda: Transformer(run.model_cfg, rngs=nnx.Rngs(0))))[1]
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, run.param_sh)
