"""Executes the analysis notebooks against a run root; executed notebooks and figures go to --out.

    python scripts/run_notebooks.py --root runs/repro [--out notebooks] [--only 01,02] [--timeout 3600]
        [--set N_PROBLEMS=128 --set GROUP=16]

One line per notebook; exits non-zero naming the notebook and cell that failed (the executed
notebook, with the error, is still written to --out). See critique_jax/analysis/notebooks.py.
"""

from __future__ import annotations

import argparse
import ast
import sys

from critique_jax.analysis.notebooks import SOURCE_DIR, NotebookError, run_notebooks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="run root holding sft/, entropy/, critique/, self_train/")
    parser.add_argument("--out", default=str(SOURCE_DIR), help="where executed notebooks (and figures/) go")
    parser.add_argument("--only", default="", help="comma-separated notebook numbers or names, e.g. 01,02")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a notebook parameter (a Python literal), e.g. N_PROBLEMS=128; repeatable")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    params = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        try:
            params[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[name] = value  # a bare string
    try:
        run_notebooks(args.root, args.out, only=only, params=params, timeout=args.timeout)
    except NotebookError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
