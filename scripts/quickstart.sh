#!/usr/bin/env bash
# Sets up .venv (if needed), then shows entropy collapse on the CPU: SFT warm-up of the mini
# policy on countdown reference solutions, then GRPO and Clip-Cov side by side from that one SFT
# policy (configs/countdown_collapse.py: a fixed pool of 128 prompts, 32 x 8 samples per step).
# Prints a before/after table per run and writes runs/quickstart/curves.png (the two entropy
# curves). Re-running resumes. Extra arguments go to both RL runs, e.g.
# `bash scripts/quickstart.sh --config.rl.steps=10`.
EXTRAS="test,notebooks"  # the same extras as test.sh: one install serves both
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
WORKDIR="${WORKDIR:-runs/quickstart}"
STEPS="--config.rl.steps=60"
python -m critique_jax.train --config=configs/countdown_collapse.py --workdir="$WORKDIR/grpo" $STEPS "$@"
python -m critique_jax.train --config=configs/countdown_collapse.py:clip_cov --workdir="$WORKDIR/clip_cov" \
  --config.init_from="$WORKDIR/grpo" $STEPS "$@"
python -m critique_jax.analysis.report "$WORKDIR/grpo" "$WORKDIR/clip_cov" --out "$WORKDIR/curves.png"
