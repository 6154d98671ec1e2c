"""Loss configurations: frozen, hashable dataclasses validated when built.

A config is a static argument of the jitted step (``hash``/``==`` by value). Every check runs
in ``__post_init__`` so a bad value fails when the config is made, naming the field.

``LossConfig`` holds what every loss shares (aggregation, entropy bonus, reference KL,
forking-token mask, statistic scope); each policy loss has a subclass with its own fields and
a ``name`` (the registry key, see ``critique_jax.rl.losses``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "constant")
SCOPES = ("global", "per_shard")
REF_KL_TYPES = ("k1", "k3")
FORKING_NORMALIZERS = ("kept", "all")


def _number(cfg, field: str, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> None:
    """Checks that ``cfg.field`` is a real number in the given range; stores it as a float."""
    value = getattr(cfg, field)
    if value is None and optional:
        return
    name = f"{type(cfg).__name__}.{field}={value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name}: expected a number in {left}{lo_s}, {hi_s}{right}")
    object.__setattr__(cfg, field, float(value))


def _choice(cfg, field: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, field)
    if value not in choices:
        raise ValueError(f"{type(cfg).__name__}.{field}={value!r}: expected one of {list(choices)}")


def _flag(cfg, field: str) -> None:
    value = getattr(cfg, field)
    if not isinstance(value, bool):
        raise ValueError(f"{type(cfg).__name__}.{field}={value!r}: expected True or False")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Terms shared by every policy loss.

    Attributes:
      agg: how per-token losses become a scalar: ``token-mean`` (sum / #valid tokens),
        ``seq-mean-token-sum``, ``seq-mean-token-mean`` (sequence means over sequences with at
        least one valid token), ``constant`` (sum / ``agg_constant``, default B*T; Dr.GRPO).
      agg_constant: the ``constant`` mode's normaliser; None = batch size x response length.
      entropy_coef: c in ``loss -= c * agg(H)`` (needs ``inputs.entropy``); 0 = off.
      ref_kl_coef: beta in ``loss += beta * agg(KL(pi || pi_ref))`` (needs ``inputs.ref_logp``).
      ref_kl_type: ``k1`` = lp - ref, ``k3`` = exp(ref - lp) - (ref - lp) - 1 (verl low_var_kl:
        ref - lp clamped to [-20, 20], the value to [-10, 10]).
      forking_rho: keep only tokens with entropy >= the batch's top-rho quantile (Wang et al.,
        arXiv:2506.01939; 0.2 there). The 0/1 mask multiplies the policy loss. None = off.
      forking_normalizer: what the policy loss is aggregated over when the mask is on: ``kept``
        = the kept tokens only (the paper's code: verl's ``agg_loss`` with ``loss_mask =
        response_mask * entropy_top_mask``), ``all`` = every valid token (dropped tokens count
        in the denominator, which scales the gradient by about rho).
      forking_complement: keep the other tokens instead (entropy below the top-rho threshold:
        the paper's "bottom 80%" ablation with rho = 0.2); needs forking_rho.
      scope: where batch statistics (covariance means, top-k, Clip-Cov band, forking
        threshold) are computed: ``global`` = the whole batch passed in (under jit with a
        sharded batch XLA does the collectives), ``per_shard`` = each data shard of the mesh
        alone (as verl does per GPU). Per micro-batch = call the loss on each micro-batch with
        ``global``. Aggregation is always over the whole batch passed in.
    """

    name: ClassVar[str] = ""

    agg: str = "token-mean"
    agg_constant: float | None = None
    entropy_coef: float = 0.0
    ref_kl_coef: float = 0.0
    ref_kl_type: str = "k3"
    forking_rho: float | None = None
    forking_complement: bool = False
    forking_normalizer: str = "kept"
    scope: str = "global"

    def __post_init__(self) -> None:
        _choice(self, "agg", AGG_MODES)
        _number(self, "agg_constant", lo=0.0, lo_open=True, optional=True)
        _number(self, "entropy_coef")
        _number(self, "ref_kl_coef", lo=0.0)
        _choice(self, "ref_kl_type", REF_KL_TYPES)
        _number(self, "forking_rho", lo=0.0, hi=1.0, lo_open=True, optional=True)
        if self.forking_complement and self.forking_rho is None:
            raise ValueError("forking_complement=True needs forking_rho (the share of high-entropy tokens left out)")
        _choice(self, "forking_normalizer", FORKING_NORMALIZERS)
        _choice(self, "scope", SCOPES)


@dataclasses.dataclass(frozen=True)
class PPOConfig(LossConfig):
    """PPO clipped surrogate, symmetric by default (clip 0.2: the GRPO baseline of the papers),
    clip-higher (DAPO: ``clip_high=0.28``) and dual-clip.

    ``max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))``; for A < 0 additionally capped at
    ``-A * dual_clip_c`` (None = no dual clip). clip_low = 1 disables the lower clip.
    """

    name: ClassVar[str] = "ppo"

    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip_c: float | None = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _number(self, "clip_low", lo=0.0, hi=1.0, lo_open=True)
        _number(self, "clip_high", lo=0.0, lo_open=True)
        _number(self, "dual_clip_c", lo=1.0, lo_open=True, optional=True)


