"""Entropy control in the collapse regime (``configs/countdown_collapse.py``): GRPO vs clip-higher,
Clip-Cov, KL-Cov, entropy bonus, GPPO and forking-token masks, every run starting from one
SFT policy (``runs/repro/sft_mini``)::

    python scripts/sweep.py --config configs/sweeps/entropy.py --out runs/repro/entropy

100 RL steps of 32 prompts x 8 samples from a fixed pool of 128 training problems, 4 optimiser
updates per step at a constant lr 2e-4, evaluation every 10 steps on 64 held-out problems x 8
samples (a fixed set, for the entropy-law fit on held-out accuracy). About 9 minutes a run on
a quiet 2-core machine (13 minutes each, two at a time). The headline comparison (GRPO, Clip-Cov,
KL-Cov) and Clip-Cov detaching every high-covariance token (``clip_cov_all``, the over-correction)
have 3 seeds, the rest 1. Widen a coefficient by giving a tuple, e.g. ``grid={"rl.loss.kl_cov.kl_coef": (1.0, 5.0)}``;
each value becomes its own label.
"""

COMMON = {
    "init_from": "runs/repro/sft_mini",  # bash scripts/reproduce.sh trains it; --set init_from=... for another
    "log.progress": False,
}


def get_sweep():
    ppo = {"rl.loss.name": "ppo"}
    return dict(
        name="entropy",
        base="configs/countdown_collapse.py",
        common=COMMON,
        seeds=(0,),
        runs=[
            # GRPO baseline: the symmetric PPO surrogate (eps 0.2), as in the papers.
            dict(label="grpo", set=ppo, seeds=(0, 1, 2)),
            # Clip-higher (DAPO: eps_low 0.2, eps_high 0.28), a method of its own.
            dict(label="clip_higher", set={**ppo, "rl.loss.ppo.clip_high": 0.28}),
            # The regime's settings (configs/countdown_collapse.py): Clip-Cov detaches a random 1% of
            # the tokens among those with covariance > 1; KL-Cov penalises the top 2% by covariance
            # with kl_coef 5. clip_cov_all detaches every token with covariance > 1 (it over-corrects).
            dict(label="clip_cov", set={"rl.loss.name": "clip_cov"}, seeds=(0, 1, 2)),
            dict(label="clip_cov_all", set={"rl.loss.name": "clip_cov", "rl.loss.clip_cov.ratio": 1.0},
                 seeds=(0, 1, 2)),
            dict(label="kl_cov", set={"rl.loss.name": "kl_cov"}, seeds=(0, 1, 2)),
            dict(label="entropy_bonus", set=ppo, grid={"rl.loss.entropy_coef": (1e-2,)}),
            dict(label="gppo", set={"rl.loss.name": "gppo"}),
            # Wang et al. 2025: the policy gradient only on the top 20% entropy tokens, and the
            # complement (the bottom 80%).
            dict(label="forking_top20", set={**ppo, "rl.loss.forking_rho": 0.2}),
            dict(label="forking_bottom80", set={**ppo, "rl.loss.forking_rho": 0.2,
                                                "rl.loss.forking_complement": True}),
        ],
    )
