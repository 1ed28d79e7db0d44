# Shared by start_cluster.sh and stop_cluster.sh; sourced, never run. See README.md here.
# shellcheck shell=bash

SLURM_TEST_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
# The private folder: every config, state, socket, pid file and log of the cluster.
SLURM_TEST_DIR="${TRACKVERSE_SLURM_DIR:-$SLURM_TEST_REPO/.slurm-cluster}"

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

check_dir_name() {
  case "$SLURM_TEST_DIR" in
    /*) ;;
    *) die "TRACKVERSE_SLURM_DIR must be an absolute path, got '$SLURM_TEST_DIR'" ;;
  esac
  # Slurm's config files and the env file take paths unquoted: keep to a plain character set.
  if [[ ! "$SLURM_TEST_DIR" =~ ^[A-Za-z0-9._/+-]+$ ]]; then
    die "the cluster folder '$SLURM_TEST_DIR' may only contain letters, digits and . _ / + -"
  fi
  # A unix socket path holds at most 107 bytes.
  if [ "${#SLURM_TEST_DIR}" -gt 80 ]; then
    die "the cluster folder path is too long for unix sockets (${#SLURM_TEST_DIR} > 80 characters)"
  fi
}

# PID from PIDFILE if that process is alive (not a zombie) and its name is COMM.
running_pid() {
  local pidfile="$1" comm="$2" pid stat state
  [ -s "$pidfile" ] || return 1
  pid="$(tr -dc '0-9' < "$pidfile")"
  [ -n "$pid" ] || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  state="${stat%% *}"
  case "$state" in Z|X|x) return 1 ;; esac
  printf '%s\n' "$pid"
}

# wait_until SECONDS WHAT COMMAND...: run COMMAND every 0.2 s until it succeeds.
wait_until() {
  local seconds="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${seconds} s waiting for: $what"
      return 1
    fi
    sleep 0.2
  done
}
