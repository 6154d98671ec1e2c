#!/usr/bin/env bash
# Sets up .venv (if needed), then shows entropy collapse on the CPU: SFT warm-up of the mini
# policy on countdown reference solutions, then GRPO and Clip-Cov side by side from that one SFT
# policy, with the same prompts and sampling keys at every step (configs/countdown_collapse.py: a
# fixed pool of 128 prompts, 32 x 8 samples per step). Prints a before/after table per run and
# writes runs/quickstart/curves.png (the two entropy curves). Re-running resumes. Extra arguments
# go to every run, e.g. `bash scripts/quickstart.sh --config.rl.steps=10`.
EXTRAS="test,notebooks,data"  # the same extras as test.sh: one install serves both
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
WORKDIR="${WORKDIR:-runs/quickstart}"
CONFIG=configs/countdown_collapse.py
python -m critique_jax.train --config=$CONFIG --workdir="$WORKDIR/sft" "$@" --config.rl.steps=0
for loss in ppo clip_cov; do
  name=$([[ $loss == ppo ]] && echo grpo || echo $loss)
  python -m critique_jax.train --config=$CONFIG:$loss --workdir="$WORKDIR/$name" --config.init_from="$WORKDIR/sft" \
    --config.rl.steps=60 "$@"
done
python -m critique_jax.report "$WORKDIR/grpo" "$WORKDIR/clip_cov" --out "$WORKDIR/curves.png"
