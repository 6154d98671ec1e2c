"""Critique-GRPO on countdown level 1, per critique type, from the same SFT policy and with the
same RL settings as the entropy sweep (its ``grpo`` runs are the baseline).

    python scripts/sweep.py --config configs/sweeps/critique.py --out runs/repro/critique

Every group of G = 8 responses holds 7 initial samples and ``n_refine = 1`` refinement (the
first correct one, else the best), written after the critique of a failed response.
``rule_step`` (the step checker's critique, an oracle) has 3 seeds for the headline comparison,
``indicative`` (verdict only) one, ``model`` (the trained critic of ``runs/repro/critic``, frozen,
its worked critiques condensed for the policy) one. Other types run the same way from
``configs/countdown_critique_grpo.py:<type>`` (``ground_truth``, ``self``).
"""

import runpy
from pathlib import Path

COMMON = runpy.run_path(str(Path(__file__).with_name("entropy.py")))["COMMON"]


def get_sweep():
    def critique(kind):
        return {"rl.loss.name": "critique_grpo", "critique.type": kind}

    return dict(
        name="critique",
        base="configs/quickstart.py",
        common=COMMON,
        seeds=(0,),
        runs=[
            dict(label="cg_rule_step", set=critique("rule_step"), seeds=(0, 1, 2)),
            dict(label="cg_indicative", set=critique("indicative")),
            # scripts/reproduce.sh trains it; --set critique.critic_from=... for another
            dict(label="cg_model", set={**critique("model"), "critique.critic_from": "runs/repro/critic"}),
        ],
    )
