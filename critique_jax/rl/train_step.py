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
from critique_jax.rl.aggregation import part_weight
from critique_jax.rl.config import LossConfig
from critique_jax.rl.inputs import LossInputs
from critique_jax.rl.losses import token_separable
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
    """Teacher-forced log-probs and entropies of the response tokens: ([N, L], [N, L]) float32.

    The unembedding is cast to the activations' dtype (``model.dtype``, as in ``model.logits``):
    with bf16 activations the vocabulary matmul runs in bf16 with float32 accumulation, and
    everything after it in float32.
    """
    h = response_hidden(model, batch)
    targets = batch.tokens[:, -batch.response_len:]
    return chunked_logprobs_and_entropy(h, model.unembed().astype(h.dtype), targets, temperature,
                                        chunk_size=chunk_size, softcap=model.cfg.final_logit_softcap)


def response_hidden(model: Transformer, batch: SequenceBatch) -> jax.Array:
    """Teacher-forced final hidden states that predict the response tokens: [N, L, D] (row ``t``:
    the state before response token ``t``)."""
    positions = jnp.maximum(jnp.cumsum(batch.valid.astype(jnp.int32), axis=1) - 1, 0)
    hidden, _ = model(batch.tokens, positions, batch.valid)
    return hidden[:, -batch.response_len - 1:-1]


SCHEDULES = ("constant", "cosine")


def make_schedule(lr: float, warmup_steps: int, total_steps: int, kind: str = "cosine",
                  end_lr_ratio: float = 0.1) -> optax.Schedule:
    """The learning rate as a function of the optimiser-update count.

    ``cosine``: linear warm-up from 0 over ``warmup_steps`` updates, then cosine decay to
    ``lr * end_lr_ratio`` at ``total_steps`` (no warm-up: starts at ``lr``). ``constant``: the
    same warm-up, then ``lr`` (the RL papers' setting). Counts are optimiser updates, not
    trainer steps: an RL step takes ``epochs x minibatches`` of them.
    """
    if total_steps < 1 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"optimizer schedule: warmup_steps={warmup_steps}, total_steps={total_steps}: "
                         "expected 0 <= warmup_steps <= total_steps and total_steps >= 1")
    if kind == "cosine":
        if warmup_steps == total_steps:  # all warm-up, nothing left to decay
            return optax.linear_schedule(0.0, lr, warmup_steps)
        if not warmup_steps:  # (optax's warm-up of 0 steps logs a notice per schedule built)
            return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=end_lr_ratio)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup_steps else lr, peak_value=lr, warmup_steps=warmup_steps,
            decay_steps=total_steps, end_value=lr * end_lr_ratio)
    if kind == "constant":
        if not warmup_steps:
            return optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
                                    [warmup_steps])
    raise ValueError(f"optimizer schedule {kind!r}: expected one of {list(SCHEDULES)}")


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, *, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, grad_clip: float = 1.0,
                   end_lr_ratio: float = 0.1, schedule: str = "cosine",
                   mu_dtype: str | None = None) -> tuple[optax.GradientTransformation, Callable]:
    """AdamW on :func:`make_schedule`'s learning rate, after global-norm gradient clipping.

    ``warmup_steps`` and ``total_steps`` count optimiser updates. ``mu_dtype``: the dtype of
    Adam's first moment (e.g. "bfloat16" halves it beside float32 parameters); None or "" =
    the parameters' dtype. The second moment stays in the parameters' dtype. Returns
    ``(optimizer, schedule)``; ``schedule(count)`` is the learning rate of update ``count``.
    """
    lr_schedule = make_schedule(lr, warmup_steps, total_steps, schedule, end_lr_ratio)
    opt = optax.chain(optax.clip_by_global_norm(grad_clip),
                      optax.adamw(lr_schedule, b1=b1, b2=b2, weight_decay=weight_decay, mu_dtype=mu_dtype or None))
    return opt, lr_schedule


