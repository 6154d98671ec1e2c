"""Sampler throughput: prefill and decode tokens/s, compile time and compiled memory.

Every device takes a share of the batch (a data mesh of all devices: ``--cpu-devices`` on a CPU;
the parameters replicated). Prefill time is measured with a one-token generation; decode tokens/s is
``samples x new tokens / (total - prefill)`` with every sample forced to run the whole
length (no end token). Memory is XLA's compiled estimate (arguments + outputs + temporaries).

Roofline (``critique_jax.models.flops``): ``prefill_TFLOPs`` and ``decode_TFLOPs`` are model
FLOPs per second (the prompts' causal forward; one token per sample per decode step, attending
to the prompt and the tokens so far), ``decode_GBps`` the bytes a decode step must read at least
(every weight once, each prompt's keys and values once, each sample's own) per second. With ``--peak-tflops`` /
``--peak-gbps`` (the accelerator's dense peak for the model's dtype, and its memory bandwidth)
they are also given as shares of the peak: ``prefill_mfu``, ``decode_mfu``, ``decode_mbu``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from critique_jax.models import Transformer, flops, model_config
from critique_jax.parallel.distributed import shard_batch
from critique_jax.parallel.mesh import make_mesh, replicated
from critique_jax.sampling import SamplerConfig, pad_prompts, sample_keys
from critique_jax.sampling import sampler as sampler_lib


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small")
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32, 64], help="prompts per call")
    p.add_argument("--group", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense TFLOP/s, for prefill/decode MFU")
    p.add_argument("--peak-gbps", type=float, default=None, help="peak memory GB/s, for decode bandwidth utilisation")


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> list[dict]:
    mesh = make_mesh()
    with jax.set_mesh(mesh):  # the model's activation constraints read it
        return _rows(args, mesh)


def _rows(args: argparse.Namespace, mesh: jax.sharding.Mesh) -> list[dict]:
    cfg = model_config(args.preset, args.vocab, max_seq_len=args.prompt_len + args.new_tokens)
    graphdef, state = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
    state = jax.device_put(state, replicated(mesh))
    rows = []
    for b in args.batch:
        sampler_lib.check_batch(b, args.group, mesh)
        rng = np.random.default_rng(0)
        pb = pad_prompts([list(rng.integers(4, args.vocab, args.prompt_len)) for _ in range(b)], [args.prompt_len], 0)
        n = b * args.group
        inputs = [shard_batch(x, mesh) for x in (pb.tokens, pb.valid, sample_keys(0, range(b), args.group),
                                                 np.ones((n,), np.float32), np.zeros((n,), np.int32),
                                                 np.ones((n,), np.float32))]

        def call(length: int):
            sc = SamplerConfig(max_new_tokens=length, eos_ids=(-1,), pad_id=0)  # never ends early
            return lambda: sampler_lib._generate(graphdef, state, *inputs, cfg=sc, group_size=args.group)

        full, prefill = call(args.new_tokens), call(1)
        sc_full = SamplerConfig(max_new_tokens=args.new_tokens, eos_ids=(-1,), pad_id=0)
        t0 = time.perf_counter()
        compiled = sampler_lib._generate.lower(graphdef, state, *inputs, cfg=sc_full, group_size=args.group).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        jax.block_until_ready(full())
        jax.block_until_ready(prefill())
        t_full, t_pre = _timed(full, args.repeats), _timed(prefill, args.repeats)
        rows.append(dict(
            preset=args.preset, prompts=b, samples=n, prompt_len=args.prompt_len, new_tokens=args.new_tokens,
            compile_s=compile_s,
            prefill_tok_s=b * args.prompt_len / t_pre,
            decode_tok_s=n * (args.new_tokens - 1) / max(t_full - t_pre, 1e-9),
            total_s=t_full,
            mem_MiB=(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**20
            if mem is not None else float("nan"),
        ) | _roofline(args, cfg, b, n, t_pre, t_full))
    return rows


def _roofline(args: argparse.Namespace, cfg, prompts: int, samples: int, t_pre: float, t_full: float) -> dict:
    """Model TFLOP/s and GB/s of prefill and decode, and their shares of the given peaks."""
    steps = args.new_tokens - 1
    context = args.prompt_len + args.new_tokens / 2  # mean keys per decode step
    itemsize = jnp.dtype(cfg.jnp_param_dtype).itemsize
    decode_s = max(t_full - t_pre, 1e-9)
    out = dict(
        prefill_TFLOPs=flops.forward_flops(cfg, prompts * args.prompt_len, (args.prompt_len + 1) / 2) / t_pre / 1e12,
        decode_TFLOPs=steps * flops.forward_flops(cfg, samples, context) / decode_s / 1e12,
        decode_GBps=steps * flops.decode_step_bytes(cfg, samples, context, itemsize, itemsize,
                                                    shared=(prompts, args.prompt_len)) / decode_s / 1e9,
    )
    if args.peak_tflops:
        out["prefill_mfu"] = out["prefill_TFLOPs"] / args.peak_tflops
        out["decode_mfu"] = out["decode_TFLOPs"] / args.peak_tflops
    if args.peak_gbps:
        out["decode_mbu"] = out["decode_GBps"] / args.peak_gbps
    return out
