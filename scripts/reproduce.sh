#!/usr/bin/env bash
# Reproduces every run the notebooks read, then executes the notebooks (outputs and PNGs under
# notebooks/). About 9 hours on a quiet 2-core CPU; re-running skips finished steps and resumes the
# rest. ROOT (default runs/repro) is where the runs go; PARALLEL (default 1) runs that many
# sweep runs at a time (2 helps even on 2 cores: an entropy run then takes 13 min instead of 9).
#
#   bash scripts/reproduce.sh
#   ROOT=runs/repro2 PARALLEL=4 bash scripts/reproduce.sh
EXTRAS="test,notebooks,data"
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

# 2. The critique model on countdown level 1 (the quickstart's task), scored on held-out problems.
step "critic -> $ROOT/critic"
python -m critique_jax.train_critic --config=configs/critic_countdown.py --workdir="$ROOT/critic" \
  --config.log.progress=False

# 3. Entropy control in the collapse regime (configs/countdown_collapse.py: the mini policy, a fixed
# prompt pool) from its own SFT policy; Critique-GRPO from the small one (cg_model with the critic).
step "collapse-regime SFT policy -> $ROOT/sft_mini"
python -m critique_jax.train --config=configs/countdown_collapse.py --workdir="$ROOT/sft_mini" --config.rl.steps=0 \
  --config.log.progress=False
step "sweep entropy -> $ROOT/entropy"
python scripts/sweep.py --config configs/sweeps/entropy.py --out "$ROOT/entropy" --parallel "$PARALLEL" \
  --set "init_from=$ROOT/sft_mini"
python scripts/collapse_table.py "$ROOT/entropy" > "$ROOT/entropy/collapse_table.md"  # README's tables
step "sweep rlsf (confidence as the only reward) -> $ROOT/rlsf"
python scripts/sweep.py --config configs/sweeps/rlsf.py --out "$ROOT/rlsf" --parallel "$PARALLEL" \
  --set "init_from=$ROOT/sft_mini"
step "test-time budget sweeps of the SFT policy and every final policy of both sweeps -> $ROOT/test_time"
budgets() {  # budgets RUN WHICH OUT [BUDGETS [N_PROBLEMS]] (OUT under $ROOT; notebook 08: countdown's defaults)
  python -m critique_jax.evaluate --run="$1" --which="$2" --samples=8 --budgets="${4:-16,24,32,40}" \
    --n_problems="${5:-64}" --out="$ROOT/$3"
}
budgets "$ROOT/sft_mini" sft test_time/sft
for done in "$ROOT"/entropy/*/done.json "$ROOT"/rlsf/*/done.json; do
  budgets "$(dirname "$done")" final "test_time/$(basename "$(dirname "$done")")"
done
# Critique in the collapse regime: its own SFT policy (the RL pool left out of SFT, plan_hint critiques in the
# refinement batches), the critique gate on held-out problems first, then GRPO vs resampling vs critique.
step "critique-collapse SFT policy -> $ROOT/ccl_sft"
python -m critique_jax.train --config=configs/countdown_critique_collapse.py:plan_hint --workdir="$ROOT/ccl_sft" \
  --config.rl.steps=0 --config.log.progress=False
step "critique gate -> $ROOT/ccl_sft/gate"
python -m critique_jax.evaluate --run="$ROOT/ccl_sft" --which=sft --n_problems=128 \
  --critique_gate=plan_hint,plan,rule_step,indicative,resample --out="$ROOT/ccl_sft/gate"
step "sweep critique_collapse -> $ROOT/critique_collapse"
python scripts/sweep.py --config configs/sweeps/critique_collapse.py --out "$ROOT/critique_collapse" \
  --parallel "$PARALLEL" --set "init_from=$ROOT/ccl_sft"
python scripts/collapse_table.py "$ROOT/critique_collapse" --plot notebooks/figures/critique_collapse.png \
  > "$ROOT/critique_collapse/collapse_table.md"  # README's tables and figure
step "test-time budget sweeps of the critique sweep's 3-seed arms -> $ROOT/test_time/critique_collapse.*"
for done in "$ROOT"/critique_collapse/{grpo,resample,cg_plan_hint}_s*/done.json; do
  budgets "$(dirname "$done")" final "test_time/critique_collapse.$(basename "$(dirname "$done")")"
done
step "sweep critique -> $ROOT/critique"
python scripts/sweep.py --config configs/sweeps/critique.py --out "$ROOT/critique" --parallel "$PARALLEL" \
  --set "init_from=$ROOT/sft" --set "critique.critic_from=$ROOT/critic"

# 4. Self-training with and without critique (levels 1-2, its own SFT policy, the pool left out of SFT).
step "self-training SFT policy -> $ROOT/st_sft"
python -m critique_jax.train --config=configs/self_train_countdown.py --workdir="$ROOT/st_sft" \
  --config.log.progress=False
step "sweep self_train -> $ROOT/self_train"
python scripts/sweep.py --config configs/sweeps/self_train.py --out "$ROOT/self_train" --parallel "$PARALLEL" \
  --set "init_from=$ROOT/st_sft"

# 5. Critique-GRPO on arithmetic (a failure there is a slip a step critique can name): its own SFT
# policy (every second batch a repair of an explained step critique), then one run per critique type.
step "arithmetic SFT policy -> $ROOT/ar_sft"
python -m critique_jax.train --config=configs/arithmetic_critique_grpo.py --workdir="$ROOT/ar_sft" --config.rl.steps=0 \
  --config.log.progress=False
step "sweep critique_arithmetic -> $ROOT/critique_arithmetic"
python scripts/sweep.py --config configs/sweeps/critique_arithmetic.py --out "$ROOT/critique_arithmetic" \
  --parallel "$PARALLEL" --set "init_from=$ROOT/ar_sft"
step "sweep arithmetic_collapse -> $ROOT/arithmetic_collapse (verifier vs confidence rewards, where the answer is computed)"
python scripts/sweep.py --config configs/sweeps/arithmetic_collapse.py --out "$ROOT/arithmetic_collapse" \
  --parallel "$PARALLEL" --set "init_from=$ROOT/ar_sft"
step "test-time budget sweeps of the arithmetic SFT policy and verifier-trained arms -> $ROOT/test_time_arithmetic"
budgets "$ROOT/ar_sft" sft test_time_arithmetic/sft 40,48,56,64,72 128
for done in "$ROOT"/arithmetic_collapse/{grpo,clip_cov,critique_grpo}_s*/done.json; do
  run="$(dirname "$done")"
  budgets "$run" final "test_time_arithmetic/$(basename "$run")" 40,48,56,64,72 128
  python -m critique_jax.evaluate --run="$run" --which=all --samples=8 --budgets=40,48,56,64,72 --n_problems=128 \
    --out="$ROOT/across_arithmetic/$(basename "$run")"  # every checkpoint, from the SFT policy on
done

# 6. The notebooks, executed against these runs.
step "notebooks"
python scripts/run_notebooks.py --root "$ROOT" --out notebooks
step "notebook 08 on the arithmetic runs -> notebooks/arithmetic"
python scripts/run_notebooks.py --root "$ROOT" --out notebooks/arithmetic --only 08 \
  --set TEST_TIME=test_time_arithmetic --set "TRAIN_SWEEPS=('arithmetic_collapse',)" \
  --set RLSF_SWEEP=arithmetic_collapse --set "RLSF_LABELS=('rlsf','rlsf_derivation')" \
  --set VERIFIER_SWEEP=arithmetic_collapse --set ACROSS=across_arithmetic
step "done: notebooks/*.ipynb, notebooks/arithmetic/ and notebooks/figures/*.png"
