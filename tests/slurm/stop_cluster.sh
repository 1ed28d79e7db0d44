#!/usr/bin/env bash
# Stop the private Slurm cluster of start_cluster.sh: cancel its jobs, then stop the daemons
# it started (slurmd, slurmctld, slurmdbd, mariadbd, munged), each by the PID in its pid file
# under $TRACKVERSE_SLURM_DIR (default <repo>/.slurm-cluster). State is kept: start again
# to resume it. Nothing else on the machine is touched. See tests/slurm/README.md.
set -euo pipefail

# shellcheck source=tests/slurm/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR="$SLURM_TEST_DIR"
check_dir_name
if [ ! -d "$DIR/run" ]; then
  log "no cluster folder at $DIR: nothing to stop"
  exit 0
fi
export SLURM_CONF="$DIR/etc/slurm.conf"

no_jobs() { [ -z "$(squeue -h -o %i)" ]; }

cancel_jobs() {
  running_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null || return 0
  local ids=() id
  # %F: the array's job id (a plain job's own id); cancelling it cancels every task.
  while IFS= read -r id; do
    if [[ "$id" =~ ^[0-9]+$ ]]; then ids+=("$id"); fi
  done < <(squeue -h -o %F 2>/dev/null | sort -u)
  [ "${#ids[@]}" -gt 0 ] || return 0
  log "cancelling job(s) ${ids[*]}"
  scancel -- "${ids[@]}" || true
  # Let slurmd end the job steps before it stops.
  running_pid "$DIR/run/slurmd.pid" slurmd >/dev/null || return 0
  wait_until 30 "cancelled jobs to end" no_jobs || log "some jobs are still listed; stopping anyway"
}

gone() { ! running_pid "$1" "$2" >/dev/null; }

# stop_daemon PIDFILE COMM: TERM the process named COMM whose PID the file holds, wait, KILL if needed.
# A stopped daemon can linger as a zombie until PID 1 reaps it: that counts as stopped.
stop_daemon() {
  local pidfile="$1" comm="$2" pid
  if ! pid="$(running_pid "$pidfile" "$comm")"; then
    rm -f "$pidfile"
    return 0
  fi
  log "stopping $comm (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until 30 "$comm to exit" gone "$pidfile" "$comm"; then
    log "$comm (pid $pid) ignored TERM: killing it"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 10 "$comm to die" gone "$pidfile" "$comm" || log "$comm (pid $pid) is still there"
  fi
  rm -f "$pidfile"
}

cancel_jobs
stop_daemon "$DIR/run/slurmd.pid" slurmd
stop_daemon "$DIR/run/slurmctld.pid" slurmctld
stop_daemon "$DIR/run/slurmdbd.pid" slurmdbd
stop_daemon "$DIR/run/mariadbd.pid" mariadbd
stop_daemon "$DIR/run/munge/munged.pid" munged
log "stopped (state kept in $DIR)"
