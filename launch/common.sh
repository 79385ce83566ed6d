# Shared settings for the launch scripts; override any of them in the environment.
: "${TPU_NAME:=bach-jax}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR:=v4-32}"          # v4-32 = 4 hosts x 4 chips; v4-8 is a single host.
: "${TPU_VERSION:=tpu-ubuntu2204-base}"
: "${REPO_DIR:=bach_jax}"          # Checkout location on every worker (home directory).
: "${BUCKET:?set BUCKET=gs://your-bucket: the workdir lives there, shared by all hosts}"
: "${MOUNT:=/mnt/bach_jax}"        # gcsfuse mount point of $BUCKET on every worker.

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
