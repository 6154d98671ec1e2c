"""The stop rule for non-finite training: the jitted steps skip an update whose loss, gradient
or new parameters are not finite (``skipped`` metric); a run that keeps skipping is stopped."""

from __future__ import annotations

import logging

log = logging.getLogger("critique_jax")


class NonFiniteGuard:
    """Counts consecutive steps with skipped updates; the ``limit``-th raises FloatingPointError.

    phase: the phase's name in messages ("SFT", "RL", "critic"); key: the config key of ``limit``.
    """

    def __init__(self, phase: str, limit: int, key: str):
        self.phase, self.limit, self.key = phase, limit, key
        self.bad = 0

    def check(self, step: int, skipped: float) -> None:
        if not skipped:
            self.bad = 0
            return
        self.bad += 1
        log.warning("%s step %d: %d update(s) with a non-finite loss, gradient or update were skipped", self.phase,
                    step, int(skipped))
        if self.bad >= self.limit:
            raise FloatingPointError(f"{self.bad} consecutive {self.phase} steps had non-finite losses, gradients or "
                                     f"updates (last: step {step}); stopping ({self.key}={self.limit})")
