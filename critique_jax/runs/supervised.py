"""The one supervised loop (policy SFT, critic training, self-training fine-tuning) and the
policy's SFT warm-up built on it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import numpy as np
from flax import nnx

from critique_jax.checkpoint import Checkpointer
from critique_jax.critique.feedback import PLAN_TYPES, rule_critique
from critique_jax.data import BatchIterator
from critique_jax.metrics import MetricsWriter, Progress
from critique_jax.rl import policy_init
from critique_jax.rl import rollout as rollout_lib
from critique_jax.rl.guard import NonFiniteGuard
from critique_jax.rl.train_step import SequenceBatch, TrainState, make_optimizer
from critique_jax.runs import roles
from critique_jax.runs.loop import Loop, Step
from critique_jax.runs.run import Run, rl_pool
from critique_jax.runs.state import checkpoint_state, init_state, replicated_key, restored_state, scalars, sft_step_fn
from critique_jax.tasks import join_steps

log = logging.getLogger("critique_jax")

Hook = Callable[[Step], Any]


@dataclasses.dataclass
class SupervisedLoop:
    """Supervised steps ``state, m = step_fn(state, batch_at(n))`` with the standard hooks, in
    order: the non-finite ``guard`` (every step), logging ``<prefix>/<metric>`` every
    ``log_every`` steps and after the last (with ``step_time_key``: the mean step time since
    the previous log, hooks excluded), the hooks of :meth:`add_log_hook` (e.g. evaluations),
    writing the step's log to ``writer`` and ``progress`` when it holds anything (without a
    writer: kept in ``logged``), then the hooks of :meth:`add_hook` (checkpoints, stops)."""

    state: TrainState
    step_fn: Callable
    batch_at: Callable[[int], SequenceBatch]
    prefix: str
    log_every: int
    writer: MetricsWriter | None = None
    guard: NonFiniteGuard | None = None
    progress: Progress | None = None
    step_time_key: str | None = None
    logged: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    _log_hooks: list[tuple] = dataclasses.field(default_factory=list)
    _hooks: list[tuple] = dataclasses.field(default_factory=list)

    def add_log_hook(self, fn: Callable[[Step], dict | None], every: int, *, at_end: bool = False) -> None:
        """``fn(s)`` adds its metrics to the step's log before it is written."""
        self._log_hooks.append((lambda s: s.log.update(fn(s) or {}), every, dict(at_end=at_end)))

    def add_hook(self, fn: Hook, every: int = 1, *, at_end: bool = False, before_end: bool = False) -> None:
        """``fn(s)`` runs after the write; returning True stops the loop."""
        self._hooks.append((fn, every, dict(at_end=at_end, before_end=before_end)))

    def run(self, first: int, last: int) -> int | None:
        """Steps ``first..last``; returns the step a hook stopped at, or None."""
        seconds = [0.0, 0]

        def step(n: int) -> Any:
            self.state, m = self.step_fn(self.state, self.batch_at(n))
            if self.guard is not None:
                self.guard.check(n, float(m["skipped"]))
            return m

        def timer(s: Step) -> None:
            seconds[0] += s.seconds
            seconds[1] += 1

        def log_metrics(s: Step) -> None:
            s.log |= scalars(s.raw, self.prefix)
            if self.step_time_key:
                s.log[self.step_time_key] = seconds[0] / max(seconds[1], 1)
                seconds[0], seconds[1] = 0.0, 0

        def write(s: Step) -> None:
            if not s.log:
                return
            if self.writer is None:
                self.logged[s.n] = s.log
                return
            self.writer.write(s.n, s.log)
            if self.progress is not None:
                self.progress.update(s.n, s.log)

        loop = Loop(first, last).add_hook(timer).add_hook(log_metrics, self.log_every, at_end=True)
        for fn, every, kw in self._log_hooks:
            loop.add_hook(fn, every, **kw)
        loop.add_hook(write)
        for fn, every, kw in self._hooks:
            loop.add_hook(fn, every, **kw)
        return loop.run(step)


# ----------------------------------------------------------------------------- the policy's SFT warm-up


