#!/usr/bin/env bash
# The main job, stage by stage:
#   data (synthetic unless --data-dir) -> prepare -> features -> models (popularity baseline,
#   lgb, sb, mmoe, ple: the registry in src/wbdc/registry.py) -> blend -> submit
# A stage is skipped when its outputs are up to date with its code, config and inputs
# (hash stamps in .pipeline/stamps, see src/wbdc/pipeline.py). Run with --help.
set -euo pipefail
CALLER_PWD="$PWD"
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"

usage() {
  cat <<'USAGE'
Usage: bash run_all.sh [options]
  --preset tiny|small|full|final  synthetic world size when no --data-dir is given (default: small)
  --null                     synthetic world whose labels are independent of everything (every
                             honest score should read 0.5: a check of the validation itself)
  --data-dir DIR             folder holding the official CSVs (user_action.csv, feed_info.csv,
                             feed_embeddings.csv, test_a.csv); repeatable or a comma list (e.g.
                             the final round's folder and the preliminary one); default: synthetic
  --test-file NAME           test file inside the data folder (default: test_a.csv)
  --seed N                   global seed (default: 2021)
  --mode offline|online|all  offline = validate on day 14 only; online = refit on days up to 14
                             and predict day 15 reusing the offline selection (a model without one
                             runs offline first); all = both (default)
  --models LIST              comma-separated subset of lgb,sb,mmoe,ple,omoe (default: lgb,sb,mmoe,ple);
                             the popularity baseline is always trained and blended
  --from STAGE               rerun from this stage on, even if up to date (a stage of this run:
                             make_synthetic, prepare, features, popularity, the models, blend, submit)
  --root DIR                 artifact root (default: this repo)
  --set SECTION.KEY=VALUE    override one config value (repeatable), e.g. --set nn.train.epochs=3
                             (an unknown key is an error naming the closest valid one)
  --config FILE              YAML deep-merged over configs/*.yaml
  --cluster ADDR             run the heavy stages on Dask: local:N starts a LocalCluster of N
                             worker processes per stage (data.memory_gb / N each), tcp://HOST:8786
                             uses a running scheduler (README, "Running on a Dask cluster")
  -h, --help                 this help
Relative paths are read from the directory you call the script from.
Environment: WBDC_SKIP_VENV=1 uses the python on PATH instead of creating .venv.
USAGE
}

abspath() { [[ "$1" = /* ]] && echo "$1" || echo "$CALLER_PWD/$1"; }

COMMON=()
MODE="all"
MODELS=""            # empty: every model of the registry (wbdc.registry.DEFAULT_MODELS)
FROM=""
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset|--seed|--set) need "$@"; COMMON+=("$1" "$2"); shift 2 ;;
    --root|--config) need "$@"; COMMON+=("$1" "$(abspath "$2")"); shift 2 ;;
    --data-dir)
      need "$@"; IFS=',' read -ra parts <<< "$2"
      for d in "${parts[@]}"; do
        [[ -n "$d" ]] || continue
        d="$(abspath "$d")"
        [[ -d "$d" ]] || { echo "run_all.sh: --data-dir $d is not a folder" >&2; exit 2; }
        COMMON+=("--data-dir" "$d")
      done
      shift 2 ;;
    --test-file) need "$@"; COMMON+=("--set" "data.test_file=$2"); shift 2 ;;
    --null) COMMON+=("--set" "data.null_world=true"); shift ;;
    --cluster) need "$@"; COMMON+=("--set" "cluster.address=$2"); shift 2 ;;
    --mode) need "$@"; MODE="$2"; shift 2 ;;
    --models) need "$@"; MODELS="$2"; shift 2 ;;
    --from) need "$@"; FROM="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$MODE" in offline|online|all) ;; *) echo "run_all.sh: --mode must be offline, online or all" >&2; exit 2 ;; esac
cd "$REPO"

# The run's stages from the model registry; checks --models, --from and every config key first.
PLAN="$("$PY" src/stages/stamp.py plan ${MODELS:+--models "$MODELS"} --mode "$MODE" ${FROM:+--from "$FROM"} "${COMMON[@]}")" \
  || exit 2

FORCING=0
T0=$(date +%s)
STAGES=()
# stamp ACTION NAME [stage args...]: hash bookkeeping (src/stages/stamp.py).
stamp() { "$PY" src/stages/stamp.py "$1" "$2" ${MODELS:+--models "$MODELS"} "${COMMON[@]}" -- "${@:3}"; }
# stage NAME SCRIPT [stage args...]: run a stage unless its stamp says it is up to date.
stage() {
  local name="$1" script="$2"; shift 2
  STAGES+=("$name")
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

while IFS=$'\t' read -r -u 3 name script args; do
  read -ra argv <<< "$args"
  stage "$name" "$script" "${argv[@]}"
done 3<<< "$PLAN"
"$PY" src/stages/summary.py "${COMMON[@]}" --stages "$(IFS=,; echo "${STAGES[*]}")" \
  --total-seconds "$(( $(date +%s) - T0 ))"
