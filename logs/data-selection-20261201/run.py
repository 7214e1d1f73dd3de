"""The original README's data-selection experiment through the airbench package, on a CPU.

example.py beside this file is the example verbatim (tests/test_package.py holds the same text).
Run from the folder that holds cifar10/ (so the example's 'cifar10' is that data), one process, one
torch thread:
    cd scratch && OMP_NUM_THREADS=1 python ../logs/data-selection-20261201/run.py > ../logs/data-selection-20261201/out.txt
Every train94 call of the example is timed and its net evaluated on the test split (TTA level 2 as
train94's verbose table prints it, and without TTA); result.json is rewritten after each call."""
import hashlib
import json
import os
import subprocess
import time

import torch

import airbench
import airbench94

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SEED = 0
example = open(os.path.join(HERE, 'example.py')).read()
result = {
    'what': "the original README's data-selection example, verbatim, through the airbench package",
    'data': os.path.abspath('cifar10'), 'seed': SEED, 'threads': torch.get_num_threads(),
    'torch': torch.__version__, 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
    'commit': subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=REPO).stdout.strip(),
    'sha256': {name: hashlib.sha256(open(os.path.join(REPO, name), 'rb').read()).hexdigest()
               for name in ('airbench/__init__.py', 'airbench94.py')},
    'calls': [],
}
test_loader = airbench.CifarLoader('cifar10', train=False, batch_size=2000)
train94 = airbench.train94


def write():
    with open(os.path.join(HERE, 'result.json.tmp'), 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(os.path.join(HERE, 'result.json.tmp'), os.path.join(HERE, 'result.json'))


def timed_train94(*args, **kwargs):
    loader = args[0] if args else kwargs.get('train_loader')
    start = time.perf_counter()
    net = train94(*args, **kwargs)
    seconds = time.perf_counter() - start
    result['calls'].append({
        'call': f'train94({", ".join(["train_loader"] * bool(args) + [f"{k}={v!r}" for k, v in kwargs.items()])})',
        'train_images': None if loader is None else len(loader.images),
        'wall_seconds': round(seconds, 1),
        'tta_val_acc': airbench.evaluate(net, test_loader, tta_level=2),
        'val_acc': airbench.evaluate(net, test_loader, tta_level=0)})
    print('recorded:', json.dumps(result['calls'][-1]), flush=True)
    write()
    return net


airbench.train94 = timed_train94  # the example imports train94 from the package: this one
torch.manual_seed(SEED)
start = time.perf_counter()
exec(compile(example, 'example.py', 'exec'), {})
result['total_wall_seconds'] = round(time.perf_counter() - start, 1)
result['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
write()
print('done in', result['total_wall_seconds'], 's', flush=True)
