#!/usr/bin/env bash
# Starts training on every worker of the slice: one jax.distributed job over all hosts
# (BACH_JAX_DISTRIBUTED=1: jax finds the coordinator itself on Cloud TPU), in the background.
# Usage: launch/run.sh RUN_NAME [--config=configs/lstm_attn.py] [--config.KEY=VALUE ...]
# The run's workdir is $WORKDIR_ROOT/RUN_NAME; running the same command again resumes from
# its latest checkpoint. On each worker: ~/RUN_NAME.log (worker 0 has the progress),
# ~/RUN_NAME.pid while it runs, then ~/RUN_NAME.exit, its exit status (0 finished,
# 75 interrupted: run again, 2 a user error; keep_alive.sh reads it).
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || die 'usage: launch/run.sh RUN_NAME [flags...]'
name="$1"
shift
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die "RUN_NAME=$name: letters, digits, . _ - only"
has_config=0
for arg in "$@"; do
  case "$arg" in --config=*|--config) has_config=1 ;; --workdir*) die "$arg: run.sh sets --workdir=$WORKDIR_ROOT/$name" ;; esac
done
flags=()
[ "$has_config" = 1 ] || flags+=(--config=configs/lstm_attn.py)
flags+=("$@" "--workdir=$WORKDIR_ROOT/$name")
train="BACH_JAX_DISTRIBUTED=1 BACH_JAX_CACHE=\$HOME/.cache/bach_jax nohup ~/venv/bin/python"
train+=" -m bach_jax.main $(printf '%q ' "${flags[@]}")"
# The exit status is written when the run ends; HUP ignored so the ssh session can close.
on_all_workers "cd ~/$REPO_DIR && rm -f ~/$name.exit && { trap '' HUP; $train> ~/$name.log 2>&1; \
echo \$? > ~/$name.exit; } < /dev/null > /dev/null 2>&1 & echo \$! > ~/$name.pid"
echo "started $name on all workers; logs: ~/$name.log on each (worker 0 has the progress)"
