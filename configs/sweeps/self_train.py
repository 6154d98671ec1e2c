"""Critique-in-the-loop self-training vs plain self-training on countdown levels 1-3 (tail
narrowing: the solved share per difficulty level, iteration by iteration).

    python scripts/sweep.py --config configs/sweeps/self_train.py --out runs/repro/self_train

Both variants start from one SFT policy that can refine (``runs/repro/st_sft``: ``critique_jax.train``
with ``configs/self_train_countdown.py``, which stops after SFT). Sized down from that config
for the 2-core CPU reproduction: 2 iterations over a pool of 90 problems (30 per level), from
an SFT policy of 400 steps.
"""


def get_sweep():
    return dict(
        name="self_train",
        base="configs/self_train_countdown.py",
        entry="self_train",
        common={"init_from": "runs/repro/st_sft", "self_train.iterations": 2, "self_train.pool_size": 90,
                "eval.n_problems": 48, "eval.group_size": 8, "log.progress": False},
        runs=[
            dict(label="st_none", set={"critique.type": "none", "rl.loss.name": "ppo"}),
            dict(label="st_rule_step", set={"critique.type": "rule_step", "rl.loss.name": "critique_grpo"}),
        ],
    )
