#!/bin/bash
# skeleton v2 speed check: airbench94 before (HEAD 510fc5a) and after, alternating, 2 epochs, same seed
cd /work/main
for pair in 1 2; do
  for which in before after; do
    if [ $which = before ]; then s=scratch/before/airbench94.py; else s=scratch/after/airbench94.py; fi
    echo "=== pair $pair $which $(date +%T)"
    OMP_NUM_THREADS=1 python $s --data-dir scratch/cifar10 --set opt.train_epochs=2 --seed 1 --runs 1 --no-warmup --device cpu --log-dir logs 2>&1 | grep -v Warning
  done
done
echo "=== done $(date +%T)"
