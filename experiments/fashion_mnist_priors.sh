#!/usr/bin/env bash
# The README's results table: the four priors on Fashion-MNIST at one training budget, same network,
# same protocol. Resumable: re-running continues unfinished runs from their last checkpoint.
#
#   experiments/fashion_mnist_priors.sh                 # all four priors, one after another
#   PRIORS="gaussian mog" experiments/fashion_mnist_priors.sh   # a subset (e.g. to run two queues)
#
# Budget knobs (defaults = the README table): EPOCHS, WARMUP, SEED, SAMPLES (S), LIMIT (test points;
# default: all 10,000). Afterwards: `exemplar-vae table runs/fashion/{gaussian,mog,vampprior,exemplar}`.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/exemplar-vae}
OUT=${OUT:-runs/fashion}
PRIORS=${PRIORS:-"gaussian mog vampprior exemplar"}
EPOCHS=${EPOCHS:-40}
WARMUP=${WARMUP:-10}
SEED=${SEED:-1}
LIMIT=${LIMIT:-}
SAMPLES=${SAMPLES:-1000}

for prior in $PRIORS; do
  run="$OUT/$prior"
  if [ -f "$run/last.json" ] || [ -f "$run/last.pt" ]; then  # last.pt: runs written before
    "$CLI" train --out "$run" --resume --epochs "$EPOCHS" --no-progress
  else
    "$CLI" train --dataset fashion-mnist --prior "$prior" --epochs "$EPOCHS" --warmup "$WARMUP" \
      --early-stopping 0 --seed "$SEED" --out "$run" --no-progress
  fi
  "$CLI" evaluate "$run" ${LIMIT:+--limit "$LIMIT"} --samples "$SAMPLES" --check-exact 100 --no-progress
done