@dataclasses.dataclass(frozen=True)
class ClipCovConfig(PPOConfig):
    """Clip-Cov (verl ``compute_policy_loss_clip_cov``).

    Among valid tokens not clipped by PPO and with ``cov_lb < cov < cov_ub``, a uniformly
    random ``max(1, floor(ratio * N))`` (N = valid tokens) are detached. Defaults follow the
    paper's runs: PPO clip 1 (no lower clip, upper at 2) and no dual clip, as verl's function.
    """

    name: ClassVar[str] = "clip_cov"

    clip_low: float = 1.0
    clip_high: float = 1.0
    dual_clip_c: float | None = None
    ratio: float = 2e-4
    cov_lb: float = 1.0
    cov_ub: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _number(self, "ratio", lo=0.0, hi=1.0, lo_open=True)
        _number(self, "cov_lb")
        _number(self, "cov_ub")
        if self.cov_lb >= self.cov_ub:
            raise ValueError(
                f"ClipCovConfig.cov_lb={self.cov_lb!r} >= cov_ub={self.cov_ub!r}: the covariance "
                "band (cov_lb, cov_ub) must be non-empty"
            )


@dataclasses.dataclass(frozen=True)
class KLCovConfig(LossConfig):
    """KL-Cov (verl ``compute_policy_loss_kl_cov``): unclipped ``-A r`` plus
    ``kl_coef * |lp - old|`` on the top ``max(1, floor(ratio * N))`` tokens by covariance.

    Defaults are the paper's 7B setting (k = 2e-3, beta = 1); verl's config has 2e-4 / 0.1.
    """

    name: ClassVar[str] = "kl_cov"

    ratio: float = 2e-3
    kl_coef: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _number(self, "ratio", lo=0.0, hi=1.0, lo_open=True)
        _number(self, "kl_coef", lo=0.0)


@dataclasses.dataclass(frozen=True)
class GPPOConfig(PPOConfig):
    """GPPO (Klear-Reasoner, arXiv:2508.07629): clip-higher PPO whose clipped tokens keep a
    gradient ``-beta * A * clip_value * grad(log pi)``: beta_low for ratio < 1 - clip_low with
    A < 0, beta_high for ratio > 1 + clip_high with A > 0. The forward value equals PPO's.

    beta_low 0.25 / beta_high 1 is the setting its README recommends against entropy
    collapse; beta_low = beta_high = 1 is the original GPPO.
    """

    name: ClassVar[str] = "gppo"

    clip_high: float = 0.28
    beta_low: float = 0.25
    beta_high: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _number(self, "beta_low", lo=0.0)
        _number(self, "beta_high", lo=0.0)


@dataclasses.dataclass(frozen=True)
class CritiqueGRPOConfig(LossConfig):
    """Critique-GRPO (arXiv:2506.03106): the ``base`` loss on initial responses,
    ``-A * f(p)`` with ``f(p) = p / (p + gamma)``, p = exp(logp), on refinement tokens.

    base: the loss of the initial responses, any other registered loss with its own options
      (``PPOConfig()``, the paper's, by default; ``ClipCovConfig(ratio=...)`` or
      ``KLCovConfig(...)`` puts entropy control on them). It sees the initial responses alone:
      its batch statistics (covariance means, the Clip-Cov band, the KL-Cov top-k and their
      ``k = ratio * N``) are over initial tokens. Its shared terms (aggregation, entropy bonus,
      reference KL, forking mask, scope) must stay at their defaults: this config's apply to
      the whole batch.
    importance_correction: multiply the refinement term by the stop-gradient weight
      ``min(exp(logp - old_logp), importance_cap)`` (truncated importance sampling), where
      ``old_logp`` must be the sampler's log-probs *with the critique in context*. Off = the
      paper (no correction).
    refinement_forking_rho: shape only the refinement tokens whose entropy is in the top rho
      quantile of the batch's refinement tokens (the forking tokens of refinements: critique
      pressure where the policy is choosing); the other refinement tokens get no loss but stay
      in the normaliser. None = every refinement token (the paper). The shared ``forking_rho``
      masks the whole batch instead.
    """

    name: ClassVar[str] = "critique_grpo"

    base: LossConfig = PPOConfig()
    gamma: float = 0.1
    importance_correction: bool = False
    importance_cap: float = 1.0
    refinement_forking_rho: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.base, LossConfig) or not self.base.name or isinstance(self.base, CritiqueGRPOConfig):
            raise ValueError(f"CritiqueGRPOConfig.base={self.base!r}: expected the config of another registered "
                             "loss (e.g. PPOConfig(), ClipCovConfig())")
        shared = [f.name for f in dataclasses.fields(LossConfig)
                  if getattr(self.base, f.name) != getattr(LossConfig(), f.name)]
        if shared:
            raise ValueError(f"CritiqueGRPOConfig.base ({self.base.name}) sets the shared term(s) {shared}: set them "
                             "on the critique_grpo config, which applies them to the whole batch")
        _number(self, "gamma", lo=0.0, lo_open=True)
        _flag(self, "importance_correction")
        _number(self, "importance_cap", lo=0.0, lo_open=True)
        _number(self, "refinement_forking_rho", lo=0.0, hi=1.0, lo_open=True, optional=True)
