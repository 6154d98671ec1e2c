"""Confidence as reward (RLSF, arXiv:2507.21931) on arithmetic, whose final answer the policy must
compute (on countdown the answer span ends in the target the prompt gives, so the reference's
confidence there measures copying; README "Test-time variance and confidence as reward").

From the arithmetic SFT policy of ``scripts/reproduce.sh`` (``runs/repro/ar_sft``: 3000 SFT steps,
held-out pass@1 0.535 and 0.586 on two machines; a 1000-step one, at nll 0.073, solves 2% of
held-out problems, too few for either reward to learn from), GRPO rewarded by the verifier
(``grpo``) against GRPO whose only reward is the frozen SFT policy's confidence on the answer
span (``rlsf``, ``rl.rewards=confidence``; the verifier's 0/1 rewards are computed, logged against the confidences as
``reward/confidence_auroc``, and not rewarded), 3 seeds each, with the collapse regime's RL
settings (``configs/countdown_collapse.py``: a fixed pool of 128 train problems, 32 prompts x 8
samples per step, 4 updates per step at a constant lr 2e-4) for 60 steps. Result (README, 3 seeds):
the answer-span confidence is 0.999 on every trace (AUROC 0.52), held-out pass@1 falls to 0.08
(GRPO 0.50): the answer line repeats the last step's result, so the margin measures copying::

    python -m critique_jax.train --config=configs/arithmetic_critique_grpo.py --workdir=runs/repro/ar_sft \
        --config.rl.steps=0
    python scripts/sweep.py --config configs/sweeps/rlsf_arithmetic.py --out runs/repro/rlsf_arithmetic --parallel 2
"""

COMMON = {
    "init_from": "runs/repro/ar_sft",
    "log.progress": False,
    "critique.type": "none",
    "rl.loss.name": "ppo",
    "rl.steps": 60,
    "rl.pool_size": 128,
    "rl.prompts_per_step": 32,
    "rl.minibatches": 4,
    "rl.lr": 2e-4,
    "checkpoint.every": 30,
}


def get_sweep():
    return dict(
        name="rlsf_arithmetic",
        base="configs/arithmetic_critique_grpo.py",
        common=COMMON,
        seeds=(0, 1, 2),
        runs=[
            dict(label="grpo", set={}),
            dict(label="rlsf", set={"rl.rewards": "confidence"}),
        ],
    )
