#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the test suite on the CPU with 8 virtual devices.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k sampler -x`.
EXTRAS="test,notebooks,data"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
export JAX_PLATFORMS=cpu
exec python -m pytest tests "$@"
