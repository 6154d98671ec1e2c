"""Critique-in-the-loop self-training and the tail-narrowing measurement (DESIGN §4.7).

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
   fit ``sampling.max_new_tokens`` (:func:`select_kept`: optional exact-duplicate removal and
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
import os
from typing import Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from critique_jax.analysis.diversity import (distinct_correct_solutions, distinct_per_solved, pass_at_k_curve,
                                             solved_share_by_difficulty)
from critique_jax.checkpoint import Checkpointer
from critique_jax.critique.feedback import RULE_TYPES, refinement_reward, rule_critiques
from critique_jax.critique.loop import critique_writer, policy_view
from critique_jax.metrics import MetricsWriter, Progress
from critique_jax.parallel.distributed import is_main_process
from critique_jax.parallel.mesh import batch_shards
from critique_jax.perf import timed
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl import trainer
from critique_jax.rl.train_step import SequenceBatch, make_optimizer
from critique_jax.rundir import save_config
from critique_jax.tasks import Problem
from critique_jax.text import Tokenizer
from critique_jax.text.templates import critique_prompt, refine_prompt, solve_prompt

log = logging.getLogger("critique_jax")

#: Random streams (first part of every sampling seed after ``config.seed``).
_POOL, _CRITIQUE, _REFINE, _EVAL, _SFT = range(5)
# ----------------------------------------------------------------------------- config


def validate_self_train(config: ml_collections.ConfigDict, shards: int, n_train: int) -> None:
    """Checks the ``self_train`` section; each error names the key.

    shards: batch shards of the mesh (data x fsdp); n_train: problems in the train split.
    """
    s = config.self_train

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config {msg}")

    for key in ("iterations", "samples_per_problem", "sft_steps"):
        need(s[key] >= 1, f"self_train.{key}={s[key]}: expected >= 1")
    for key in ("batch_prompts", "sft_batch_size"):
        need(s[key] >= 1 and s[key] % shards == 0,
             f"self_train.{key}={s[key]}: must be a positive multiple of the {shards} batch shards (mesh data x fsdp)")
    need(0 <= s.pool_size <= n_train,
         f"self_train.pool_size={s.pool_size}: expected 0 (all) to the {n_train} train problems (task.n_train)")
    need(s.max_per_problem >= 0, f"self_train.max_per_problem={s.max_per_problem}: expected >= 0 (0 = no cap)")
    need(s.lr > 0, f"self_train.lr={s.lr}: expected > 0")
    need(s.weight_decay >= 0, f"self_train.weight_decay={s.weight_decay}: expected >= 0")
    need(0 <= s.warmup_steps <= s.sft_steps,
         f"self_train.warmup_steps={s.warmup_steps}: expected between 0 and self_train.sft_steps={s.sft_steps}")


def check_init_run(config: ml_collections.ConfigDict) -> str:
    """The ``sft_policy`` directory of ``init_from``, after checking that the run's policy fields
    (:data:`~critique_jax.rl.trainer.POLICY_MATCHING_KEYS`) equal this config's."""
    if not config.init_from:
        raise ValueError("config init_from is empty: self-training starts from an SFT policy; set it to a train run "
                         "directory holding sft_policy/ (python -m critique_jax.train ... with rl.steps=0)")
    return trainer.check_policy_run(config, config.init_from, "init_from")


# ----------------------------------------------------------------------------- pure selection and metrics


