"""GSM8K from local files: SFT on the dataset's rationales, then GRPO with Clip-Cov.

Files (JSONL or Parquet rows ``{"question", "answer": "...#### <n>"}``) default to
``data/gsm8k/train.jsonl`` and ``data/gsm8k/test.jsonl`` relative to the working directory
(README: Train on GSM8K / MATH); ``--config.task.train_files=/abs/train.parquet`` replaces them.
Sized for a pretrained model of ~0.5-1.5B parameters on one accelerator
(``--config.model.hf_dir=DIR``); an instruct model reads its chat template with the task's
answer-format instruction, and the short SFT phase reinforces the ``answer:`` line the reward
reads. ``configs/math.py`` builds on this file.
"""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.task.name = "gsm8k"
    c.task.train_files = ("data/gsm8k/train.jsonl",)
    c.task.test_files = ("data/gsm8k/test.jsonl",)
    c.task.difficulties = tuple(range(1, 9))  # rationale lines, clipped to 8 (all levels)
    c.task.n_train = 7473  # the whole GSM8K train split
    c.task.n_test = 1319
    c.task.n_solutions = 1  # one rationale per problem
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.sampling.prompt_buckets = (160, 320)
    c.sampling.max_new_tokens = 400
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
    c.eval.n_problems = 256
    c.checkpoint.every = 25
    return c
