#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for the GPU check on a machine that cannot fetch anything: a faiss-cpu wheel
# for Python 3.12 (the GPU image has torch, numpy, scipy, scikit-learn, matplotlib, safetensors, tqdm and
# Pillow, not faiss) and Fashion-MNIST's four files. Then run there, carrying .gpu:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl && \
#   PYTHONPATH=/tmp/site:src EXEMPLAR_VAE_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1 \
#   python3 benchmarks/gpu_check.py --out $OUT --minutes 1.5
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/whl .gpu/data/fashion-mnist .git/info
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d .gpu/whl "faiss-cpu==1.15.1"
src=${FASHION_DIR:-/usr/share/datasets/fashion-mnist}
cp "$src"/train-images-idx3-ubyte.gz "$src"/train-labels-idx1-ubyte.gz "$src"/t10k-images-idx3-ubyte.gz \
    "$src"/t10k-labels-idx1-ubyte.gz .gpu/data/fashion-mnist/
du -sh .gpu
