#!/usr/bin/env bash
# The authors' other statements, measured on Fashion-MNIST (MLP VAE):
#  1. "Exemplar subsampling in a VampPrior acts like fewer pseudo-inputs": K = 500 pseudo-inputs with K' = 50
#     drawn per step (--subsample 50) against K = 50 pseudo-inputs, same budget (EPOCHS, seed), test
#     log-likelihood on all 10,000 test images at S = SAMPLES;
#  2. "A lower temperature improves sample quality": the Fréchet distance in the feature space of the
#     paper's MLP classifier (experiments/sample_quality.py) of the four priors' samples at several
#     temperatures. The Gaussian, VampPrior and exemplar runs are the long runs of
#     experiments/fashion_mnist_claims.sh (RUNS); a mixture-of-Gaussians run with the same protocol is
#     trained here.
# Every step is skipped when its output exists, so the script can be run again after an interruption.
#
#   RUNS=$HOME/longruns/runs OUT_DIR=results experiments/fashion_mnist_statements.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/exemplar-vae}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-$HOME/claims}
OUT=${OUT_DIR:-results}
EPOCHS=${EPOCHS:-30}            # the VampPrior comparison's budget
LONG_EPOCHS=${LONG_EPOCHS:-100} # the MoG run, as the claims runs
SAMPLES=${SAMPLES:-1000}
mkdir -p "$OUT" "$RUNS"

train() {  # train RUN [options...]: resumed when it exists
  local run=$1; shift
  if [ -f "$run/last.json" ] || [ -f "$run/last.pt" ]; then
    "$CLI" -q train --out "$run" --resume --no-progress
  else
    "$CLI" -q train --dataset fashion-mnist --early-stopping 0 --seed 1 --out "$run" --no-progress "$@"
  fi
}

# 1. VampPrior: subsampling against fewer pseudo-inputs, equal epochs
train "$RUNS/vamp_k500_sub50" --prior vampprior --components 500 --subsample 50 --epochs "$EPOCHS" --warmup 10
train "$RUNS/vamp_k50" --prior vampprior --components 50 --epochs "$EPOCHS" --warmup 10
train "$RUNS/vamp_k500" --prior vampprior --components 500 --epochs "$EPOCHS" --warmup 10
for run in vamp_k500_sub50 vamp_k50 vamp_k500; do
  [ -f "$RUNS/$run/evaluation.json" ] || "$CLI" -q evaluate "$RUNS/$run" --samples "$SAMPLES" --no-progress
done
"$CLI" table "$RUNS/vamp_k500" "$RUNS/vamp_k500_sub50" "$RUNS/vamp_k50" --out "$OUT/vampprior_subsampling.md"

# 2. sample quality against temperature, four priors
train "$RUNS/mog" --prior mog --components 500 --epochs "$LONG_EPOCHS" --warmup 25
[ -f "$OUT/sample_quality.md" ] || "$PY" experiments/sample_quality.py "$RUNS/gaussian" "$RUNS/mog" \
  "$RUNS/vampprior" "$RUNS/exemplar" --classifier-epochs 30 --samples 10000 \
  --temperatures 0.5 0.7 0.85 1.0 --classifier-cache "$RUNS/fashion_mlp_classifier.pt" \
  --out "$OUT/sample_quality.md"
echo STATEMENTS DONE
