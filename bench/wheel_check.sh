#!/usr/bin/env bash
# One sageattention wheel on a GPU machine: the proof that it works, and its figures against SDPA.
#
#   bash bench/wheel_check.sh WHEEL.whl
#
# The wheel is installed into a folder of its own (pip --target, no dependencies: torch is the
# machine's) and the tests and benchmarks run from a copy outside the checkout, so nothing can
# pick up an in-place build (bench/installed.sh). Environment:
#   STAGES="test attention"   which stages (default: these two; empty: install and import only)
#     test       the GPU tests (pytest -m gpu)
#     attention  bench/bench_attention.py $ATTN_ARGS, REPS times (settled samples: its default)
#     clocks     bench/bench_clocks.py $CLOCKS_ARGS (each path alone, beside a clock trace)
#   REPS=1  ATTN_ARGS="--n 4096 16384"  CLOCKS_ARGS="--n 4096"
#   STEP_TIMEOUT=1800   seconds each stage's run may take (bench/installed.sh)
#   COMMIT   recorded in the JSON (bench_attention.environment's SAGE_COMMIT)
#   OUT=./check-out   logs and JSON: gpu-tests.txt, attention-N.json/.log, clocks.json/.txt
# Exits non-zero if a stage failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/args.sh
. "$ROOT/bench/args.sh"
help_and_exit "${1-}"
check_wheels "bash bench/wheel_check.sh WHEEL.whl" 1 "$@"
STAGES=${STAGES-test attention}
REPS=${REPS:-1}
check_stages test attention clocks
check_count REPS "$REPS"
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
check_count STEP_TIMEOUT "$STEP_TIMEOUT"
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${OUT:-./check-out}" && cd "${OUT:-./check-out}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rc=0

declare -A COMMIT=([wheel]=${COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)})
# shellcheck source=bench/installed.sh
. "$ROOT/bench/installed.sh"
install_wheel wheel "$1"
on wheel "$PY" -c "import sageattention as s, torch; print(s.__file__, 'extension_loaded', s.extension_loaded(), \
torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

# stage NAME LOG CMD...: runs CMD against the wheel, its output in $OUT/LOG, and reports it.
stage() {
  local name=$1 log=$2
  shift 2
  on wheel "$@" > "$OUT/$log" 2>&1
  local step_rc=$?
  echo "$name: $(status $step_rc), $(tail -1 "$OUT/$log")"
  [ $step_rc -ne 0 ] && rc=$step_rc
}
if [[ " $STAGES " == *" test "* ]]; then
  stage "gpu tests" gpu-tests.txt "$PY" -m pytest tests/sageattention -m gpu -q -rfE -p no:cacheprovider
fi
if [[ " $STAGES " == *" attention "* ]]; then
  for rep in $(seq "$REPS"); do
    # shellcheck disable=SC2086
    stage "bench_attention $rep" "attention-$rep.log" "$PY" bench/bench_attention.py ${ATTN_ARGS:---n 4096 16384} \
      --out "$OUT/attention-$rep.json"
  done
fi
if [[ " $STAGES " == *" clocks "* ]]; then
  # shellcheck disable=SC2086
  stage "bench_clocks" clocks.txt "$PY" bench/bench_clocks.py ${CLOCKS_ARGS:---n 4096} --out "$OUT/clocks.json"
fi
exit $rc
