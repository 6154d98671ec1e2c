"""Policy-loss registry and the policy losses (per-token, before masking and aggregation).

Adding a loss = a config subclass with a ``name`` (``critique_jax.rl.config``) + one function
+ one decorator::

    @register_loss(MyConfig)
    def my_loss(cfg: MyConfig, inputs: LossInputs, ctx: TokenContext):
        return token_loss, {"clipfrac": clipped}

A loss function returns the per-token loss [B, T] (its value at invalid tokens is ignored) and
per-token statistics: ``name -> array`` (averaged over valid tokens into the metric ``name``)
or ``name -> (values, where)`` (averaged over ``where``). Everything that is a batch statistic
(means, counts, top-k) must come from ``ctx``/``inputs`` as given: the caller decides whether
that is the whole batch or one data shard (``LossConfig.scope``).

Every loss uses the log-ratio ``clip(logp - old_logp, -20, 20)`` (verl's PPO clamp).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from critique_jax.ops.masked import (
    floor_fraction,
    floor_fraction_static,
    masked_count,
    token_covariance,
    top_k_mask,
)
from critique_jax.rl.config import (
    ClipCovConfig,
    CritiqueGRPOConfig,
    GPPOConfig,
    KLCovConfig,
    LossConfig,
    PPOConfig,
)
from critique_jax.rl.inputs import LossInputs
from critique_jax.rl.terms import forking_mask

Array = jax.Array
LOG_RATIO_CLAMP = 20.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenContext:
    """Quantities every loss needs, computed once per (shard of the) batch. All [B, T] float32
    and 0 at invalid tokens unless noted.

    Attributes:
      valid: bool, mask > 0.
      logp, old_logp: log-probs (float32).
      adv: advantages broadcast over the response.
      log_ratio: clip(logp - old_logp, -20, 20); ratio = exp(log_ratio) (1 at invalid tokens).
      cov: stop-gradient token covariance (lp - mean lp)(A - mean A) over valid tokens.
      n_valid: int32 scalar, number of valid tokens.
      key: PRNG key (already folded with the shard index under per-shard scope) or None.
    """

    valid: Array
    logp: Array
    old_logp: Array
    adv: Array
    log_ratio: Array
    ratio: Array
    cov: Array
    n_valid: Array
    key: Array | None


def make_context(inputs: LossInputs, key: Array | None) -> TokenContext:
    """Builds the ``TokenContext`` of ``inputs`` (padding values are replaced by 0 so that
    garbage there cannot produce inf/NaN in values or gradients)."""
    valid = inputs.mask > 0
    f32 = lambda x: jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)  # noqa: E731
    adv = inputs.advantages
    if adv.ndim == 1:
        adv = jnp.broadcast_to(adv[:, None], valid.shape)
    logp, old, adv = f32(inputs.logp), f32(inputs.old_logp), f32(adv)
    log_ratio = jnp.clip(logp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return TokenContext(
        valid=valid,
        logp=logp,
        old_logp=old,
        adv=adv,
        log_ratio=log_ratio,
        ratio=jnp.exp(log_ratio),
        cov=jax.lax.stop_gradient(token_covariance(logp, adv, valid)),
        n_valid=masked_count(valid),
        key=key,
    )


PolicyLossFn = Callable[[Any, LossInputs, TokenContext], tuple[Array, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A registered policy loss: its config class, function, whether it draws random numbers, and
    whether a config of it (``batch_statistics(config)``) reads statistics of the whole batch's
    log-probs or entropies (covariance top-k, the Clip-Cov band, entropy quantiles)."""

    name: str
    config_cls: type[LossConfig]
    fn: PolicyLossFn
    needs_key: bool
    batch_statistics: Callable[[LossConfig], bool]


_REGISTRY: dict[str, LossSpec] = {}


def register_loss(config_cls: type[LossConfig], *, needs_key: bool = False,
                  batch_statistics: Callable[[LossConfig], bool] = lambda cfg: False):
    """Decorator: registers ``fn`` under ``config_cls.name``. ``batch_statistics(config)``: whether
    the loss's per-token values depend on statistics over the batch's log-probs or entropies
    (then a batch's gradient is not the sum of its parts', see :func:`token_separable`)."""

    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        name = config_cls.name
        if not name:
            raise ValueError(f"{config_cls.__name__}.name is empty: a registered loss needs a name")
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered (by {_REGISTRY[name].fn.__qualname__})")
        _REGISTRY[name] = LossSpec(name, config_cls, fn, needs_key, batch_statistics)
        return fn

    return decorator


def registered_losses() -> tuple[str, ...]:
    """Names of the registered policy losses, in registration order."""
    return tuple(_REGISTRY)


