"""The batch a policy loss reads: one pytree of [B, T] (or [B]) arrays."""

from __future__ import annotations

import dataclasses

import jax

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LossInputs:
    """Per-token arrays of one update batch; every field's leading dimension is the batch B.

    Attributes:
      logp: [B, T] log pi_theta of the sampled tokens (the differentiable input).
      old_logp: [B, T] log pi_old (sampler or recompute pass), treated as constant.
      advantages: [B] (broadcast over the response) or [B, T].
      mask: [B, T] response mask, bool or float; a token counts where mask > 0.
      entropy: [B, T] token entropy of pi_theta (nats) or None; needed by the entropy bonus,
        the forking mask and the entropy metric. Gradients flow through it if it is traced.
      ref_logp: [B, T] reference-policy log-probs or None; needed when ref_kl_coef > 0.
      is_refinement: [B] bool or None; True marks Critique-GRPO refinement responses.
    """

    logp: Array
    old_logp: Array
    advantages: Array
    mask: Array
    entropy: Array | None = None
    ref_logp: Array | None = None
    is_refinement: Array | None = None

    def replace(self, **changes) -> "LossInputs":
        return dataclasses.replace(self, **changes)


def check_inputs(inputs: LossInputs) -> tuple[int, int]:
    """Checks the shapes of ``inputs`` (static, so at trace time); returns (B, T)."""
    if getattr(inputs.logp, "ndim", None) != 2:
        raise ValueError(f"LossInputs.logp: expected shape [B, T], got {getattr(inputs.logp, 'shape', None)}")
    b, t = inputs.logp.shape
    expected = {
        "old_logp": [(b, t)],
        "mask": [(b, t)],
        "advantages": [(b,), (b, t)],
        "entropy": [(b, t)],
        "ref_logp": [(b, t)],
        "is_refinement": [(b,)],
    }
    for field, shapes in expected.items():
        value = getattr(inputs, field)
        if value is not None and tuple(value.shape) not in shapes:
            raise ValueError(
                f"LossInputs.{field}: shape {tuple(value.shape)}, expected one of {shapes} "
                f"(logp is {(b, t)})"
            )
    return b, t
