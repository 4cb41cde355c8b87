#!/usr/bin/env bash
# The main job, stage by stage:
#   data (synthetic unless --data-dir) -> prepare -> features -> lgb -> nets (sb, mmoe, ple)
#   -> blend -> submit
# A stage is skipped when its outputs are up to date with its code, config and inputs
# (hash stamps in .pipeline/stamps, see src/wbdc/pipeline.py). Run with --help.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"
cd "$REPO"

usage() {
  cat <<'USAGE'
Usage: bash run_all.sh [options]
  --preset tiny|small|full   synthetic world size when no --data-dir is given (default: small)
  --data-dir DIR             folder holding the official CSVs (user_action.csv, feed_info.csv,
                             feed_embeddings.csv, test_a.csv); default: the synthetic world
  --test-file NAME           test file inside the data folder (default: test_a.csv)
  --seed N                   global seed (default: 2021)
  --mode offline|online|all  offline = validate on day 14 only; online/all also refit on days
                             up to 14, predict day 15 and write the submission (default: all)
  --models LIST              comma-separated subset of lgb,sb,mmoe,ple (default: all four)
  --from STAGE               rerun from this stage on, even if up to date (make_synthetic,
                             prepare, features, lgb, sb, mmoe, ple, blend, submit)
  --root DIR                 artifact root (default: this repo)
  --set SECTION.KEY=VALUE    override one config value (repeatable), e.g. --set nn.epochs=3
  --config FILE              YAML deep-merged over configs/*.yaml
  -h, --help                 this help
Environment: WBDC_SKIP_VENV=1 uses the python on PATH instead of creating .venv.
USAGE
}

COMMON=()
DATA_DIR=""
MODE="all"
MODELS="lgb,sb,mmoe,ple"
FROM=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset|--seed|--root|--set|--config) COMMON+=("$1" "$2"); shift 2 ;;
    --data-dir) DATA_DIR="$2"; COMMON+=("$1" "$2"); shift 2 ;;
    --test-file) COMMON+=("--set" "data.test_file=$2"); shift 2 ;;
    --mode) MODE="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --from) FROM="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$MODE" in offline|online|all) ;; *) echo "run_all.sh: --mode must be offline, online or all" >&2; exit 2 ;; esac
for m in ${MODELS//,/ }; do
  case "$m" in lgb|sb|mmoe|ple) ;; *) echo "run_all.sh: unknown model '$m' in --models (lgb,sb,mmoe,ple)" >&2; exit 2 ;; esac
done
[[ -z "$DATA_DIR" || -d "$DATA_DIR" ]] || { echo "run_all.sh: --data-dir $DATA_DIR is not a folder" >&2; exit 2; }

FORCING=0
T0=$(date +%s)
# stamp ACTION NAME [stage args...]: hash bookkeeping (src/stages/stamp.py).
stamp() { "$PY" src/stages/stamp.py "$1" "$2" --models "$MODELS" "${COMMON[@]}" -- "${@:3}"; }
# stage NAME SCRIPT [stage args...]: run a stage unless its stamp says it is up to date.
stage() {
  local name="$1" script="$2"; shift 2
  [[ "$name" == "$FROM" ]] && FORCING=1
  if [[ $FORCING == 0 ]] && stamp check "$name" "$@"; then
    echo "=== $name: up to date, skipped" >&2
    return 0
  fi
  echo "=== $name" >&2
  stamp begin "$name" "$@"
  "$PY" "src/stages/$script" "${COMMON[@]}" "$@"
  stamp done "$name" "$@"
}

if [[ -z "$DATA_DIR" ]]; then
  stage make_synthetic make_synthetic.py
fi
stage prepare prepare.py
stage features features.py
for m in ${MODELS//,/ }; do
  if [[ "$m" == "lgb" ]]; then
    stage lgb train_lgb.py --mode "$MODE"
  else
    stage "$m" train_nn.py --arch "$m" --mode "$MODE"
  fi
done
stage blend blend.py --models "popularity,$MODELS" --mode "$MODE"
if [[ "$MODE" != "offline" ]]; then
  stage submit submit.py
fi
"$PY" src/stages/summary.py "${COMMON[@]}" --total-seconds "$(( $(date +%s) - T0 ))"
