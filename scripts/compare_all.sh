#!/usr/bin/env bash
# Trains every model family on the embedded Bach chorales, then writes the comparison report.
#
#   scripts/compare_all.sh                 # full runs: configs/<family>.py, 64 x 256-step samples
#   SMOKE=1 scripts/compare_all.sh         # the whole chain, ~5 min on 2 cores (:test configs)
#
# Families: every name of bach_jax.models.REGISTRY that has a configs/<name>.py (a registered
# family without one is named and skipped), so a new family joins by itself. Each is trained
# with `python -m bach_jax.main --config=configs/<name>.py` into $RUNS/<name>, then
# `python -m bach_jax.compare` compares them all with held-out Bach into $OUT. A family that
# builds on another one's run (CAPABILITIES.builds_on, e.g. vqvae_prior on vqvae) is trained
# after it, with --config.train.init_from=$RUNS/<base>.
#
# Cost of the full runs (3000 steps each, one family after the other): about 7 hours on a
# 2-core CPU, from the seconds per step measured there (docs/results.md, "All families on
# the embedded chorales"): lstm 0.4 (20 min), lstm_attn 1.0 (49 min), vae 1.7 (86 min),
# vqvae 1.9 (96 min), vqvae_prior 0.4 (18 min), gan 3.4 (171 min). Not run end to end at
# that budget; the smoke variant runs in the test suite. The report itself takes minutes
# (sampling 64 x 256 frames per run and scoring the test split: 87 s for six runs).
# Re-running resumes: a finished run (latest checkpoint at its config's last step) is
# skipped, an interrupted one resumes, and the report is written again.
#
# Environment:
#   SMOKE=1        configs/<name>.py:test, $SMOKE_STEPS steps (default 10), evaluated at the
#                  end only, no final samples, a 4 x 32-step report; RUNS defaults to
#                  runs/compare_all_smoke
#   RUNS=DIR       where the runs go (default runs/compare_all)
#   OUT=DIR        where the report goes (default $RUNS/report)
#   FAMILIES="a b" train and compare only these (default: every family found as above)
#   CACHE_DIR=DIR  corpus cache (config.data.cache_dir; default: bach_jax's own)
#   LIST=1         print the families that would be trained, one a line, and exit
#   PYTHON=...     interpreter (default: python)
#   Extra arguments are passed to `python -m bach_jax.compare` (e.g. --temperature=0.9).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
SMOKE=${SMOKE:-0}
if [[ "$SMOKE" == 1 ]]; then
  RUNS=${RUNS:-runs/compare_all_smoke}
  VARIANT=":test"
  STEPS=${SMOKE_STEPS:-10}
  TRAIN_FLAGS=(--config.train.num_steps="$STEPS" --config.train.eval_every=0
               --config.train.checkpoint_every="$STEPS" --config.train.log_every=10
               --config.train.num_final_samples=0)
  COMPARE_FLAGS=(--num_pieces=4 --num_steps=32 --sample_batch=2)
else
  RUNS=${RUNS:-runs/compare_all}
  VARIANT=""
  TRAIN_FLAGS=()
  COMPARE_FLAGS=()
fi
OUT=${OUT:-$RUNS/report}
if [[ -n "${CACHE_DIR:-}" ]]; then
  TRAIN_FLAGS+=(--config.data.cache_dir="$CACHE_DIR")
  COMPARE_FLAGS+=(--cache_dir="$CACHE_DIR")
fi

if [[ -z "${FAMILIES:-}" ]]; then
  FAMILIES=""
  registry=$("$PYTHON" -c 'from bach_jax import models; print(" ".join(models.REGISTRY))' \
             2>/dev/null) || {
    echo "compare_all: '$PYTHON' cannot import bach_jax (activate its environment?)" >&2
    exit 2
  }
  for name in $registry; do
    if [[ -f "configs/$name.py" ]]; then
      FAMILIES+="$name "
    else
      echo "compare_all: family '$name' is registered but has no configs/$name.py: skipped" >&2
    fi
  done
fi
read -r -a NAMES <<< "$FAMILIES"
if [[ "${LIST:-0}" == 1 ]]; then
  printf '%s\n' "${NAMES[@]}"
  exit 0
fi
if [[ ${#NAMES[@]} == 0 ]]; then
  echo "compare_all: no family to train" >&2
  exit 2
fi

finished() {  # Whether workdir $1's latest checkpoint is its config's last step.
  "$PYTHON" - "$1" <<'EOF'
import json, os, sys
workdir = sys.argv[1]
try:
  with open(os.path.join(workdir, 'config.json')) as f:
    last = json.load(f)['train']['num_steps']
  done = max(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
except (OSError, ValueError, KeyError):
  sys.exit(1)
sys.exit(0 if done >= last else 1)
EOF
}

base_of() {  # The family whose run family $1 starts from ('' for none).
  "$PYTHON" -c 'import sys; from bach_jax import models
print(models.get_family(sys.argv[1]).CAPABILITIES.builds_on)' "$1"
}

mkdir -p "$RUNS"
START=$SECONDS
RUN_ARGS=()
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  workdir="$RUNS/$name"
  RUN_ARGS+=("$workdir:$name")
  if finished "$workdir"; then
    echo "== [$((i + 1))/${#NAMES[@]}] $name: finished in $workdir, not retrained"
    continue
  fi
  echo "== [$((i + 1))/${#NAMES[@]}] training $name -> $workdir" \
       "($((SECONDS - START)) s since the start)"
  t0=$SECONDS
  base=$(base_of "$name")
  EXTRA=()
  if [[ -n "$base" ]]; then
    if [[ ! " ${NAMES[*]:0:$i} " == *" $base "* ]]; then
      echo "compare_all: $name builds on $base, which is not trained before it" >&2
      exit 2
    fi
    EXTRA=(--config.train.init_from="$RUNS/$base")
  fi
  "$PYTHON" -m bach_jax.main --config="configs/$name.py$VARIANT" --workdir="$workdir" \
      ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
  echo "== $name trained in $((SECONDS - t0)) s"
done

echo "== report of ${#NAMES[@]} runs -> $OUT"
"$PYTHON" -m bach_jax.compare "${RUN_ARGS[@]}" --out="$OUT" \
    ${COMPARE_FLAGS[@]+"${COMPARE_FLAGS[@]}"} "$@"
echo "== done in $((SECONDS - START)) s: $OUT/report.md"
