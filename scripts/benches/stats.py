"""Token log-probs/entropy: naive full logits vs chunked (memory from memory_analysis, wall time).

Paths, all computing (logp, entropy) [B, T] from hidden [B, T, D] and unembed [D, V]:
  naive    logprobs_and_entropy(hidden @ unembed): materialises [B, T, V] float32 logits.
  chunked  chunked_logprobs_and_entropy: scan over token chunks, custom VJP (the library path).
  remat    (with --remat) the alternative design: scan over a jax.checkpoint-ed body, autodiff.

Memory: XLA's compiled memory analysis (temp = scratch buffers; peak = temp + arguments +
outputs - aliased), for the forward and for forward+backward (grad of sum(logp) + sum(entropy)
w.r.t. hidden and unembed). Ratios are temp memory relative to naive. Time: median wall-clock
of --iters calls after one warm-up call, only for token counts <= --time-max-tokens (the naive
8k-token case needs ~15 GB and minutes on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from critique_jax.ops import chunked_logprobs_and_entropy, logprobs_and_entropy

MIB = 2**20


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", type=int, default=152064, help="V (default: Qwen2's 152064)")
    parser.add_argument("--dim", type=int, default=896, help="D, hidden size (default: Qwen2-0.5B's 896)")
    parser.add_argument("--tokens", default="2048,8192", help="comma-separated token counts B*T")
    parser.add_argument("--batch", type=int, default=8, help="rows B (each token count is split into B rows)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="chunked path: tokens per scan step")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="hidden/unembed dtype")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--time-max-tokens", type=int, default=2048, help="time only token counts up to this")
    parser.add_argument("--remat", action="store_true", help="also measure the scan+jax.checkpoint design")
    parser.add_argument("--quick", action="store_true", help="small config: V=32768, D=256, tokens 512,2048")


def _naive(hidden, unembed, targets, temp, chunk_size):
    logits = jnp.einsum("btd,dv->btv", hidden, unembed, preferred_element_type=jnp.float32)
    return logprobs_and_entropy(logits, targets, temp)


def _chunked(hidden, unembed, targets, temp, chunk_size):
    return chunked_logprobs_and_entropy(hidden, unembed, targets, temp, chunk_size=chunk_size)


def _remat(hidden, unembed, targets, temp, chunk_size):
    """scan over a jax.checkpoint-ed chunk body, gradients by autodiff (T must divide evenly)."""
    b, t = targets.shape
    chunk_len = max(1, min(t, chunk_size // b))
    if t % chunk_len:
        raise ValueError(f"remat baseline: T={t} must be a multiple of min(T, chunk_size // B) = {chunk_len}")

    def to_chunks(x):
        return jnp.moveaxis(x.reshape(b, t // chunk_len, chunk_len, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def body(_, xs):
        h, tg, tp = xs
        return None, _naive(h, unembed, tg, tp, chunk_size)

    temps = jnp.broadcast_to(temp[:, None], (b, t))
    ys = jax.lax.scan(body, None, (to_chunks(hidden), to_chunks(targets), to_chunks(temps)))[1]
    return tuple(jnp.moveaxis(y, 0, 1).reshape(b, t) for y in ys)


PATHS = {"naive": _naive, "chunked": _chunked, "remat": _remat}


def _fwd_bwd(fn):
    def loss(hidden, unembed, targets, temp, chunk_size):
        logp, entropy = fn(hidden, unembed, targets, temp, chunk_size)
        return jnp.sum(logp) + jnp.sum(entropy)

    return jax.grad(loss, argnums=(0, 1))


def _measure(fn, args, chunk_size: int, timed: bool, iters: int) -> dict:
    compiled = jax.jit(fn, static_argnums=4).lower(*args, chunk_size).compile()
    mem = compiled.memory_analysis()
    out = {
        "temp_MiB": mem.temp_size_in_bytes / MIB,
        "peak_MiB": (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                     - mem.alias_size_in_bytes) / MIB,
    }
    if timed:
        jax.block_until_ready(compiled(*args))  # warm-up
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times.append(time.perf_counter() - start)
        out["ms"] = 1e3 * statistics.median(times)
    return out


def run(args: argparse.Namespace) -> list[dict]:
    if args.quick:
        args.vocab, args.dim, args.tokens, args.time_max_tokens = 32768, 256, "512,2048", 2048
    dtype = jnp.dtype(args.dtype)
    paths = ["naive", "chunked"] + (["remat"] if args.remat else [])
    rows = []
    for n_tokens in (int(x) for x in args.tokens.split(",")):
        if n_tokens % args.batch:
            raise ValueError(f"--tokens {n_tokens}: expected a multiple of --batch {args.batch}")
        b, t = args.batch, n_tokens // args.batch
        k1, k2, k3, k4 = jax.random.split(jax.random.key(n_tokens), 4)
        inputs = (
            jax.random.normal(k1, (b, t, args.dim), dtype),
            (jax.random.normal(k2, (args.dim, args.vocab)) / args.dim**0.5).astype(dtype),
            jax.random.randint(k3, (b, t), 0, args.vocab, jnp.int32),
            jax.random.uniform(k4, (b,), jnp.float32, 0.6, 1.2),
        )
        timed = n_tokens <= args.time_max_tokens
        base = {}
        for path in paths:
            fwd = _measure(PATHS[path], inputs, args.chunk_size, timed, args.iters)
            bwd = _measure(_fwd_bwd(PATHS[path]), inputs, args.chunk_size, timed, args.iters)
            base = base or {"fwd": fwd["temp_MiB"], "bwd": bwd["temp_MiB"]}
            row = {"tokens": n_tokens, "V": args.vocab, "D": args.dim, "path": path,
                   "fwd_temp_MiB": fwd["temp_MiB"], "fwd_peak_MiB": fwd["peak_MiB"],
                   "fwd_temp_ratio": fwd["temp_MiB"] / base["fwd"],
                   "fwdbwd_temp_MiB": bwd["temp_MiB"], "fwdbwd_peak_MiB": bwd["peak_MiB"],
                   "fwdbwd_temp_ratio": bwd["temp_MiB"] / base["bwd"],
                   "fwd_ms": fwd.get("ms", ""), "fwdbwd_ms": bwd.get("ms", "")}
            rows.append(row)
            print(f"  {n_tokens} tokens {path}: done", flush=True)
    return rows
