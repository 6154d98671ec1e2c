"""File-backed tasks: GSM8K and MATH rows written to JSONL and Parquet build into the TFDS
datasets and read back; the cache key follows the files' contents; bad input and bad configs
are one-line errors naming the file and line (or row), or the config key and path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from critique_jax import config as config_lib
from critique_jax import validation
from critique_jax.data import TaskDatasetConfig, build_task_dataset
from critique_jax.tasks import get_task
from critique_jax.tasks.files import files_digest, load_split, read_records

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")
import pyarrow as pa  # noqa: E402

GSM_ROWS = [
    {"question": f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
     "answer": f"He buys {i + 2} apples.\nTom has {i} + {i + 2} = <<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} apples.\n"
               f"#### {2 * i + 2:,}"}
    for i in range(0, 1200, 100)
]
MATH_ROWS = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "We add.\n\n$\\frac12 + \\frac14 = \\boxed{\\frac{3}{4}}$.",
     "level": "Level 1", "type": "Prealgebra"},
    {"problem": "Which is prime? (A) 4 (B) 5", "solution": "5 is prime: $\\boxed{\\text{(B)}}$", "level": "Level 2",
     "type": "Number Theory"},
    {"problem": "Simplify $\\frac{1}{\\sqrt2}$.", "solution": "Rationalise: $\\boxed{\\frac{\\sqrt{2}}{2}}$.",
     "level": "Level ?", "type": "Algebra"},  # skipped: no level
    {"problem": "Solve $x+1<4$.", "solution": "So $x<3$: $\\boxed{(-\\infty,3)}$", "level": "Level 4", "type": "Algebra"},
]
MATH500_ROWS = [  # MATH-500's fields: an answer field, an integer level, subject instead of type
    {"problem": "What is $2^{10}$?", "solution": "It is $1024$, so $\\boxed{1024}$.", "answer": "1024",
     "subject": "Algebra", "level": 2, "unique_id": "test/algebra/1.json"},
    {"problem": "What is $\\sqrt{16}$?", "solution": "$\\boxed{4}$", "answer": "4", "subject": "Algebra", "level": 1,
     "unique_id": "test/algebra/2.json"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _build(task, data_dir, train, test, **kw):
    kw = {"n_train": 100, "n_test": 100, "difficulties": None, "n_solutions": 2, **kw}
    return build_task_dataset(task, data_dir, 0, kw.pop("n_train"), kw.pop("n_test"), kw.pop("difficulties"),
                              kw.pop("n_solutions"), train_files=train, test_files=test, **kw)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_gsm8k_files_build_and_read_back(tmp_path, fmt):
    write = write_jsonl if fmt == "jsonl" else write_parquet
    train = write(tmp_path / f"train.{fmt}", GSM_ROWS[:10])
    test = write(tmp_path / f"test.{fmt}", GSM_ROWS[8:])  # rows 8 and 9 are in both: left out of train
    splits = _build("gsm8k", tmp_path / "tfds", [train], [test])
    task = get_task("gsm8k")
    assert (len(splits["train"]), len(splits["test"])) == (8, 4)
    first = 1 if fmt == "jsonl" else 0  # JSONL lines count from 1, Parquet rows from 0
    ex = splits["train"][0]
    assert ex.problem.uid == f"gsm8k/train/train/{first}"
    assert (ex.problem.question, ex.problem.answer, ex.problem.difficulty) == (GSM_ROWS[0]["question"], "2", 2)
    assert ex.solutions == ("He buys 2 apples.\nTom has 0 + 2 = 2 apples.\nanswer: 2",)
    assert splits["test"][3].problem.answer == "2202"  # "#### 2,202"
    for split in splits.values():
        for ex in split:
            assert task.reward(ex.problem, ex.solutions[0]) == 1.0 and task.check_steps(ex.problem, ex.solutions[0]).ok
    # Caps and levels: the first n problems at the given difficulties.
    capped = _build("gsm8k", tmp_path / "tfds", [train], [test], n_train=3, n_test=2, difficulties=[2])
    assert (len(capped["train"]), len(capped["test"])) == (3, 2)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_math_files_build_and_read_back(tmp_path, fmt):
    write = write_jsonl if fmt == "jsonl" else write_parquet
    train = write(tmp_path / f"math_train.{fmt}", MATH_ROWS)
    test = write(tmp_path / f"math500.{fmt}", MATH500_ROWS)
    splits = _build("math", tmp_path / "tfds", [train], [test])
    train_ex = list(splits["train"])
    assert [e.problem.answer for e in train_ex] == ["\\frac{3}{4}", "\\text{(B)}", "(-\\infty,3)"]  # Level ? skipped
    assert [e.problem.difficulty for e in train_ex] == [1, 2, 4]
    assert train_ex[0].problem.meta["type"] == "Prealgebra"
    assert train_ex[0].solutions == ("We add.\n$\\frac12 + \\frac14 = \\boxed{\\frac{3}{4}}$.\nanswer: \\frac{3}{4}",)
    test_ex = list(splits["test"])
    assert [(e.problem.answer, e.problem.difficulty, e.problem.meta["type"]) for e in test_ex] == [
        ("1024", 2, "Algebra"), ("4", 1, "Algebra")]
    assert test_ex[0].problem.meta["id"] == "test/algebra/1.json"
    task = get_task("math")
    texts = [e.solutions[0] for e in train_ex + test_ex]
    assert task.rewards([e.problem for e in train_ex + test_ex], texts).tolist() == [1.0] * 5
    only = _build("math", tmp_path / "tfds", [train], [test], difficulties=[1, 4])
    assert [e.problem.answer for e in only["train"]] == ["\\frac{3}{4}", "(-\\infty,3)"]
    assert [e.problem.answer for e in only["test"]] == ["4"]
    with pytest.raises(ValueError, match=r"math500.*: no math problems for the test split \(2 rows at other difficulties"):
        _build("math", tmp_path / "tfds", [train], [test], difficulties=[5])


def test_the_cache_key_follows_file_contents(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", GSM_ROWS[:4])
    test = write_jsonl(tmp_path / "test.jsonl", GSM_ROWS[4:6])
    first = _build("gsm8k", tmp_path / "tfds", [train], [test])
    name = first["train"].config.name
    assert name.startswith("gsm8k-d1.2.3.4.5.6.7.8-s0-tr100-te100-n2-f")
    assert _build("gsm8k", tmp_path / "tfds", [train], [test])["train"].config.name == name
    # Read back by name alone (the digest is in it), without the files.
    raw = tfds.data_source(f"critique_task_dataset/{name}", data_dir=tmp_path / "tfds", download=False)
    assert raw["test"][0]["question"].decode() == GSM_ROWS[4]["question"]
    assert TaskDatasetConfig.from_name(name).files_digest == name.rsplit("-f", 1)[1]
    # Same contents elsewhere: same dataset. Changed contents: a new one.
    copy = write_jsonl(tmp_path / "copy.jsonl", GSM_ROWS[:4])
    assert _build("gsm8k", tmp_path / "tfds", [copy], [test])["train"].config.name == name
    write_jsonl(tmp_path / "train.jsonl", GSM_ROWS[:3])
    again = _build("gsm8k", tmp_path / "tfds", [train], [test])
    assert again["train"].config.name != name and len(again["train"]) == 3
    # Train and test roles count.
    assert files_digest([("train", [train]), ("test", [test])]) != files_digest([("train", [test]), ("test", [train])])


def test_file_tasks_and_generated_tasks_take_their_own_arguments(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", GSM_ROWS[:2])
    with pytest.raises(ValueError, match="task 'countdown' generates its problems"):
        TaskDatasetConfig.make("countdown", 0, 10, 10, train_files=[f], test_files=[f])
    with pytest.raises(ValueError, match="task 'gsm8k' reads its problems from files"):
        build_task_dataset("gsm8k", tmp_path / "tfds", 0, 10, 10)
    with pytest.raises(NotImplementedError, match="task.train_files"):
        get_task("math").generate(np.random.default_rng(0), 1)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("task, line, expected", [
    ("gsm8k", "{not json", r":3: invalid JSON \(.*\); expected one JSON object per line"),
    ("gsm8k", '["a"]', r":3: expected a JSON object with fields \['question', 'answer'\], got list"),
    ("gsm8k", '{"question": "q"}', r":3: missing field 'answer' \(expected fields \['question', 'answer'\]\)"),
    ("gsm8k", '{"question": "q", "answer": "it is 5"}', r":3: expected the answer to end with '#### <number>'"),
    ("math", '{"problem": "p", "level": "Level 1"}', r":3: missing field 'solution'"),
    ("math", '{"problem": "p", "solution": "no box", "level": "Level 1"}', r":3: expected the solution to contain "),
    ("math", '{"problem": "p", "solution": "\\\\boxed{1}", "level": "hard"}', r":3: level 'hard': expected"),
    ("math", '{"problem": ["p"], "solution": "s", "level": 1}', r":3: field 'problem' is a list, expected a string"),
])
def test_a_bad_jsonl_row_names_file_and_line(tmp_path, task, line, expected):
    good = GSM_ROWS[0] if task == "gsm8k" else MATH_ROWS[0]
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=expected) as err:
        load_split(get_task(task), [path], "train")
    assert str(err.value).startswith(f"{path}:3: ") and "\n" not in str(err.value)


def test_a_bad_parquet_row_names_file_and_row(tmp_path):
    path = write_parquet(tmp_path / "bad.parquet", [GSM_ROWS[0], {"question": "q", "answer": None}])
    with pytest.raises(ValueError, match=rf"^{path}: row 1: missing field 'answer'"):
        load_split(get_task("gsm8k"), [path], "train")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"junk.parquet: not a readable Parquet file"):
        list(read_records(tmp_path / "junk.parquet"))


def test_missing_files_empty_splits_and_unknown_formats(tmp_path):
    task = get_task("gsm8k")
    with pytest.raises(FileNotFoundError, match=rf"^{tmp_path}/nope.jsonl: no such file$"):
        load_split(task, [tmp_path / "nope.jsonl"], "train")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match=rf"^{empty}: no gsm8k problems for the train split \(no rows\)$"):
        load_split(task, [empty], "train")
    (tmp_path / "rows.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"rows.csv: expected a JSONL \(.jsonl\) or Parquet \(.parquet/.pq\) file"):
        load_split(task, [tmp_path / "rows.csv"], "train")
    with pytest.raises(ValueError, match=r"no files given \(task.train_files\)"):
        load_split(task, [], "train")


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "rows.parquet", GSM_ROWS[:1])
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"rows.parquet: reading Parquet needs the 'pyarrow' package"):
        list(read_records(path))


# ---------------------------------------------------------------- config

def _config(**task):
    c = config_lib.default_config()
    for k, v in task.items():
        c.task[k] = v
    return c


def test_config_validates_task_files(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", GSM_ROWS[:2])
    validation.validate(_config(name="gsm8k", train_files=(f,), test_files=(f,)), 1)
    validation.validate(_config(name="math", train_files=[f], test_files=[f]), 1)  # a list works too
    cases = [
        (dict(name="gsm8k"), r"^config task.train_files is empty: task.name='gsm8k' reads its problems from"),
        (dict(name="gsm8k", train_files=(f,)), r"^config task.test_files is empty"),
        (dict(name="countdown", train_files=(f,)), r"^config task.train_files=\(.*\): task.name='countdown' generates"),
        (dict(name="gsm8k", train_files=(f,), test_files=(f, str(tmp_path / "gone.jsonl"))),
         rf"^config task.test_files: {tmp_path}/gone.jsonl: no such file$"),
        (dict(name="gsm8k", train_files=(str(tmp_path),), test_files=(f,)),
         rf"^config task.train_files: {tmp_path}: no such file$"),
        (dict(name="no_such_task"), r"^config task.name='no_such_task': expected one of \["),
    ]
    for task, message in cases:
        with pytest.raises(ValueError, match=message):
            validation.validate(_config(**task), 1)


def test_a_file_task_tokenizer_trains_on_the_train_files(tmp_path):
    from critique_jax.text import tokenizer_for_task

    rows = [dict(r, question=r["question"].replace("Tom", name)) for name in ("Tom", "Ann", "Bob") for r in GSM_ROWS]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    tok = tokenizer_for_task("gsm8k", cache_dir=tmp_path / "cache", train_files=[train])
    (path,) = (tmp_path / "cache" / "tokenizers").iterdir()
    assert path.name.startswith(f"gsm8k-f{files_digest([('train', [train])])}-")
    question = GSM_ROWS[3]["question"]
    assert tok.decode(tok.encode(question)) == question
    with pytest.raises(ValueError, match="task 'gsm8k' reads its problems from files: its tokenizer needs train_files"):
        tokenizer_for_task("gsm8k", cache_dir=tmp_path / "cache")
