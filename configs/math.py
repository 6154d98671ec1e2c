"""MATH from local files (train: MATH's 7,500 problems; test: MATH-500): SFT on the dataset's
solutions, then GRPO with Clip-Cov; answers verified by math-verify (``pip install -e .[data]``).

Files (JSONL or Parquet rows ``{"problem", "solution", "level"[, "type"/"subject", "answer"]}``)
default to ``data/math/train.jsonl`` and ``data/math/test.jsonl`` relative to the working
directory (README: Train on GSM8K / MATH). The training settings are ``configs/gsm8k.py``'s;
the widths are MATH's. The run stops before training if a prompt or reference solution is longer
than the buckets below: raise them or cap ``task.n_train``.
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("gsm8k.py")))["get_config"]()
    c.task.name = "math"
    c.task.train_files = ("data/math/train.jsonl",)
    c.task.test_files = ("data/math/test.jsonl",)
    c.task.difficulties = (1, 2, 3, 4, 5)
    c.task.n_train = 7500
    c.task.n_test = 500
    c.sampling.prompt_buckets = (256, 512, 1024)
    c.sampling.max_new_tokens = 1024
    c.eval.n_problems = 500
    return c