def run_sft(run: Run, ckpt: Checkpointer, progress: Progress) -> nnx.State:
    """Supervised warm-up on reference solutions; returns the final SFT parameters."""
    c = run.config
    params = (policy_init.pretrained_params(c.model.hf_dir, run.model_cfg, run.mesh, run.param_sh) if c.model.hf_dir
              else roles.init_params(run, c.seed))
    if c.sft.steps == 0:  # no optimiser state: a pretrained policy's Adam moments would triple its memory
        return params
    optimizer, schedule = make_optimizer(c.sft.lr, c.sft.warmup_steps, c.sft.steps, weight_decay=c.sft.weight_decay,
                                         mu_dtype=c.sft.adam_mu_dtype)
    state = init_state(run, params, optimizer)
    # sft.skip_rl_pool: no record with a question of the RL pool is trained on (RL meets unseen problems)
    data = run.train
    if c.sft.skip_rl_pool:
        pool = rl_pool(run)
        data = run.train.excluding({pool[i].problem.question for i in range(len(pool))})
    it = BatchIterator(data, c.sft.batch_size, seed=c.seed)
    key = replicated_key(run, c.seed)
    start = 0
    latest = ckpt.latest_step()
    if latest is not None:  # resuming inside SFT
        restored, meta = ckpt.restore(latest, like=checkpoint_state(state, key=key))
        state = restored_state(restored)
        it.set_state(meta["iterator"])
        start = latest
        log.info("resumed SFT at step %d", start)

    def batch_at(step: int) -> SequenceBatch:
        examples = next(it)
        rng = np.random.default_rng([c.seed, 1, step])
        if c.critique.sft_refine_every and step % c.critique.sft_refine_every == 0:
            arrays = refine_sft_arrays(run, examples, rng)
        else:
            arrays = rollout_lib.sft_arrays(run.tok, run.prompts, examples, rng, run.prompt_width,
                                            c.sampling.max_new_tokens)
        return SequenceBatch(**{k: run.shard(v) for k, v in arrays.items()})

    loop = SupervisedLoop(state, sft_step_fn(run, state.params, optimizer, schedule), batch_at, prefix="sft",
                          log_every=c.sft.log_every, writer=run.writer, progress=progress,
                          guard=NonFiniteGuard("SFT", c.sft.max_bad_steps, "sft.max_bad_steps"))
    loop.add_hook(lambda s: ckpt.save(s.n, checkpoint_state(loop.state, key=key),
                                      {"phase": "sft", "iterator": it.get_state()}) and None,
                  c.checkpoint.every, before_end=True)
    loop.run(start + 1, c.sft.steps)
    return loop.state.params


def refine_sft_arrays(run: Run, examples: list, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A refinement-format SFT batch: (question, planted wrong solution, its step critique in
    ``critique.format``) -> a correct solution, so the policy learns to use critiques before RL
    asks it to. ``critique.sft_refine_target``: ``any`` = a random reference solution of the
    problem (write a correct solution), ``source`` = the one the error was planted in (keep the
    steps the critique accepts, repair the one it flags). With ``critique.type`` ``plan`` or
    ``plan_hint`` half the wrong solutions are planted dead ends (a right first step after which
    the target is out of reach, :meth:`~critique_jax.tasks.base.Task.plant_dead_end`) and every
    critique is of that type; after a ``plan_hint`` critique of a dead end the target is the
    hinted solution (it starts with the hint). Otherwise the critique is ``rule_step``'s."""
    c = run.config.critique
    kind = c.type if c.type in PLAN_TYPES else "rule_step"
    prompts, targets = [], []
    for ex in examples:
        p = ex.problem
        source = ex.solutions[int(rng.integers(len(ex.solutions)))]
        planted = run.task.plant_dead_end(p, rng) if kind in PLAN_TYPES and rng.random() < 0.5 else None
        wrong = (planted or run.task.perturb(p, source, rng)).solution
        prompts.append(run.prompts.refine(p.question, wrong, rule_critique(kind, run.task, p, wrong, c.format)))
        target = source if c.sft_refine_target == "source" else ex.solutions[int(rng.integers(len(ex.solutions)))]
        if planted is not None and kind == "plan_hint":
            target = join_steps(run.task.hinted_steps(p, wrong, 0), p.answer)
        targets.append(target)
    return rollout_lib.pack_pairs(run.tok, prompts, targets, max(run.config.critique.refine_buckets),
                                  run.config.sampling.max_new_tokens, [ex.problem.uid for ex in examples],
                                  width_key="critique.refine_buckets")
