# Sourced by quickstart.sh and test.sh: create .venv (if missing) and install the
# package with the extras named in $EXTRAS. Re-installs only when setup.py changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "[critique_jax] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.installed-$(sha1sum setup.py | cut -c1-12)-${EXTRAS//,/_}"
if [[ ! -f "$stamp" ]]; then
  echo "[critique_jax] installing critique_jax[$EXTRAS] into .venv"
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
