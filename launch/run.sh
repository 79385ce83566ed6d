#!/usr/bin/env bash
# Runs training on every worker of the slice; one jax.distributed job over all hosts.
# Usage: launch/run.sh RUN_NAME [--config=configs/lstm_attn.py] [--config.KEY=VALUE ...]
# Re-running the same command resumes from the latest checkpoint in $MOUNT/RUN_NAME.
set -euo pipefail
. "$(dirname "$0")/common.sh"
run="${1:?usage: launch/run.sh RUN_NAME [flags...]}"; shift
flags="$*"
case "$flags" in *--config=*) ;; *) flags="--config=configs/lstm_attn.py $flags" ;; esac
on_all_workers "cd ~/$REPO_DIR && . ~/venv/bin/activate && \
  BACH_JAX_DISTRIBUTED=1 BACH_JAX_CACHE=\$HOME/.cache/bach_jax \
  nohup python -m bach_jax.main $flags --workdir=$MOUNT/$run > ~/$run.log 2>&1 &"
echo "started $run on all workers; logs: ~/$run.log on each worker (worker 0 has the progress)"
