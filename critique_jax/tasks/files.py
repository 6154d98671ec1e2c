"""Problems of file-backed tasks (``gsm8k``, ``math``) from local JSONL or Parquet files.

A file is JSONL (``.jsonl``: one JSON object per line, blank lines skipped) or Parquet
(``.parquet``, read with ``pyarrow``: ``pip install -e .[data]``). Each row becomes a problem
through the task's :meth:`~critique_jax.tasks.base.Task.problem_from_record`; its uid is
``<task>/<split>/<file stem>/<line>`` (JSONL, 1-based) or ``.../<row>`` (Parquet, 0-based).
Every bad input is a ValueError (FileNotFoundError for a missing file) on one line naming the
file and the line or row: not JSON, not an object, a missing field, a malformed value, a split
with no problems. :func:`files_digest` hashes the files' contents (the dataset's cache key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Iterator, Sequence

from critique_jax.tasks.base import Problem, Task

log = logging.getLogger("critique_jax")

JSONL_SUFFIXES = (".jsonl",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(f"{path}: expected a JSONL ({'/'.join(JSONL_SUFFIXES)}) or Parquet "
                     f"({'/'.join(PARQUET_SUFFIXES)}) file")


def check_exists(path: str | os.PathLike) -> str:
    """``path`` as a string; FileNotFoundError when it is not a file, ValueError for an unknown
    format."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    _kind(path)
    return path


def _parquet_rows(path: str) -> Iterator[tuple[str, int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs the 'pyarrow' package "
                          "(pip install pyarrow, or pip install -e .[data])") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow's errors are many kinds; all mean "not a readable Parquet file"
        raise ValueError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i}", i, row


def read_records(path: str | os.PathLike) -> Iterator[tuple[str, int, Any]]:
    """``(where, number, record)`` per row of a file: ``where`` is ``<path>:<line>`` (JSONL) or
    ``<path>: row <i>`` (Parquet), ``number`` the line (1-based) or row (0-based)."""
    path = check_exists(path)
    if _kind(path) == "parquet":
        yield from _parquet_rows(path)
        return
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg}); expected one JSON object per line") from None
            yield where, lineno, record


def check_record(record: Any, fields: Sequence[str], where: str) -> dict[str, Any]:
    """``record`` when it is an object with a string in every field; else ValueError naming
    ``where`` and the first missing field."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with fields {list(fields)}, got {type(record).__name__}")
    for key in fields:
        if key not in record or record[key] is None:
            raise ValueError(f"{where}: missing field {key!r} (expected fields {list(fields)})")
        if not isinstance(record[key], (str, int)) or isinstance(record[key], bool):
            raise ValueError(f"{where}: field {key!r} is a {type(record[key]).__name__}, expected a string (or an integer)")
    return record


def _stems(paths: Sequence[str]) -> list[str]:
    """File stems for uids; a stem shared by several files gets its position (``2-train``)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    return [f"{i}-{s}" if stems.count(s) > 1 else s for i, s in enumerate(stems)]


def load_split(
    task: Task,
    paths: Sequence[str | os.PathLike],
    split: str,
    difficulties: Sequence[int] | None = None,
    limit: int | None = None,
    exclude_questions: set[str] | frozenset[str] = frozenset(),
) -> list[Problem]:
    """The first ``limit`` (None: all) problems of ``paths`` in order, at ``difficulties`` (None:
    all), without questions in ``exclude_questions``. ValueError when none is left."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError(f"task {task.name!r}, {split} split: no files given (task.{split}_files)")
    levels = None if difficulties is None else set(difficulties)
    problems: list[Problem] = []
    skipped = off_level = excluded = 0
    for path, stem in zip(paths, _stems(paths)):
        for where, number, record in read_records(path):
            check_record(record, task.record_fields, where)
            p = task.problem_from_record(record, where, f"{task.name}/{split}/{stem}/{number}")
            if p is None:
                skipped += 1
            elif levels is not None and p.difficulty not in levels:
                off_level += 1
            elif p.question in exclude_questions:
                excluded += 1
            else:
                problems.append(p)
                if limit is not None and len(problems) >= limit:
                    break
        if limit is not None and len(problems) >= limit:
            break
    if skipped or excluded:
        log.info("%s %s split: %d rows skipped by the task, %d questions also in the test split left out",
                 task.name, split, skipped, excluded)
    if not problems:
        why = [f"{n} {what}" for n, what in ((skipped, "rows skipped by the task"),
                                             (off_level, f"rows at other difficulties than {sorted(levels or ())}"),
                                             (excluded, "questions also in the test split")) if n]
        raise ValueError(f"{', '.join(paths)}: no {task.name} problems for the {split} split "
                         f"({'; '.join(why) or 'no rows'})")
    return problems


def files_digest(groups: Sequence[tuple[str, Sequence[str | os.PathLike]]], n_hex: int = 12) -> str:
    """Hex digest of the contents of ``[(split, paths), ...]`` (order and split roles count,
    paths do not): the cache key of a dataset built from the files."""
    h = hashlib.sha256()
    for split, paths in groups:
        h.update(f"split:{split}:{len(paths)}\n".encode())
        for path in paths:
            path = check_exists(path)
            file_hash = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    file_hash.update(chunk)
            h.update(file_hash.digest())
    return h.hexdigest()[:n_hex]
