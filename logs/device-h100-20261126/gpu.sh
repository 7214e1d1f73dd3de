#!/bin/bash
# One prepared device check: hlb's BatchNorm precision on synthetic data, then timed runs on the JPEG CIFAR-10.
set -u
export PYTHONUNBUFFERED=1
START=$(date +%s)
W=/tmp/w; mkdir -p $W/logs
LOG=$OUT/out.txt
elapsed() { echo $(( $(date +%s) - START )); }
save() { tar czf $OUT/logs.tgz -C $W logs 2>/dev/null; }
step() {  # step UNTIL_S NAME CMD...: runs CMD until UNTIL_S seconds after the start at most
  local until=$1 name=$2; shift 2
  local rem=$(( until - $(elapsed) ))
  if [ $rem -lt 15 ]; then echo "SKIP $name" >> $LOG; return; fi
  echo "=== $name at $(elapsed) s, up to $rem s" >> $LOG
  timeout $rem "$@" >> $LOG 2>&1; echo "rc=$? $name at $(elapsed) s" >> $LOG
  save
}
nvidia-smi -L >> $LOG; python3 -c "import torch; print(torch.__version__, torch.version.cuda)" >> $LOG
python3 -c "import sys; sys.path.insert(0, 'tests'); import synthetic; synthetic.write_official('/tmp/syn', n_train=50000, n_test=10000)" >> $LOG 2>&1
echo "synthetic at $(elapsed) s" >> $LOG
step 70 hlb-syn-fp16bn python3 legacy/hlb_cifar10.py --data-dir /tmp/syn --log-dir $W/logs --runs 3 --seed 0 --set net.fp16_batchnorm=true
step 115 hlb-syn-fp32bn python3 legacy/hlb_cifar10.py --data-dir /tmp/syn --log-dir $W/logs --runs 3 --seed 0
python3 scratch/devdata/make_cifar10.py /tmp/real >> $LOG 2>&1; echo "real data at $(elapsed) s" >> $LOG
step 185 ab94 python3 airbench94.py --data-dir /tmp/real --log-dir $W/logs --runs 8 --seed 0
step 225 hlb-real python3 legacy/hlb_cifar10.py --data-dir /tmp/real --log-dir $W/logs --runs 5 --seed 0
step 255 muon python3 airbench94_muon.py --data-dir /tmp/real --log-dir $W/logs --runs 5 --seed 0
step 290 fast python3 legacy/cifar10_fast.py --data-dir /tmp/real --log-dir $W/logs --runs 1 --seed 0
step 318 ab95 python3 airbench95.py --data-dir /tmp/real --log-dir $W/logs --runs 1 --seed 0
echo "done at $(elapsed) s" >> $LOG
save
