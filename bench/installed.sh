# Sourced by wheel_ab.sh and wheel_check.sh: the repository's GPU tests and benchmarks run
# against installed wheels, never against the checkout or an in-place build. Each wheel goes
# into a folder of its own (pip --target, no dependencies: torch is the machine's), and the
# commands run from a copy of bench/, tests/ and pyproject.toml outside the checkout.
# The caller sets ROOT, PY, OUT, WORK (a temporary folder) and the array COMMIT (name -> the
# commit recorded in the JSON). STEP_TIMEOUT (seconds, default 1800) bounds each command run
# against a wheel: a kernel that hangs ends its own step (rc 124), not the whole run, so the
# steps after it still run and report, and what the run wrote stays readable.
# (The scripts check it, with their other arguments, before they write anything.)

# install_wheel NAME WHEEL: installs WHEEL into $WORK/NAME (log: $OUT/pip-NAME.log) and checks
# that the copy imports it from there. Exits on failure.
install_wheel() {
  local name=$1 whl=$2
  if ! "$PY" -m pip install -q --no-deps --no-index --target "$WORK/$name" "$whl" > "$OUT/pip-$name.log" 2>&1; then
    echo "$(basename "$0" .sh): pip could not install $whl (log: $OUT/pip-$name.log)" >&2
    exit 1
  fi
  [ -d "$WORK/src" ] || { mkdir -p "$WORK/src" && cp -r "$ROOT/bench" "$ROOT/tests" "$ROOT/pyproject.toml" "$WORK/src/"; }
  on "$name" "$PY" -c "import sys
try:
    import sageattention as s
except ImportError as e:
    sys.exit(f'$(basename "$0" .sh): $(basename "$whl") does not import as sageattention: {e}')
sys.exit(0 if s.__file__.startswith('$WORK/$name/') else f'$(basename "$0" .sh): imported {s.__file__}, not the $name wheel')" || exit 1
}

# on NAME CMD...: runs CMD from the copy with wheel NAME first on the path.
on() {
  local name=$1
  shift
  (cd "$WORK/src" && PYTHONPATH="$WORK/$name" SAGE_BENCH_INSTALLED=1 SAGE_COMMIT="${COMMIT[$name]}" \
    timeout -k 10 "$STEP_TIMEOUT" "$@")
}

# status RC: how a step ended, for its report line ("rc=1", "timed out after 1800 s"). timeout
# returns 137 when the step outlived its TERM too, as any SIGKILL (out of memory) would.
status() {
  case $1 in
    124) echo "timed out after $STEP_TIMEOUT s" ;;
    137) echo "rc=137 (killed: timed out after $STEP_TIMEOUT s, or out of memory)" ;;
    *) echo "rc=$1" ;;
  esac
}
