"""The RL objective: registry policy loss -> forking mask -> aggregation -> + entropy bonus,
+ reference KL; with the metrics every loss reports.

    loss, metrics = compute_loss(config, inputs, key)            # under jax.jit, config static
    loss, metrics = compute_loss("kl_cov", inputs)               # default config of a loss

Batch statistics (covariance means, top-k selections, the Clip-Cov band, the forking
threshold) are computed over the whole batch passed in (``scope="global"``) or per data shard
of ``mesh`` via ``jax.shard_map`` (``scope="per_shard"``, verl's per-GPU behaviour); the
aggregation into a scalar always spans the whole batch passed in.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from critique_jax.ops.masked import masked_count, masked_mean, masked_quantiles
from critique_jax.parallel.mesh import BATCH_AXES, batch_shards
from critique_jax.rl.aggregation import aggregate
from critique_jax.rl.config import LossConfig
from critique_jax.rl.inputs import LossInputs, check_inputs
from critique_jax.rl.losses import LOG_RATIO_CLAMP, get_loss, make_context, make_loss_config, loss_needs_key
from critique_jax.rl.terms import forking_mask, reference_kl

Array = jax.Array

COV_QUANTILES = {"cov_p50": 0.5, "cov_p99": 0.99, "cov_p99.9": 0.999}
# Token statistics every loss reports (0 when a loss has no such notion).
STANDARD_STATS = ("clipfrac", "clipfrac_dual", "selected_frac")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenTerms:
    """Per-token output of the policy stage, all [B, T].

    Attributes:
      loss: policy loss per token after the forking mask (0 where dropped or invalid).
      keep: bool, valid tokens kept by the forking mask (= valid when the mask is off).
      cov: the token covariance the loss used (per shard under per-shard scope).
      stats: the loss's per-token statistics (see ``critique_jax.rl.losses``).
    """

    loss: Array
    keep: Array
    cov: Array
    stats: dict


def _token_stage(config: LossConfig, inputs: LossInputs, key: Array | None) -> TokenTerms:
    spec = get_loss(config.name)
    ctx = make_context(inputs, key)
    loss, stats = spec.fn(config, inputs, ctx)
    keep = ctx.valid
    if config.forking_rho is not None:
        keep = forking_mask(jnp.where(ctx.valid, inputs.entropy, 0.0), ctx.valid, config.forking_rho)
        if config.forking_complement:
            keep = ctx.valid & ~keep
    loss = jnp.where(keep, loss, 0.0)
    return TokenTerms(loss=loss, keep=keep, cov=ctx.cov, stats=stats)


def policy_token_terms(
    config: LossConfig, inputs: LossInputs, key: Array | None = None, *, mesh: Mesh | None = None
) -> TokenTerms:
    """Runs the registered policy loss of ``config`` and the forking mask, per token.

    ``key`` is required by losses that draw random numbers (Clip-Cov); ``mesh`` by
    ``scope="per_shard"``, where each shard of the batch axes (data, fsdp) computes its own
    statistics and uses ``fold_in(key, shard_index)``.
    """
    spec = get_loss(config.name)
    if not isinstance(config, spec.config_cls):
        raise ValueError(
            f"loss {config.name!r} needs a {spec.config_cls.__name__}, got {type(config).__name__}"
        )
    b, _ = check_inputs(inputs)
    if loss_needs_key(config) and key is None:
        raise ValueError(f"loss {config.name!r} draws random numbers: pass a PRNG key")
    if config.forking_rho is not None and inputs.entropy is None:
        raise ValueError(f"forking_rho={config.forking_rho}: the forking mask needs LossInputs.entropy")
    if config.scope == "global":
        return _token_stage(config, inputs, key)

    if mesh is None:
        raise ValueError("scope='per_shard' needs the mesh whose batch axes define the shards")
    shards = batch_shards(mesh)
    if b % shards:
        raise ValueError(f"scope='per_shard': batch size {b} is not divisible by the {shards} batch shards")

    def shard_fn(local: LossInputs, shard_key: Array | None) -> TokenTerms:
        if shard_key is not None:
            shard_key = jax.random.fold_in(shard_key, jax.lax.axis_index(BATCH_AXES))
        return _token_stage(config, local, shard_key)

    return jax.shard_map(shard_fn, mesh=mesh, in_specs=(P(BATCH_AXES), P()), out_specs=P(BATCH_AXES))(
        inputs, key
    )


def _stat_metric(value, valid: Array) -> Array:
    values, where = value if isinstance(value, tuple) else (value, valid)
    return masked_mean(values.astype(jnp.float32), where)


def compute_loss(
    config: LossConfig | str,
    inputs: LossInputs,
    key: Array | None = None,
    *,
    mesh: Mesh | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The scalar objective to minimise and its metrics.

    ``loss = agg(policy_loss * forking_keep) - entropy_coef * agg(H) + ref_kl_coef * agg(KL)``,
    ``agg`` the config's aggregation over valid tokens (the policy term's over the kept tokens
    when the forking mask is on with ``forking_normalizer="kept"``).

    Metrics (scalars, no gradient): ``loss``, ``pg_loss``, ``clipfrac`` (PPO-clipped share of
    valid tokens), ``clipfrac_dual``, ``selected_frac`` (share detached by Clip-Cov /
    KL-penalised by KL-Cov), ``cov_mean``, ``cov_p50``, ``cov_p99``, ``cov_p99.9`` (token
    covariance over valid tokens), ``approx_kl`` (mean of old_logp - logp, clamped as the
    log-ratio), ``forking_kept_frac``,
    ``n_tokens``; ``entropy`` (mean token entropy) when ``inputs.entropy`` is given;
    ``ref_kl`` (the aggregated estimator) when ``inputs.ref_logp`` is given; plus the loss's own
    (``band_frac`` for Clip-Cov, ``refinement_*`` for Critique-GRPO).
    """
    if isinstance(config, str):
        config = make_loss_config(config)
    if config.entropy_coef != 0 and inputs.entropy is None:
        raise ValueError(f"entropy_coef={config.entropy_coef}: the entropy bonus needs LossInputs.entropy")
    if config.ref_kl_coef > 0 and inputs.ref_logp is None:
        raise ValueError(f"ref_kl_coef={config.ref_kl_coef}: the reference KL needs LossInputs.ref_logp")
    terms = policy_token_terms(config, inputs, key, mesh=mesh)

    valid = inputs.mask > 0
    agg = functools.partial(aggregate, valid=valid, mode=config.agg, constant=config.agg_constant)
    clean = lambda x: jnp.where(valid, jnp.asarray(x, jnp.float32), 0.0)  # noqa: E731
    logp = clean(inputs.logp)

    # The forking mask's normaliser: the kept tokens (the paper's code) or every valid token.
    kept_only = config.forking_rho is not None and config.forking_normalizer == "kept"
    pg_loss = aggregate(terms.loss, valid=terms.keep if kept_only else valid, mode=config.agg,
                        constant=config.agg_constant)
    loss = pg_loss
    metrics = {"pg_loss": pg_loss}
    if inputs.entropy is not None:
        entropy = clean(inputs.entropy)
        metrics["entropy"] = masked_mean(entropy, valid)
        if config.entropy_coef != 0:
            loss = loss - config.entropy_coef * agg(entropy)
    if inputs.ref_logp is not None:
        ref_kl = agg(reference_kl(logp, clean(inputs.ref_logp), config.ref_kl_type))
        metrics["ref_kl"] = ref_kl
        if config.ref_kl_coef > 0:
            loss = loss + config.ref_kl_coef * ref_kl
    metrics["loss"] = loss

    stats = {name: jnp.zeros_like(valid) for name in STANDARD_STATS} | terms.stats
    metrics |= {name: _stat_metric(value, valid) for name, value in stats.items()}
    metrics["cov_mean"] = masked_mean(terms.cov, valid)
    quantiles = masked_quantiles(terms.cov, valid, tuple(COV_QUANTILES.values()))
    metrics |= dict(zip(COV_QUANTILES, quantiles))
    log_ratio = jnp.clip(logp - clean(inputs.old_logp), -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    metrics["approx_kl"] = masked_mean(-log_ratio, valid)
    metrics["forking_kept_frac"] = masked_mean(terms.keep.astype(jnp.float32), valid)
    metrics["n_tokens"] = masked_count(valid)
    return loss, jax.lax.stop_gradient(metrics)
