"""Confidence as reward (RLSF, arXiv:2507.21931) in the entropy-collapse regime
(``configs/countdown_collapse.py``): GRPO whose only reward is the frozen SFT policy's confidence on
the answer span (``rl.rewards=confidence``, no verifier), from the same SFT policy, seeds and
settings as the entropy sweep, whose ``grpo`` runs are the verifier-trained baseline::

    python scripts/sweep.py --config configs/sweeps/rlsf.py --out runs/repro/rlsf

Every step logs ``reward/confidence`` and ``reward/confidence_auroc`` (the confidences' AUROC
against the verifier's 0/1 rewards, which are computed but not rewarded); the held-out evaluation
is the verifier's, as for every run.
"""

import runpy
from pathlib import Path

COMMON = runpy.run_path(str(Path(__file__).with_name("entropy.py")))["COMMON"]


def get_sweep():
    return dict(
        name="rlsf",
        base="configs/countdown_collapse.py",
        common=COMMON,
        seeds=(0, 1, 2),
        runs=[dict(label="rlsf", set={"rl.loss.name": "ppo", "rl.rewards": "confidence"})],
    )
