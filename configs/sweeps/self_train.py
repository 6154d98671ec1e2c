"""Critique-in-the-loop self-training vs plain self-training on countdown levels 1-2 (tail
narrowing: the solved share per difficulty level, iteration by iteration), 3 seeds each.

    python scripts/sweep.py --config configs/sweeps/self_train.py --out runs/repro/self_train

Both variants start from one SFT policy that can refine and never saw the pool
(``runs/repro/st_sft``: ``critique_jax.train`` with ``configs/self_train_countdown.py``, which stops
after SFT): 5 iterations over a pool of 240 problems (120 per level), 8 samples each; with
critique, every wrong sample gets a ``plan_hint`` critique (the type that passes the gate in the
collapse regime) and one refinement.
"""


def get_sweep():
    return dict(
        name="self_train",
        base="configs/self_train_countdown.py",
        entry="self_train",
        common={"init_from": "runs/repro/st_sft", "log.progress": False},
        seeds=(0, 1, 2),
        runs=[
            dict(label="st_none", set={"critique.type": "none", "rl.loss.name": "ppo"}),
            dict(label="st_plan_hint", set={"critique.type": "plan_hint", "rl.loss.name": "critique_grpo"}),
        ],
    )
