#!/usr/bin/env bash
# A/B of sageattention wheels on one GPU machine, the way bench/compare.py wants it: each
# wheel in its own process, repetitions interleaved (base, new, base, new, ...). More than one
# candidate (NEW2.whl ...) rides along in the same run, each compared with BASE: one call of a
# scarce GPU machine can settle several changes.
#
#   bash bench/wheel_ab.sh BASE.whl NEW.whl [NEW2.whl ...]
#
# Each wheel is installed into a folder of its own (pip --target, no dependencies: torch is
# the machine's), and the tests and benchmarks run from a copy outside the checkout, so that
# neither side can pick up an in-place build. Environment:
#   STAGES="test quant attention"   which stages (default: these three; empty: install and import only)
#     test       the GPU tests (pytest -m gpu) against each candidate
#     quant      bench/bench_quant.py $QUANT_ARGS, REPS times each
#     attention  bench/bench_attention.py $ATTN_ARGS, REPS times each
#     clocks     bench/bench_clocks.py $CLOCKS_ARGS, REPS times each (not by default): each path's
#                steady time per call, alone after an idle GPU, compared as TFLOPS
#   REPS=3  QUANT_ARGS="--n 1024 4096 16384"  ATTN_ARGS="--n 4096 16384 --no-sdpa --settle-ms 0"
#   (quick turns, ~5x shorter than settled samples: both wheels are timed alike; figures to
#   quote against SDPA come from settled runs, bench_attention.py's default)
#   CLOCKS_ARGS="--n 4096 --paths sage_sm90_fp8 --seconds 1 --idle 1"
#   BASE_COMMIT, NEW_COMMIT, NEW2_COMMIT ...   recorded in the JSON (bench_attention.environment's
#     SAGE_COMMIT; default: the side's name)
#   STEP_TIMEOUT=1800   seconds each test or benchmark run may take (bench/installed.sh)
#   OUT=./ab-out   JSON, logs and the compare.py tables (quant-ab.txt, attention-ab.txt,
#     clocks-ab.txt against NEW; quant-ab-new2.txt ... against the others)
# Exits non-zero if a stage failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/args.sh
. "$ROOT/bench/args.sh"
help_and_exit "${1-}"
check_wheels "bash bench/wheel_ab.sh BASE.whl NEW.whl [NEW2.whl ...]" 2+ "$@"
STAGES=${STAGES-test quant attention}
REPS=${REPS:-3}
check_stages test quant attention clocks
check_count REPS "$REPS"
STEP_TIMEOUT=${STEP_TIMEOUT:-1800}
check_count STEP_TIMEOUT "$STEP_TIMEOUT"
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${OUT:-./ab-out}" && cd "${OUT:-./ab-out}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rc=0

# Sides: base, new, new2, new3, ... (the wheels in the order given).
SIDES=(base new)
for ((i = 3; i <= $#; ++i)); do SIDES+=("new$((i - 1))"); done
declare -A WHEEL COMMIT
for ((i = 0; i < ${#SIDES[@]}; ++i)); do
  side=${SIDES[$i]}
  WHEEL[$side]=${*:i+1:1}
  commit_var=${side^^}_COMMIT
  COMMIT[$side]=${!commit_var:-$side}
done
# shellcheck source=bench/installed.sh
. "$ROOT/bench/installed.sh"
for side in "${SIDES[@]}"; do install_wheel "$side" "${WHEEL[$side]}"; done

if [[ " $STAGES " == *" test "* ]]; then
  for side in "${SIDES[@]:1}"; do
    on "$side" "$PY" -m pytest tests/sageattention -m gpu -q -rfE -p no:cacheprovider > "$OUT/$side-gpu-tests.txt" 2>&1
    trc=$?
    echo "gpu tests ($side): $(status $trc), $(tail -1 "$OUT/$side-gpu-tests.txt")"
    [ $trc -ne 0 ] && rc=$trc
  done
fi

# Interleaved repetitions of one benchmark (every side in turn), then compare.py over every
# (base, candidate) pair of each candidate: NAME-ab.txt for new, NAME-ab-new2.txt ...
ab() {
  local name=$1 script=$2 args=$3 side pairs suffix
  for rep in $(seq "$REPS"); do
    for side in "${SIDES[@]}"; do
      # shellcheck disable=SC2086
      on "$side" "$PY" "bench/$script" $args --out "$OUT/$name-$side-$rep.json" > "$OUT/$name-$side-$rep.log" 2>&1
      local brc=$?
      if [ $brc -ne 0 ]; then
        echo "wheel_ab: $script failed for $side, repetition $rep, $(status $brc) (log: $OUT/$name-$side-$rep.log)" >&2
        return 1
      fi
    done
  done
  for side in "${SIDES[@]:1}"; do
    pairs=()
    for rep in $(seq "$REPS"); do pairs+=("$OUT/$name-base-$rep.json" "$OUT/$name-$side-$rep.json"); done
    suffix=$([ "$side" = new ] || echo "-$side")
    echo "== $side against base"
    "$PY" "$ROOT/bench/compare.py" "${pairs[@]}" --json "$OUT/$name-ab$suffix.json" | tee "$OUT/$name-ab$suffix.txt" |
      sed -n '/== summary/,$p'
  done
}
if [[ " $STAGES " == *" quant "* ]]; then
  ab quant bench_quant.py "${QUANT_ARGS:---n 1024 4096 16384}" || rc=1
fi
if [[ " $STAGES " == *" attention "* ]]; then
  ab attention bench_attention.py "${ATTN_ARGS:---n 4096 16384 --no-sdpa --settle-ms 0}" || rc=1
fi
if [[ " $STAGES " == *" clocks "* ]]; then
  ab clocks bench_clocks.py "${CLOCKS_ARGS:---n 4096 --paths sage_sm90_fp8 --seconds 1 --idle 1}" || rc=1
fi
exit $rc
