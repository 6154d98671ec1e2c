"""Verifiable reasoning tasks: generators, answer verifiers, step checkers, perturbers.

Importing this package registers the generated tasks ``arithmetic`` and ``countdown`` and the
file-backed ``gsm8k`` and ``math`` (problems from JSONL/Parquet files, :mod:`.files`; ``math``
answers are verified by :mod:`.verifier`). ``get_task(name)`` returns a task instance.
"""

from critique_jax.tasks import arithmetic, competition_math, countdown, gsm8k  # noqa: F401  (register the tasks)
from critique_jax.tasks.base import (
    ANSWER_PREFIX,
    SPLIT_IDS,
    Perturbation,
    Problem,
    StepCheck,
    Task,
    extract_answer,
    get_task,
    iter_problems,
    join_steps,
    make_problem,
    normalize_number,
    register_task,
    split_steps,
    task_names,
)
from critique_jax.tasks.gsm8k import load_jsonl

__all__ = [
    "ANSWER_PREFIX",
    "SPLIT_IDS",
    "Perturbation",
    "Problem",
    "StepCheck",
    "Task",
    "extract_answer",
    "get_task",
    "iter_problems",
    "join_steps",
    "load_jsonl",
    "make_problem",
    "normalize_number",
    "register_task",
    "split_steps",
    "task_names",
]
