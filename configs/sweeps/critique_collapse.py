"""Does critique keep entropy from collapsing? Critique-GRPO in the collapse regime
(``configs/countdown_critique_collapse.py``: critique of all-wrong groups only, on a pool of 128
problems SFT never saw) against GRPO and the compute-matched resampling control, every run from
one SFT policy (``runs/repro/ccl_sft``, trained with plan_hint critiques in its refinement batches)::

    python -m critique_jax.evaluate --run=runs/repro/ccl_sft --which=sft --n_problems=128 \\
        --critique_gate=plan_hint,plan,rule_step,indicative,resample --out=runs/repro/ccl_sft/gate   # the gate first
    python scripts/sweep.py --config configs/sweeps/critique_collapse.py --out runs/repro/critique_collapse

Arms: ``grpo`` (no critique), ``resample`` (each all-wrong group gets G more samples of its prompt
and keeps the first correct one: as many extra samples as critique costs, no information added),
``cg_plan_hint`` (the dead end named, with a right step in its place: the critique that passes the
gate), each 3 seeds; 1-seed controls: ``cg_plan`` (the dead end alone), ``cg_rule_step`` (the step
critique), ``cg_indicative`` (the verdict alone), ``cg_hint_drgrpo`` (Dr.GRPO advantages),
``cg_hint_is`` (truncated importance correction on refinement tokens) and ``cg_hint_forking``
(critique pressure only on the forking tokens of refinements: their top 20% by entropy).
"""

COMMON = {
    "init_from": "runs/repro/ccl_sft",  # scripts/reproduce.sh trains it; --set init_from=... for another
    "log.progress": False,
}


def get_sweep():
    def critique(kind):
        return {"critique.type": kind, "rl.loss.name": "critique_grpo"}

    hint = critique("plan_hint")
    return dict(
        name="critique_collapse",
        base="configs/countdown_critique_collapse.py",  # every run sets its critique.type and loss
        common=COMMON,
        seeds=(0,),
        runs=[
            dict(label="grpo", set={"critique.type": "none", "rl.loss.name": "ppo"}, seeds=(0, 1, 2)),
            dict(label="resample", set={"critique.type": "resample", "rl.loss.name": "ppo"}, seeds=(0, 1, 2)),
            dict(label="cg_plan_hint", set=hint, seeds=(0, 1, 2)),
            dict(label="cg_plan", set=critique("plan")),
            dict(label="cg_rule_step", set=critique("rule_step")),
            dict(label="cg_indicative", set=critique("indicative")),
            dict(label="cg_hint_drgrpo", set={**hint, "rl.advantage": "drgrpo"}),
            dict(label="cg_hint_is", set={**hint, "rl.loss.critique_grpo.importance_correction": True}),
            dict(label="cg_hint_forking", set={**hint, "rl.loss.critique_grpo.refinement_forking_rho": 0.2}),
        ],
    )
