"""Pure, jitted update steps: supervised (SFT) and policy-gradient (GRPO family).

Both read a :class:`SequenceBatch` of left-padded prompts followed by right-padded responses,
run one teacher-forced forward pass, and compute response-token log-probs and entropies with
the chunked full-vocabulary kernel (``[N, T, V]`` logits are never materialised).

``rl_update`` runs ``epochs x minibatches`` optimiser steps over one rollout batch inside a
single ``lax.scan``: each epoch draws a fresh permutation of the batch. An update whose loss
or gradients are not finite is skipped (parameters and optimiser state unchanged) and
counted in the ``skipped`` metric; the trainer decides when to stop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from critique_jax.models import Transformer
from critique_jax.ops.masked import masked_mean
from critique_jax.ops.token_stats import chunked_logprobs_and_entropy
from critique_jax.rl.config import LossConfig
from critique_jax.rl.inputs import LossInputs
from critique_jax.rl.objective import compute_loss


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Policy parameters, optimiser state and the number of optimiser steps taken."""

    params: nnx.State
    opt_state: Any
    step: jax.Array  # int32 scalar


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SequenceBatch:
    """N sequences of prompt (width P, left-padded) + response (width L, right-padded).

    tokens / valid: [N, P + L]; response_mask: [N, L] (the tokens that are trained on).
    The RL fields are None in SFT batches: old_logp [N, L], advantages [N],
    ref_logp [N, L], is_refinement [N].
    """

    tokens: jax.Array
    valid: jax.Array
    response_mask: jax.Array
    old_logp: jax.Array | None = None
    advantages: jax.Array | None = None
    ref_logp: jax.Array | None = None
    is_refinement: jax.Array | None = None

    @property
    def response_len(self) -> int:
        return self.response_mask.shape[1]


def response_stats(
    model: Transformer, batch: SequenceBatch, temperature: float | jax.Array = 1.0, chunk_size: int = 512
) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced log-probs and entropies of the response tokens: ([N, L], [N, L]) float32."""
    positions = jnp.maximum(jnp.cumsum(batch.valid.astype(jnp.int32), axis=1) - 1, 0)
    hidden, _ = model(batch.tokens, positions, batch.valid)
    length = batch.response_len
    h = hidden[:, -length - 1:-1]  # the hidden state before each response token predicts it
    targets = batch.tokens[:, -length:]
    return chunked_logprobs_and_entropy(h, model.unembed(), targets, temperature,
                                        chunk_size=chunk_size, softcap=model.cfg.final_logit_softcap)


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, *, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, grad_clip: float = 1.0,
                   end_lr_ratio: float = 0.1) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW with linear warm-up then cosine decay, after global-norm gradient clipping.

    Returns ``(optimizer, schedule)``; ``schedule(step)`` is the learning rate (for metrics).
    """
    if total_steps < 1 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"optimizer schedule: warmup_steps={warmup_steps}, total_steps={total_steps}: "
                         "expected 0 <= warmup_steps <= total_steps and total_steps >= 1")
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else lr, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=lr * end_lr_ratio)
    opt = optax.chain(optax.clip_by_global_norm(grad_clip),
                      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
    return opt, schedule


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _apply(optimizer, state: TrainState, grads, loss) -> tuple[TrainState, jax.Array, jax.Array]:
    """One optimiser step, skipped when the loss, a gradient or an updated parameter is not finite."""
    finite = jnp.isfinite(loss) & _all_finite(grads)
    grad_norm = optax.tree.norm(grads)
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = optimizer.update(safe_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = finite & _all_finite(params)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new = TrainState(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                     step=state.step + finite.astype(jnp.int32))
    return new, grad_norm, ~finite


def sft_update(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, state: TrainState,
               batch: SequenceBatch) -> tuple[TrainState, dict[str, jax.Array]]:
    """One supervised step: minimise the mean negative log-likelihood of response tokens."""

    def loss_fn(params):
        logp, entropy = response_stats(nnx.merge(graphdef, params), batch)
        mask = batch.response_mask
        nll = -masked_mean(logp, mask)
        return nll, {"nll": nll, "entropy": masked_mean(entropy, mask),
                     "token_acc_proxy": masked_mean(jnp.exp(logp), mask)}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, grad_norm, skipped = _apply(optimizer, state, grads, loss)
    return state, {**jax.lax.stop_gradient(metrics), "grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32)}


def rl_update(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    state: TrainState,
    batch: SequenceBatch,
    key: jax.Array,
    *,
    epochs: int = 1,
    minibatches: int = 1,
    temperature: float = 1.0,
    mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``epochs x minibatches`` policy-loss steps on one rollout batch; metrics are step means.

    ``temperature`` must equal the sampling temperature, so that log-probs, the old log-probs
    and entropies describe the same distribution.
    """
    n = batch.tokens.shape[0]
    if n % minibatches:
        raise ValueError(f"rollout batch of {n} sequences is not divisible by minibatches={minibatches}")
    size = n // minibatches

    def loss_fn(params, mb: SequenceBatch, k):
        logp, entropy = response_stats(nnx.merge(graphdef, params), mb, temperature)
        inputs = LossInputs(logp=logp, old_logp=mb.old_logp, advantages=mb.advantages,
                            mask=mb.response_mask, entropy=entropy, ref_logp=mb.ref_logp,
                            is_refinement=mb.is_refinement)
        return compute_loss(loss_config, inputs, k, mesh=mesh)

    def one(state: TrainState, i):
        epoch, part = i // minibatches, i % minibatches
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        idx = jax.lax.dynamic_slice_in_dim(perm, part * size, size)
        mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, mb, jax.random.fold_in(key, 1_000_003 + i))
        state, grad_norm, skipped = _apply(optimizer, state, grads, loss)
        return state, {**metrics, "grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32)}

    state, per_step = jax.lax.scan(one, state, jnp.arange(epochs * minibatches))
    metrics = jax.tree.map(jnp.mean, per_step)
    metrics["skipped"] = per_step["skipped"].sum()
    return state, metrics


def token_stats_fn(graphdef: nnx.GraphDef, params: nnx.State, batch: SequenceBatch,
                   temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies of the response tokens under ``params`` (reference / recompute)."""
    return response_stats(nnx.merge(graphdef, params), batch, temperature)
