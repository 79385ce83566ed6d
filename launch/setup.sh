#!/usr/bin/env bash
# Copies this checkout to every worker, installs it with JAX for TPU, mounts the bucket.
set -euo pipefail
. "$(dirname "$0")/common.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
tarball=$(mktemp --suffix=.tar.gz)
git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":bach_jax.tar.gz --zone="$ZONE" --worker=all
on_all_workers "set -e; mkdir -p ~/$REPO_DIR && tar xzf ~/bach_jax.tar.gz -C ~/$REPO_DIR
  python3 -m venv ~/venv && . ~/venv/bin/activate && pip install -q --upgrade pip
  pip install -q -e ~/$REPO_DIR 'jax[tpu]'
  sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
  (mountpoint -q $MOUNT || gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT)"
