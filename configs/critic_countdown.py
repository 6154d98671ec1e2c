"""The step-level critic on countdown level 1 (the quickstart's task), sized for a 2-core CPU.

    python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir=runs/critic

The policy fields are the quickstart's (same data, tokenizer and mesh); the ``critic`` section
sets the critic's model and training. Prompt width and response length come from the data
(``critic.prompt_width = critic.max_new_tokens = 0``).
"""

from critique_jax.config import default_config


def get_config():
    c = default_config()
    c.task.name = "countdown"
    c.task.difficulties = (1,)
    c.task.n_train = 2000
    c.task.n_test = 128
    c.sampling.prompt_buckets = (20,)
    c.sampling.max_new_tokens = 40
    c.critic.preset = "small"
    c.critic.steps = 400
    c.critic.batch_size = 32
    c.critic.eval_n_problems = 128
    c.critic.eval_every = 100
    return c
