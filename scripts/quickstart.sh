#!/usr/bin/env bash
# Sets up .venv (if needed), then shows entropy collapse on the CPU: SFT warm-up of the mini
# policy on countdown reference solutions, then GRPO and Clip-Cov side by side from that one SFT
# policy, at the same time, with the same prompts and sampling keys at every step
# (configs/countdown_collapse.py: a fixed pool of 128 prompts, 32 x 8 samples per step). Prints a
# before/after table per run and writes runs/quickstart/curves.png (the two entropy curves).
# Re-running resumes. Extra arguments go to every run, e.g. `bash scripts/quickstart.sh --config.rl.steps=10`.
EXTRAS="test,notebooks,data"  # the same extras as test.sh: one install serves both
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
WORKDIR="${WORKDIR:-runs/quickstart}"
CONFIG=configs/countdown_collapse.py
python -m critique_jax.train --config=$CONFIG --workdir="$WORKDIR/sft" "$@" --config.rl.steps=0
rl() {  # rl LOSS NAME ARGS...: 60 RL steps from the SFT policy
  python -m critique_jax.train --config=$CONFIG:$1 --workdir="$WORKDIR/$2" --config.init_from="$WORKDIR/sft" \
    --config.rl.steps=60 "${@:3}"
}
# The two RL runs at once (each keeps about one core busy): Clip-Cov in the background, its output
# in $WORKDIR/clip_cov.log; GRPO in the foreground with its progress bar.
mkdir -p "$WORKDIR"
rl clip_cov clip_cov "$@" > "$WORKDIR/clip_cov.log" 2>&1 &
clip_cov=$!
trap 'kill $clip_cov 2>/dev/null || true' EXIT
rl ppo grpo "$@"
echo "[critique_jax] GRPO done; waiting for Clip-Cov (log: $WORKDIR/clip_cov.log)"
if ! wait $clip_cov; then
  echo "[critique_jax] the Clip-Cov run failed; the end of $WORKDIR/clip_cov.log:" >&2
  tail -n 30 "$WORKDIR/clip_cov.log" >&2
  exit 1
fi
python -m critique_jax.report "$WORKDIR/grpo" "$WORKDIR/clip_cov" --out "$WORKDIR/curves.png"
