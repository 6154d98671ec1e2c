"""Counting XLA compilations (to prove a loop compiles nothing new) and timing host phases."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

from jax._src import monitoring  # the public jax.monitoring has no unregister function

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts backend compilations while active: ``with CompileCounter() as c: ...; c.count``."""

    def __init__(self) -> None:
        self.count = 0

    def _listen(self, event: str, duration: float, **_: object) -> None:
        if event == _COMPILE_EVENT:
            self.count += 1

    def __enter__(self) -> "CompileCounter":
        monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        monitoring.unregister_event_duration_listener(self._listen)


@contextlib.contextmanager
def timed(store: dict[str, float], name: str) -> Iterator[None]:
    """Adds the wall-clock seconds of the block to ``store[name]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        store[name] = store.get(name, 0.0) + time.perf_counter() - t0
