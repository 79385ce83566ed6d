#!/usr/bin/env bash
# Creates the Cloud TPU VM slice: SPOT=1 for a spot slice, QUEUED=1 to request it through a
# queued resource ($QR_NAME; it is ready when its state is ACTIVE, see keep_alive.sh).
# DRY_RUN=1 prints the gcloud command instead.
set -euo pipefail
. "$(dirname "$0")/common.sh"
extra=()
[ "$SPOT" = 1 ] && extra+=(--spot)
if [ "$QUEUED" = 1 ]; then
  run gcloud compute tpus queued-resources create "$QR_NAME" --node-id="$TPU_NAME" \
    --zone="$ZONE" --accelerator-type="$ACCELERATOR" --runtime-version="$TPU_VERSION" \
    "${extra[@]}"
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$TPU_VERSION" "${extra[@]}"
fi
