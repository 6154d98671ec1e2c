"""TFDS task datasets (build + read back without TensorFlow) and the batching iterator."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import critique_jax.tasks  # noqa: F401  (registers the tasks)
from critique_jax.data import BatchIterator, TaskDatasetConfig, build_task_dataset
from critique_jax.tasks.base import get_task, iter_problems

TASKS = ("arithmetic", "countdown")
N_TRAIN, N_TEST, SEED, N_SOL = 48, 12, 3, 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module", params=TASKS)
def built(request, data_dir):
    name = request.param
    return name, build_task_dataset(name, data_dir, SEED, N_TRAIN, N_TEST, n_solutions=N_SOL)


# ---------------------------------------------------------------- TFDS datasets


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401


def test_records_equal_generator_problems(built):
    name, sources = built
    task = get_task(name)
    test = list(iter_problems(task, "test", SEED, N_TEST))
    train = list(
        iter_problems(task, "train", SEED, N_TRAIN, exclude_questions={p.question for p in test})
    )
    for split, want in (("train", train), ("test", test)):
        src = sources[split]
        assert len(src) == len(want)
        got = src.__getitems__(list(range(len(src))))
        for i, (ex, p) in enumerate(zip(got, want)):
            q = ex.problem
            assert (q.uid, q.question, q.answer, q.difficulty) == (
                p.uid, p.question, p.answer, p.difficulty
            ), (split, i)
            assert json.dumps(q.meta, sort_keys=True) == json.dumps(dict(p.meta), sort_keys=True)
            assert src[i] == ex
    assert {p.difficulty for p in train} == set(task.difficulties)


def test_solutions_are_distinct_and_correct(built):
    name, sources = built
    task = get_task(name)
    for split in ("train", "test"):
        for ex in sources[split]:
            assert 1 <= len(ex.solutions) <= N_SOL
            assert len(set(ex.solutions)) == len(ex.solutions)
            for s in ex.solutions:
                assert task.reward(ex.problem, s) == 1.0, (ex.problem.uid, s)
                assert task.check_steps(ex.problem, s).ok, (ex.problem.uid, s)


def test_train_and_test_are_disjoint(built):
    _, sources = built
    train_q = {ex.problem.question for ex in sources["train"]}
    test_q = {ex.problem.question for ex in sources["test"]}
    assert len(test_q) > 0 and not train_q & test_q


def test_rebuild_reuses_files_and_reads_by_name(built, data_dir):
    name, sources = built
    config = sources["train"].config
    ds_dir = data_dir / "critique_task_dataset" / config.name / "1.0.0"
    files = sorted(ds_dir.glob("*.array_record*"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = build_task_dataset(name, data_dir, SEED, N_TRAIN, N_TEST, n_solutions=N_SOL)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert again["test"][3] == sources["test"][3]
    raw = tfds.data_source(f"critique_task_dataset/{config.name}", data_dir=data_dir, download=False)
    assert raw["test"][3]["question"].decode() == sources["test"][3].problem.question
    assert "tensorflow" not in sys.modules


def test_stale_dataset_is_detected(built, data_dir):
    # Files of seed SEED under the name of seed SEED + 1: as if the generator had changed.
    name, sources = built
    other = TaskDatasetConfig.make(name, SEED + 1, N_TRAIN, N_TEST, n_solutions=N_SOL)
    root = data_dir / "critique_task_dataset"
    shutil.copytree(root / sources["test"].config.name, root / other.name)
    with pytest.raises(ValueError, match=f"{other.name}.*stale"):
        build_task_dataset(name, data_dir, SEED + 1, N_TRAIN, N_TEST, n_solutions=N_SOL)


def test_config_names_round_trip_and_validate():
    cfg = TaskDatasetConfig.make("countdown", 5, 100, 20, None, 2)
    assert cfg.difficulties == get_task("countdown").difficulties
    back = TaskDatasetConfig.from_name(cfg.name)
    assert (back.name, back.task_name, back.seed, back.n_train, back.n_test) == (
        cfg.name, "countdown", 5, 100, 20
    )
    assert (back.difficulties, back.n_solutions) == (cfg.difficulties, 2)
    with pytest.raises(ValueError, match="config name"):
        TaskDatasetConfig.from_name("countdown-x")
    with pytest.raises(ValueError, match="difficulty"):
        TaskDatasetConfig.make("countdown", 0, 10, 10, difficulties=[999])
    with pytest.raises(ValueError, match="n_test=0"):
        TaskDatasetConfig.make("countdown", 0, 10, 0)
    with pytest.raises(KeyError, match="no_such_task"):
        TaskDatasetConfig.make("no_such_task", 0, 10, 10)


# ---------------------------------------------------------------- iterator


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_iterator_is_a_seeded_permutation_per_epoch():
    src = list(range(23))
    it = BatchIterator(src, 5, seed=7)
    assert it.batches_per_epoch == 4
    for epoch in range(3):
        batches = _take(it, 4)
        flat = [x for b in batches for x in b]
        want = np.random.default_rng([7, epoch]).permutation(23)[:20]
        assert flat == want.tolist()
        assert all(len(b) == 5 for b in batches)
    assert _take(BatchIterator(src, 5, seed=7), 9) == _take(BatchIterator(src, 5, seed=7), 9)
    assert _take(BatchIterator(src, 5, seed=7), 9) != _take(BatchIterator(src, 5, seed=8), 9)
    unshuffled = _take(BatchIterator(src, 5, seed=7, shuffle=False), 5)
    assert unshuffled[0] == [0, 1, 2, 3, 4] and unshuffled[4] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("consumed", [0, 3, 4, 5, 9])
def test_iterator_resumes_exactly(consumed):
    src = list(range(17))
    it = BatchIterator(src, 4, seed=1)
    reference = _take(BatchIterator(src, 4, seed=1), consumed + 6)
    _take(it, consumed)
    state = json.loads(json.dumps(it.get_state()))
    resumed = BatchIterator(src, 4, seed=1)
    resumed.set_state(state)
    assert _take(resumed, 6) == reference[consumed:]
    assert _take(it, 6) == reference[consumed:]


def test_iterator_process_slices_partition_the_global_batch(np_rng):
    src = [f"r{i}" for i in range(40)]
    seed = int(np_rng.integers(1 << 30))
    glob = _take(BatchIterator(src, 12, seed), 7)
    parts = [_take(BatchIterator(src, 12, seed, process_index=i, process_count=3), 7) for i in range(3)]
    for b in range(7):
        slices = [parts[i][b] for i in range(3)]
        assert all(len(s) == 4 for s in slices)
        assert [x for s in slices for x in s] == glob[b]
        assert len(set(glob[b])) == 12


def test_iterator_reads_task_source_and_stops_after_num_epochs(built):
    _, sources = built
    it = BatchIterator(sources["train"], 16, seed=0, num_epochs=2)
    batches = list(it)
    assert len(batches) == 2 * (N_TRAIN // 16)
    uids = [ex.problem.uid for ex in batches[0]]
    assert len(set(uids)) == 16
    assert it.get_state()["epoch"] == 2
    with pytest.raises(StopIteration):
        next(it)


def test_head_is_a_fixed_pool_of_the_first_records(built):
    _, sources = built
    train = sources["train"]
    pool = train.head(32)
    assert len(pool) == 32
    uids = {ex.problem.uid for batch in BatchIterator(pool, 16, seed=3, num_epochs=3) for ex in batch}
    assert uids == {train[i].problem.uid for i in range(32)}  # every epoch revisits the same 32
    with pytest.raises(IndexError, match="out of range"):
        pool.__getitems__([31, 32])
    with pytest.raises(ValueError, match=f"a pool of 0 records, expected 1 to {len(train)}"):
        train.head(0)
    questions = {pool[i].problem.question for i in range(len(pool))}
    rest = train.excluding(questions)  # SFT without the pool's problems (sft.skip_rl_pool)
    kept = [i for i in range(len(train)) if train[i].problem.question not in questions]
    assert [e.problem.uid for e in rest.__getitems__(range(len(rest)))] == [train[i].problem.uid for i in kept]
    assert len(rest) == len(kept) <= len(train) - 32 and rest[-1].problem.uid == train[kept[-1]].problem.uid
    assert rest.head(2)[1].problem.uid == train[kept[1]].problem.uid
    with pytest.raises(ValueError, match="every record's question is excluded"):
        train.excluding({train[i].problem.question for i in range(len(train))})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=6, process_count=4), "not divisible"),
        (dict(batch_size=4, process_index=2, process_count=2), "process_index=2"),
        (dict(batch_size=4, process_count=0), "process_count=0"),
        (dict(batch_size=11), "fewer than batch_size=11"),
        (dict(batch_size=2, num_epochs=0), "num_epochs=0"),
    ],
)
def test_iterator_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchIterator(list(range(10)), seed=0, **kwargs)


def test_iterator_rejects_mismatched_state():
    it = BatchIterator(list(range(10)), 2, seed=0)
    state = it.get_state()
    with pytest.raises(ValueError, match="seed=0"):
        BatchIterator(list(range(10)), 2, seed=1).set_state(state)
    with pytest.raises(ValueError, match="batch_size=2"):
        BatchIterator(list(range(10)), 5, seed=0).set_state(state)
    with pytest.raises(ValueError, match="position=6"):
        it.set_state({**state, "position": 6})
    with pytest.raises(KeyError, match="epoch"):
        it.set_state({"position": 0})


def test_two_processes_build_one_dataset(tmp_path):
    """Two real processes build the same dataset on a fresh cache at once: one builds, the
    other waits for the lock and reads it."""
    import os
    import subprocess

    code = ("import sys; from critique_jax.data import build_task_dataset; "
            "print(len(build_task_dataset('arithmetic', sys.argv[1], 5, 64, 8, n_solutions=2)['train']))")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert outs[0][0] == outs[1][0]
