#!/usr/bin/env bash
# Sets up .venv (if needed), then trains a small policy on the CPU: SFT warm-up on countdown
# reference solutions, then a short Clip-Cov RL run; then a small critique model (a second Flax
# model on the same mesh) on step-level critiques of the same task. Prints a before/after table
# and the critic's held-out accuracy, writes runs/quickstart/curves.png. Re-running resumes.
# Extra arguments go to the trainer, e.g. `bash scripts/quickstart.sh --config.rl.steps=10`.
EXTRAS="test,notebooks"  # the same extras as test.sh: one install serves both
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
WORKDIR="${WORKDIR:-runs/quickstart}"
python -m critique_jax.train --config=configs/quickstart.py --workdir="$WORKDIR" "$@"
python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir="$WORKDIR/critic" \
  --config.critic.steps=1000 --config.critic.eval_every=0
python -m critique_jax.analysis.report "$WORKDIR" --critic "$WORKDIR/critic"
