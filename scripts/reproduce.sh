#!/usr/bin/env bash
# Reproduces every run the notebooks read, then executes the notebooks (outputs and PNGs under
# notebooks/). About 75 minutes on a quiet 2-core CPU; re-running skips finished steps and resumes the
# rest. ROOT (default runs/repro) is where the runs go; PARALLEL (default 1) runs that many
# sweep runs at a time (worth it only with more than 2 cores).
#
#   bash scripts/reproduce.sh
#   ROOT=runs/repro2 PARALLEL=4 bash scripts/reproduce.sh
EXTRAS="test,notebooks"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
ROOT="${ROOT:-runs/repro}"
PARALLEL="${PARALLEL:-1}"
step() { echo "[reproduce $(date +%H:%M:%S)] $*"; }

# 1. One SFT policy for every RL run: countdown level 1, every third batch in refinement format.
# (A finished SFT run is loaded, not retrained, so re-running this is cheap.)
step "SFT policy -> $ROOT/sft"
python -m critique_jax.train --config=configs/quickstart.py --workdir="$ROOT/sft" --config.rl.steps=0 \
  --config.sft.steps=600 --config.critique.sft_refine_every=3 --config.log.progress=False

# 2. Entropy control and Critique-GRPO sweeps from that policy.
for sweep in entropy critique; do
  step "sweep $sweep -> $ROOT/$sweep"
  python scripts/sweep.py --config "configs/sweeps/$sweep.py" --out "$ROOT/$sweep" --parallel "$PARALLEL" \
    --set "init_from=$ROOT/sft"
done

# 3. Self-training with and without critique (levels 1-3, its own SFT policy).
step "self-training SFT policy -> $ROOT/st_sft"
python -m critique_jax.train --config=configs/self_train_countdown.py --workdir="$ROOT/st_sft" \
  --config.sft.steps=400 --config.log.progress=False
step "sweep self_train -> $ROOT/self_train"
python scripts/sweep.py --config configs/sweeps/self_train.py --out "$ROOT/self_train" --parallel "$PARALLEL" \
  --set "init_from=$ROOT/st_sft"

# 4. The notebooks, executed against these runs.
step "notebooks"
python scripts/run_notebooks.py --root "$ROOT" --out notebooks
step "done: notebooks/*.ipynb and notebooks/figures/*.png"
