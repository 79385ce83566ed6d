#!/usr/bin/env bash
# Keeps a run going on a spot (or queued) slice until it finishes: every POLL_SECONDS it looks
# at the slice and at the run's exit status on worker 0 (written by run.sh), and
#   slice missing                 -> creates it (create.sh; spot unless SPOT=0), then
#                                    once it is READY (queued: ACTIVE) sets it up and starts
#   slice PREEMPTED / TERMINATED  -> deletes it and does the same (queued resource SUSPENDED
#   (queued: SUSPENDED / FAILED)     or FAILED: deletes the request and queues a new one)
#   run exited 75 (interrupted)   -> starts it again: it resumes from its latest checkpoint
#   run never started             -> starts it
#   run exited 0 (finished)       -> stops, status 0
#   run exited 2 (a user error)   -> stops, status 2 (fix the flags; the log says what)
#   run exited 3 (loss not finite)-> stops, status 3 (a re-run would resume into the same)
#   any other exit status         -> starts it again, at most MAX_RESTARTS times in a row
# Usage: launch/keep_alive.sh RUN_NAME [flags for run.sh...]
# DRY_RUN=1 prints the commands instead of running them and plays a scenario: DRY_RUN_STATES,
# the slice's successive states (e.g. "MISSING READY READY PREEMPTED READY READY"), and
# DRY_RUN_EXITS, the run's status at each look while READY ("running", "none" or a number).
set -euo pipefail
here="$(dirname "$0")"
: "${SPOT:=1}"  # A slice kept alive is a spot one unless SPOT=0 (e.g. queued, on demand).
. "$here/common.sh"
[ $# -ge 1 ] || die 'usage: launch/keep_alive.sh RUN_NAME [flags...]'
name="$1"
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME=$name: letters, digits, . _ - only"
: "${POLL_SECONDS:=300}"
: "${MAX_RESTARTS:=3}"
export SPOT QUEUED DRY_RUN
read -r -a fake_states <<< "${DRY_RUN_STATES:-READY}"
read -r -a fake_exits <<< "${DRY_RUN_EXITS:-0}"

say() { echo "keep_alive: $*"; }

look_at_slice() {  # Sets $state: the slice's (queued: the request's) state, or MISSING.
  local what=(tpu-vm describe "$TPU_NAME") field='value(state)'
  if [ "$QUEUED" = 1 ]; then what=(queued-resources describe "$QR_NAME"); field='value(state.state)'; fi
  if [ "$DRY_RUN" = 1 ]; then
    run gcloud compute tpus "${what[@]}" --zone="$ZONE" --format="$field"
    [ ${#fake_states[@]} -gt 0 ] || { say 'DRY_RUN: scenario over'; exit 0; }
    state="${fake_states[0]}"
    fake_states=("${fake_states[@]:1}")
  else
    state=$(gcloud compute tpus "${what[@]}" --zone="$ZONE" --format="$field" 2>/dev/null) \
      || state=MISSING
  fi
}

look_at_run() {  # Sets $status: running, none (never started here), the exit status, or
  # unknown (worker 0 did not answer: looked at again next time).
  local query="if [ -f ~/$name.exit ]; then cat ~/$name.exit; elif [ -f ~/$name.pid ] && \
kill -0 \"\$(cat ~/$name.pid)\" 2>/dev/null; then echo running; else echo none; fi"
  if [ "$DRY_RUN" = 1 ]; then
    on_workers 0 "$query"
    status="${fake_exits[0]:-running}"
    fake_exits=("${fake_exits[@]:1}")
  else
    status=$(on_workers 0 "$query" 2>/dev/null | tail -n 1) || status=unknown
  fi
}

delete_slice() {
  if [ "$QUEUED" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$QR_NAME" --zone="$ZONE" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
  fi
}

attempt() {  # Runs a step (a command); a user error (status 2) ends keep_alive with it, any
  # other failure (no capacity, ssh down) is retried at the next look.
  local rc=0
  "$@" || rc=$?
  [ "$rc" != 2 ] || exit 2
  [ "$rc" = 0 ] || say "$(basename "$1") failed (status $rc): trying again in ${POLL_SECONDS}s"
  return "$rc"
}

needs_setup=0
restarts=0
while true; do
  look_at_slice
  case "$state" in
    READY|ACTIVE)
      if [ "$needs_setup" = 1 ]; then
        say "$TPU_NAME is $state: setting it up and starting $name"
        attempt "$here/setup.sh" && attempt "$here/run.sh" "$@" && needs_setup=0
      else
        look_at_run
        case "$status" in
          running|unknown) ;;
          none) say "starting $name"; attempt "$here/run.sh" "$@" || true ;;
          0) say "$name finished"; exit 0 ;;
          75) say "$name was interrupted (exit 75): resuming it"; restarts=0
              attempt "$here/run.sh" "$@" || true ;;
          2) say "$name stopped on a user error (exit 2): see ~/$name.log on worker 0"; exit 2 ;;
          3) say "$name stopped: its loss is not finite (exit 3); see ~/$name.log"; exit 3 ;;
          *)
            restarts=$((restarts + 1))
            if [ "$restarts" -gt "$MAX_RESTARTS" ]; then
              say "$name failed $restarts times in a row (last exit $status): giving up"
              exit 1
            fi
            say "$name exited $status: starting it again ($restarts/$MAX_RESTARTS)"
            attempt "$here/run.sh" "$@" || true ;;
        esac
      fi ;;
    PREEMPTED|TERMINATED|SUSPENDED|FAILED)
      say "$TPU_NAME is $state: recreating it"
      attempt delete_slice && attempt "$here/create.sh" && needs_setup=1 ;;
    MISSING)
      say "$TPU_NAME does not exist: creating it"
      attempt "$here/create.sh" && needs_setup=1 ;;
    *) ;;  # CREATING, WAITING_FOR_RESOURCES, PROVISIONING, ...: wait.
  esac
  run sleep "$POLL_SECONDS"
done
