"""RL step time: sample / score / update seconds and tokens/s, from the trainer's own timers.

Runs ``critique_jax.runs.train`` on ``configs/quickstart.py`` (plus the overrides below)
in a temporary workdir and reports medians of its ``perf/*`` metrics over the RL steps after
the first one, which compiles. No SFT: the randomly initialised policy rarely samples the end
token, so nearly every response runs the full ``max_new_tokens`` (close to the slowest case;
a trained policy stops earlier). The step-0 evaluation samples with the RL batch shape (one compilation shared
with the rollouts), and the run stops before the final evaluation (``stop_at``).

Columns: ``sample_s`` (prompt encoding + jitted generation + transfer to host), ``score_s``
(decode + verify + advantages + packing), ``update_s`` (old log-prob recompute + reference
pass if on + ``epochs x minibatches`` optimiser steps), ``step_s`` (all of one step);
``*_tok_s`` = response tokens of the batch per second of that phase; ``warm_compiles`` =
compilations during the timed steps (0 = static shapes hold).

``update_TFLOPs``: model FLOPs of the update phase per second (``critique_jax.models.flops``; the
padded batch, prompt width + ``max_new_tokens`` per sequence, causal context): 3 forward passes
(forward + backward) per epoch, plus one each for the old log-prob recompute, the reference
policy and the entropy-change pass when they are on. With ``--peak-tflops`` (the accelerator's
dense peak for the model's dtype) also ``update_mfu``, its share of the peak.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile

import ml_collections

from critique_jax.metrics import read_metrics

_QUICKSTART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "quickstart.py")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", nargs="+", default=["small"], help="model presets (one row each)")
    p.add_argument("--prompts", type=int, nargs="+", default=[8, 16],
                   help="rl.prompts_per_step (one row each)")
    p.add_argument("--group", type=int, default=8, help="rl.group_size (samples per prompt)")
    p.add_argument("--new-tokens", type=int, default=64, help="sampling.max_new_tokens")
    p.add_argument("--loss", default=None, help="rl.loss.name (default: the quickstart's)")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="rl.micro_batches (gradient accumulation; a token-separable --loss, e.g. ppo)")
    p.add_argument("--steps", type=int, default=4, help="timed RL steps (after one compiling step)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense TFLOP/s, for the update's MFU")


def bench_config(args: argparse.Namespace, preset: str, prompts: int) -> ml_collections.ConfigDict:
    """The quickstart config, resized for one benchmark row."""
    spec = importlib.util.spec_from_file_location("quickstart_config", _QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.preset = preset
    c.sampling.max_new_tokens = args.new_tokens
    c.sft.steps = c.sft.warmup_steps = 0
    c.rl.steps = args.steps + 2  # > stop_at: the run ends before the final evaluation
    c.rl.prompts_per_step = prompts
    c.rl.group_size = args.group
    c.rl.micro_batches = args.micro_batches
    c.mesh.cpu_devices = args.cpu_devices  # bench.py applied it; recorded for validation
    if args.loss:
        c.rl.loss.name = args.loss
    c.eval.n_problems = c.eval.batch_prompts = prompts
    c.eval.group_size = args.group
    c.eval.every = c.checkpoint.every = 10**6
    c.log.tensorboard = c.log.progress = False
    return c


def update_flops(c: ml_collections.ConfigDict, samples: int) -> float:
    """Model FLOPs of one RL step's update phase on ``samples`` padded sequences."""
    from critique_jax.models import flops, model_config

    width = max(c.sampling.prompt_buckets) + c.sampling.max_new_tokens
    cfg = model_config(c.model.preset, c.tokenizer.vocab_size, max_seq_len=width)
    passes = 3 * c.rl.epochs + c.rl.recompute_old_logp + (c.rl.loss.ref_kl_coef > 0) + c.rl.entropy_change
    return passes * flops.forward_flops(cfg, samples * width, (width + 1) / 2)


def _median(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def run(args: argparse.Namespace) -> list[dict]:
    from critique_jax.runs import train  # after bench.py has set up the backend

    rows = []
    for preset in args.preset:
        for prompts in args.prompts:
            c = bench_config(args, preset, prompts)
            with tempfile.TemporaryDirectory(prefix="bench_rl_") as workdir:
                train(c, workdir, resume=False, stop_at=args.steps + 1)
                steps = [r for r in read_metrics(workdir) if "perf/step_s" in r]
            first, timed = steps[0], steps[1:]
            n = prompts * args.group
            tokens = statistics.median(r["train/response_len"] * n for r in timed)
            row = dict(preset=preset, loss=c.rl.loss.name, samples=n, new_tokens=args.new_tokens,
                       resp_tokens=tokens, timed_steps=len(timed))
            for phase in ("sample", "score", "update", "step"):
                row[f"{phase}_s"] = _median(timed, f"perf/{phase}_s")
            for phase in ("sample", "update", "step"):
                row[f"{phase}_tok_s"] = tokens / row[f"{phase}_s"]
            row["update_TFLOPs"] = update_flops(c, n) / row["update_s"] / 1e12
            if args.peak_tflops:
                row["update_mfu"] = row["update_TFLOPs"] / args.peak_tflops
            row["first_step_s"] = first["perf/step_s"]
            row["warm_compiles"] = int(sum(r["perf/compiles"] for r in timed))
            rows.append(row)
    return rows
