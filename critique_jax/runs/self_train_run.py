"""The self_train program: critique-in-the-loop self-training and the tail-narrowing measurement.

Self-training (STaR / RFT / ReST-EM style) over a fixed pool of train problems of every
difficulty level; with a critique, AutoMathCritique style (arXiv:2411.16579). Iteration
``i = 1..N``, starting from the SFT policy of ``init_from``:

1. sample ``K = self_train.samples_per_problem`` solutions per pool problem with the current
   policy (``sampling.temperature``);
2. verify them (the task's reward; 1 = correct);
3. with a critique (``critique.type`` not ``none``): critique every wrong sample (rules, the
   critique model of ``critique.critic_from``, or the policy itself — greedy, as in
   :mod:`critique_jax.critique.loop`), sample one refinement per wrong sample from
   ``(question, sample, critique)`` and verify it with
   :func:`~critique_jax.critique.feedback.refinement_reward` (which rejects answers copied
   from a ``ground_truth`` critique);
4. keep the correct samples and the verified refinements that ended with the end token and
   fit ``sampling.max_new_tokens`` (:func:`~critique_jax.critique.pool.select_kept`: optional exact-duplicate removal and
   cap per problem) and fine-tune the policy on them for ``self_train.sft_steps`` steps. A
   refinement is trained as a response to the *solve* prompt (critique removed), as in
   Critique-GRPO. The optimiser (AdamW, warm-up + cosine over the iteration's steps) is
   re-initialised every iteration: each iteration is a fresh fine-tuning on a new data set,
   stale Adam moments of the previous data would only bias the first steps, and an
   iteration's checkpoint then only needs the parameters. Parameters carry over. With
   nothing kept, the iteration does not train (``self_train/sft/skipped_iteration`` = 1);
5. evaluate on the first ``eval.n_problems`` test problems with ``eval.group_size`` samples
   each, per difficulty level.

Tail narrowing shows in ``self_train/pool/contributed/level_<d>``: the share of level-``d``
pool problems that gave at least one training example. Without critique the hard levels'
share shrinks over iterations while easy problems fill the data
(``self_train/pool/data_share/level_<d>``).

Metrics (``<workdir>/metrics.jsonl``, ``step`` = iteration; step 0 evaluates the initial
policy): ``self_train/pool/...`` (the iteration's samples: ``accuracy``, ``solved``,
``contributed``, ``rescued``, ``data_share`` per level and overall, ``n_kept``, refinement
counts, ``entropy``), ``self_train/sft/...`` (``nll_first``, ``nll`` of the last step,
``entropy``, ``grad_norm``, ``skipped``), ``self_train/eval/...`` (``solved``, ``pass@k/<k>``,
``distinct_correct`` per level and overall, ``entropy``) and ``perf/...`` timings.
``samples.jsonl`` holds a few wrong samples with their critique and refinement per iteration.

Checkpoints: ``<workdir>/checkpoints/<i>`` holds ``{"params"}`` after iteration ``i``; a
re-run resumes after the last finished iteration and, since every random stream is a
function of ``(seed, iteration)``, reproduces an uninterrupted run. Evaluation uses the same
sampling keys every iteration (common random numbers across iterations).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from critique_jax.analysis.diversity import distinct_correct_solutions
from critique_jax.critique.feedback import refinement_reward
from critique_jax.critique.pool import (PoolRound, eval_metrics, fits, logged_samples, pool_metrics, select_kept,
                                        sft_batches, stream_seed, training_pairs)
from critique_jax.critique.sources import CritiqueSource, critique_source
from critique_jax.metrics import Progress
from critique_jax.parallel.distributed import is_main_process
from critique_jax.perf import timed
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.train_step import SequenceBatch, make_optimizer
from critique_jax.rundir import save_config
from critique_jax.runs import roles
from critique_jax.runs.layout import CHECKPOINTS, RunDir
from critique_jax.runs.run import Run, setup
from critique_jax.runs.state import init_state, sft_step_fn
from critique_jax.runs.supervised import SupervisedLoop
from critique_jax.tasks import Problem

log = logging.getLogger("critique_jax")

#: Random streams (first part of every sampling seed after ``config.seed``).
_POOL, _CRITIQUE, _REFINE, _EVAL, _SFT = range(5)


def check_init_run(config: ml_collections.ConfigDict) -> str:
    """The ``sft_policy`` directory of ``init_from``, after checking that the run's policy fields
    (:data:`~critique_jax.runs.roles.POLICY_MATCHING_KEYS`) equal this config's and, when its SFT
    left out the first ``rl.pool_size`` train problems (``sft.skip_rl_pool``), that they are this
    run's pool (``self_train.pool_size``)."""
    if not config.init_from:
        raise ValueError("config init_from is empty: self-training starts from an SFT policy; set it to a train run "
                         "directory holding sft_policy/ (python -m critique_jax.train ... with rl.steps=0)")
    policy_dir = roles.check_policy_run(config, config.init_from, "init_from")
    theirs = RunDir(config.init_from).read_config()
    left_out = theirs["rl"].get("pool_size", 0) if theirs.get("sft", {}).get("skip_rl_pool") else None
    if left_out is not None and left_out != config.self_train.pool_size:
        raise ValueError(f"config self_train.pool_size={config.self_train.pool_size}: the init_from run's SFT left out "
                         f"its first rl.pool_size={left_out} train problems (sft.skip_rl_pool); set "
                         f"self_train.pool_size={left_out} so the pool is the one SFT never saw")
    return policy_dir


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class Refined:
    """Refinements of M wrong samples: index [M] into the samples; critiques / texts [M];
    correct [M] bool (:func:`refinement_reward` is 1); usable [M] bool (correct, ended with
    the end token, fits ``sampling.max_new_tokens``)."""

    index: np.ndarray
    critiques: list[str]
    texts: list[str]
    correct: np.ndarray
    usable: np.ndarray


