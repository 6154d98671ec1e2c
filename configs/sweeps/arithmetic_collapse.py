"""The collapse regime's RL on arithmetic, whose final answer the policy must compute: GRPO,
Clip-Cov and Critique-GRPO rewarded by the verifier, and confidence as the only reward (RLSF,
arXiv:2507.21931) on the answer span and on the answer's derivation (README "Test-time variance
and confidence as reward"; on countdown the answer span ends in the target the prompt gives, so
the reference's confidence there measures copying).

From the arithmetic SFT policy of ``scripts/reproduce.sh`` (``runs/repro/ar_sft``: 3000 SFT steps,
held-out pass@1 0.535 and 0.586 on two machines; a 1000-step one, at nll 0.073, solves 2% of
held-out problems, too few for any reward to learn from), 3 seeds per arm with the collapse
regime's RL settings (``configs/countdown_collapse.py``: a fixed pool of 128 train problems,
32 prompts x 8 samples per step, 4 updates per step at a constant lr 2e-4, Clip-Cov detaching a
random 1% of the tokens with covariance > 1) for 60 steps:

* ``grpo``, ``clip_cov``, ``critique_grpo`` (the ``rule_step`` critique, explained format):
  verifier rewards; their policies are the budget sweep's (``evaluate --budgets``);
* ``rlsf``: the frozen SFT policy's mean top-1 minus top-2 margin on the answer line's value
  (``rl.rewards=confidence``); the verifier's 0/1 rewards are computed, logged against the
  confidences as ``reward/confidence_auroc``, and not rewarded. Result (README): the margin is
  0.999 on every trace (AUROC 0.52), held-out pass@1 falls to 0.08 (GRPO 0.50): the answer line
  repeats the last step's result, so the margin measures copying;
* ``rlsf_derivation``: the same margin where the answer's value is computed, the last
  ``= <value>`` before the answer line (``rl.confidence_span=derivation``)::

    python -m critique_jax.train --config=configs/arithmetic_critique_grpo.py --workdir=runs/repro/ar_sft \\
        --config.rl.steps=0
    python scripts/sweep.py --config configs/sweeps/arithmetic_collapse.py --out runs/repro/arithmetic_collapse \\
        --parallel 2
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
    rlsf = {"rl.rewards": "confidence"}
    return dict(
        name="arithmetic_collapse",
        base="configs/arithmetic_critique_grpo.py",
        common=COMMON,
        seeds=(0, 1, 2),
        runs=[
            dict(label="grpo", set={}),
            dict(label="clip_cov", set={"rl.loss.name": "clip_cov", "rl.loss.clip_cov.ratio": 1e-2,
                                        "rl.loss.clip_cov.cov_ub": 1e9}),
            dict(label="critique_grpo", set={"critique.type": "rule_step", "rl.loss.name": "critique_grpo"}),
            dict(label="rlsf", set=rlsf),
            dict(label="rlsf_derivation", set={**rlsf, "rl.confidence_span": "derivation"}),
        ],
    )
