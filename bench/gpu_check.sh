#!/usr/bin/env bash
# One call on a GPU machine: build the extension in place, run the GPU tests, run the
# benchmark. Logs and JSON go to ${OUT:-./gpu-out}. Stages are selectable:
#   STAGES="build test bench" (default)   ARCH=9.0a (TORCH_CUDA_ARCH_LIST for the build)
#   BENCH_ARGS="--n 4096 16384 --hd 128"  PYTEST_ARGS="-x"
# Example (Hopper: H100, H200): ARCH=9.0a bash bench/gpu_check.sh
# STAGES="" prints the environment only.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/args.sh
. bench/args.sh
help_and_exit "${1-}"
if [ $# -ne 0 ]; then echo "usage: [STAGES=...] bash bench/gpu_check.sh (settings in the environment; --help)" >&2; exit 2; fi
STAGES=${STAGES-build test bench}
check_stages build test bench
PY=${PYTHON:-python3}
"$PY" -c 'import sys
try:
    import torch
except ImportError as e:
    sys.exit(f"gpu_check: {sys.executable} has no torch ({e})")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build {torch.version.cuda})")
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || exit 1
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
rc=0
nvcc --version 2>/dev/null | grep -i release || echo "nvcc: not on PATH (CUDA_HOME=${CUDA_HOME:-unset})"

if [[ " $STAGES " == *" build "* ]]; then
  start=$(date +%s)
  TORCH_CUDA_ARCH_LIST=${ARCH:-9.0a} MAX_JOBS=${MAX_JOBS:-$(nproc)} NVCC_THREADS=${NVCC_THREADS:-2} \
    "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1
  brc=$?
  echo "build: rc=$brc in $(( $(date +%s) - start ))s (log: $OUT/build.log)"
  if [ $brc -ne 0 ]; then grep -E "error|Error" "$OUT/build.log" | head -30; exit $brc; fi
fi
"$PY" -c 'import sageattention as s; print("sageattention", s.__version__, "extension", s.extension_loaded(), s.extension_error() or "")'

if [[ " $STAGES " == *" test "* ]]; then
  start=$(date +%s)
  "$PY" -m pytest tests/sageattention -m gpu -q -rfE ${PYTEST_ARGS:-} --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log" | tail -40
  trc=${PIPESTATUS[0]}
  echo "gpu tests: rc=$trc in $(( $(date +%s) - start ))s"
  [ $trc -ne 0 ] && rc=$trc
fi

if [[ " $STAGES " == *" bench "* ]]; then
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$PY" bench/bench_attention.py ${BENCH_ARGS:-} --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
  brc=${PIPESTATUS[0]}
  echo "bench: rc=$brc in $(( $(date +%s) - start ))s"
  [ $brc -ne 0 ] && rc=$brc
fi
exit $rc
