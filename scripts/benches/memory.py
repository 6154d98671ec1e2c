"""Compiled memory per device of an RL step at real model shapes (no weights), against HBM sizes.

    XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false" \\
        python scripts/bench.py memory --shapes Qwen2.5-1.5B --devices 8 --settings bf16_remat

For each published shape (``critique_jax.models.hf.published``), computation setting and mesh
size (the first N devices as fsdp x ``--tensor``): the policy's parameters and AdamW state are
``jax.eval_shape`` structs with the run's shardings (``critique_jax.parallel.sharding``), the
batch ``[sequences, prompt + new tokens]`` is sharded over the batch axes, and under that mesh
(``jax.set_mesh``: the model's activation constraints apply) two programs are lowered and
compiled for the CPU:

- the RL update (``rl_update``: one PPO step on the whole batch, the state donated), and
- the sampler (``sequences / group`` prompts prefilled, ``group`` samples each decoding
  ``new tokens`` with the KV cache).

XLA's ``memory_analysis()`` gives each program's per-device bytes: arguments and temporaries
(the update's outputs alias its donated state). Columns, in GiB per device: ``state`` parameters
+ AdamW moments, ``ref`` the frozen reference policy (a parameter copy, resident through the
step when ``rl.loss.ref_kl_coef > 0``), ``update_temp`` / ``sample_temp`` the programs'
temporaries, ``update`` = update arguments + temporaries + ref, ``sample`` = sampler arguments +
temporaries + AdamW moments + ref (the optimiser state stays on the device while sampling),
``peak`` the larger; ``fits`` the accelerators whose HBM holds ``peak``.

Settings (all with ``scan_layers``: the layers' parameters stacked, the update's compile time flat
in depth, and the CPU compiler schedules each layer's recomputation inside the backward loop; see
README "Precision and memory"): ``f32`` float32 activations, no remat; ``bf16`` bfloat16 activations over float32
parameters; ``bf16_remat`` the same with ``remat=full``.

The temporaries are the CPU compiler's buffer assignment: a TPU or GPU compiler fuses and
schedules differently (usually in less memory), so read them as the order of magnitude and the
differences between settings, not as an accelerator's exact figure. Arguments are exact.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
from flax import nnx

from critique_jax.analysis.state_memory import tree_bytes
from critique_jax.models import Transformer
from critique_jax.models.hf.config import config_from_hf
from critique_jax.models.hf.published import PUBLISHED
from critique_jax.parallel.mesh import batch_sharding, make_mesh, replicated
from critique_jax.parallel.sharding import check_heads, param_shardings, tree_shardings_like
from critique_jax.rl.losses import make_loss_config
from critique_jax.rl.train_step import SequenceBatch, TrainState, make_optimizer, rl_update
from critique_jax.sampling import SamplerConfig
from critique_jax.sampling import sampler as sampler_lib

GIB = 2 ** 30
SETTINGS = {"f32": dict(dtype="float32", remat="none"),
            "bf16": dict(dtype="bfloat16", remat="none"),
            "bf16_remat": dict(dtype="bfloat16", remat="full")}
HBM_GIB = {"v5e": 16, "H100": 80, "v5p": 95, "H200": 141}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", nargs="+", default=["Qwen2.5-0.5B", "Qwen2.5-1.5B", "gemma-2-2b", "Qwen2.5-7B"],
                   choices=sorted(PUBLISHED), help="published model shapes")
    p.add_argument("--settings", nargs="+", default=["bf16_remat"], choices=list(SETTINGS))
    p.add_argument("--devices", type=int, nargs="+", default=[8], help="mesh sizes (one row each)")
    p.add_argument("--tensor", type=int, default=1, help="the mesh's tensor axis (fsdp = devices / tensor)")
    p.add_argument("--sequences", type=int, default=64, help="sequences per RL batch (prompts x group)")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=1536)
    p.add_argument("--no-sampler", action="store_true", help="compile the update only")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="the update's gradient in this many row blocks (rl.micro_batches; the loss is ppo)")
    p.add_argument("--decode-phases", type=int, default=0,
                   help="the sampler's decode phases (SamplerConfig.decode_phases; 0: automatic)")
    p.add_argument("--layers", type=int, nargs="+", default=[0],
                   help="also with these depths (one row each; 0: the shape's own), e.g. to see compile time vs depth")


def _struct(x, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def _compiled(fn, *args, **kwargs) -> tuple[object, float]:
    t0 = time.perf_counter()
    memory = fn.lower(*args, **kwargs).compile().memory_analysis()
    return memory, time.perf_counter() - t0


def measure(shape: str, setting: str, devices: int, args: argparse.Namespace, layers: int = 0) -> dict:
    """One row: the per-device memory of ``shape`` under ``setting`` on ``devices`` devices (with
    ``layers`` layers instead of the shape's own when > 0)."""
    if devices > jax.device_count():
        raise ValueError(f"--devices {devices}: only {jax.device_count()} devices; on the CPU set "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}")
    if devices % args.tensor:
        raise ValueError(f"--tensor {args.tensor} does not divide --devices {devices}")
    shards = devices // args.tensor
    if args.sequences % args.group or (args.sequences // args.group) % shards:
        raise ValueError(f"--sequences {args.sequences} / --group {args.group}: the prompts must be a whole "
                         f"number that the {shards} batch shards divide (the sampler shards prompts)")
    width = args.prompt_len + args.new_tokens
    cfg = config_from_hf(PUBLISHED[shape][1], source=shape)
    cfg = dataclasses.replace(cfg, **SETTINGS[setting], scan_layers=True, fuse_projections=False,
                              max_seq_len=max(cfg.max_seq_len, width), n_layers=layers or cfg.n_layers)
    mesh = make_mesh(data=1, fsdp=devices // args.tensor, tensor=args.tensor, devices=jax.devices()[:devices])
    check_heads(cfg.n_heads, cfg.n_kv_heads, mesh)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    param_sh = param_shardings(params, mesh)
    optimizer, _ = make_optimizer(1e-6, 0, 100)
    adam = jax.eval_shape(optimizer.init, params)
    adam_sh = tree_shardings_like(adam, params, param_sh, mesh)
    params_abs = jax.tree.map(_struct, params, param_sh)
    state = TrainState(params=params_abs, opt_state=jax.tree.map(_struct, adam, adam_sh),
                       step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)))
    n, length = args.sequences, args.new_tokens

    def rows(shape_, dtype):
        return jax.ShapeDtypeStruct(shape_, dtype, sharding=batch_sharding(mesh, len(shape_)))

    batch = SequenceBatch(tokens=rows((n, width), jnp.int32), valid=rows((n, width), jnp.bool_),
                          response_mask=rows((n, length), jnp.bool_), old_logp=rows((n, length), jnp.float32),
                          advantages=rows((n,), jnp.float32), ref_logp=rows((n, length), jnp.float32))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=replicated(mesh))
    update = jax.jit(functools.partial(rl_update, graphdef, optimizer, make_loss_config("ppo", ref_kl_coef=0.01),
                                       mesh=mesh, micro_batches=args.micro_batches), donate_argnums=0)
    param_bytes, adam_bytes = tree_bytes(params, param_sh), tree_bytes(adam, adam_sh)
    row = dict(shape=shape, layers=cfg.n_layers, setting=setting, devices=devices, tensor=args.tensor,
               batch=f"{n}x{width}", micro_batches=args.micro_batches,
               state=(param_bytes + adam_bytes) / GIB, ref=param_bytes / GIB)
    with jax.set_mesh(mesh):
        up, row["update_compile_s"] = _compiled(update, state, batch, key)
        row["update_temp"] = up.temp_size_in_bytes / GIB
        row["update"] = (up.argument_size_in_bytes + up.temp_size_in_bytes + param_bytes) / GIB
        peak = row["update"]
        if not args.no_sampler:
            prompts = n // args.group
            sampler = SamplerConfig(max_new_tokens=length, eos_ids=(1,), pad_id=0, decode_phases=args.decode_phases)
            per_sample = lambda dtype: rows((n,), dtype)  # noqa: E731
            sm, row["sample_compile_s"] = _compiled(
                sampler_lib._generate, graphdef, params_abs, rows((prompts, args.prompt_len), jnp.int32),
                rows((prompts, args.prompt_len), jnp.bool_), per_sample(jax.random.key(0).dtype),
                per_sample(jnp.float32), per_sample(jnp.int32), per_sample(jnp.float32),
                cfg=sampler, group_size=args.group)
            row["sample_temp"] = sm.temp_size_in_bytes / GIB
            row["sample"] = (sm.argument_size_in_bytes + sm.temp_size_in_bytes + adam_bytes + param_bytes) / GIB
            peak = max(peak, row["sample"])
    row["peak"] = peak
    row["fits"] = ",".join(name for name, gib in HBM_GIB.items() if peak <= gib) or "none"
    return row


def run(args: argparse.Namespace) -> list[dict]:
    out = []
    for shape in args.shapes:
        for setting in args.settings:
            for devices in args.devices:
                for layers in args.layers:
                    out.append(measure(shape, setting, devices, args, layers))
                    print(out[-1], flush=True)
    return out
