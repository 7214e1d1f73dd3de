import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import synthetic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# pytest-xdist (the `test` extra; `-n auto` in pyproject.toml) runs one worker per core: give each
# worker, and every script it starts, one thread, so the workers share the cores instead of
# oversubscribing them. Tests that need another thread count set OMP_NUM_THREADS themselves.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    import torch
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

# Overrides that make any airbench94-like script train in about a second on the synthetic data:
# 2,000 images in batches of 200 = 10 steps per epoch, narrow blocks.
TINY = ['--set', 'opt.batch_size=200', '--set', 'opt.train_epochs=3',
        '--set', 'net.widths.block1=16', '--set', 'net.widths.block2=32', '--set', 'net.widths.block3=32']


def load_script(name):
    """Imports a script of the project as a module, by its path without .py ('airbench94',
    'ablations/main3_scalebias', 'legacy/hlb_cifar10'); importing a script runs nothing."""
    module_name = name.replace('/', '__')
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / f'{name}.py')
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def train_on(m, hyp, dev, data, seed=0, run=1, **kwargs):
    """Script module m's train() on fresh loaders of data, as its harness calls it; returns the record."""
    return m.train(hyp, dev, *m.make_loaders(hyp, dev, data), seed=seed, run=run, verbose=False, **kwargs)[1]


def run_script(name, *args, timeout=300, env=None, cwd=None):
    """Runs REPO/name.py (name as for load_script) as a user would; returns the CompletedProcess (text)."""
    full_env = {k: v for k, v in os.environ.items() if k != 'AIRBENCH_DATA'}
    full_env.update({'PYTHONUNBUFFERED': '1', **(env or {})})
    return subprocess.run([sys.executable, str(REPO / f'{name}.py'), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def log_dir_of(stdout):
    """The log folder an invocation announced on its 'log: DIR' line."""
    for line in stdout.splitlines():
        if line.startswith('log: '):
            return Path(line[5:].strip())
    raise AssertionError('no "log: DIR" line in the output:\n' + stdout)


def fingerprint(run):
    """What two runs of one seed must share exactly: seed, steps, accuracies, every epoch's numbers."""
    return {'seed': run['seed'], 'steps': run['steps'], 'tta_val_acc': run['tta_val_acc'], 'val_acc': run['val_acc'],
            'epochs': [(e['train_loss'], e['train_acc'], e['val_acc']) for e in run['epochs']]}


def read_log(folder):
    with open(Path(folder) / 'log.json') as f:
        return json.load(f)


@pytest.fixture(scope='session')
def official_dir(tmp_path_factory):
    """Synthetic CIFAR-10 in the official python layout only (2,000 train / 500 test images).
    Read-only for tests: copy it before a script may write its cache there."""
    return str(synthetic.write_official(tmp_path_factory.mktemp('cifar_official')))


@pytest.fixture(scope='session')
def cifar_dir(official_dir, tmp_path_factory):
    """The same data with its train.pt/test.pt cache already built, so every run reads the cache
    whichever test runs first."""
    root = tmp_path_factory.mktemp('cifar') / 'data'
    shutil.copytree(official_dir, root)
    load_script('airbench94').load_cifar10(str(root))
    return str(root)




# The scripts as modules, one fixture each (importing a script runs nothing).
for _fixture, _script in {'ab94': 'airbench94', 'ab95': 'airbench95', 'ab96': 'airbench96',
                          'mu': 'airbench94_muon', 'fa': 'airbench96_faster'}.items():
    globals()[_fixture] = pytest.fixture(scope='session', name=_fixture)(lambda script=_script: load_script(script))


@pytest.fixture(scope='session')
def data(cifar_dir):
    """The synthetic data as the scripts load it: {'train': split, 'test': split}."""
    return load_script('airbench94').load_cifar10(cifar_dir)[0]


@pytest.fixture(scope='session')
def cpu(ab94):
    """airbench94's Device('cpu'); every script's Device is the same shared block."""
    return ab94.Device('cpu')


def random_split(n, seed=0):
    """n random uint8 images with random labels, in the form load_cifar10 returns a split."""
    import torch
    g = torch.Generator().manual_seed(seed)
    return {'images': torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
            'labels': torch.randint(0, 10, (n,), generator=g), 'classes': [str(i) for i in range(10)]}


def no_traceback(proc):
    assert 'Traceback' not in proc.stderr and 'Traceback' not in proc.stdout, proc.stderr


def pid_of_rank(tag, rank):
    """The pid of the torchrun worker of this rank among the processes started with AIRBENCH_TEST_TAG=tag
    (the runs are logged without pids: they are found through /proc)."""
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                env = (entry / 'environ').read_bytes().split(b'\0')
            except OSError:
                continue
            if f'AIRBENCH_TEST_TAG={tag}'.encode() in env and f'RANK={rank}'.encode() in env:
                return int(entry.name)
    return None
