"""Run-directory storage: local folders and cloud URLs (``gs://``, ``s3://``) through ``etils.epath``.

Every read and write of a run directory (config, metrics, samples, checkpoints' manifests, the
W&B id) goes through :func:`path`. A cloud URL needs epath's fsspec backend for its scheme
(:data:`BACKENDS`: ``gcsfs`` for ``gs://``, the ``cloud`` extra); without it, or for a scheme
epath does not serve, :func:`check` raises one line before anything is created. Orbax writes
checkpoints to the same URL itself (tensorstore's own GCS / S3 drivers).

Object stores cannot append to a file, so the append-only logs of a cloud run directory
(``metrics.jsonl``, ``samples.jsonl``, TensorBoard events, W&B's files) are written to a
:class:`Staging` folder on the local disk and uploaded every ``sync_secs`` and when the writer
closes; for a local run directory the staging folder is the run directory itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time

from etils import epath

#: URL scheme -> the fsspec package epath needs for it.
BACKENDS = {"gs": "gcsfs", "s3": "s3fs"}


def is_remote(p: str | os.PathLike) -> bool:
    """``p`` is a URL (``scheme://...``), not a local path."""
    return "://" in os.fspath(p)


def check(p: str | os.PathLike, what: str = "--workdir") -> None:
    """A one-line ValueError for a URL this installation cannot serve (an unknown scheme, or its
    backend package missing); a local path always passes."""
    p = os.fspath(p)
    if not is_remote(p):
        return
    scheme = p.split("://", 1)[0]
    if scheme not in BACKENDS:
        raise ValueError(f"{what}={p}: unsupported URL scheme {scheme}://; expected a local folder or one of "
                         f"{', '.join(s + '://' for s in BACKENDS)}")
    if importlib.util.find_spec(BACKENDS[scheme]) is None:
        raise ValueError(f"{what}={p}: {scheme}:// run directories need the {BACKENDS[scheme]} package: "
                          "pip install -e '.[cloud]'")


def path(p: str | os.PathLike, what: str = "--workdir") -> epath.Path:
    """``p`` as an ``epath.Path`` (local or cloud), after :func:`check`."""
    check(p, what)
    return epath.Path(p)


def write_atomic(p: epath.Path, text: str) -> None:
    """Writes ``text`` to ``p`` so that a reader sees the old file or the whole new one: through a
    temporary file renamed over it when local; directly for a URL (an object store publishes an
    object only once its upload is complete)."""
    if is_remote(p):
        p.write_text(text)
        return
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(p)


def local_lock_file(workdir: str) -> str:
    """Where a run directory's lock file (holding the pid of the process running there) lives:
    ``run.lock`` in it when local; for a URL, in this machine's temporary folder under a name
    derived from the URL (an object store has no file locks, so a cloud run directory is guarded
    against a second run on the same machine only)."""
    if not is_remote(workdir):
        return os.path.join(os.path.abspath(workdir), "run.lock")
    digest = hashlib.sha1(workdir.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "critique_jax_locks", f"{digest}.lock")


class Staging:
    """A local folder for a run directory's append-only files.

    Local ``workdir``: the folder is ``workdir`` and :meth:`sync` does nothing. Cloud ``workdir``:
    a fresh temporary folder, first filled with the run's existing files named in ``fetch``;
    :meth:`sync` uploads every file that changed since the last upload (whole files: object
    stores cannot append), at most every ``sync_secs`` unless ``force``; :meth:`close` uploads
    and removes the folder (the programs close their writer, and so this, also when a run ends in
    an exception).
    """

    def __init__(self, workdir: str, fetch: tuple[str, ...] = (), sync_secs: float = 30.0):
        self.remote = path(workdir) if is_remote(workdir) else None
        self.sync_secs = sync_secs
        self._sent: dict[str, tuple[int, int]] = {}
        self._last = time.monotonic()
        if self.remote is None:
            self.local = os.fspath(workdir)
            os.makedirs(self.local, exist_ok=True)
            return
        self.local = tempfile.mkdtemp(prefix="critique_jax_staging_")
        for name in fetch:
            src = self.remote / name
            if src.exists():
                dst = os.path.join(self.local, name)
                with open(dst, "wb") as f:
                    f.write(src.read_bytes())
                self._sent[name] = _signature(dst)

    def sync(self, force: bool = False) -> None:
        """Uploads the files changed since the last upload (cloud only; throttled unless ``force``)."""
        if self.remote is None or (not force and time.monotonic() - self._last < self.sync_secs):
            return
        for root, _, files in os.walk(self.local):
            for name in files:
                src = os.path.join(root, name)
                rel = os.path.relpath(src, self.local)
                sig = _signature(src)
                if self._sent.get(rel) != sig:
                    dst = self.remote / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    with open(src, "rb") as f:
                        dst.write_bytes(f.read())
                    self._sent[rel] = sig
        self._last = time.monotonic()

    def close(self) -> None:
        """Uploads what is left and removes the temporary folder (cloud); nothing for a local one."""
        if self.remote is None:
            return
        self.sync(force=True)
        shutil.rmtree(self.local, ignore_errors=True)
        self.remote = None


def _signature(p: str) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_size, st.st_mtime_ns
