# Shared settings and helpers of the launch scripts (sourced); override any setting in the
# environment. DRY_RUN=1: print every gcloud / git command, arguments filled in, instead of
# running it (keep_alive.sh then plays DRY_RUN_STATES / DRY_RUN_EXITS, see there).
# shellcheck shell=bash
: "${TPU_NAME:=bach-jax}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR:=v4-32}"          # v4-32 = 4 hosts x 4 chips; v4-8 is a single host.
: "${TPU_VERSION:=tpu-ubuntu2204-base}"  # TPU VM runtime (software) version.
: "${SPOT:=0}"                     # 1: a spot slice (cheaper; can be preempted at any time).
: "${QUEUED:=0}"                   # 1: request the slice through a queued resource.
: "${QR_NAME:=$TPU_NAME-qr}"       # Its name (QUEUED=1).
: "${REPO_DIR:=bach_jax}"          # Checkout location on every worker (home directory).
: "${MOUNT:=/mnt/bach_jax}"        # gcsfuse mount point of $BUCKET on every worker.
: "${WORKDIR_ROOT:=$MOUNT}"        # Runs go to WORKDIR_ROOT/RUN_NAME; gs://... writes there
                                   # directly (epath + Orbax), without the mount.
: "${DRY_RUN:=0}"

die() {  # A user error: one line, exit status 2.
  echo "error: $*" >&2
  exit 2
}

for _var in SPOT QUEUED DRY_RUN; do
  case "${!_var}" in 0|1) ;; *) die "$_var=${!_var}: must be 0 or 1" ;; esac
done
[ -n "${BUCKET:-}" ] || die 'BUCKET is not set: BUCKET=gs://your-bucket (the workdirs live there)'
case "$BUCKET" in gs://?*) ;; *) die "BUCKET=$BUCKET: must be gs://BUCKET_NAME" ;; esac
case "$TPU_NAME$ZONE$ACCELERATOR$TPU_VERSION$QR_NAME" in
  *[!A-Za-z0-9._-]*) die "TPU_NAME, ZONE, ACCELERATOR, TPU_VERSION, QR_NAME: letters, digits, . _ - only" ;;
esac

exec 3>&1  # DRY_RUN lines go here: the caller's stdout, even from inside $(...).

quoted() {  # The arguments as one shell-quoted line: bare where they can be, --flag='value'.
  local out='' arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,~-]+$ ]]; then
      out+=" $arg"
    elif [[ "$arg" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
      out+=" ${BASH_REMATCH[1]}${BASH_REMATCH[2]@Q}"
    else
      out+=" ${arg@Q}"
    fi
  done
  printf '%s\n' "${out# }"
}

run() {  # Runs a command, or with DRY_RUN=1 prints it.
  if [ "$DRY_RUN" = 1 ]; then
    echo "DRY_RUN: $(quoted "$@")" >&3
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKER COMMAND: runs a shell command on worker WORKER (or all).
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker="$1" --command="$2"
}

on_all_workers() {
  on_workers all "$1"
}
