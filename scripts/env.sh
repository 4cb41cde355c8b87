# Sourced by run_all.sh and run_tests.sh: make sure .venv exists and matches requirements.txt.
# Set WBDC_SKIP_VENV=1 to use the python already on PATH (or $PYTHON) instead.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ "${WBDC_SKIP_VENV:-0}" == "1" ]]; then
  PY="${PYTHON:-python3}"
else
  VENV="$REPO/.venv"
  STAMP="$VENV/.requirements.sha256"
  WANT="$(sha256sum "$REPO/requirements.txt" | cut -d' ' -f1)"
  if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    echo "[env] setting up $VENV from requirements.txt (first run takes a few minutes)" >&2
    [[ -x "$VENV/bin/python" ]] || "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2 || true
    "$VENV/bin/python" -m pip install --quiet -r "$REPO/requirements.txt" >&2
    echo "$WANT" > "$STAMP"
  fi
  PY="$VENV/bin/python"
fi
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONHASHSEED=0