def refine_wrong(run: Run, params: nnx.State, source: CritiqueSource, owners: Sequence[Problem],
                 texts: Sequence[str], wrong: np.ndarray, iteration: int) -> Refined:
    """Critiques the samples ``texts[wrong]`` (of ``owners[wrong]``) with the run's critique
    ``source`` and samples one refinement of each (step 3). Samples whose critique or
    refinement prompt exceeds the largest bucket are left out."""
    c, st = run.config, run.config.self_train
    chunk = st.batch_prompts * st.samples_per_problem
    idx = np.asarray(wrong, np.int64)
    written = source.write(run, params, [owners[i] for i in idx], [texts[i] for i in idx],
                           functools.partial(stream_seed, c.seed, _CRITIQUE, iteration), chunk=chunk, drop_long=True)
    idx, crits = idx[written.index], written.texts
    prompts = [run.prompts.refine(owners[i].question, texts[i], t) for i, t in zip(idx, crits)]
    ok = fits(run.tok, prompts, max(c.critique.refine_buckets))
    idx, crits = idx[ok], [t for t, o in zip(crits, ok) if o]
    ref = rollout_lib.sample_chunked(run, (run.graphdef, params), [p for p, o in zip(prompts, ok) if o],
                                     c.critique.refine_buckets, 1, c.sampling.temperature, chunk,
                                     functools.partial(stream_seed, c.seed, _REFINE, iteration))
    correct = np.asarray([refinement_reward(run.task, owners[i], t, source.kind) >= 1 for i, t in zip(idx, ref.texts)],
                         bool)
    usable = correct & ref.finished & fits(run.tok, ref.texts, c.sampling.max_new_tokens, eos=True)
    return Refined(index=idx, critiques=crits, texts=ref.texts, correct=correct, usable=usable)


