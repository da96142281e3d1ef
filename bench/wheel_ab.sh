#!/usr/bin/env bash
# A/B of two sageattention wheels on one GPU machine, the way bench/compare.py wants it: each
# wheel in its own process, repetitions interleaved (base, new, base, new, ...).
#
#   bash bench/wheel_ab.sh BASE.whl NEW.whl
#
# Each wheel is installed into a folder of its own (pip --target, no dependencies: torch is
# the machine's), and the tests and benchmarks run from a copy outside the checkout, so that
# neither side can pick up an in-place build. Environment:
#   STAGES="test quant attention"   which stages (default: all three)
#     test       the GPU tests (pytest -m gpu) against NEW
#     quant      bench/bench_quant.py $QUANT_ARGS, REPS times each
#     attention  bench/bench_attention.py $ATTN_ARGS, REPS times each
#   REPS=3  QUANT_ARGS="--n 1024 4096 16384"  ATTN_ARGS="--n 4096 16384 --no-sdpa --settle-ms 0"
#   (quick turns, ~5x shorter than settled samples: both wheels are timed alike; figures to
#   quote against SDPA come from settled runs, bench_attention.py's default)
#   BASE_COMMIT, NEW_COMMIT   recorded in the JSON (bench_attention.environment's SAGE_COMMIT)
#   OUT=./ab-out   JSON, logs and the compare.py tables (quant-ab.txt, attention-ab.txt)
# Exits non-zero if a stage failed.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/args.sh
. "$ROOT/bench/args.sh"
help_and_exit "${1-}"
check_wheels "bash bench/wheel_ab.sh BASE.whl NEW.whl" 2 "$@"
STAGES=${STAGES:-test quant attention}
REPS=${REPS:-3}
check_stages test quant attention
check_count REPS "$REPS"
PY=${PYTHON:-python3}
OUT=$(mkdir -p "${OUT:-./ab-out}" && cd "${OUT:-./ab-out}" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rc=0

declare -A WHEEL=([base]=$1 [new]=$2) COMMIT=([base]=${BASE_COMMIT:-base} [new]=${NEW_COMMIT:-new})
# shellcheck source=bench/installed.sh
. "$ROOT/bench/installed.sh"
for side in base new; do install_wheel "$side" "${WHEEL[$side]}"; done

if [[ " $STAGES " == *" test "* ]]; then
  on new "$PY" -m pytest tests/sageattention -m gpu -q -rfE -p no:cacheprovider > "$OUT/new-gpu-tests.txt" 2>&1
  trc=$?
  echo "gpu tests (new): rc=$trc, $(tail -1 "$OUT/new-gpu-tests.txt")"
  [ $trc -ne 0 ] && rc=$trc
fi

# Interleaved repetitions of one benchmark, then compare.py over every (base, new) pair.
ab() {
  local name=$1 script=$2 args=$3 pairs=()
  for rep in $(seq "$REPS"); do
    for side in base new; do
      # shellcheck disable=SC2086
      if ! on "$side" "$PY" "bench/$script" $args --out "$OUT/$name-$side-$rep.json" > "$OUT/$name-$side-$rep.log" 2>&1; then
        echo "wheel_ab: $script failed for $side, repetition $rep (log: $OUT/$name-$side-$rep.log)" >&2
        return 1
      fi
      pairs+=("$OUT/$name-$side-$rep.json")
    done
  done
  "$PY" "$ROOT/bench/compare.py" "${pairs[@]}" --json "$OUT/$name-ab.json" | tee "$OUT/$name-ab.txt" | sed -n '/== summary/,$p'
}
if [[ " $STAGES " == *" quant "* ]]; then
  ab quant bench_quant.py "${QUANT_ARGS:---n 1024 4096 16384}" || rc=1
fi
if [[ " $STAGES " == *" attention "* ]]; then
  ab attention bench_attention.py "${ATTN_ARGS:---n 4096 16384 --no-sdpa --settle-ms 0}" || rc=1
fi
exit $rc
