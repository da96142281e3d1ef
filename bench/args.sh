# Sourced by the GPU-machine scripts (gpu_check.sh, wheel_check.sh, wheel_ab.sh): checks of their
# environment settings, so that a typo fails at once instead of skipping the work it named.

# help_and_exit ARG: -h / --help print the script's header comment (its usage) and exit 0.
help_and_exit() {
  case ${1-} in
    -h | --help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
  esac
}

# check_wheels USAGE COUNT ARGS...: COUNT arguments (N: exactly N, N+: at least N), each an
# existing file; else USAGE (the command line) or the missing wheel, and exit 2.
check_wheels() {
  local usage=$1 min=${2%+} max=$2 whl
  shift 2
  [[ $max == *+ ]] && max=$#
  if [ $# -lt "$min" ] || [ $# -gt "$max" ]; then
    echo "usage: $usage" >&2
    exit 2
  fi
  for whl in "$@"; do
    if [ ! -f "$whl" ]; then echo "$(basename "$0" .sh): no such wheel: $whl" >&2; exit 2; fi
  done
}

# check_stages ALLOWED...: every word of $STAGES is one of ALLOWED.
check_stages() {
  local stage
  for stage in $STAGES; do
    if [[ " $* " != *" $stage "* ]]; then
      echo "$(basename "$0" .sh): unknown stage '$stage' in STAGES (allowed: $*)" >&2
      exit 2
    fi
  done
}

# check_count NAME VALUE: VALUE is a whole number >= 1.
check_count() {
  if [[ ! $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "$(basename "$0" .sh): $1 must be a whole number >= 1, got '$2'" >&2
    exit 2
  fi
}
