"""Critique-GRPO on arithmetic (default difficulty: three operations on 1..20) per critique type,
from one SFT policy that learned to repair explained step critiques (``runs/repro/ar_sft``:
``critique_jax.train`` with ``configs/arithmetic_critique_grpo.py --config.rl.steps=0``).

    python scripts/sweep.py --config configs/sweeps/critique_arithmetic.py --out runs/repro/critique_arithmetic

Where countdown's failures are mostly wrong plans (a step critique cannot say how to reach the
target), an arithmetic failure is a slip at one step: the test of whether a step critique carries
information. ``ar_rule_step`` (the checker's critique, the first wrong step explained with its
true value; 3 seeds) against ``ar_indicative`` (verdict only) and ``ar_grpo`` (no critique, the
same RL settings; 3 seeds), and ``ar_rule_step_clip_cov`` (Clip-Cov on the initial responses,
shaped refinements); 40 RL steps of 16 prompts x 8 samples. Every evaluation also refines the
failed samples of 64 held-out problems (``eval/critique/*``).
"""


def get_sweep():
    def critique(kind):
        return {"critique.type": kind, "rl.loss.name": "critique_grpo"}

    return dict(
        name="critique_arithmetic",
        base="configs/arithmetic_critique_grpo.py",
        common={"init_from": "runs/repro/ar_sft", "log.progress": False},
        seeds=(0,),
        runs=[
            dict(label="ar_rule_step", set=critique("rule_step"), seeds=(0, 1, 2)),
            dict(label="ar_indicative", set=critique("indicative")),
            dict(label="ar_grpo", set={"critique.type": "none", "rl.loss.name": "ppo"}, seeds=(0, 1, 2)),
            # Clip-Cov on the initial responses, shaped refinements (rl.loss.critique_grpo.base)
            dict(label="ar_rule_step_clip_cov", set={**critique("rule_step"), "rl.loss.critique_grpo.base": "clip_cov"}),
        ],
    )
