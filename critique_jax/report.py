"""Compare runs: a before/after evaluation table per run, their entropy and reward curves
overlaid, and optionally a critic's last held-out evaluation.

    python -m critique_jax.report runs/grpo runs/clip_cov --out runs/curves.png
    python -m critique_jax.report runs/cg_model --critic runs/critic
"""

from __future__ import annotations

from absl import app, flags

from critique_jax import cli

CRITIC = flags.DEFINE_string("critic", None, "A train_critic run directory: print its last held-out evaluation.")
OUT = flags.DEFINE_string("out", None, "Where to write the curves PNG (default: <first run>/curves.png).")
VERBOSE = cli.define_verbose()


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError("expected one or more run directories: python -m critique_jax.report RUN [RUN ...]")
    from critique_jax.analysis.run_summary import summary

    print(summary(argv[1:], CRITIC.value, OUT.value))


if __name__ == "__main__":
    cli.run(main, VERBOSE)
