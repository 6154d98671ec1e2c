"""TFDS datasets of task problems (array_record files, read without TensorFlow).
Over 300 lines: the builder that writes the records and the reader that decodes them must agree on
the features, so both live here.

One builder, :class:`CritiqueTaskDataset`, with one :class:`TaskDatasetConfig` per parameter
set. The config name spells the parameters, so a built dataset can be found by name::

    critique_task_dataset/<task>-d<levels joined by .>-s<seed>-tr<n_train>-te<n_test>-n<n_solutions>
    e.g. critique_task_dataset/countdown-d1.2.3-s0-tr1000-te200-n4

and read with ``tfds.data_source("critique_task_dataset/<config>", data_dir=...)``.

Splits: ``test`` holds problems ``iter_problems(task, "test", seed, n_test, difficulties)``;
``train`` holds ``iter_problems(task, "train", ...)`` minus any question that is in test.
Records keep generation order (no TFDS shuffling): record ``i`` is problem ``i``.

File-backed tasks (``gsm8k``, ``math``: ``Task.generative`` False) read their splits from
``train_files``/``test_files`` (JSONL or Parquet, :mod:`critique_jax.tasks.files`): the first
``n_test`` test problems at ``difficulties``, the first ``n_train`` train problems there whose
question is not in test (fewer when the files hold fewer). The name ends in ``-f<digest>``, a
hash of the files' contents, so changed files build a new dataset (``seed`` is unused).

Features: ``uid``, ``question``, ``answer`` (text), ``difficulty`` (int32), ``meta`` (JSON text
of ``Problem.meta``, sorted keys) and ``solutions`` (up to ``n_solutions`` distinct correct
reference solutions, for SFT). :func:`build_task_dataset` returns :class:`TaskSource` objects
that decode records to :class:`Example` (a :class:`Problem` and its solutions).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Collection, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

import critique_jax.tasks  # noqa: F401  (registers the tasks)
from critique_jax.runlock import file_lock
from critique_jax.tasks.base import SPLIT_IDS, Problem, Task, get_task, iter_problems
from critique_jax.tasks.files import files_digest, load_split

SPLITS = ("train", "test")
# Last element of the RNG key of reference solutions; make_problem's keys have 4 elements.
_SOLUTIONS_STREAM = 1
_NAME = re.compile(
    r"^(?P<task>[A-Za-z]\w*)-d(?P<levels>\d+(?:\.\d+)*)-s(?P<seed>\d+)"
    r"-tr(?P<n_train>\d+)-te(?P<n_test>\d+)-n(?P<n_solutions>\d+)(?:-f(?P<files>[0-9a-f]+))?$"
)


@dataclasses.dataclass(eq=False)
class TaskDatasetConfig(tfds.core.BuilderConfig):
    """Parameters of one task dataset (build with :meth:`make` or :meth:`from_name`)."""

    task_name: str = ""
    seed: int = 0
    n_train: int = 0
    n_test: int = 0
    difficulties: tuple[int, ...] = ()
    n_solutions: int = 4
    train_files: tuple[str, ...] = ()  # file-backed tasks only
    test_files: tuple[str, ...] = ()
    files_digest: str = ""  # of the files' contents; set without files: a config to read a dataset

    @classmethod
    def make(
        cls,
        task_name: str,
        seed: int,
        n_train: int,
        n_test: int,
        difficulties: Sequence[int] | None = None,
        n_solutions: int = 4,
        train_files: Sequence[str | os.PathLike] = (),
        test_files: Sequence[str | os.PathLike] = (),
        digest: str = "",
    ) -> TaskDatasetConfig:
        """Validated config; ``difficulties=None`` means all of the task's levels. File-backed
        tasks need ``train_files`` and ``test_files`` (or, to read a built dataset, its digest);
        generated tasks take none."""
        task = get_task(task_name)
        train_files = tuple(os.fspath(p) for p in train_files)
        test_files = tuple(os.fspath(p) for p in test_files)
        if task.generative and (train_files or test_files or digest):
            raise ValueError(f"task {task_name!r} generates its problems: it takes no train/test files")
        if not task.generative and not digest and not (train_files and test_files):
            raise ValueError(f"task {task_name!r} reads its problems from files: give train_files and test_files")
        if train_files or test_files:
            digest = files_digest([("train", train_files), ("test", test_files)])
        levels = tuple(task.difficulties if difficulties is None else difficulties)
        if not levels:
            raise ValueError(f"task {task_name!r}: empty difficulty list")
        for level in levels:
            task.check_difficulty(level)
        for key, value, low in [
            ("seed", seed, 0),
            ("n_train", n_train, 1),
            ("n_test", n_test, 1),
            ("n_solutions", n_solutions, 1),
        ]:
            if value < low:
                raise ValueError(f"{key}={value}: expected >= {low}")
        name = (
            f"{task_name}-d{'.'.join(map(str, levels))}-s{seed}"
            f"-tr{n_train}-te{n_test}-n{n_solutions}" + (f"-f{digest}" if digest else "")
        )
        return cls(
            name=name,
            version=CritiqueTaskDataset.VERSION,
            description=f"{task_name} problems, difficulties {levels}, seed {seed}",
            task_name=task_name,
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            difficulties=levels,
            n_solutions=n_solutions,
            train_files=train_files,
            test_files=test_files,
            files_digest=digest,
        )

    @classmethod
    def from_name(cls, name: str) -> TaskDatasetConfig:
        """Inverse of the naming in :meth:`make`."""
        m = _NAME.match(name)
        if m is None:
            raise ValueError(
                f"config name {name!r}: expected <task>-d<l1.l2...>-s<seed>-tr<n>-te<n>-n<k>[-f<digest>]"
            )
        return cls.make(
            m["task"],
            int(m["seed"]),
            int(m["n_train"]),
            int(m["n_test"]),
            tuple(int(x) for x in m["levels"].split(".")),
            int(m["n_solutions"]),
            digest=m["files"] or "",
        )


class CritiqueTaskDataset(tfds.core.GeneratorBasedBuilder):
    """Train/test problems of one task with reference solutions (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "uid, question, answer, difficulty, meta, solutions."}

    # TFDS's default looks the module up through the `importlib_resources` backport, which
    # is not installed (and not needed): point at this file directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def __init__(self, *, file_format: str = "array_record", **kwargs: Any):
        super().__init__(file_format=file_format, **kwargs)

    def _create_builder_config(self, builder_config, version):
        # Configs are made from parameters, not listed in BUILDER_CONFIGS.
        if isinstance(builder_config, str):
            builder_config = TaskDatasetConfig.from_name(builder_config.split(":")[0])
        if not isinstance(builder_config, TaskDatasetConfig):
            raise ValueError(
                f"{self.name} needs a TaskDatasetConfig or its name, got {builder_config!r}"
            )
        return builder_config

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n", 1)[0],
            features=tfds.features.FeaturesDict(
                {
                    "uid": text,
                    "question": text,
                    "answer": text,
                    "difficulty": tfds.features.Scalar(np.int32),
                    "meta": text,
                    "solutions": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg: TaskDatasetConfig = self.builder_config
        task = get_task(cfg.task_name)
        if not task.generative:
            test, train = _file_splits(cfg)
            return {
                "train": self._generate_examples(task, train, "train"),
                "test": self._generate_examples(task, test, "test"),
            }
        test = list(iter_problems(task, "test", cfg.seed, cfg.n_test, cfg.difficulties))
        train = iter_problems(
            task,
            "train",
            cfg.seed,
            cfg.n_train,
            cfg.difficulties,
            exclude_questions=frozenset(p.question for p in test),
        )
        return {
            "train": self._generate_examples(task, train, "train"),
            "test": self._generate_examples(task, test, "test"),
        }

    def _generate_examples(self, task: Task, problems, split: str):
        cfg: TaskDatasetConfig = self.builder_config
        for i, p in enumerate(problems):
            rng = np.random.default_rng(
                [cfg.seed, SPLIT_IDS[split], i, p.difficulty, _SOLUTIONS_STREAM]
            )
            yield p.uid, {
                "uid": p.uid,
                "question": p.question,
                "answer": p.answer,
                "difficulty": p.difficulty,
                "meta": json.dumps(dict(p.meta), sort_keys=True),
                "solutions": task.solutions(p, rng, cfg.n_solutions),
            }

    # TFDS prints these to stdout; the datasets here are small and built often (tests).
    def _log_download_bytes(self) -> None:
        logging.info("building %s", self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("built %s", self.data_dir)


def _file_splits(cfg: TaskDatasetConfig) -> tuple[list[Problem], list[Problem]]:
    """The test and train problems of a file-backed config (see the module docstring)."""
    if not cfg.train_files:
        raise ValueError(f"dataset {cfg.name} is built from files: build it with "
                         "build_task_dataset(..., train_files=..., test_files=...)")
    task = get_task(cfg.task_name)
    test = load_split(task, cfg.test_files, "test", cfg.difficulties, cfg.n_test)
    train = load_split(task, cfg.train_files, "train", cfg.difficulties, cfg.n_train,
                       exclude_questions=frozenset(p.question for p in test))
    return test, train


@dataclasses.dataclass(frozen=True)
class Example:
    """One decoded record: the problem and its reference solutions."""

    problem: Problem
    solutions: tuple[str, ...]


def _text(x: bytes | str) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def decode_record(record: dict[str, Any]) -> Example:
    """A TFDS record (bytes/numpy fields) as an :class:`Example`."""
    problem = Problem(
        uid=_text(record["uid"]),
        question=_text(record["question"]),
        answer=_text(record["answer"]),
        difficulty=int(record["difficulty"]),
        meta=json.loads(_text(record["meta"])),
    )
    return Example(problem, tuple(_text(s) for s in record["solutions"]))


class TaskSource:
    """Random access to one split: ``len(src)``, ``src[i] -> Example``, ``__getitems__``; a view
    (:meth:`head`, :meth:`excluding`) reads the records ``index`` of the split."""

    def __init__(self, data_source: Any, config: TaskDatasetConfig, split: str, limit: int | None = None,
                 index: np.ndarray | None = None):
        self._source = data_source
        self.config = config
        self.split = split
        self._index = np.arange(len(data_source) if limit is None else limit) if index is None else index[:limit]

    def head(self, n: int) -> "TaskSource":
        """The first ``n`` records of the split, e.g. a fixed RL prompt pool (``rl.pool_size``)."""
        if not 0 < n <= len(self):
            raise ValueError(f"{self.split} split: a pool of {n} records, expected 1 to {len(self)}")
        return TaskSource(self._source, self.config, self.split, index=self._index[:n])

    def excluding(self, questions: Collection[str]) -> "TaskSource":
        """The records whose question is not in ``questions`` (e.g. SFT data without any problem of
        the RL pool, ``sft.skip_rl_pool``: a generated split repeats questions)."""
        records = self._source.__getitems__([int(i) for i in self._index])
        keep = np.asarray([i for i, r in zip(self._index, records) if _text(r["question"]) not in questions], np.int64)
        if not len(keep):
            raise ValueError(f"{self.split} split: every record's question is excluded")
        return TaskSource(self._source, self.config, self.split, index=keep)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Example:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.split} record {index} out of range [0, {n})")
        return decode_record(self._source[int(self._index[index % n])])

    def __getitems__(self, indices: Sequence[int]) -> list[Example]:
        indices = list(indices)
        if indices and not 0 <= min(indices) <= max(indices) < len(self):
            raise IndexError(f"{self.split} records {min(indices)}..{max(indices)} out of range [0, {len(self)})")
        return [decode_record(r) for r in self._source.__getitems__([int(self._index[i]) for i in indices])]

    def __repr__(self) -> str:
        return f"TaskSource({self.config.name}, split={self.split!r}, n={len(self)})"


def task_builder(
    config: TaskDatasetConfig, data_dir: str | os.PathLike
) -> CritiqueTaskDataset:
    """The builder of ``config`` under ``data_dir`` (built or not)."""
    return CritiqueTaskDataset(data_dir=os.fspath(data_dir), config=config)


def build_task_dataset(
    task_name: str,
    data_dir: str | os.PathLike,
    seed: int = 0,
    n_train: int = 1000,
    n_test: int = 200,
    difficulties: Sequence[int] | None = None,
    n_solutions: int = 4,
    *,
    train_files: Sequence[str | os.PathLike] = (),
    test_files: Sequence[str | os.PathLike] = (),
    progress_bar: bool = False,
) -> dict[str, TaskSource]:
    """Builds the dataset under ``data_dir`` if missing (under a lock file there, so concurrent
    runs build it once); returns ``{"train", "test"}`` sources. File-backed tasks read
    ``train_files``/``test_files`` (JSONL or Parquet; see the module docstring).

    A dataset on disk that no longer matches the task's generator or file reader (its first
    test problem differs from a fresh one) raises ValueError naming its directory: delete it to
    rebuild. ``progress_bar`` sets TFDS's global progress-bar switch.
    """
    config = TaskDatasetConfig.make(task_name, seed, n_train, n_test, difficulties, n_solutions,
                                    train_files, test_files)
    builder = task_builder(config, data_dir)
    tfds.display_progress_bar(progress_bar)
    if not builder.is_prepared():
        # Another process may be building it: build under a lock, with a builder made after
        # the lock is held (it sees a dataset the other process finished).
        with file_lock(os.path.join(data_dir, f"{builder.name}-{config.name}.lock")):
            builder = task_builder(config, data_dir)
            builder.download_and_prepare()
    sources = {
        split: TaskSource(src, config, split)
        for split, src in builder.as_data_source().items()
    }
    task = get_task(task_name)
    if task.generative:
        fresh = next(iter_problems(task, "test", seed, 1, config.difficulties))
    else:
        fresh = load_split(task, config.test_files, "test", config.difficulties, 1)[0]
    stored = sources["test"][0].problem
    if (stored.uid, stored.question, stored.answer) != (fresh.uid, fresh.question, fresh.answer):
        raise ValueError(
            f"dataset {builder.data_dir} is stale: test record 0 is {stored.question!r}, the "
            f"task now makes {fresh.question!r}; delete the directory to rebuild"
        )
    return sources
