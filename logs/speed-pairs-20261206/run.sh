#!/usr/bin/env bash
# Skeleton v3 speed pairs: airbench94.py before (7e7ba61, scratch/before) and after (scratch/after:
# airbench94.py at ad1bf0d), alternating, two pairs, one torch thread, on the JPEG copy of CIFAR-10
# in the official layout (docs/data.md). Each run prints its per-epoch table (cumulative timed seconds).
set -u
cd "$(dirname "$0")/../.."
DATA=${DATA:-$HOME/cifar10}
for pair in 1 2; do
  for side in before after; do
    echo "=== $side, pair $pair ($(date -u +%H:%M:%S))"
    OMP_NUM_THREADS=1 python scratch/$side/airbench94.py --data-dir "$DATA" --log-dir logs \
      --set opt.train_epochs=2 --seed 1 --runs 1 --no-warmup --device cpu
  done
done
