"""Exclusive file locks (``fcntl.flock``) for what concurrent runs share: a dataset built in a
shared cache, and a run directory (one run writes it at a time)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import IO, Iterator

from critique_jax.storage import local_lock_file

_held: dict[str, IO[str]] = {}  # run directories this process holds, open for its life


class LockHeld(OSError):
    """Another process holds the lock."""


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Blocks until this process holds an exclusive lock on ``path`` (created if missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_run_dir(workdir: str | os.PathLike) -> None:
    """Locks ``workdir`` (created if missing) until this process exits; raises :class:`LockHeld`
    naming the holder's pid when another process runs in it. Locking it again is a no-op. A cloud
    ``workdir`` is locked by a file on this machine (:func:`critique_jax.storage.local_lock_file`)."""
    path = local_lock_file(os.fspath(workdir))
    if path in _held:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise LockHeld(f"{workdir} is in use by another run (pid {holder}, lock {path}): wait for it to end or "
                       "use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    _held[path] = f
