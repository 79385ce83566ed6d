#!/usr/bin/env bash
# Creates the Cloud TPU VM (add SPOT=1 for a preemptible/spot slice).
set -euo pipefail
. "$(dirname "$0")/common.sh"
extra=()
[ "${SPOT:-0}" = 1 ] && extra+=(--spot)
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
  --accelerator-type="$ACCELERATOR" --version="$TPU_VERSION" "${extra[@]}"
