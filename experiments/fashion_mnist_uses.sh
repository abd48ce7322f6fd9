#!/usr/bin/env bash
# What the trained Fashion-MNIST models are for (the README's second results section): kNN probes of the
# codes, pictures, new exemplars without retraining, and classifier augmentation. Needs the runs of
# experiments/fashion_mnist_priors.sh. Writes results/fashion_mnist_*.md and results/*.png.
#
# Budget knobs: CLASSIFY_EPOCHS (default 10; the paper: 100), SEEDS (3), HIDDEN (1024), LIMIT, SAMPLES.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/exemplar-vae}
RUNS=${RUNS:-runs/fashion}
OUT=${OUT_DIR:-results}
CLASSIFY_EPOCHS=${CLASSIFY_EPOCHS:-10}
SEEDS=${SEEDS:-3}
HIDDEN=${HIDDEN:-1024}
LIMIT=${LIMIT:-1000}
SAMPLES=${SAMPLES:-1000}
mkdir -p "$OUT"
EX="$RUNS/exemplar"

# 1. kNN classification on encoder means, each prior, and a t-SNE map of the exemplar codes
for prior in gaussian vampprior mog exemplar; do
  "$CLI" probe "$RUNS/$prior" --out "$OUT/fashion_mnist_probe_$prior.md" \
    $([ "$prior" = exemplar ] && echo --tsne "$OUT/fashion_mnist_tsne_exemplar.png")
done

# 2. pictures: exemplar-based generation, cyclic generation, interpolation, lower-temperature samples
"$CLI" generate "$EX" --out "$OUT/fashion_mnist_exemplars.png" --from-exemplars --n 10 --variations 10
"$CLI" generate "$EX" --out "$OUT/fashion_mnist_cyclic.png" --cyclic 29 --n 8
"$CLI" generate "$EX" --out "$OUT/fashion_mnist_interpolation.png" --interpolate --n 8 --steps 10
"$CLI" generate "$EX" --out "$OUT/fashion_mnist_samples_t07.png" --n 64 --temperature 0.7

# 3. new exemplars without retraining: the validation images join the exemplar set at test time
"$CLI" evaluate "$EX" --limit "$LIMIT" --samples "$SAMPLES" --out "$OUT/fashion_mnist_eval_train_exemplars.json" --json --no-progress
"$CLI" evaluate "$EX" --limit "$LIMIT" --samples "$SAMPLES" --with-val \
  --out "$OUT/fashion_mnist_eval_train_val_exemplars.json" --json --no-progress

# 4. generative data augmentation for the paper's MLP classifier
"$CLI" classify --dataset fashion-mnist --augment "$EX" --hidden "$HIDDEN" --seeds "$SEEDS" \
  --epochs "$CLASSIFY_EPOCHS" --out "$OUT/fashion_mnist_classify.md" --no-progress
