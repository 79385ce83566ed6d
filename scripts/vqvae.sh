#!/usr/bin/env bash
# The VQ-VAE end to end: stage 1 (configs/vqvae.py) into WORKDIR/stage1, then the prior over
# its codes (configs/vqvae_prior.py, stage 1 frozen) into WORKDIR/prior. Re-running resumes.
#
#   scripts/vqvae.sh WORKDIR [VARIANT] [--config.KEY=VALUE ...]    # VARIANT: '', test, jsb
#   python -m bach_jax.main --workdir=WORKDIR/prior --mode=sample  # new pieces from the prior
#
# Flags after VARIANT go to both stages (e.g. --config.data.cache_dir=DIR); stage-1 model
# keys are --config.model.KEY for stage 1 and are copied into the prior's config.
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:?usage: scripts/vqvae.sh WORKDIR [VARIANT] [--config.KEY=VALUE ...]}
shift
variant=""
if [[ $# -gt 0 && "$1" != --* ]]; then variant=":$1"; shift; fi
PYTHON=${PYTHON:-python}
echo "== stage 1: configs/vqvae.py$variant -> $workdir/stage1"
"$PYTHON" -m bach_jax.main --config="configs/vqvae.py$variant" --workdir="$workdir/stage1" "$@"
prior_flags=()
for flag in "$@"; do [[ "$flag" == --config.model.* ]] || prior_flags+=("$flag"); done
echo "== stage 2: configs/vqvae_prior.py$variant -> $workdir/prior"
"$PYTHON" -m bach_jax.main --config="configs/vqvae_prior.py$variant" --workdir="$workdir/prior" \
    --config.train.init_from="$workdir/stage1" ${prior_flags[@]+"${prior_flags[@]}"}
