"""The step-level critique model (the critic): supervised training and held-out evaluation.

The critic is a second decoder with its own size (``critic.preset``/``critic.family``) and the
task tokenizer's vocabulary; it lives on the policy's mesh and is trained with the policy's
supervised step (:func:`~critique_jax.rl.train_step.sft_update`) on
:mod:`critique_jax.critique.data` examples: reference solutions and planted errors of the
train split, plus, with ``critic.policy_from``, ``critic.policy_samples`` responses per train
problem sampled from that run's SFT policy and labelled by the step checker (real mistakes, not
only planted ones), balanced to ``critic.wrong_fraction``.
It starts from fresh parameters or, with ``critic.init_from``, from a checkpoint of the same
architecture (e.g. the SFT policy, which already computes the task's arithmetic).

Widths: the critic's prompt width P is the longest critique prompt and its response length L
the longest target (with the end token) over the training and evaluation examples, unless
``critic.prompt_width`` / ``critic.max_new_tokens`` fix them (then a longer example is an
error naming the key). The model's ``max_seq_len`` is P + L.

Targets: ``critic.target_format`` (:data:`~critique_jax.critique.data.TARGET_FORMATS`):
``worked`` (the default) writes the task's note on each step before deciding on it
(``step 2: 24 - 4 is 20 vs 21, left 20, wrong, arithmetic``), ``plain`` only the decisions
(``step 2: wrong, arithmetic``). A small model cannot compute a verdict in one token: with
plain targets it mostly says ``correct``. Scores read both formats (``parse_critique``); the
RL and self-training loops condense the critic's output to the plain format before the policy
reads it (``condense_critique``).

Run directory (a critic run has its own ``--workdir``; ``config.json`` is the whole config)::

    metrics.jsonl      critic/nll, critic/entropy, critic/lr, ... every critic.log_every steps;
                       critic/verdict_acc, critic/first_wrong_acc, critic/parse_fail,
                       critic/target_match (the whole target, notes included), ... at
                       evaluations (every critic.eval_every steps and after the last step)
    samples.jsonl      a few held-out critiques per evaluation
    checkpoints/       {"params", "opt_state", "step"} every critic.checkpoint_every steps (resume)
    critic_policy/     the final critic, {"params": ...} (the layout of a policy's sft_policy/);
                       its meta holds the model and width settings (:func:`critic_model_config`)

Evaluation (:func:`evaluate_critic`): greedy critiques of the first ``critic.eval_n_problems``
test problems, one reference solution and one planted error of it per problem (``critic/*``),
plus one response per problem of the ``critic.policy_from`` policy when set
(``critic/policy/*``), scored by :func:`score_critiques` against the step checker.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from critique_jax.checkpoint import Checkpointer
from critique_jax.critique import data as data_lib
from critique_jax.critique.data import CritiqueExample
from critique_jax.critique.feedback import score_critiques
from critique_jax.data import BatchIterator
from critique_jax.metrics import MetricsWriter, Progress
from critique_jax.models import FAMILIES, SIZES, ModelConfig, Transformer, model_config
from critique_jax.parallel.distributed import is_main_process, to_host
from critique_jax.parallel.mesh import batch_shards
from critique_jax.parallel.sharding import param_shardings
from critique_jax.rl import trainer
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.guard import NonFiniteGuard
from critique_jax.rl.rollout import decode_responses, pack_pairs
from critique_jax.rl.train_step import SequenceBatch, TrainState, make_optimizer
from critique_jax.rundir import save_config
from critique_jax.sampling import SamplerConfig, generate, pad_prompts, sample_keys
from critique_jax.tasks import Problem
from critique_jax.text import Tokenizer, solve_prompt

log = logging.getLogger("critique_jax")

#: Offsets of the critic's random streams from ``config.seed`` (the policy uses the seed itself);
#: the policy-sample streams are 10k apart, so their per-call seeds (``+ i``) never meet.
_INIT_SEED, _EVAL_DATA_SEED, _POLICY_SEED, _EVAL_POLICY_SEED = 1_000, 1_001, 10_000, 20_000


def validate_critic(config: ml_collections.ConfigDict, shards: int) -> None:
    """Checks the ``critic`` section; each error names the key and the expected value.

    shards: batch shards of the mesh (data x fsdp); batches must be multiples of it.
    """
    c = config.critic

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"config critic.{msg}")

    need(c.preset in SIZES, f"preset={c.preset!r}: unknown model preset; expected one of {sorted(SIZES)}")
    need(c.family in FAMILIES, f"family={c.family!r}: unknown model family; expected one of {sorted(FAMILIES)}")
    need(c.steps >= 1, f"steps={c.steps}: expected >= 1")
    need(0 <= c.warmup_steps <= c.steps,
         f"warmup_steps={c.warmup_steps}: expected between 0 and critic.steps={c.steps}")
    need(c.lr > 0, f"lr={c.lr}: expected > 0")
    need(c.weight_decay >= 0, f"weight_decay={c.weight_decay}: expected >= 0")
    for key in ("batch_size", "eval_batch"):
        need(c[key] >= 1 and c[key] % shards == 0,
             f"{key}={c[key]}: must be a positive multiple of the {shards} batch shards (mesh data x fsdp)")
    need(0.0 <= c.wrong_fraction <= 1.0, f"wrong_fraction={c.wrong_fraction}: expected a value in [0, 1]")
    need(c.wrong_per_solution >= 1, f"wrong_per_solution={c.wrong_per_solution}: expected >= 1")
    need(c.target_format in data_lib.TARGET_FORMATS,
         f"target_format={c.target_format!r}: expected one of {data_lib.TARGET_FORMATS}")
    for key in ("prompt_width", "max_new_tokens"):
        need(c[key] >= 0, f"{key}={c[key]}: expected >= 0 (0 = from the data)")
    need(c.policy_samples >= 0,
         f"policy_samples={c.policy_samples}: expected >= 0 (0 = policy samples in the held-out set only)")
    need(c.policy_samples == 0 or bool(c.policy_from),
         f"policy_samples={c.policy_samples} needs critic.policy_from (the train run whose SFT policy samples them)")
    for key in ("log_every", "checkpoint_every", "eval_n_problems"):
        need(c[key] >= 1, f"{key}={c[key]}: expected >= 1")
    for key in ("eval_every", "n_logged_samples"):
        need(c[key] >= 0, f"{key}={c[key]}: expected >= 0")


def critic_model_config(config: ml_collections.ConfigDict, vocab_size: int, max_seq_len: int) -> ModelConfig:
    """The critic's architecture: ``critic.preset``/``critic.family``, the policy's dtypes."""
    return model_config(config.critic.preset, vocab_size, family=config.critic.family, dtype=config.model.dtype,
                        param_dtype=config.model.param_dtype, max_seq_len=max_seq_len)


# ----------------------------------------------------------------------------- set-up


@dataclasses.dataclass
class Critic:
    """A critic run: the task run with the critic's model definition, its widths and data.

    run: :class:`~critique_jax.rl.trainer.Run` whose ``model_cfg``/``graphdef``/``param_sh``/
      ``sampler`` are the critic's (so ``trainer.init_params``/``init_state`` build it).
    prompt_width / response_len: P and L in tokens (module docstring).
    train / held_out: training and held-out evaluation examples.
    """

    run: trainer.Run
    prompt_width: int
    response_len: int
    train: list[CritiqueExample]
    held_out: list[CritiqueExample]

    def batch(self, examples: Sequence[CritiqueExample]) -> SequenceBatch:
        """A sharded supervised batch: critique prompts (left-padded to P) and targets (to L)."""
        arrays = pack_pairs(self.run.tok, [e.prompt for e in examples], [e.target for e in examples],
                            self.prompt_width, self.response_len, [f"{e.problem.uid} ({e.source})" for e in examples])
        return SequenceBatch(**{k: self.run.shard(v) for k, v in arrays.items()})


def resolve_widths(tok: Tokenizer, examples: Sequence[CritiqueExample], prompt_width: int,
                   response_len: int) -> tuple[int, int]:
    """``(P, L)``: ``prompt_width`` / ``response_len``, or where 0 the longest prompt / target
    (with the end token) of ``examples``; an example that does not fit is an error naming it
    and the config key."""
    prompts, targets = data_lib.token_lengths(tok, examples)
    width, length = prompt_width or int(prompts.max()), response_len or int(targets.max())
    for lengths, limit, what, key in ((prompts, width, "prompt", "prompt_width"),
                                      (targets, length, "target", "max_new_tokens")):
        if lengths.max() > limit:
            e = examples[int(lengths.argmax())]
            raise ValueError(f"{e.problem.uid} ({e.source}): critique {what} of {lengths.max()} tokens exceeds "
                             f"critic.{key}={limit}; raise it or set 0 (= the longest {what} in the data)")
    return width, length


def sample_policy(run: trainer.Run, params: nnx.State, problems: Sequence[Problem], k: int,
                  seed: int) -> list[tuple[Problem, str]]:
    """``k`` responses per problem (problem-major) from the policy ``params`` of ``run``, sampled
    as in RL (``sampling.temperature``, the solve prompt buckets), ``eval.batch_prompts`` prompts
    per call; call ``i`` uses seed ``seed + i``."""
    c = run.config
    gen = rollout_lib.sample_chunked(run, (run.graphdef, params), [solve_prompt(p.question) for p in problems],
                                     c.sampling.prompt_buckets, k, c.sampling.temperature, c.eval.batch_prompts,
                                     lambda i: seed + i)
    return [(problems[i // k], text) for i, text in enumerate(gen.texts)]


def setup_critic(config: ml_collections.ConfigDict, workdir: str) -> Critic:
    """Task data, tokenizer and mesh (``trainer.setup``), critique examples, widths and the
    critic's model definition.

    With ``critic.policy_from`` (a train run of this task's policy), its SFT policy samples
    ``critic.policy_samples`` responses per train problem for the training examples and one per
    held-out problem for the evaluation, each labelled by the step checker
    (:func:`critique_jax.critique.data.policy_examples`).
    """
    run = trainer.setup(config, workdir)
    cc = config.critic
    validate_critic(config, batch_shards(run.mesh))
    if cc.eval_n_problems > len(run.test):
        raise ValueError(f"config critic.eval_n_problems={cc.eval_n_problems} exceeds the {len(run.test)} test "
                         "problems (task.n_test)")
    train_examples = run.train.__getitems__(range(len(run.train)))
    eval_problems = [run.test[i].problem for i in range(cc.eval_n_problems)]
    policy_samples, eval_policy_samples = [], []
    if cc.policy_from:
        params = trainer.restore_policy(run, trainer.check_policy_run(config, cc.policy_from, "critic.policy_from"))
        if cc.policy_samples:
            policy_samples = sample_policy(run, params, [e.problem for e in train_examples], cc.policy_samples,
                                           config.seed + _POLICY_SEED)
        eval_policy_samples = sample_policy(run, params, eval_problems, 1, config.seed + _EVAL_POLICY_SEED)
    try:
        train = data_lib.build_examples(run.task, train_examples, config.seed,
                                        wrong_fraction=cc.wrong_fraction, wrong_per_solution=cc.wrong_per_solution,
                                        policy_samples=policy_samples, target_format=cc.target_format)
        held_out = data_lib.build_examples(run.task, run.test.__getitems__(range(cc.eval_n_problems)),
                                           config.seed + _EVAL_DATA_SEED, wrong_fraction=0.5, max_solutions=1,
                                           target_format=cc.target_format)
        held_out += data_lib.policy_examples(run.task, eval_policy_samples, cc.target_format)
    except NotImplementedError as e:
        raise ValueError(f"config critic.target_format={cc.target_format!r}: {e}; use 'plain'") from None
    if len(train) < cc.batch_size:
        raise ValueError(f"config critic.batch_size={cc.batch_size} exceeds the {len(train)} critique "
                         "training examples")
    width, length = resolve_widths(run.tok, train + held_out, cc.prompt_width, cc.max_new_tokens)
    model_cfg = critic_model_config(config, run.tok.vocab_size, width + length)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0))))
    sampler = SamplerConfig(max_new_tokens=length, eos_ids=run.tok.eos_ids, pad_id=run.tok.pad_id)
    run = dataclasses.replace(run, model_cfg=model_cfg, graphdef=graphdef, sampler=sampler,
                              param_sh=param_shardings(abstract, run.mesh))
    log.info("critic: %d training / %d held-out examples, prompt width %d, response length %d",
             len(train), len(held_out), width, length)
    return Critic(run=run, prompt_width=width, response_len=length, train=train, held_out=held_out)


# ----------------------------------------------------------------------------- evaluation


def generate_critiques(critic: Critic, params: nnx.State, examples: Sequence[CritiqueExample],
                       seed: int = 0) -> list[str]:
    """Greedy critiques of ``examples``, ``critic.eval_batch`` prompts per (fixed-shape) call."""
    run, bs = critic.run, critic.run.config.critic.eval_batch
    texts: list[str] = []
    for start in range(0, len(examples), bs):
        chunk = list(examples[start:start + bs])
        padded = chunk + [chunk[-1]] * (bs - len(chunk))  # fixed shapes: no recompiles
        pb = pad_prompts([run.tok.encode_prompt(e.prompt) for e in padded], (critic.prompt_width,), run.tok.pad_id)
        keys = sample_keys(seed, np.arange(start, start + bs), 1)
        out = generate((run.graphdef, params), run.shard(pb.tokens), run.shard(pb.valid), run.shard(keys),
                       run.sampler, group_size=1, temperature=0.0, mesh=run.mesh)
        texts += decode_responses(run.tok, to_host(out.tokens), to_host(out.mask))[:len(chunk)]
    return texts


def evaluate_critic(critic: Critic, params: nnx.State, step: int) -> dict[str, float]:
    """Greedy critiques of the held-out examples scored by :func:`score_critiques`.

    Metrics ``critic/<name>`` over the reference solutions and planted errors (the benchmark,
    the same whether or not policy samples are held out too) and, when policy samples are among
    the examples, ``critic/policy/<name>`` over those; ``critic/target_match`` (the critique is
    the target, notes included, over all). Logs ``critic.n_logged_samples`` critiques.
    """
    t0 = time.perf_counter()
    examples = critic.held_out
    texts = generate_critiques(critic, params, examples, seed=critic.run.config.seed)
    metrics = {"critic/target_match": float(np.mean([t.strip() == e.target for t, e in zip(texts, examples)]))}
    for prefix, keep in (("critic", lambda e: e.source != "policy"), ("critic/policy", lambda e: e.source == "policy")):
        chosen = [i for i, e in enumerate(examples) if keep(e)]
        if chosen:
            scores = score_critiques([texts[i] for i in chosen], [examples[i].check for i in chosen])
            metrics |= {f"{prefix}/{k}": v for k, v in scores.items()}
    n_logged = critic.run.config.critic.n_logged_samples
    samples = [dict(e.meta, solution=e.solution, target=e.target, critique=t)
               for e, t in zip(examples[:n_logged], texts[:n_logged])]
    if critic.run.writer is not None:
        critic.run.writer.write_samples(step, samples)
    metrics["perf/critic_eval_s"] = time.perf_counter() - t0
    return metrics


# ----------------------------------------------------------------------------- training


def initial_params(critic: Critic, seed: int) -> nnx.State:
    """Fresh parameters, or those of the ``critic.init_from`` checkpoint directory (a policy run's
    ``sft_policy/`` or a critic's ``critic_policy/``; its architecture must be the critic's)."""
    run, path = critic.run, critic.run.config.critic.init_from
    if not path:
        return trainer.init_params(run, seed)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config critic.init_from={path!r}: no such checkpoint directory")
    with Checkpointer(path, keep_last=1, keep_best=0, best_metric=None, async_save=False) as ckpt:
        try:
            restored, _ = ckpt.restore(like={"params": trainer.init_params_abstract(run)})
        except (ValueError, KeyError) as e:
            cc = run.config.critic
            raise ValueError(f"config critic.init_from={path!r}: its parameters do not fit "
                             f"critic.preset={cc.preset!r}, critic.family={cc.family!r} "
                             f"({type(e).__name__}: {e})") from None
    return restored["params"]


def _ckpt_state(state: TrainState) -> dict:
    return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


def run_critic_sft(critic: Critic, ckpt: Checkpointer, progress: Progress,
                   stop_at: int | None = None) -> nnx.State | None:
    """Supervised training of the critic from :func:`initial_params` or from the latest checkpoint, with
    evaluations every ``critic.eval_every`` steps and after the last one.

    Returns the final parameters, or None when it stopped (checkpointed) at ``stop_at``.
    """
    run = critic.run
    c, cc = run.config, run.config.critic
    optimizer, schedule = make_optimizer(cc.lr, cc.warmup_steps, cc.steps, weight_decay=cc.weight_decay)
    state = trainer.init_state(run, initial_params(critic, c.seed + _INIT_SEED), optimizer)
    it = BatchIterator(critic.train, cc.batch_size, seed=c.seed)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        restored, meta = ckpt.restore(latest, like=_ckpt_state(state))
        state = TrainState(restored["params"], restored["opt_state"], restored["step"])
        it.set_state(meta["iterator"])
        start = latest
        log.info("resumed critic training at step %d", start)
    step_fn = trainer.sft_step_fn(run, state.params, optimizer, schedule)
    t_log, steps_since, eval_s = time.perf_counter(), 0, 0.0
    guard = NonFiniteGuard("critic", cc.max_bad_steps, "critic.max_bad_steps")
    for step in range(start + 1, cc.steps + 1):
        state, m = step_fn(state, critic.batch(next(it)))
        guard.check(step, float(m["skipped"]))
        steps_since += 1
        metrics: dict[str, Any] = {}
        if step % cc.log_every == 0 or step == cc.steps:
            metrics = {f"critic/{k}": float(v) for k, v in jax.device_get(m).items()}
            now = time.perf_counter()
            step_s = (now - t_log - eval_s) / steps_since  # wall time per step, evaluations excluded
            metrics |= {"perf/critic_step_s": step_s}
            t_log, steps_since, eval_s = now, 0, 0.0
        if step == cc.steps or (cc.eval_every and step % cc.eval_every == 0):
            metrics |= evaluate_critic(critic, state.params, step)
            eval_s += metrics["perf/critic_eval_s"]
        if metrics:
            run.writer.write(step, metrics)
            progress.update(step, metrics)
        stopping = stop_at is not None and step >= stop_at and step < cc.steps
        if stopping or (step % cc.checkpoint_every == 0 and step < cc.steps):
            ckpt.save(step, _ckpt_state(state), {"phase": "critic", "iterator": it.get_state()})
        if stopping:
            log.info("stopping critic training at step %d (stop_at); re-run to resume", step)
            return None
    return state.params


def train_critic(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = True,
                 stop_at: int | None = None) -> str:
    """Trains the critic in ``workdir`` (layout in the module docstring); returns ``workdir``.

    Re-running resumes from the latest checkpoint; a run whose ``critic_policy/`` exists is
    done and returns at once. ``stop_at``: checkpoint and return after that step, as a
    preemption would.
    """
    if os.path.isdir(os.path.join(workdir, "sft_policy")):
        raise FileExistsError(f"{workdir} holds a policy run (sft_policy/): give the critic its own --workdir")
    ckpt_dir, final_dir = os.path.join(workdir, "checkpoints"), os.path.join(workdir, "critic_policy")
    if not resume:
        for d in (ckpt_dir, final_dir):
            if os.path.isdir(d) and os.listdir(d):
                raise FileExistsError(f"{d} holds checkpoints and resume is off: use a new --workdir or --resume")
    critic = setup_critic(config, workdir)
    save_config(config, workdir, resume, write=is_main_process())
    c, cc = config, config.critic
    final = Checkpointer(final_dir, keep_last=1, keep_best=0, best_metric=None, async_save=False)
    if final.latest_step() is not None:
        log.info("critic in %s is trained already (%s)", workdir, final_dir)
        final.close()
        return workdir
    ckpt = Checkpointer(ckpt_dir, keep_last=c.checkpoint.keep_last, keep_best=0, best_metric=None,
                        async_save=c.checkpoint.async_save)
    latest = ckpt.latest_step()
    # Logs past the resumed step (all of them when nothing was saved) belong to a crashed attempt.
    critic.run.writer = MetricsWriter(workdir, enabled=is_main_process(), tensorboard=c.log.tensorboard,
                                      resume_step=latest if latest is not None else -1)
    progress = Progress(total=cc.steps, initial=latest or 0, enabled=c.log.progress,
                        keys=("critic/nll", "critic/verdict_acc", "critic/first_wrong_acc"))
    params = run_critic_sft(critic, ckpt, progress, stop_at)
    if params is not None:
        meta = {"phase": "critic_final", "preset": cc.preset, "family": cc.family,
                "vocab_size": critic.run.tok.vocab_size, "prompt_width": critic.prompt_width,
                "response_len": critic.response_len}
        final.save(cc.steps, {"params": params}, meta, force=True)
        final.wait()
    for closer in (ckpt.close, final.close, progress.close, critic.run.writer.close):
        closer()
    return workdir
