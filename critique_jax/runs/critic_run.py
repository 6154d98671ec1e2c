"""The train_critic program: supervised training of the step-level critique model (the critic)
and its held-out evaluation.

The critic is a second decoder with its own size (``critic.preset``/``critic.family``) and the
task tokenizer's vocabulary; it lives on the policy's mesh and is trained with the one
supervised loop (:class:`~critique_jax.runs.supervised.SupervisedLoop`) on
:mod:`critique_jax.critique.data` examples: reference solutions and planted errors of the
train split, plus, with ``critic.policy_from``, ``critic.policy_samples`` responses per train
problem sampled from that run's SFT policy and labelled by the step checker (real mistakes, not
only planted ones), balanced to ``critic.wrong_fraction``.
It starts from fresh parameters or, with ``critic.init_from``, from a checkpoint of the same
architecture (e.g. the SFT policy, which already computes the task's arithmetic).

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
                       its meta holds the model, dtypes and widths (:func:`~critique_jax.runs.roles.critic_meta`)

Evaluation (:func:`evaluate_critic`): greedy critiques of the first ``critic.eval_n_problems``
test problems, one reference solution and one planted error of it per problem (``critic/*``),
plus one response per problem of the ``critic.policy_from`` policy when set
(``critic/policy/*``), scored by :func:`score_critiques` against the step checker.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Sequence

import ml_collections
import numpy as np
from flax import nnx

from critique_jax import storage
from critique_jax.critique import data as data_lib
from critique_jax.critique.critic import resolve_widths
from critique_jax.critique.data import CritiqueExample
from critique_jax.critique.feedback import score_critiques
from critique_jax.data import BatchIterator
from critique_jax.metrics import Progress
from critique_jax.parallel.distributed import is_main_process
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.guard import NonFiniteGuard
from critique_jax.rl.rollout import pack_pairs
from critique_jax.rl.train_step import SequenceBatch, make_optimizer
from critique_jax.rundir import save_config
from critique_jax.runs import roles
from critique_jax.runs.layout import CHECKPOINTS, CRITIC_POLICY, SFT_POLICY, RunDir, final_checkpointer
from critique_jax.runs.run import Run, setup
from critique_jax.runs.state import checkpoint_state, init_state, restored_state, sft_step_fn
from critique_jax.runs.supervised import SupervisedLoop
from critique_jax.sampling import SamplerConfig
from critique_jax.tasks import Problem

log = logging.getLogger("critique_jax")

#: Offsets of the critic's random streams from ``config.seed`` (the policy uses the seed itself);
#: the policy-sample streams are 10k apart, so their per-call seeds (``+ i``) never meet.
_INIT_SEED, _EVAL_DATA_SEED, _POLICY_SEED, _EVAL_POLICY_SEED = 1_000, 1_001, 10_000, 20_000


@dataclasses.dataclass
class Critic:
    """A critic run: the task run with the critic's model definition, its widths and data.

    run: :class:`~critique_jax.runs.run.Run` whose ``model_cfg``/``graphdef``/``param_sh``/
      ``sampler`` are the critic's (so ``roles.init_params``/``state.init_state`` build it).
    prompt_width / response_len: P and L in tokens (:mod:`critique_jax.critique.critic`).
    train / held_out: training and held-out evaluation examples.
    """

    run: Run
    prompt_width: int
    response_len: int
    train: list[CritiqueExample]
    held_out: list[CritiqueExample]

    def batch(self, examples: Sequence[CritiqueExample]) -> SequenceBatch:
        """A sharded supervised batch: critique prompts (left-padded to P) and targets (to L)."""
        arrays = pack_pairs(self.run.tok, [e.prompt for e in examples], [e.target for e in examples],
                            self.prompt_width, self.response_len, [f"{e.problem.uid} ({e.source})" for e in examples])
        return SequenceBatch(**{k: self.run.shard(v) for k, v in arrays.items()})


def sample_policy(run: Run, params: nnx.State, problems: Sequence[Problem], k: int,
                  seed: int) -> list[tuple[Problem, str]]:
    """``k`` responses per problem (problem-major) from the policy ``params`` of ``run``, sampled
    as in RL (``sampling.temperature``, the solve prompt buckets), ``eval.batch_prompts`` prompts
    per call; call ``i`` uses seed ``seed + i``."""
    c = run.config
    gen = rollout_lib.sample_chunked(run, (run.graphdef, params), [run.prompts.solve(p.question) for p in problems],
                                     c.sampling.prompt_buckets, k, c.sampling.temperature, c.eval.batch_prompts,
                                     lambda i: seed + i)
    return [(problems[i // k], text) for i, text in enumerate(gen.texts)]


def setup_critic(config: ml_collections.ConfigDict, workdir: str) -> Critic:
    """Task data, tokenizer and mesh (:func:`~critique_jax.runs.run.setup`), critique examples,
    widths and the critic's model definition.

    With ``critic.policy_from`` (a train run of this task's policy), its SFT policy samples
    ``critic.policy_samples`` responses per train problem for the training examples and one per
    held-out problem for the evaluation, each labelled by the step checker
    (:func:`critique_jax.critique.data.policy_examples`).
    """
    run = setup(config, workdir, "critic")
    cc = config.critic
    if cc.eval_n_problems > len(run.test):
        raise ValueError(f"config critic.eval_n_problems={cc.eval_n_problems} exceeds the {len(run.test)} test "
                         "problems (task.n_test)")
    train_examples = run.train.__getitems__(range(len(run.train)))
    eval_problems = [run.test[i].problem for i in range(cc.eval_n_problems)]
    policy_samples, eval_policy_samples = [], []
    if cc.policy_from:
        params = roles.restore_policy(run, roles.check_policy_run(config, cc.policy_from, "critic.policy_from"))
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
    model_cfg = roles.critic_model_config(config.critic, config.model, run.tok.vocab_size, width + length)
    model_cfg, graphdef, param_sh = roles.define(model_cfg, run.mesh)
    sampler = SamplerConfig(max_new_tokens=length, eos_ids=run.tok.eos_ids, pad_id=run.tok.pad_id)
    run = dataclasses.replace(run, model_cfg=model_cfg, graphdef=graphdef, sampler=sampler, param_sh=param_sh)
    log.info("critic: %d training / %d held-out examples, prompt width %d, response length %d",
             len(train), len(held_out), width, length)
    return Critic(run=run, prompt_width=width, response_len=length, train=train, held_out=held_out)


# ----------------------------------------------------------------------------- evaluation


def generate_critiques(critic: Critic, params: nnx.State, examples: Sequence[CritiqueExample],
                       seed: int = 0) -> list[str]:
    """Greedy critiques of ``examples``, ``critic.eval_batch`` prompts per (fixed-shape) call;
    example ``i`` samples with key ``(seed, i)``."""
    run = critic.run
    return rollout_lib.sample_chunked(run, (run.graphdef, params), [e.prompt for e in examples],
                                      (critic.prompt_width,), 1, 0.0, run.config.critic.eval_batch,
                                      lambda _: seed, global_ids=True).texts


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
        return roles.init_params(run, seed)
    if not storage.path(path, "critic.init_from").is_dir():
        raise FileNotFoundError(f"config critic.init_from={path!r}: no such checkpoint directory")
    with final_checkpointer(path) as ckpt:
        try:
            restored, _ = ckpt.restore(like={"params": run.abstract_params()})
        except (ValueError, KeyError) as e:
            cc = run.config.critic
            raise ValueError(f"config critic.init_from={path!r}: its parameters do not fit "
                             f"critic.preset={cc.preset!r}, critic.family={cc.family!r} "
                             f"({type(e).__name__}: {e})") from None
    return restored["params"]


def run_critic_sft(critic: Critic, ckpt, progress: Progress, stop_at: int | None = None) -> nnx.State | None:
    """Supervised training of the critic from :func:`initial_params` or from the latest checkpoint, with
    evaluations every ``critic.eval_every`` steps and after the last one.

    Returns the final parameters, or None when it stopped (checkpointed) at ``stop_at``.
    """
    run = critic.run
    c, cc = run.config, run.config.critic
    optimizer, schedule = make_optimizer(cc.lr, cc.warmup_steps, cc.steps, weight_decay=cc.weight_decay)
    state = init_state(run, initial_params(critic, c.seed + _INIT_SEED), optimizer)
    it = BatchIterator(critic.train, cc.batch_size, seed=c.seed)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:
        restored, meta = ckpt.restore(latest, like=checkpoint_state(state))
        state = restored_state(restored)
        it.set_state(meta["iterator"])
        start = latest
        log.info("resumed critic training at step %d", start)
    loop = SupervisedLoop(state, sft_step_fn(run, state.params, optimizer, schedule),
                          lambda _: critic.batch(next(it)), prefix="critic", log_every=cc.log_every,
                          writer=run.writer, progress=progress, step_time_key="perf/critic_step_s",
                          guard=NonFiniteGuard("critic", cc.max_bad_steps, "critic.max_bad_steps"))
    loop.add_log_hook(lambda s: evaluate_critic(critic, loop.state.params, s.n), cc.eval_every, at_end=True)

    def save(s) -> None:
        ckpt.save(s.n, checkpoint_state(loop.state), {"phase": "critic", "iterator": it.get_state()})

    def stop(s) -> bool:
        if stop_at is None or s.n < stop_at:
            return False
        save(s)
        log.info("stopping critic training at step %d (stop_at); re-run to resume", s.n)
        return True

    loop.add_hook(save, cc.checkpoint_every, before_end=True)
    loop.add_hook(stop, before_end=True)
    return None if loop.run(start + 1, cc.steps) is not None else loop.state.params


def train_critic(config: ml_collections.ConfigDict, workdir: str, *, resume: bool = True,
                 stop_at: int | None = None) -> str:
    """Trains the critic in ``workdir`` (layout in the module docstring); returns ``workdir``.

    Re-running resumes from the latest checkpoint; a run whose ``critic_policy/`` exists is
    done and returns at once. ``stop_at``: checkpoint and return after that step, as a
    preemption would.
    """
    rd = RunDir(workdir)
    if storage.path(rd / SFT_POLICY).is_dir():
        raise FileExistsError(f"{workdir} holds a policy run (sft_policy/): give the critic its own --workdir")
    rd.refuse_overwrite(resume, CHECKPOINTS, CRITIC_POLICY)
    critic = setup_critic(config, workdir)
    with critic.run.active():
        return _train_critic(critic, rd, resume, stop_at)


def _train_critic(critic: Critic, rd: RunDir, resume: bool, stop_at: int | None) -> str:
    config, workdir = critic.run.config, critic.run.workdir
    save_config(config, workdir, resume, write=is_main_process())
    final = rd.final(CRITIC_POLICY)
    if final.latest_step() is not None:
        log.info("critic in %s is trained already (%s)", workdir, rd / CRITIC_POLICY)
        final.close()
        return workdir
    ckpt = rd.training(config.checkpoint)
    latest = ckpt.latest_step()
    # Logs past the resumed step (all of them when nothing was saved) belong to a crashed attempt.
    critic.run.writer = rd.writer(config, latest if latest is not None else -1)
    progress = Progress(total=config.critic.steps, initial=latest or 0, enabled=config.log.progress,
                        keys=("critic/nll", "critic/verdict_acc", "critic/first_wrong_acc"))
    params = run_critic_sft(critic, ckpt, progress, stop_at)
    if params is not None:
        final.save(config.critic.steps, {"params": params},
                   roles.critic_meta(config, critic.run.tok.vocab_size, critic.prompt_width, critic.response_len),
                   force=True)
        final.wait()
    for closer in (ckpt.close, final.close, progress.close, critic.run.writer.close):
        closer()
    return workdir
