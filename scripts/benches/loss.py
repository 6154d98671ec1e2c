"""Loss step time: value_and_grad of each policy loss (w.r.t. logp) under jit, ratio vs ppo.

Times only the objective (policy loss + metrics + its backward) on synthetic [B, T] inputs,
not a model: in a training step the model's forward/backward dominates, so the overhead of
Clip-Cov / KL-Cov on a full step is this ratio's excess times (loss time / step time).
Losses run round-robin in each repeat so load drift on a shared machine hits all alike.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from critique_jax import rl
from critique_jax.parallel.mesh import batch_sharding, make_mesh


def add_args(parser) -> None:
    parser.add_argument("--batch", type=int, default=64, help="sequences (B)")
    parser.add_argument("--seq", type=int, default=1024, help="response length (T); B*T tokens")
    parser.add_argument("--losses", default=",".join(rl.registered_losses()), help="comma-separated names")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per loss (median reported)")
    parser.add_argument("--scope", choices=["global", "per_shard"], default="global")
    parser.add_argument("--forking-rho", type=float, default=None, help="also apply the forking mask")


def synthetic_inputs(b: int, t: int, seed: int = 0) -> rl.LossInputs:
    """Rollout-like batch: confident tokens with a heavy tail, GRPO-scale advantages, 90% valid."""
    rng = np.random.default_rng(seed)
    old = -rng.exponential(0.7, (b, t))
    logp = old + rng.normal(0, 0.1, (b, t))
    lengths = rng.integers(t // 2, t + 1, size=b)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return rl.LossInputs(
        logp=f32(np.minimum(logp, 0.0)),
        old_logp=f32(old),
        advantages=f32(rng.choice([-1.0, 1.0], b) * rng.uniform(0.5, 1.5, b)),
        mask=jnp.asarray(np.arange(t)[None, :] < lengths[:, None]),
        entropy=f32(rng.gamma(0.5, 1.0, (b, t))),
        is_refinement=jnp.asarray(rng.random(b) < 0.125),
    )


def _step(cfg: rl.LossConfig, mesh):
    def step(inputs, key):
        def scalar(logp):
            return rl.compute_loss(cfg, inputs.replace(logp=logp), key, mesh=mesh)

        return jax.value_and_grad(scalar, has_aux=True)(inputs.logp)

    return jax.jit(step)


def run(args) -> list[dict]:
    names = [n.strip() for n in args.losses.split(",") if n.strip()]
    if "ppo" not in names:
        names.insert(0, "ppo")
    mesh = make_mesh(data=-1)
    inputs = synthetic_inputs(args.batch, args.seq)
    inputs = jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim)), inputs)
    key = jax.random.key(0)
    steps, compile_s, metrics = {}, {}, {}
    for name in names:
        cfg = rl.make_loss_config(name, scope=args.scope, forking_rho=args.forking_rho)
        steps[name] = _step(cfg, mesh)
        start = time.perf_counter()
        (_, metrics[name]), _ = jax.block_until_ready(steps[name](inputs, key))
        compile_s[name] = time.perf_counter() - start
        jax.block_until_ready(steps[name](inputs, key))  # warm-up
    times = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            start = time.perf_counter()
            jax.block_until_ready(steps[name](inputs, key))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["ppo"])
    rows = []
    for name in names:
        med = statistics.median(times[name])
        rows.append({
            "loss": name,
            "tokens": args.batch * args.seq,
            "ms_median": 1e3 * med,
            "ms_min": 1e3 * min(times[name]),
            "vs_ppo": med / base,
            "compile_s": compile_s[name],
            "selected_frac": float(metrics[name]["selected_frac"]),
        })
    return rows
