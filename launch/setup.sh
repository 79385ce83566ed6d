#!/usr/bin/env bash
# Copies this checkout's HEAD to every worker, installs it with JAX for TPU in ~/venv and
# mounts the bucket at $MOUNT (gcsfuse), or with a gs:// WORKDIR_ROOT installs gcsfs instead.
# DRY_RUN=1 prints the commands instead.
set -euo pipefail
. "$(dirname "$0")/common.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
tarball="${TMPDIR:-/tmp}/bach_jax-$$.tar.gz"
[ "$DRY_RUN" = 1 ] || trap 'rm -f "$tarball"' EXIT
run git -C "$root" archive --format=tar.gz -o "$tarball" HEAD
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:bach_jax.tar.gz" --zone="$ZONE" \
  --worker=all
install="set -e; mkdir -p ~/$REPO_DIR; tar xzf ~/bach_jax.tar.gz -C ~/$REPO_DIR"
install+="; python3 -m venv ~/venv; ~/venv/bin/pip install -q --upgrade pip"
install+="; ~/venv/bin/pip install -q -e ~/$REPO_DIR 'jax[tpu]'"
case "$WORKDIR_ROOT" in
  gs://*) install+="; ~/venv/bin/pip install -q gcsfs google-cloud-storage" ;;
  *) install+="; sudo mkdir -p $MOUNT; sudo chown \$USER $MOUNT"
     install+="; mountpoint -q $MOUNT || gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT" ;;
esac
on_all_workers "$install"
