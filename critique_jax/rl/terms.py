"""Per-token terms that compose with any policy loss: reference KL and the forking-token mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from critique_jax.ops.masked import kth_largest, masked_count, top_quantile_count, top_quantile_count_static
from critique_jax.rl.config import REF_KL_TYPES

Array = jax.Array


def reference_kl(logp: Array, ref_logp: Array, kind: str) -> Array:
    """Per-token estimate of KL(pi_theta || pi_ref) for tokens sampled from pi_theta.

    ``k1``: ``lp - ref``. ``k3`` (Schulman's low-variance estimator, verl ``low_var_kl``):
    ``d = clip(ref - lp, -20, 20)``, ``clip(exp(d) - d - 1, -10, 10)``.
    """
    if kind == "k1":
        return logp - ref_logp
    if kind == "k3":
        d = jnp.clip(ref_logp - logp, -20.0, 20.0)
        return jnp.clip(jnp.exp(d) - d - 1.0, -10.0, 10.0)
    raise ValueError(f"reference KL type {kind!r}: expected one of {list(REF_KL_TYPES)}")


def forking_mask(entropy: Array, valid: Array, rho: float) -> Array:
    """Valid tokens whose entropy is >= the top-``rho`` quantile of the valid entropies.

    The threshold is ``np.quantile(H[valid], 1 - rho)`` (linear interpolation), so with
    distinct entropies exactly ``1 + floor(rho * (N - 1))`` tokens are kept; ties at the
    threshold are all kept. The entropy is treated as a constant. Returns bool [B, T].
    """
    h = jax.lax.stop_gradient(entropy)
    k = top_quantile_count(masked_count(valid), rho)
    tau = kth_largest(h, valid, k, top_quantile_count_static(h.size, rho))
    return valid & (h >= tau)