def select_kept(sample_ok: np.ndarray, refine_ok: np.ndarray, sample_texts: Sequence[str],
                refine_texts: Sequence[str], max_per_problem: int = 0,
                dedupe: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which samples and refinements become training data: ``(keep_sample, keep_refine)``, [P, K] bool.

    sample_ok [P, K] bool: sample ``k`` of problem ``p`` is usable (verified correct, finished,
    fits); refine_ok [P, K] bool: the refinement of (wrong) sample ``k`` is usable; a sample
    and its own refinement cannot both be usable. sample_texts / refine_texts: [P·K] texts,
    problem-major. Per problem the candidates are the usable samples, then the usable
    refinements, each in sample order; ``dedupe`` drops a candidate whose text equals an
    earlier kept one of the same problem; ``max_per_problem > 0`` keeps the first that many.
    """
    sample_ok, refine_ok = np.asarray(sample_ok, bool), np.asarray(refine_ok, bool)
    if sample_ok.ndim != 2 or refine_ok.shape != sample_ok.shape:
        raise ValueError(f"select_kept: sample_ok {sample_ok.shape} and refine_ok {refine_ok.shape} must be equal [P, K]")
    if (sample_ok & refine_ok).any():
        p, k = np.argwhere(sample_ok & refine_ok)[0]
        raise ValueError(f"select_kept: problem {p} sample {k} is usable and so is its refinement; only wrong "
                         "samples are refined")
    n_p, n_k = sample_ok.shape
    for name, texts in (("sample_texts", sample_texts), ("refine_texts", refine_texts)):
        if len(texts) != n_p * n_k:
            raise ValueError(f"select_kept: {name} has {len(texts)} texts; expected P x K = {n_p * n_k}")
    if max_per_problem < 0:
        raise ValueError(f"select_kept: max_per_problem={max_per_problem}: expected >= 0 (0 = no cap)")
    keep = np.zeros((2, n_p, n_k), bool)  # [0]: samples, [1]: refinements
    for p in range(n_p):
        candidates = [(0, k) for k in np.flatnonzero(sample_ok[p])] + [(1, k) for k in np.flatnonzero(refine_ok[p])]
        seen: set[str] = set()
        kept = 0
        for kind, k in candidates:
            if max_per_problem and kept >= max_per_problem:
                break
            text = (sample_texts, refine_texts)[kind][p * n_k + k]
            if dedupe and text in seen:
                continue
            keep[kind, p, k] = True
            seen.add(text)
            kept += 1
    return keep[0], keep[1]


def training_pairs(problems: Sequence[Problem], sample_texts: Sequence[str], refine_texts: Sequence[str],
                   keep_sample: np.ndarray, keep_refine: np.ndarray) -> tuple[list[Problem], list[str]]:
    """The SFT data ``(problems, targets)``: the kept samples, then the kept refinements (each
    a target for the solve prompt of its problem; the critique is not part of it).

    keep_sample / keep_refine: [P, K] bool; sample_texts / refine_texts: [P·K], problem-major.
    """
    k = np.shape(keep_sample)[1]
    owners: list[Problem] = []
    targets: list[str] = []
    for keep, texts in ((keep_sample, sample_texts), (keep_refine, refine_texts)):
        for i in np.flatnonzero(np.asarray(keep).reshape(-1)):
            owners.append(problems[i // k])
            targets.append(texts[i])
    return owners, targets


def level_key(level: int) -> str:
    return f"level_{level}"


def pool_metrics(problems: Sequence[Problem], correct: np.ndarray, refined: np.ndarray, refine_correct: np.ndarray,
                 keep_sample: np.ndarray, keep_refine: np.ndarray, critique: bool) -> dict[str, float]:
    """``self_train/pool/...`` metrics of one iteration's samples of the pool.

    problems [P] (``difficulty`` is the level); correct [P, K] bool: the sample verified;
    refined [P, K]: a (wrong) sample that got a refinement; refine_correct [P, K]: its
    refinement verified; keep_sample / keep_refine [P, K]: :func:`select_kept`'s output.
    Per level (``/level_<d>``) and over all problems (no suffix): ``accuracy`` (share of
    correct samples), ``solved`` (share of problems with >= 1 correct sample), ``contributed``
    (>= 1 kept example), ``rescued`` (no correct sample, >= 1 kept refinement); per level
    ``data_share`` (share of the kept examples from the level; NaN when nothing is kept);
    ``n_kept``, ``n_kept_samples``, ``n_kept_refinements``; with ``critique`` also
    ``n_refined`` and ``refine_success`` (verified / refined; NaN when none was refined).
    """
    arrays = [np.asarray(a, bool) for a in (correct, refined, refine_correct, keep_sample, keep_refine)]
    correct, refined, refine_correct, keep_sample, keep_refine = arrays
    if any(a.shape != correct.shape for a in arrays) or correct.shape[:1] != (len(problems),):
        raise ValueError(f"pool_metrics: shapes {[a.shape for a in arrays]}; expected all [P={len(problems)}, K]")
    levels = np.asarray([p.difficulty for p in problems])
    kept = (keep_sample | keep_refine).sum(1)
    counts = {"solved": correct.sum(1), "contributed": kept,
              "rescued": np.where(correct.any(1), 0, keep_refine.sum(1))}
    out: dict[str, float] = {"self_train/pool/accuracy": float(correct.mean())}
    for name, c in counts.items():
        out[f"self_train/pool/{name}"] = float(np.mean(c > 0))
        for d, share in solved_share_by_difficulty(problems, c).items():
            out[f"self_train/pool/{name}/{level_key(d)}"] = share
    total = int(kept.sum())
    for d in sorted(set(levels.tolist())):
        at = levels == d
        out[f"self_train/pool/accuracy/{level_key(d)}"] = float(correct[at].mean())
        out[f"self_train/pool/data_share/{level_key(d)}"] = float(kept[at].sum() / total) if total else float("nan")
    out |= {"self_train/pool/n_kept": float(total), "self_train/pool/n_kept_samples": float(keep_sample.sum()),
            "self_train/pool/n_kept_refinements": float(keep_refine.sum())}
    if critique:
        n_refined = int(refined.sum())
        out["self_train/pool/n_refined"] = float(n_refined)
        out["self_train/pool/refine_success"] = float(refine_correct.sum() / n_refined) if n_refined else float("nan")
    return out


def pass_ks(n: int) -> list[int]:
    """The k of the pass@k curve for n samples: 1, 2, 4, ... up to n, and n."""
    ks = [k for k in (2 ** i for i in range(max(n, 1).bit_length())) if k <= n]
    return ks + ([n] if ks[-1] != n else [])


def eval_metrics(problems: Sequence[Problem], correct_counts: np.ndarray, distinct_counts: np.ndarray,
                 n_samples: int) -> dict[str, float]:
    """``self_train/eval/...`` from ``n_samples`` samples per test problem.

    correct_counts / distinct_counts [P]: correct and distinct correct samples per problem.
    Per level (``/level_<d>``) and over all problems: ``solved`` (share with >= 1 correct),
    ``pass@k/<k>`` for k in :func:`pass_ks` (unbiased estimator) and ``distinct_correct``
    (mean distinct correct solutions per solved problem, NaN when none is solved).
    """
    counts, distinct = np.asarray(correct_counts), np.asarray(distinct_counts, np.float64)
    if counts.shape != (len(problems),) or distinct.shape != counts.shape:
        raise ValueError(f"eval_metrics: correct_counts {counts.shape} and distinct_counts {distinct.shape}; "
                         f"expected ({len(problems)},)")
    levels = np.asarray([p.difficulty for p in problems])
    groups = [("", np.ones(len(problems), bool))] + [(f"/{level_key(d)}", levels == d)
                                                      for d in sorted(set(levels.tolist()))]
    out: dict[str, float] = {}
    for suffix, at in groups:
        out[f"self_train/eval/solved{suffix}"] = float(np.mean(counts[at] > 0))
        out[f"self_train/eval/distinct_correct{suffix}"] = distinct_per_solved(counts[at], distinct[at])
        for k, v in pass_at_k_curve(n_samples, counts[at], pass_ks(n_samples)).items():
            out[f"self_train/eval/pass@k/{k}{suffix}"] = v
    return out


def sft_batches(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """Example indices [steps, batch_size] for ``n`` examples: consecutive random permutations
    of ``0..n-1`` (epochs), so every example is seen equally often (to within one)."""
    if n < 1:
        raise ValueError(f"sft_batches: no examples (n={n})")
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])
    return order[:need].reshape(steps, batch_size)


def fits(tok: Tokenizer, texts: Sequence[str], limit: int, eos: bool = False) -> np.ndarray:
    """[N] bool: the text encodes to at most ``limit`` tokens: as a target with the end token if
    ``eos``, else as a prompt (``encode_prompt``: with bos where the model expects one)."""
    encode = (lambda t: tok.encode(t, eos=True)) if eos else tok.encode_prompt
    return np.asarray([len(encode(t)) <= limit for t in texts], bool)


def _seed(*parts: int) -> int:
    """A non-negative int32 sampling seed from integer parts (a stream per purpose and iteration)."""
    return int(np.random.SeedSequence([int(x) for x in parts]).generate_state(1)[0] >> 1)


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass(frozen=True)
class PoolRound:
    """One iteration's samples of the pool (host); P problems x K samples, problem-major.

    texts / critiques / refinements: [P·K] ("" where a sample was not refined); correct,
    usable, refined, refine_correct, refine_usable: [P, K] bool — usable = verified, ended
    with the end token and fits ``sampling.max_new_tokens``; entropy: the samples' mean token
    entropy; n_too_long: wrong samples left unrefined because a critique or refinement prompt
    exceeded the largest bucket.
    """

    texts: list[str]
    correct: np.ndarray
    usable: np.ndarray
    critiques: list[str]
    refinements: list[str]
    refined: np.ndarray
    refine_correct: np.ndarray
    refine_usable: np.ndarray
    entropy: float
    n_too_long: int


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


def refine_wrong(run: trainer.Run, params: nnx.State, critic: trainer.CritiqueModel | None,
                 owners: Sequence[Problem], texts: Sequence[str], wrong: np.ndarray, iteration: int) -> Refined:
    """Critiques the samples ``texts[wrong]`` (of ``owners[wrong]``) with ``critique.type`` and
    samples one refinement of each (step 3). Samples whose critique or refinement prompt
    exceeds the largest bucket are left out."""
    c, st = run.config, run.config.self_train
    kind, chunk = c.critique.type, st.batch_prompts * st.samples_per_problem
    policy = (run.graphdef, params)
    idx = np.asarray(wrong, np.int64)
    if kind in RULE_TYPES:
        crits = rule_critiques(kind, run.task, [owners[i] for i in idx], [texts[i] for i in idx], 1,
                               c.critique.format)
    else:
        model, sampler = critique_writer(run, params, critic)
        prompts = [critique_prompt(owners[i].question, texts[i]) for i in idx]
        ok = fits(run.tok, prompts, max(c.critique.prompt_buckets))
        idx = idx[ok]
        crits = rollout_lib.sample_chunked(run, model, [p for p, o in zip(prompts, ok) if o], c.critique.prompt_buckets, 1, 0.0,
                               chunk, functools.partial(_seed, c.seed, _CRITIQUE, iteration), sampler).texts  # greedy
        crits = policy_view(run, crits)  # as in RL
    prompts = [refine_prompt(owners[i].question, texts[i], t) for i, t in zip(idx, crits)]
    ok = fits(run.tok, prompts, max(c.critique.refine_buckets))
    idx, crits = idx[ok], [t for t, o in zip(crits, ok) if o]
    ref = rollout_lib.sample_chunked(run, policy, [p for p, o in zip(prompts, ok) if o], c.critique.refine_buckets, 1,
                         c.sampling.temperature, chunk, functools.partial(_seed, c.seed, _REFINE, iteration))
    correct = np.asarray([refinement_reward(run.task, owners[i], t, kind) >= 1 for i, t in zip(idx, ref.texts)], bool)
    usable = correct & ref.finished & fits(run.tok, ref.texts, c.sampling.max_new_tokens, eos=True)
    return Refined(index=idx, critiques=crits, texts=ref.texts, correct=correct, usable=usable)


def sample_pool(run: trainer.Run, params: nnx.State, critic: trainer.CritiqueModel | None,
                problems: Sequence[Problem], iteration: int) -> PoolRound:
    """Samples and verifies K solutions per pool problem and, with a critique, refines the wrong
    ones (steps 1-3)."""
    c, st = run.config, run.config.self_train
    k = st.samples_per_problem
    gen = rollout_lib.sample_chunked(run, (run.graphdef, params), [solve_prompt(p.question) for p in problems],
                         c.sampling.prompt_buckets, k, c.sampling.temperature, st.batch_prompts,
                         functools.partial(_seed, c.seed, _POOL, iteration))
    n, shape = len(problems) * k, (len(problems), k)
    correct = rollout_lib.score(run.task, problems, gen.texts, k) >= 1
    usable = correct & gen.finished & fits(run.tok, gen.texts, c.sampling.max_new_tokens, eos=True)
    critiques, refinements = [""] * n, [""] * n
    refined, refine_correct, refine_usable = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    wrong = np.flatnonzero(~correct)
    n_too_long = 0
    if c.critique.type != "none":
        owners = [problems[i // k] for i in range(n)]
        r = refine_wrong(run, params, critic, owners, gen.texts, wrong, iteration)
        refined[r.index], refine_correct[r.index], refine_usable[r.index] = True, r.correct, r.usable
        for i, crit, text in zip(r.index, r.critiques, r.texts):
            critiques[i], refinements[i] = crit, text
        n_too_long = len(wrong) - len(r.index)
    return PoolRound(texts=gen.texts, correct=correct.reshape(shape), usable=usable.reshape(shape),
                     critiques=critiques, refinements=refinements, refined=refined.reshape(shape),
                     refine_correct=refine_correct.reshape(shape), refine_usable=refine_usable.reshape(shape),
                     entropy=gen.entropy, n_too_long=n_too_long)


# ----------------------------------------------------------------------------- SFT and evaluation


def sft_on(run: trainer.Run, step_fn: Callable, optimizer, params: nnx.State, problems: Sequence[Problem],
           targets: Sequence[str], seed: int) -> tuple[nnx.State, dict[str, float]]:
    """``self_train.sft_steps`` supervised steps on (solve prompt of ``problems[i]``, ``targets[i]``)
    from ``params`` with a fresh optimiser state; returns the new parameters and
    ``self_train/sft/...`` metrics (the last step's, plus ``nll_first`` and ``skipped``)."""
    c, st = run.config, run.config.self_train
    state = trainer.init_state(run, params, optimizer)
    prompts = [solve_prompt(p.question) for p in problems]
    first, skipped, m = None, 0.0, {}
    for row in sft_batches(len(targets), st.sft_batch_size, st.sft_steps, seed):
        arrays = rollout_lib.pack_pairs(run.tok, [prompts[i] for i in row], [targets[i] for i in row], run.prompt_width,
                                        c.sampling.max_new_tokens, [problems[i].uid for i in row])
        state, m = step_fn(state, SequenceBatch(**{k: run.shard(v) for k, v in arrays.items()}))
        m = jax.device_get(m)
        first = float(m["nll"]) if first is None else first
        skipped += float(m["skipped"])
    metrics = {f"self_train/sft/{k}": float(v) for k, v in m.items() if k != "skipped"}
    return state.params, metrics | {"self_train/sft/nll_first": first, "self_train/sft/skipped": skipped}


def evaluate_levels(run: trainer.Run, params: nnx.State) -> dict[str, float]:
    """``eval.group_size`` samples for each of the first ``eval.n_problems`` test problems (the
    same keys every iteration): :func:`eval_metrics` plus ``self_train/eval/entropy``."""
    c = run.config
    n, g = min(c.eval.n_problems, len(run.test)), c.eval.group_size
    problems = [run.test[i].problem for i in range(n)]
    gen = rollout_lib.sample_chunked(run, (run.graphdef, params), [solve_prompt(p.question) for p in problems],
                         c.sampling.prompt_buckets, g, c.sampling.temperature, c.eval.batch_prompts,
                         functools.partial(_seed, c.seed, _EVAL, 0))
    counts = (rollout_lib.score(run.task, problems, gen.texts, g) >= 1).reshape(n, g).sum(1)
    distinct = [distinct_correct_solutions(run.task, p, gen.texts[i * g:(i + 1) * g]) for i, p in enumerate(problems)]
    return eval_metrics(problems, counts, np.asarray(distinct), g) | {"self_train/eval/entropy": gen.entropy}


# ----------------------------------------------------------------------------- the loop


def _logged_samples(problems: Sequence[Problem], r: PoolRound, keep_sample: np.ndarray, keep_refine: np.ndarray,
                    n: int) -> list[dict]:
    """Up to ``n`` refined samples (with critique and refinement), else the first samples."""
    k = r.correct.shape[1]
    rows = np.flatnonzero(r.refined.reshape(-1)) if r.refined.any() else np.arange(r.correct.size)
    out = []
    for i in rows[:n]:
        p = problems[i // k]
        s = dict(uid=p.uid, difficulty=p.difficulty, question=p.question, sample=r.texts[i],
                 correct=bool(r.correct.flat[i]), kept=bool(keep_sample.flat[i]))
        if r.refined.flat[i]:
            s |= dict(critique=r.critiques[i], refinement=r.refinements[i],
                      refinement_correct=bool(r.refine_correct.flat[i]), refinement_kept=bool(keep_refine.flat[i]))
        out.append(s)
    return out


def run_iteration(run: trainer.Run, params: nnx.State, critic: trainer.CritiqueModel | None,
                  problems: Sequence[Problem], iteration: int, step_fn: Callable,
                  optimizer) -> tuple[nnx.State, dict[str, float]]:
    """One self-training iteration (steps 1-5 of the module docstring): new parameters and metrics."""
    c, st = run.config, run.config.self_train
    times: dict[str, float] = {}
    with timed(times, "perf/sample_s"):
        r = sample_pool(run, params, critic, problems, iteration)
    keep_sample, keep_refine = select_kept(r.usable, r.refine_usable, r.texts, r.refinements,
                                           st.max_per_problem, st.dedupe)
    metrics = pool_metrics(problems, r.correct, r.refined, r.refine_correct, keep_sample, keep_refine,
                           c.critique.type != "none")
    metrics["self_train/pool/entropy"] = r.entropy
    if c.critique.type != "none":
        metrics["self_train/pool/n_too_long"] = float(r.n_too_long)
    owners, targets = training_pairs(problems, r.texts, r.refinements, keep_sample, keep_refine)
    if targets:
        with timed(times, "perf/sft_s"):
            params, sft_metrics = sft_on(run, step_fn, optimizer, params, owners, targets,
                                         _seed(c.seed, _SFT, iteration))
        metrics |= sft_metrics
    metrics["self_train/sft/skipped_iteration"] = float(not targets)
    with timed(times, "perf/eval_s"):
        metrics |= evaluate_levels(run, params)
    run.writer.write_samples(iteration, _logged_samples(problems, r, keep_sample, keep_refine,
                                                        c.eval.n_logged_samples))
    return params, metrics | times


def self_train(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = True,
               stop_after: int | None = None) -> str:
    """Runs ``self_train.iterations`` iterations in ``workdir`` from the ``init_from`` SFT policy,
    or resumes after the last checkpointed iteration; returns ``workdir``.

    ``stop_after``: return after checkpointing that iteration, as a preemption would.
    """
    st = config.self_train
    policy_dir = check_init_run(config)
    run = trainer.setup(config, workdir)
    validate_self_train(config, batch_shards(run.mesh), len(run.train))
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not resume and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise FileExistsError(f"{ckpt_dir} holds checkpoints and resume is off: use a new --workdir or --resume")
    save_config(config, workdir, resume, write=is_main_process())
    ckpt = Checkpointer(ckpt_dir, keep_last=config.checkpoint.keep_last, keep_best=0, best_metric=None,
                        async_save=config.checkpoint.async_save)
    like = {"params": trainer.init_params_abstract(run)}
    latest = ckpt.latest_step()
    if latest is None:
        params = trainer.restore_policy(run, policy_dir)
    else:
        params = ckpt.restore(latest, like=like)[0]["params"]
        log.info("resumed self-training after iteration %d", latest)
    # Logs past the last finished iteration (all of them when none finished) belong to a crashed attempt.
    run.writer = MetricsWriter(workdir, enabled=is_main_process(), tensorboard=config.log.tensorboard,
                               resume_step=latest if latest is not None else -1)
    progress = Progress(total=st.iterations, initial=latest or 0, enabled=config.log.progress,
                        keys=("self_train/pool/n_kept", "self_train/eval/solved"))
    if latest is None:
        run.writer.write(0, evaluate_levels(run, params))
    problems = [run.train[i].problem for i in range(st.pool_size or len(run.train))]
    critic = trainer.load_critic(run) if config.critique.type == "model" else None
    optimizer, schedule = make_optimizer(st.lr, st.warmup_steps, st.sft_steps, weight_decay=st.weight_decay)
    step_fn = trainer.sft_step_fn(run, params, optimizer, schedule)
    for iteration in range((latest or 0) + 1, st.iterations + 1):
        params, metrics = run_iteration(run, params, critic, problems, iteration, step_fn, optimizer)
        run.writer.write(iteration, metrics)
        progress.update(iteration, metrics)
        ckpt.save(iteration, {"params": params}, {"phase": "self_train", "iteration": iteration}, force=True)
        if stop_after is not None and iteration >= stop_after and iteration < st.iterations:
            log.info("stopping after iteration %d (stop_after); re-run to resume", iteration)
            break
    for closer in (ckpt.close, progress.close, run.writer.close):
        closer()
    return workdir
