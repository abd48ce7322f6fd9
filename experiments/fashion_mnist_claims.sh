#!/usr/bin/env bash
# The paper's claims at a real budget (MLP VAE, Fashion-MNIST): long runs of the Gaussian, VampPrior and
# exemplar priors (k = 10), evaluated on all 10,000 test images at S = 5000; the kNN probe of all three
# priors' codes; the paper's classifier for 100 epochs, 3 seeds, with and without augmentation by the
# longest-trained exemplar model. Every step is resumable and skipped when its output exists, so the script
# can be run again after an interruption (or in later sessions) until everything is there.
#
#   RUNS=$HOME/claims EPOCHS=100 experiments/fashion_mnist_claims.sh
#
# Budget knobs: EPOCHS (100), WARMUP (25), CLASSIFY_EPOCHS (100), SEEDS (3), SAMPLES (5000).
# Each figure's budget and the prior's log sigma^2 are in the run folders (config.json, metrics.jsonl,
# evaluation.json) and in OUT/claims_*.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/exemplar-vae}
RUNS=${RUNS:-$HOME/claims}
OUT=${OUT_DIR:-results}
EPOCHS=${EPOCHS:-100}
WARMUP=${WARMUP:-25}
CLASSIFY_EPOCHS=${CLASSIFY_EPOCHS:-100}
SEEDS=${SEEDS:-3}
SAMPLES=${SAMPLES:-5000}
mkdir -p "$OUT" "$RUNS"

# 1. the long runs (resumed when they exist; more epochs extend them)
for prior in exemplar gaussian vampprior; do
  run="$RUNS/$prior"
  if [ -f "$run/last.pt" ] || [ -f "$run/last.json" ]; then
    "$CLI" -q train --out "$run" --resume --epochs "$EPOCHS" --no-progress
  else
    extra=()
    [ "$prior" = exemplar ] && extra=(--knn 10 --search ivf)
    "$CLI" -q train --dataset fashion-mnist --prior "$prior" --epochs "$EPOCHS" --warmup "$WARMUP" \
      --early-stopping 0 --seed 1 --out "$run" --no-progress "${extra[@]}"
  fi
done

# 2. density: all test images, S = 5000 (the exemplar prior truncated to 1000 candidates, checked on 100)
for prior in exemplar gaussian vampprior; do
  [ -f "$RUNS/$prior/evaluation.json" ] || "$CLI" -q evaluate "$RUNS/$prior" --samples "$SAMPLES" --check-exact 100 --no-progress
done
"$CLI" table "$RUNS/gaussian" "$RUNS/vampprior" "$RUNS/exemplar" --out "$OUT/claims_density.md"

# 3. kNN probe of each prior's codes
for prior in gaussian vampprior exemplar; do
  [ -f "$OUT/claims_probe_$prior.md" ] || "$CLI" -q probe "$RUNS/$prior" --out "$OUT/claims_probe_$prior.md"
done

# 4. augmentation: the paper's classifier, with and without the exemplar model's augmentations
#    (each finished classifier is kept in $RUNS/classify: running the script again resumes the comparison)
"$CLI" -q classify --dataset fashion-mnist --augment "$RUNS/exemplar" --hidden 1024 --seeds "$SEEDS" \
  --epochs "$CLASSIFY_EPOCHS" --work "$RUNS/classify" --out "$OUT/claims_classify.md" --no-progress
