#!/usr/bin/env bash
# The main job: synthetic data (unless --data-dir) -> prepare -> ... Run with --help.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"
cd "$REPO"

usage() {
  cat <<'USAGE'
Usage: bash run_all.sh [options]
  --preset tiny|small|full   synthetic world size when no --data-dir is given (default: small)
  --data-dir DIR             folder holding the official CSVs (user_action.csv, feed_info.csv,
                             feed_embeddings.csv, test_a.csv); default: the synthetic world
  --seed N                   global seed (default: 2021)
  -h, --help                 this help
Environment: WBDC_SKIP_VENV=1 uses the python on PATH instead of .venv.
USAGE
}

COMMON=()
DATA_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset|--seed) COMMON+=("$1" "$2"); shift 2 ;;
    --data-dir) DATA_DIR="$2"; COMMON+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

stage() { echo "=== $1" >&2; shift; "$PY" "$@"; }

if [[ -z "$DATA_DIR" ]]; then
  stage make_synthetic src/stages/make_synthetic.py "${COMMON[@]}"
fi
stage prepare src/stages/prepare.py "${COMMON[@]}"
