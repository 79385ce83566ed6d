#!/usr/bin/env bash
# For spot / preemptible slices: every few minutes, if the TPU is gone or PREEMPTED, recreate
# it, set it up and start the same run again; training resumes from the latest checkpoint
# (SIGTERM on preemption makes every host save one before it exits).
# Usage: launch/keep_alive.sh RUN_NAME [flags...]
set -euo pipefail
. "$(dirname "$0")/common.sh"
here="$(dirname "$0")"
while true; do
  state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" \
          --format='value(state)' 2>/dev/null || echo MISSING)
  case "$state" in
    READY) ;;
    PREEMPTED|TERMINATED)
      gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
      SPOT=1 "$here/create.sh" && "$here/setup.sh" && "$here/run.sh" "$@" ;;
    MISSING)
      SPOT=1 "$here/create.sh" && "$here/setup.sh" && "$here/run.sh" "$@" ;;
  esac
  sleep "${POLL_SECONDS:-300}"
done
