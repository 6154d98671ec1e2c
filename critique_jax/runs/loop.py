"""The one loop scaffold every phase runs in (SFT, critic training, self-training fine-tuning, RL).

A phase supplies its step, ``step(n) -> raw`` (the jitted update and whatever host work it
needs; ``raw``: the step's metrics as returned), and registers hooks, Levanter style::

    loop = Loop(first=1, last=steps)
    loop.add_hook(log_metrics, every=10, at_end=True)
    loop.add_hook(save_checkpoint, every=500)
    loop.run(step)

After each step the hooks run in the order they were added, on :class:`Step` ``s``: a hook adds
what it wants logged to ``s.log`` (the write hook, usually last, writes it) or acts (checkpoint,
stop). ``every=0`` never runs a hook (except ``at_end``); ``at_end`` also runs it after the
last step; ``before_end`` runs it only before the last step. A hook returning True stops the loop.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable


@dataclasses.dataclass
class Step:
    """One finished step as the hooks see it: ``raw`` the step's own return value, ``log`` the
    metrics to write at this step (hooks add to it), ``seconds`` the step's wall time (hooks
    excluded)."""

    n: int
    last: bool
    raw: Any
    seconds: float
    log: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Hook:
    fn: Callable[[Step], bool | None]
    every: int
    at_end: bool
    before_end: bool

    def due(self, s: Step) -> bool:
        periodic = self.every > 0 and s.n % self.every == 0
        if s.last:
            return self.at_end or (periodic and not self.before_end)
        return periodic


@dataclasses.dataclass
class Loop:
    """Steps ``first..last`` (inclusive); ``last < first``: nothing to do."""

    first: int
    last: int
    hooks: list[_Hook] = dataclasses.field(default_factory=list)

    def add_hook(self, fn: Callable[[Step], bool | None], every: int = 1, *, at_end: bool = False,
                 before_end: bool = False) -> Loop:
        """Runs ``fn`` after every ``every``-th step (see the module docstring)."""
        self.hooks.append(_Hook(fn, every, at_end, before_end))
        return self

    def run(self, step: Callable[[int], Any]) -> int | None:
        """Runs the steps; returns the step a hook stopped at, or None when it ran to ``last``."""
        for n in range(self.first, self.last + 1):
            t0 = time.perf_counter()
            raw = step(n)
            s = Step(n=n, last=n == self.last, raw=raw, seconds=time.perf_counter() - t0)
            for hook in self.hooks:
                if hook.due(s) and hook.fn(s):
                    return n
        return None

