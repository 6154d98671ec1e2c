#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the test suite on the CPU with 8 virtual devices.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sampler -x`.
EXTRAS="test,notebooks,data,wandb,cloud"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS=cpu
# Test files are spread over min(cores, 4) worker processes, one file at a time per worker
# (pytest-xdist, --dist loadfile: a file's shared fixtures are built once), in the order
# tests/conftest.py gives them (long ones first). TEST_WORKERS=1: one process.
WORKERS="${TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}"
if (( WORKERS > 1 )); then
  set -- -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
fi
exec python -m pytest tests "$@"