def sample_pool(run: Run, params: nnx.State, source: CritiqueSource | None,
                problems: Sequence[Problem], iteration: int) -> PoolRound:
    """Samples and verifies K solutions per pool problem and, with a critique, refines the wrong
    ones (steps 1-3)."""
    c, st = run.config, run.config.self_train
    k = st.samples_per_problem
    gen = rollout_lib.sample_chunked(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                         c.sampling.prompt_buckets, k, c.sampling.temperature, st.batch_prompts,
                         functools.partial(stream_seed, c.seed, _POOL, iteration))
    n, shape = len(problems) * k, (len(problems), k)
    correct = rollout_lib.score(run.task, problems, gen.texts, k) >= 1
    usable = correct & gen.finished & fits(run.tok, gen.texts, c.sampling.max_new_tokens, eos=True)
    critiques, refinements = [""] * n, [""] * n
    refined, refine_correct, refine_usable = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    wrong = np.flatnonzero(~correct)
    n_too_long = 0
    if source is not None:
        owners = [problems[i // k] for i in range(n)]
        r = refine_wrong(run, params, source, owners, gen.texts, wrong, iteration)
        refined[r.index], refine_correct[r.index], refine_usable[r.index] = True, r.correct, r.usable
        for i, crit, text in zip(r.index, r.critiques, r.texts):
            critiques[i], refinements[i] = crit, text
        n_too_long = len(wrong) - len(r.index)
    return PoolRound(texts=gen.texts, correct=correct.reshape(shape), usable=usable.reshape(shape),
                     critiques=critiques, refinements=refinements, refined=refined.reshape(shape),
                     refine_correct=refine_correct.reshape(shape), refine_usable=refine_usable.reshape(shape),
                     entropy=gen.entropy, n_too_long=n_too_long)


# ----------------------------------------------------------------------------- SFT and evaluation


def sft_on(run: Run, step_fn: Callable, optimizer, params: nnx.State, problems: Sequence[Problem],
           targets: Sequence[str], seed: int) -> tuple[nnx.State, dict[str, float]]:
    """``self_train.sft_steps`` supervised steps on (solve prompt of ``problems[i]``, ``targets[i]``)
    from ``params`` with a fresh optimiser state; returns the new parameters and
    ``self_train/sft/...`` metrics (the last step's, plus ``nll_first`` and ``skipped``)."""
    c, st = run.config, run.config.self_train
    prompts = [run.prompts.solve(p.question) for p in problems]
    rows = sft_batches(len(targets), st.sft_batch_size, st.sft_steps, seed)

    def batch_at(n: int) -> SequenceBatch:
        row = rows[n - 1]
        arrays = rollout_lib.pack_pairs(run.tok, [prompts[i] for i in row], [targets[i] for i in row],
                                        run.prompt_width, c.sampling.max_new_tokens, [problems[i].uid for i in row])
        return SequenceBatch(**{k: run.shard(v) for k, v in arrays.items()})

    first, skipped = [], [0.0]

    def track(s) -> None:
        m = jax.device_get(s.raw)
        first.append(float(m["nll"]))
        skipped[0] += float(m["skipped"])

    loop = SupervisedLoop(init_state(run, params, optimizer), step_fn, batch_at, prefix="self_train/sft",
                          log_every=0)
    loop.add_hook(track)
    loop.run(1, len(rows))
    metrics = {k: v for k, v in loop.logged[len(rows)].items() if k != "self_train/sft/skipped"}
    return loop.state.params, metrics | {"self_train/sft/nll_first": first[0], "self_train/sft/skipped": skipped[0]}


def evaluate_levels(run: Run, params: nnx.State) -> dict[str, float]:
    """``eval.group_size`` samples for each of the first ``eval.n_problems`` test problems (the
    same keys every iteration): :func:`eval_metrics` plus ``self_train/eval/entropy``."""
    c = run.config
    n, g = min(c.eval.n_problems, len(run.test)), c.eval.group_size
    problems = [run.test[i].problem for i in range(n)]
    gen = rollout_lib.sample_chunked(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                         c.sampling.prompt_buckets, g, c.sampling.temperature, c.eval.batch_prompts,
                         functools.partial(stream_seed, c.seed, _EVAL, 0))
    counts = (rollout_lib.score(run.task, problems, gen.texts, g) >= 1).reshape(n, g).sum(1)
    distinct = [distinct_correct_solutions(run.task, p, gen.texts[i * g:(i + 1) * g]) for i, p in enumerate(problems)]
    return eval_metrics(problems, counts, np.asarray(distinct), g) | {"self_train/eval/entropy": gen.entropy}


# ----------------------------------------------------------------------------- the loop


def run_iteration(run: Run, params: nnx.State, source: CritiqueSource | None,
                  problems: Sequence[Problem], iteration: int, step_fn: Callable,
                  optimizer) -> tuple[nnx.State, dict[str, float]]:
    """One self-training iteration (steps 1-5 of the module docstring): new parameters and metrics."""
    c, st = run.config, run.config.self_train
    times: dict[str, float] = {}
    with timed(times, "perf/sample_s"):
        r = sample_pool(run, params, source, problems, iteration)
    keep_sample, keep_refine = select_kept(r.usable, r.refine_usable, r.texts, r.refinements,
                                           st.max_per_problem, st.dedupe)
    metrics = pool_metrics(problems, r.correct, r.refined, r.refine_correct, keep_sample, keep_refine,
                           source is not None)
    metrics["self_train/pool/entropy"] = r.entropy
    if source is not None:
        metrics["self_train/pool/n_too_long"] = float(r.n_too_long)
    owners, targets = training_pairs(problems, r.texts, r.refinements, keep_sample, keep_refine)
    if targets:
        with timed(times, "perf/sft_s"):
            params, sft_metrics = sft_on(run, step_fn, optimizer, params, owners, targets,
                                         stream_seed(c.seed, _SFT, iteration))
        metrics |= sft_metrics
    metrics["self_train/sft/skipped_iteration"] = float(not targets)
    with timed(times, "perf/eval_s"):
        metrics |= evaluate_levels(run, params)
    run.writer.write_samples(iteration, logged_samples(problems, r, keep_sample, keep_refine,
                                                        c.eval.n_logged_samples))
    return params, metrics | times


def self_train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = True,
               stop_after: int | None = None) -> str:
    """Runs ``self_train.iterations`` iterations in ``workdir`` from the ``init_from`` SFT policy,
    or resumes after the last checkpointed iteration; returns ``workdir``.

    ``stop_after``: return after checkpointing that iteration, as a preemption would.
    """
    policy_dir = check_init_run(config)
    run = setup(config, workdir, "self_train")
    with run.active():
        return _self_train(run, policy_dir, resume, stop_after)


def _self_train(run: Run, policy_dir: str, resume: bool, stop_after: int | None) -> str:
    config, workdir = run.config, run.workdir
    st = config.self_train
    rd = RunDir(workdir)
    rd.refuse_overwrite(resume, CHECKPOINTS)
    save_config(config, workdir, resume, write=is_main_process())
    ckpt = rd.training(config.checkpoint)
    latest = ckpt.latest_step()
    if latest is None:
        params = roles.restore_policy(run, policy_dir)
    else:
        params = ckpt.restore(latest, like={"params": run.abstract_params()})[0]["params"]
        log.info("resumed self-training after iteration %d", latest)
    # Logs past the last finished iteration (all of them when none finished) belong to a crashed attempt.
    run.writer = rd.writer(config, latest if latest is not None else -1)
    progress = Progress(total=st.iterations, initial=latest or 0, enabled=config.log.progress,
                        keys=("self_train/pool/n_kept", "self_train/eval/solved"))
    if latest is None:
        run.writer.write(0, evaluate_levels(run, params))
    problems = [run.train[i].problem for i in range(st.pool_size or len(run.train))]
    source = critique_source(config, run.task, roles.load_critic(run) if config.critique.type == "model" else None)
    optimizer, schedule = make_optimizer(st.lr, st.warmup_steps, st.sft_steps, weight_decay=st.weight_decay)
    step_fn = sft_step_fn(run, params, optimizer, schedule)
    for iteration in range((latest or 0) + 1, st.iterations + 1):
        params, metrics = run_iteration(run, params, source, problems, iteration, step_fn, optimizer)
        run.writer.write(iteration, metrics)
        progress.update(iteration, metrics)
        ckpt.save(iteration, {"params": params}, {"phase": "self_train", "iteration": iteration}, force=True)
        if stop_after is not None and iteration >= stop_after and iteration < st.iterations:
            log.info("stopping after iteration %d (stop_after); re-run to resume", iteration)
            break
    for closer in (ckpt.close, progress.close, run.writer.close):
        closer()
    return workdir