def get_loss(name: str) -> LossSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy loss {name!r}; registered losses: {list(_REGISTRY)}")
    return _REGISTRY[name]


def make_loss_config(name: str, **overrides) -> LossConfig:
    """The config of loss ``name`` with ``overrides`` (e.g. from an ml_collections ConfigDict)."""
    cls = get_loss(name).config_cls
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown option(s) {unknown}; {cls.__name__} has {fields}")
    return cls(**overrides)


def selection_count(n_valid: Array, ratio: float, size: int) -> tuple[Array, int]:
    """``k = max(1, floor(ratio * N))`` (exact) and its static bound for a batch of ``size`` tokens."""
    k = jnp.maximum(floor_fraction(n_valid, ratio), 1)
    k_max = max(1, floor_fraction_static(size, ratio))
    return k, k_max


def _ppo(cfg: PPOConfig, ctx: TokenContext) -> tuple[Array, Array, Array]:
    """Clip-higher PPO with optional dual clip -> (token loss, clipped, dual-clipped)."""
    a, r = ctx.adv, ctx.ratio
    pg1 = -a * r
    pg2 = -a * jnp.clip(r, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    clipped = ctx.valid & (pg2 > pg1)
    loss = jnp.maximum(pg1, pg2)
    dual = jnp.zeros_like(clipped)
    if cfg.dual_clip_c is not None:
        pg3 = -a * cfg.dual_clip_c
        dual = ctx.valid & (a < 0) & (loss > pg3)
        loss = jnp.where(a < 0, jnp.minimum(loss, pg3), loss)
    return loss, clipped, dual


@register_loss(PPOConfig)
def ppo(cfg: PPOConfig, inputs: LossInputs, ctx: TokenContext):
    """PPO / GRPO surrogate (arXiv:1707.06347, arXiv:2402.03300; verl ``compute_policy_loss_vanilla``)."""
    loss, clipped, dual = _ppo(cfg, ctx)
    return loss, {"clipfrac": clipped, "clipfrac_dual": dual}


@register_loss(ClipCovConfig, needs_key=True, batch_statistics=lambda cfg: True)
def clip_cov(cfg: ClipCovConfig, inputs: LossInputs, ctx: TokenContext):
    """Clip-Cov (verl ``compute_policy_loss_clip_cov``), with static shapes.

    Band = valid tokens not clipped (nor dual-clipped) by PPO with ``lb < cov < ub``. Each band
    token gets an i.i.d. uniform priority; the ``k = max(1, floor(ratio * N))`` highest are
    detached (loss x 0, so they stay in the denominator). Fewer than k in the band: all of them.
    """
    loss, clipped, dual = _ppo(cfg, ctx)
    band = ctx.valid & ~clipped & ~dual & (ctx.cov > cfg.cov_lb) & (ctx.cov < cfg.cov_ub)
    k, k_max = selection_count(ctx.n_valid, cfg.ratio, band.size)
    priority = jax.random.uniform(ctx.key, band.shape)
    selected = top_k_mask(priority, band, k, k_max)
    loss = jnp.where(selected, 0.0, loss)
    return loss, {"clipfrac": clipped, "clipfrac_dual": dual, "selected_frac": selected, "band_frac": band}


@register_loss(KLCovConfig, batch_statistics=lambda cfg: True)
def kl_cov(cfg: KLCovConfig, inputs: LossInputs, ctx: TokenContext):
    """KL-Cov (verl ``compute_policy_loss_kl_cov``): ``-A r`` everywhere (no clip) plus
    ``kl_coef * |lp - old|`` on the top-k valid tokens by covariance (ties: lower index).

    ``|x|`` is written ``x * sign(x)`` so its gradient is 0 at ratio = 1 (as torch's abs).
    """
    k, k_max = selection_count(ctx.n_valid, cfg.ratio, ctx.valid.size)
    selected = top_k_mask(ctx.cov, ctx.valid, k, k_max)
    lr = ctx.log_ratio
    penalty = cfg.kl_coef * lr * jax.lax.stop_gradient(jnp.sign(lr))
    loss = -ctx.adv * ctx.ratio + jnp.where(selected, penalty, 0.0)
    return loss, {"selected_frac": selected}


@register_loss(GPPOConfig)
def gppo(cfg: GPPOConfig, inputs: LossInputs, ctx: TokenContext):
    """GPPO (Klear-Reasoner ``compute_gppo_loss`` / CE-GPPO ``compute_gppo_loss_general_beta``).

    Tokens PPO would clip (A < 0 and r < 1 - clip_low; A > 0 and r > 1 + clip_high) get
    ``-A * c * (1 + beta * (r / sg(r) - 1))`` with c the clip value: the value is PPO's
    ``-A * c``, the gradient ``-beta * A * c * grad(log pi)`` = the reference's
    ``-beta * c * A * r / sg(r)``. Other tokens: ``-A r``; then PPO's dual clip for A < 0.
    (The reference scales the *value* by beta as well; here only the gradient, so the forward
    stays exactly clip-higher PPO for every beta.)
    """
    a, r = ctx.adv, ctx.ratio
    low = ctx.valid & (a < 0) & (r < 1.0 - cfg.clip_low)
    high = ctx.valid & (a > 0) & (r > 1.0 + cfg.clip_high)
    excess = r / jax.lax.stop_gradient(r) - 1.0  # value 0, gradient grad(log r)

    def preserved(clip_value: float, beta: float) -> Array:
        return -a * clip_value * (1.0 + beta * excess)

    loss = jnp.where(low, preserved(1.0 - cfg.clip_low, cfg.beta_low),
                     jnp.where(high, preserved(1.0 + cfg.clip_high, cfg.beta_high), -a * r))
    dual = jnp.zeros_like(low)
    if cfg.dual_clip_c is not None:
        pg3 = -a * cfg.dual_clip_c
        dual = ctx.valid & (a < 0) & (loss > pg3)
        loss = jnp.where(a < 0, jnp.minimum(loss, pg3), loss)
    return loss, {"clipfrac": low | high, "clipfrac_dual": dual}


@register_loss(CritiqueGRPOConfig, batch_statistics=lambda cfg: cfg.refinement_forking_rho is not None)
def critique_grpo(cfg: CritiqueGRPOConfig, inputs: LossInputs, ctx: TokenContext):
    """Critique-GRPO (zhangxy-2019/critique-GRPO ``compute_token_on_off_policy_loss`` with
    ``off_policy_reshape="p_div_p_0.1"``): the ``cfg.base`` loss (PPO in the paper) on initial
    responses, ``-A * w * p / (p + gamma)`` on refinement tokens, p = exp(logp),
    w = 1 or sg(min(ratio, importance_cap)).

    The base loss runs on the batch with the refinement rows masked out, so its statistics
    describe the initial responses alone. The shaping gradient is
    ``-A * w * gamma / (p + gamma)^2 * grad(p)``. With ``refinement_forking_rho`` only the
    refinement tokens in the top-rho entropy quantile of refinement tokens are shaped.
    """
    if inputs.is_refinement is None:
        raise ValueError("critique_grpo needs LossInputs.is_refinement ([B] bool): got None")
    refine_rows = inputs.is_refinement[:, None].astype(bool)
    initial = inputs.replace(mask=jnp.where(refine_rows, jnp.zeros_like(inputs.mask), inputs.mask))
    loss, stats = get_loss(cfg.base.name).fn(cfg.base, initial, make_context(initial, ctx.key))
    refine = ctx.valid & refine_rows
    shaped_tokens = refine
    if cfg.refinement_forking_rho is not None:
        if inputs.entropy is None:
            raise ValueError("critique_grpo refinement_forking_rho needs LossInputs.entropy")
        shaped_tokens = forking_mask(jnp.where(refine, inputs.entropy, 0.0), refine, cfg.refinement_forking_rho)
    p = jnp.exp(ctx.logp)
    shaped = p / (p + cfg.gamma)
    weight = jnp.ones_like(p)
    if cfg.importance_correction:
        weight = jax.lax.stop_gradient(jnp.minimum(ctx.ratio, cfg.importance_cap))
    loss = jnp.where(shaped_tokens, -ctx.adv * weight * shaped, jnp.where(refine_rows, 0.0, loss))
    return loss, stats | {
        "refinement_frac": refine,
        "refinement_shaped_frac": (shaped_tokens.astype(jnp.float32), refine),
        "refinement_prob": (p, refine),
        "refinement_shaping": (shaped, refine),
        "refinement_is_weight": (weight, refine),
    }


def _nested(config: LossConfig) -> list[LossConfig]:
    return [v for f in dataclasses.fields(config) if isinstance(v := getattr(config, f.name), LossConfig)]


def token_separable(config: LossConfig) -> bool:
    """Whether the objective of ``config`` is a sum of per-token terms once the batch's masks are
    known: no forking mask and no loss (nor wrapped base loss) that reads statistics of the
    batch's log-probs or entropies. Then a batch's gradient is the sum of its row blocks'
    (aggregation weights from the whole batch's masks), what ``rl.micro_batches`` relies on."""
    return (config.forking_rho is None and not get_loss(config.name).batch_statistics(config)
            and all(token_separable(v) for v in _nested(config)))


def loss_needs_key(config: LossConfig) -> bool:
    """Whether the loss of ``config`` (or the base loss it wraps) draws random numbers."""
    return get_loss(config.name).needs_key or any(loss_needs_key(v) for v in _nested(config))
