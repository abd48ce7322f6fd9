#!/usr/bin/env bash
# The approximate (IVF) retrieval search against the exact one, at equal epochs: the reproduce budget of
# experiments/fashion_mnist_reproduce.sh (MLP VAE, exemplar prior, k = 10, M = 25,000, 20 epochs with
# KL warm-up 5, seeds 1 and 2), trained with --search ivf, evaluated like the reproduce runs (first 1,000
# test images, S = 5000, 1000 candidates), and compared with the exact-search reproduce runs of the same
# seeds (run experiments/fashion_mnist_reproduce.sh first). Writes results/ivf_search_fashion.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/exemplar-vae}
EXACT=${EXACT:-runs/reproduce-fashion-mlp/fashion-mnist-mlp-exemplar}
OUT=${OUT:-runs/ivf-compare}
for seed in 1 2; do
  run="$OUT/ivf-seed$seed"
  if [ ! -f "$run/best.json" ] && [ ! -f "$run/best.pt" ]; then  # best.pt: runs written before
    "$CLI" train --dataset fashion-mnist --prior exemplar --exemplars 25000 --knn 10 --search ivf --nprobe 16 \
      --epochs 20 --warmup 5 --early-stopping 50 --seed "$seed" --device cpu --no-progress --out "$run"
  fi
  [ -f "$run/evaluation.json" ] || "$CLI" evaluate "$run" --limit 1000 --samples 5000 --candidates 1000 \
    --check-exact 0 --no-progress
done
# the exact-search runs re-evaluated with the same code as the ivf runs (their own evaluation.json may be
# older), written beside the ivf runs
for seed in 1 2; do
  [ -f "$OUT/exact-seed$seed.evaluation.json" ] || "$CLI" evaluate "$EXACT/seed$seed" --limit 1000 --samples 5000 \
    --candidates 1000 --check-exact 0 --no-progress --out "$OUT/exact-seed$seed.evaluation.json"
done
.venv/bin/python experiments/compare_runs.py --baseline "$EXACT/seed1" "$EXACT/seed2" \
  --baseline-evaluations "$OUT/exact-seed1.evaluation.json" "$OUT/exact-seed2.evaluation.json" \
  --candidate "$OUT/ivf-seed1" "$OUT/ivf-seed2" --label "exact search" --candidate-label "ivf search (nprobe 16)" \
  --out results/ivf_search_fashion.md
