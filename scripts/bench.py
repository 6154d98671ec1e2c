"""Benchmarks: speed and memory tables for the hot paths.

    python scripts/bench.py sample            # sampler: prefill/decode tokens/s, compile time, memory
    python scripts/bench.py stats             # chunked vs naive token log-probs/entropy (V=152k)
    python scripts/bench.py loss              # clip_cov / kl_cov step-time overhead over ppo
    python scripts/bench.py rl                # RL step time split into sample / score / update
    python scripts/bench.py trl               # vs TRL GRPOTrainer / HF generate (needs pip install -e .[peers])
    python scripts/bench.py memory            # compiled per-device memory of an RL step at 0.5B-7B shapes
    python scripts/bench.py loss --json out.json
    python scripts/bench.py trl --cpu-devices 2   # the CPU as 2 JAX devices, the batch sharded over them

Each subcommand lives in ``scripts/benches/<name>.py`` with ``add_args(parser)`` and
``run(args) -> list[dict]`` (one dict per table row). Timings are wall-clock medians after
warm-up, on whatever backend JAX picks (set JAX_PLATFORMS to choose).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BENCHES = ("sample", "stats", "loss", "rl", "trl", "memory")


def format_table(rows: list[dict]) -> str:
    """Plain-text table with one column per key (in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [[cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(t) for t in table])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    modules = {}
    for name in BENCHES:
        modules[name] = importlib.import_module(f"benches.{name}")
        p = sub.add_parser(name, help=(modules[name].__doc__ or "").strip().splitlines()[0])
        p.add_argument("--json", default=None, help="also write the rows to this JSON file")
        p.add_argument("--cpu-devices", type=int, default=0,
                       help="split the CPU into this many JAX devices (config mesh.cpu_devices; 0: JAX's count); "
                            "sample / rl / trl shard their batch over every device")
        modules[name].add_args(p)
    args = parser.parse_args(argv)
    import jax

    from critique_jax.cli import use_cpu_devices

    use_cpu_devices(args.cpu_devices)

    print(f"# {args.bench} on {jax.devices()[0].platform} ({jax.device_count()} devices), jax {jax.__version__}")
    rows = modules[args.bench].run(args)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": args.bench, "backend": jax.devices()[0].platform, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
