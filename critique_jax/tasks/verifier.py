"""Equivalence of LaTeX final answers: a cheap normaliser, then ``math-verify`` in a process pool
with a timeout per check.

:func:`equivalent_many` first compares :func:`critique_jax.tasks.latex.normalize_latex` forms
(equal strings are equivalent, two different decimal numbers are not; no process involved); the
remaining pairs go to a backend,
by default :func:`math_verify_equal` (``math-verify``, sympy-based; ``pip install -e .[data]``),
run in a ``concurrent.futures`` process pool made once, lazily, with
:func:`default_workers` processes (``spawn`` start method: forking a process that runs JAX's
threads can deadlock). Each check gets ``timeout_s`` seconds (a ``SIGALRM`` timer in the worker;
a check stuck in C code is caught by the parent's deadline for the batch, which then kills the
pool). A timed-out check is "not equivalent" and counted: :func:`timeout_count`,
:func:`take_timeout_count` (returns and resets, for a metrics logger). A check that raises is
"not equivalent" (not counted). Without ``math-verify`` installed the normaliser decides alone
and one warning says so.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import types
from typing import Callable, Iterator, Sequence

import numpy as np

from critique_jax.tasks.latex import normalize_latex

log = logging.getLogger("critique_jax")

#: Seconds one check may take (``configure(timeout_s=...)`` or per call).
DEFAULT_TIMEOUT_S = 5.0
#: Most worker processes (each imports sympy: ~100 MB).
MAX_WORKERS = 16
#: Extra seconds of the parent's deadline for a pool's first batch (processes start, import sympy).
STARTUP_S = 120.0

#: (reference, answer) -> equivalent; must be a module-level function (it is pickled by name).
Backend = Callable[[str, str], bool]

_PLAIN_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")  # what normalize_latex makes of a decimal number
_lock = threading.Lock()
_pool: cf.ProcessPoolExecutor | None = None
_fresh = False
_timeouts = 0
_settings = {"timeout_s": DEFAULT_TIMEOUT_S, "workers": 0}
_warned_missing = False


def default_workers() -> int:
    """Processes of the pool: the cores this process may use, at most :data:`MAX_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def configure(timeout_s: float | None = None, workers: int | None = None) -> None:
    """Sets the default timeout per check (seconds, > 0) and the pool size (0 = the default;
    takes effect when the pool is next made, :func:`shutdown` to remake it now)."""
    if timeout_s is not None:
        if not timeout_s > 0:
            raise ValueError(f"verifier timeout_s={timeout_s}: expected > 0 seconds")
        _settings["timeout_s"] = float(timeout_s)
    if workers is not None:
        if workers < 0:
            raise ValueError(f"verifier workers={workers}: expected >= 0 (0 = the cores, at most {MAX_WORKERS})")
        _settings["workers"] = int(workers)


def timeout_count() -> int:
    """Checks that timed out since the last :func:`take_timeout_count`."""
    return _timeouts


def take_timeout_count() -> int:
    """Returns the timed-out checks counted so far and resets the count (log it per step)."""
    global _timeouts
    with _lock:
        n, _timeouts = _timeouts, 0
    return n


def _count_timeouts(n: int) -> None:
    global _timeouts
    with _lock:
        _timeouts += n


def has_math_verify() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def math_verify_equal(reference: str, answer: str) -> bool:
    """Whether ``answer`` is equivalent to ``reference`` by ``math-verify`` (both parsed as
    LaTeX math; the reference is its "gold", which decides e.g. ``x=3`` vs ``3``)."""
    from math_verify import parse, verify

    def as_math(s: str) -> str:
        return "$" + s.replace("\\$", "").replace("$", "") + "$"

    gold = parse(as_math(reference), parsing_timeout=None)
    pred = parse(as_math(answer), parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


class _Timeout(BaseException):
    """Raised by the worker's alarm; a BaseException, so ``except Exception`` in the backend
    does not swallow it."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _worker_init() -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeout is disabled" notice
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
    signal.signal(signal.SIGALRM, _on_alarm)
    if has_math_verify():
        import math_verify  # noqa: F401  (import once, before the first timed check)


def _check(backend: Backend, reference: str, answer: str, timeout_s: float) -> bool | None:
    """In a worker: the backend's verdict, None when it ran out of time, False when it raised."""
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return bool(backend(reference, answer))
    except _Timeout:
        return None
    except Exception:  # a malformed expression: not equivalent
        return False
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While processes start: ``spawn`` would re-import the parent's ``__main__`` in each worker
    (a training program and its JAX, or a script without an ``if __name__ == "__main__"`` guard,
    which then fails); an empty ``__main__`` stands in for it."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _get_pool() -> tuple[cf.ProcessPoolExecutor, int]:
    global _pool, _fresh
    with _lock:
        if _pool is None:
            workers = _settings["workers"] or default_workers()
            _pool = cf.ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), initializer=_worker_init)
            _fresh = True
            atexit.register(shutdown)
        return _pool, _pool._max_workers


def shutdown() -> None:
    """Kills the pool's processes (a stuck check included); the next check makes a new pool."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is None:
        return
    processes = list((pool._processes or {}).values())  # no public way to stop a running task
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.kill()
    for p in processes:
        p.join(5)


def equivalent_many(
    references: Sequence[str],
    answers: Sequence[str | None],
    *,
    timeout_s: float | None = None,
    backend: Backend | None = None,
) -> np.ndarray:
    """Whether each answer is equivalent to its reference: bool array ``[len(answers)]``.

    A None answer (none extracted) is not equivalent. ``timeout_s``: per check (default
    :func:`configure`'s); ``backend``: the check of pairs the normaliser does not settle
    (default :func:`math_verify_equal`, or none when ``math-verify`` is missing).
    """
    global _fresh, _warned_missing
    if len(references) != len(answers):
        raise ValueError(f"{len(references)} references but {len(answers)} answers")
    timeout_s = _settings["timeout_s"] if timeout_s is None else timeout_s
    out = np.zeros(len(answers), dtype=bool)
    pending = []
    for i, (ref, ans) in enumerate(zip(references, answers)):
        a, r = normalize_latex(ans), normalize_latex(ref)
        if a is None or r is None:
            continue
        if a == r:
            out[i] = True
        elif not (_PLAIN_NUMBER.match(a) and _PLAIN_NUMBER.match(r)):  # two different numbers: not equivalent
            pending.append(i)
    if backend is None:
        if not has_math_verify():
            if not _warned_missing:
                log.warning("math-verify is not installed (pip install math-verify): answers are compared "
                            "by the LaTeX normaliser alone")
                _warned_missing = True
            return out
        backend = math_verify_equal
    if not pending:
        return out
    pool, workers = _get_pool()
    with _main_module_hidden():  # the pool starts processes on submit
        futures = {pool.submit(_check, backend, references[i], answers[i], timeout_s): i for i in pending}
    deadline = math.ceil(len(pending) / workers) * (timeout_s + 0.5) + 2.0 + (STARTUP_S if _fresh else 0.0)
    done, stuck = cf.wait(futures, timeout=deadline)
    _fresh = False
    timed_out = len(stuck)
    for f in done:
        try:
            verdict = f.result()
        except Exception:  # the pool broke (a worker died): not equivalent
            verdict, stuck = False, stuck or {f}
        if verdict is None:
            timed_out += 1
        out[futures[f]] = bool(verdict)
    if timed_out:
        _count_timeouts(timed_out)
    if stuck:
        log.warning("answer verification: %d checks still running after %.0f s; restarting the pool",
                    len(stuck), deadline)
        shutdown()
    return out


def equivalent(reference: str, answer: str | None, *, timeout_s: float | None = None) -> bool:
    """One check of :func:`equivalent_many`."""
    return bool(equivalent_many([reference], [answer], timeout_s=timeout_s)[0])
