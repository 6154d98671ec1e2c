"""The entropy-collapse regime on a 2-core CPU: countdown level 1, the ``mini`` policy, RL on a
small fixed prompt pool revisited many times. The argument after ``:`` is the loss (default
``ppo``, the symmetric GRPO baseline)::

    python -m critique_jax.train --config=configs/countdown_collapse.py --workdir=runs/collapse        # SFT + GRPO
    python -m critique_jax.train --config=configs/countdown_collapse.py:clip_cov --workdir=runs/collapse_cc \\
        --config.init_from=runs/collapse                                                             # same SFT policy

Why these settings (pilot runs, README "Entropy collapse"): the ``mini`` policy (~0.8M
parameters) after 1500 SFT steps solves a quarter of held-out problems (pass@1 0.26, pass@8
0.56) at ~4x the speed of ``small``; RL draws 32 prompts x 8 samples per step from the first
128 training problems (``rl.pool_size``), so each prompt is seen every 4 steps; 4 minibatches
per rollout batch (4 optimiser updates per step), a constant lr of 2e-4, temperature 1, no KL.
GRPO's training-rollout entropy falls to ~28% of its start in 100 steps (3 seeds).

Entropy control at this scale (pilots, README "Entropy collapse"): at the papers' ratios a
1500-token minibatch gets k = 0-3 tokens, i.e. nothing to act on. Clip-Cov detaches a random 1%
of the tokens (``ratio`` 1e-2) among those whose covariance exceeds the paper's lower bound 1,
with no upper bound (``cov_ub`` 1e9: the paper's 5 leaves out the ~0.3% of tokens above it, the
ones that drive the entropy down); detaching every such token (``ratio`` 1) raises the entropy
above its start and costs held-out accuracy, 0.5% holds only ~1.7x GRPO's entropy. KL-Cov
penalises the top 2% of tokens by covariance with ``kl_coef`` 5 (at the paper's 1 it held only
~1.3x GRPO's entropy). Over 100 steps both keep 2-3x GRPO's entropy at held-out pass@1 within
noise of GRPO's (3 seeds each; README).
"""

import runpy
from pathlib import Path

from critique_jax.rl.losses import registered_losses


def get_config(loss: str = "ppo"):
    if loss not in registered_losses() or loss == "critique_grpo":
        raise ValueError(f"configs/countdown_collapse.py:{loss}: expected one of "
                         f"{[n for n in registered_losses() if n != 'critique_grpo']}")
    # The quickstart's task, data, tokenizer and lengths; another policy size and RL regime.
    c = runpy.run_path(str(Path(__file__).with_name("quickstart.py")))["get_config"]()
    c.model.preset = "mini"
    c.sft.steps = 1500
    c.rl.loss.name = loss
    c.rl.steps = 100
    c.rl.pool_size = 128
    c.rl.prompts_per_step = 32
    c.rl.minibatches = 4
    c.rl.lr = 2e-4
    c.rl.loss.clip_cov.ratio = 1e-2
    c.rl.loss.clip_cov.cov_ub = 1e9
    c.rl.loss.kl_cov.ratio = 2e-2
    c.rl.loss.kl_cov.kl_coef = 5.0
    c.eval.every = 10
    c.checkpoint.every = 50
    return c