def _all_finite(tree) -> jax.Array:
    """Whether every element of ``tree`` is finite, read off its global norm (one sum of squares:
    inf or NaN when any element is, and also when the norm passes ~1.8e19 in float32, a blow-up
    counted as non-finite too). A per-leaf ``isfinite`` reduction made XLA's compile time grow
    with the square of the leaf count (the optimiser step of a 28-layer 1.5B shape on 8 CPU
    devices: 129 s, against 8.8 s with the norm)."""
    return jnp.isfinite(optax.tree.norm(tree))


def _apply(optimizer, state: TrainState, grads, loss) -> tuple[TrainState, jax.Array, jax.Array]:
    """One optimiser step, skipped when the loss, a gradient or an updated parameter is not finite."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # _all_finite(grads), its norm computed once
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grads)
    updates, opt_state = optimizer.update(safe_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = finite & _all_finite(params)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new = TrainState(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                     step=state.step + finite.astype(jnp.int32))
    return new, grad_norm, ~finite


def sft_update(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, state: TrainState,
               batch: SequenceBatch, lr_schedule: Callable | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One supervised step: minimise the mean negative log-likelihood of response tokens.
    ``lr_schedule`` (the optimiser's schedule): adds ``lr``, the learning rate this update applied."""

    def loss_fn(params):
        logp, entropy = response_stats(nnx.merge(graphdef, params), batch)
        mask = batch.response_mask
        nll = -masked_mean(logp, mask)
        return nll, {"nll": nll, "entropy": masked_mean(entropy, mask),
                     "token_acc_proxy": masked_mean(jnp.exp(logp), mask)}

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if lr_schedule is not None:
        metrics = {**metrics, "lr": jnp.asarray(lr_schedule(state.step), jnp.float32)}
    state, grad_norm, skipped = _apply(optimizer, state, grads, loss)
    return state, {**jax.lax.stop_gradient(metrics), "grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32)}


def initial_response_mask(batch: SequenceBatch) -> jax.Array:
    """[N, L] bool: the response tokens of initial responses (refinement rows excluded)."""
    mask = batch.response_mask > 0
    if batch.is_refinement is not None:
        mask = mask & ~batch.is_refinement.astype(bool)[:, None]
    return mask


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
    lr_schedule: Callable | None = None,
    entropy_after: bool = False,
    micro_batches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """``epochs x minibatches`` policy-loss steps on one rollout batch; metrics are step means.

    ``temperature`` must equal the sampling temperature, so that log-probs, the old log-probs
    and entropies describe the same distribution. ``lr_schedule`` (the optimiser's schedule):
    adds ``lr``, the mean learning rate the updates applied. ``entropy_after``: adds
    ``entropy_after``, the mean token entropy of the batch's initial responses under the updated
    parameters (one more forward pass, minibatch by minibatch): with the entropy of the same
    tokens before the update it gives the same-batch entropy change the covariance predicts.
    ``micro_batches``: each minibatch's gradient as the sum of this many row blocks' (gradient
    accumulation: activations of one block at a time; summed in float32), weighted by their share
    of the aggregation; needs a ``token_separable`` loss, so the update is the same up to float
    rounding; the metrics are computed on the whole minibatch's log-probs and entropies.
    """
    n = batch.tokens.shape[0]
    if n % minibatches:
        raise ValueError(f"rollout batch of {n} sequences is not divisible by minibatches={minibatches}")
    size = n // minibatches
    if size % micro_batches:
        raise ValueError(f"minibatch of {size} sequences is not divisible by micro_batches={micro_batches}")
    if micro_batches > 1 and not token_separable(loss_config):
        raise ValueError(f"micro_batches={micro_batches}: loss {loss_config.name!r} (or its forking mask) reads "
                         "statistics of the whole batch, so its gradient is not a sum over row blocks")

    def inputs_of(mb: SequenceBatch, logp: jax.Array, entropy: jax.Array) -> LossInputs:
        return LossInputs(logp=logp, old_logp=mb.old_logp, advantages=mb.advantages, mask=mb.response_mask,
                          entropy=entropy, ref_logp=mb.ref_logp, is_refinement=mb.is_refinement)

    def loss_fn(params, mb: SequenceBatch, k, weight=1.0):
        """(weight x the loss of ``mb``, (its metrics, log-probs, entropies))."""
        logp, entropy = response_stats(nnx.merge(graphdef, params), mb, temperature)
        loss, metrics = compute_loss(loss_config, inputs_of(mb, logp, entropy), k, mesh=mesh)
        return weight * loss, (metrics, logp, entropy)

    def one_pass(params, mb: SequenceBatch, k):
        (loss, (metrics, _, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, k)
        return (loss, metrics), grads

    def accumulated(params, mb: SequenceBatch, k):
        """(loss, metrics), grads of ``loss_fn`` summed over ``micro_batches`` row blocks; block
        j takes rows j, j + m, j + 2m, ... (m = micro_batches), so each keeps the batch's sharding."""
        blocks = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(size // micro_batches, micro_batches, *x.shape[1:]),
                                                     0, 1), mb)
        valid = mb.response_mask > 0

        def body(grads, block: SequenceBatch):  # summed in float32 whatever the parameters' dtype
            weight = part_weight(block.response_mask > 0, valid, loss_config.agg, loss_config.agg_constant)
            (_, (_, *stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(params, block, k, weight)
            return jax.tree.map(lambda a, b: a + b.astype(jnp.float32), grads, g), tuple(stats)

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        grads, (logp, entropy) = jax.lax.scan(body, zeros, blocks)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        logp, entropy = (jnp.swapaxes(x, 0, 1).reshape(size, -1) for x in (logp, entropy))
        return compute_loss(loss_config, inputs_of(mb, logp, entropy), k, mesh=mesh), grads

    def one(state: TrainState, i):
        epoch, part = i // minibatches, i % minibatches
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        idx = jax.lax.dynamic_slice_in_dim(perm, part * size, size)
        mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), batch)
        grad_fn = one_pass if micro_batches == 1 else accumulated
        (loss, metrics), grads = grad_fn(state.params, mb, jax.random.fold_in(key, 1_000_003 + i))
        if lr_schedule is not None:  # the rate optax applies to this update (its count = state.step)
            metrics = {**metrics, "lr": jnp.asarray(lr_schedule(state.step), jnp.float32)}
        state, grad_norm, skipped = _apply(optimizer, state, grads, loss)
        return state, {**metrics, "grad_norm": grad_norm, "skipped": skipped.astype(jnp.float32)}

    state, per_step = jax.lax.scan(one, state, jnp.arange(epochs * minibatches))
    metrics = jax.tree.map(jnp.mean, per_step)
    metrics["skipped"] = per_step["skipped"].sum()
    if entropy_after:
        metrics["entropy_after"] = initial_entropy(graphdef, state.params, batch, temperature, minibatches)
    return state, metrics


def initial_entropy(graphdef: nnx.GraphDef, params: nnx.State, batch: SequenceBatch, temperature: float,
                    chunks: int = 1) -> jax.Array:
    """Mean token entropy (nats) of the batch's initial-response tokens under ``params``,
    computed ``chunks`` rows-blocks at a time (the memory of one minibatch forward)."""
    model = nnx.merge(graphdef, params)
    n = batch.tokens.shape[0]
    blocks = jax.tree.map(lambda x: x.reshape(chunks, n // chunks, *x.shape[1:]), batch)

    def block(b: SequenceBatch) -> tuple[jax.Array, jax.Array]:
        _, ent = response_stats(model, b, temperature)
        mask = initial_response_mask(b)
        return jnp.sum(jnp.where(mask, ent, 0.0)), jnp.sum(mask)

    total, count = jax.lax.map(block, blocks)
    return jnp.sum(total) / jnp.maximum(jnp.sum(count), 1)


def token_stats_fn(graphdef: nnx.GraphDef, params: nnx.State, batch: SequenceBatch,
                   temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Log-probs and entropies of the response tokens under ``params`` (reference / recompute)."""
    return response_stats(nnx.merge(graphdef, params), batch, temperature)
