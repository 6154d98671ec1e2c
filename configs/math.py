"""MATH from local files (train: MATH's 7,500 problems; test: MATH-500): SFT on the dataset's
solutions, then GRPO with Clip-Cov; answers verified by math-verify (``pip install -e .[data]``).

Files (JSONL or Parquet rows ``{"problem", "solution", "level"[, "type"/"subject", "answer"]}``)
default to ``data/math/train.jsonl`` and ``data/math/test.jsonl`` relative to the working
directory (README: Train on GSM8K / MATH). Sized for a pretrained model of ~0.5-1.5B parameters
(``--config.model.hf_dir=DIR``). The run stops before training if a prompt or reference
solution is longer than the buckets below: raise them or cap ``task.n_train``.
"""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.task.name = "math"
    c.task.train_files = ("data/math/train.jsonl",)
    c.task.test_files = ("data/math/test.jsonl",)
    c.task.difficulties = (1, 2, 3, 4, 5)
    c.task.n_train = 7500
    c.task.n_test = 500
    c.task.n_solutions = 1
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.sampling.prompt_buckets = (256, 512, 1024)
    c.sampling.max_new_tokens = 1024
    c.sft.steps = 200
    c.sft.batch_size = 32
    c.sft.lr = 1e-5
    c.rl.steps = 200
    c.rl.prompts_per_step = 32
    c.rl.group_size = 8
    c.rl.minibatches = 4
    c.rl.lr = 1e-6
    c.rl.loss.name = "clip_cov"
    c.eval.every = 25
    c.eval.n_problems = 500
    c.checkpoint.every = 25
    return c
