"""A tiny full run (SFT + RL + eval + checkpoints) for tests/test_multiprocess.py.

Loaded by the real CLI (``python -m critique_jax.train --config=tests/mp_config.py``) in the
test's subprocesses. Shapes are as small as the 8-way batch sharding allows (mesh data=4 x
fsdp=2), so that compilation, not compute, dominates. KL-Cov with a reference KL term makes
the global top-k over the whole batch, the reference log-prob pass and the ``ref_params``
checkpoint entry part of the comparison.
"""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.task.name = "countdown"
    c.task.n_train = 64
    c.task.n_test = 16
    c.model.preset = "tiny"
    c.mesh.data = 4
    c.mesh.fsdp = 2
    c.sampling.prompt_buckets = (24,)
    c.sampling.max_new_tokens = 48
    c.sft.steps = 2
    c.sft.warmup_steps = 0
    c.sft.batch_size = 8
    c.sft.log_every = 1
    c.rl.steps = 2
    c.rl.prompts_per_step = 8
    c.rl.group_size = 4
    c.rl.minibatches = 2
    c.rl.lr = 1e-3  # large enough that two RL steps move the parameters measurably
    c.rl.loss.name = "kl_cov"
    c.rl.loss.kl_cov.ratio = 0.05
    c.rl.loss.ref_kl_coef = 0.01
    c.rl.loss.entropy_coef = 0.01  # rewards are all 0 this early: the bonus makes the update move
    c.eval.every = 2  # evaluate after SFT (step 2) and at the end (step 4) only
    c.eval.n_problems = 8
    c.eval.batch_prompts = 8
    c.eval.group_size = 4  # = rl.group_size: sampled eval reuses the rollout compilation
    c.checkpoint.every = 1
    c.log.tensorboard = False
    c.log.progress = False
    return c
