"""Every bad input ends in one clear sentence, exit status 2 (1 for a diverged run), no traceback,
and nothing half-written. Run through airbench94.py; the other scripts share these blocks verbatim."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import synthetic
from conftest import REPO, TINY, log_dir_of, no_traceback, read_log, run_script

SCRIPT = 'airbench94'


def user_error(proc, *fragments):
    """Asserts exit status 2 with a single-line message that contains the fragments."""
    no_traceback(proc)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert '|' not in proc.stdout  # stopped before any training row
    return lines[0]


def snapshot(folder):
    """{relative path: bytes} of every file under folder."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def run(data_dir, *args, tmp_path, env=None):
    return run_script(SCRIPT, '--data-dir', str(data_dir), '--log-dir', str(tmp_path / 'logs'), '--runs', '1',
                      '--no-warmup', *TINY, *args, env=env)


# ---------------------------------------------------------------- data


def test_no_data_and_no_torchvision(tmp_path):
    empty = tmp_path / 'nothing'
    empty.mkdir()
    msg = user_error(run(empty, tmp_path=tmp_path), str(empty), 'torchvision')
    assert 'cifar-10-python.tar.gz' in msg
    assert list(empty.iterdir()) == [] and not (tmp_path / 'logs').exists()


def test_no_data_and_no_network(tmp_path):
    fake = tmp_path / 'fake_site' / 'torchvision'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text('from . import datasets\n')
    (fake / 'datasets.py').write_text(
        'import os, urllib.error\n'
        'class CIFAR10:\n'
        '    def __init__(self, root, train=True, download=False):\n'
        '        open(os.path.join(root, "cifar-10-python.tar.gz"), "wb").write(b"partial")\n'
        '        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")\n')
    data = tmp_path / 'data'
    proc = run(data, tmp_path=tmp_path, env={'PYTHONPATH': str(tmp_path / 'fake_site')})
    user_error(proc, str(data), 'download', 'network')
    assert list(data.iterdir()) == []  # the partial download was not left behind


def test_data_dir_is_a_file(tmp_path):
    f = tmp_path / 'file'
    f.write_text('x')
    user_error(run(f, tmp_path=tmp_path), str(f), 'is a file')


def test_truncated_cache(cifar_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    path = data / 'train.pt'
    path.write_bytes(path.read_bytes()[:5000])
    before = snapshot(data)
    user_error(run(data, tmp_path=tmp_path), str(path), 'delete it')
    assert snapshot(data) == before


def test_corrupt_cache(cifar_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    (data / 'test.pt').write_bytes(os.urandom(3000))
    user_error(run(data, tmp_path=tmp_path), str(data / 'test.pt'))


def test_truncated_pickle(official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    path = data / 'cifar-10-batches-py' / 'data_batch_3'
    path.write_bytes(path.read_bytes()[:1000])
    before = snapshot(data)
    user_error(run(data, tmp_path=tmp_path), str(path), 'truncated or corrupt')
    assert snapshot(data) == before  # no cache was written from bad files


def test_missing_pickle(official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    (data / 'cifar-10-batches-py' / 'test_batch').unlink()
    user_error(run(data, tmp_path=tmp_path), 'test_batch', 'missing')


def test_corrupt_archive(tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    path = data / 'cifar-10-python.tar.gz'
    path.write_bytes(path.read_bytes()[:2000])
    user_error(run(data, tmp_path=tmp_path), str(path), 'delete it')
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz']  # no half-extracted folder


def rewrite_batch(data, name, change):
    path = data / 'cifar-10-batches-py' / name
    with open(path, 'rb') as f:
        batch = pickle.load(f, encoding='bytes')
    change(batch)
    with open(path, 'wb') as f:
        pickle.dump(batch, f)
    return path


@pytest.mark.parametrize('name, change, fragment', [
    ('data_batch_2', lambda b: b.update({b'data': b[b'data'][:, :1024]}), '(N, 3072)'),
    ('test_batch', lambda b: b.update({b'data': b[b'data'].astype('float32')}), 'uint8'),
])
def test_pickled_images_of_the_wrong_shape_or_dtype(official_dir, tmp_path, name, change, fragment):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    path = rewrite_batch(data, name, change)
    user_error(run(data, tmp_path=tmp_path), str(path), fragment)


def test_pickled_labels_out_of_range(official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    rewrite_batch(data, 'data_batch_1', lambda b: b[b'labels'].__setitem__(0, 10))
    user_error(run(data, tmp_path=tmp_path), 'labels outside 0..9')
    assert not (data / 'train.pt').exists()


@pytest.mark.parametrize('change, fragment', [
    (lambda s: s.update(images=s['images'].float()), 'dtype torch.float32'),
    (lambda s: s.update(images=s['images'].permute(0, 3, 1, 2).contiguous()), '(N, 32, 32, 3)'),
    (lambda s: s.update(labels=s['labels'][:-1]), 'labels of shape'),
    (lambda s: s.update(labels=s['labels'] - 1), 'labels outside 0..9'),
])
def test_cache_with_bad_tensors(cifar_dir, tmp_path, change, fragment):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    split = torch.load(data / 'train.pt', weights_only=True)
    change(split)
    torch.save(split, data / 'train.pt')
    user_error(run(data, tmp_path=tmp_path), str(data / 'train.pt'), fragment)


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize('target', ['150', '0', 'high'])
def test_bad_target(cifar_dir, target):
    proc = run_script(SCRIPT, '--data-dir', cifar_dir, '--target', target)
    no_traceback(proc)
    assert proc.returncode == 2 and '--target: must be an accuracy like 0.94 or 94' in proc.stderr


@pytest.mark.parametrize('runs', ['0', '-3', 'two'])
def test_bad_run_count(cifar_dir, tmp_path, runs):
    proc = run_script(SCRIPT, '--data-dir', cifar_dir, '--runs', runs)
    no_traceback(proc)
    assert proc.returncode == 2 and '--runs: must be a positive integer' in proc.stderr


@pytest.mark.parametrize('setting, fragment', [
    ('opt.train_epochs=-1', 'opt.train_epochs=-1.0 is out of range'),
    ('opt.train_epochs=0', 'must be positive'),
    ('opt.batch_size=1.5', "expected int, like the default 1024"),
    ('opt.lr=fast', 'expected float'),
    ('opt.lr=nan', 'expected float'),
    ('aug.flip=maybe', "must be 'alternating', 'random' or 'none'"),
    ('aug.translate=2.5', 'expected int'),
    ('opt.learning_rate=1', 'no such hyperparameter; did you mean opt.lr'),
    ('net.widths=3', 'no such hyperparameter'),
    ('opt.lr', 'is not KEY=VALUE'),
    ('net.tta_level=3', 'must be 0, 1 or 2'),
])
def test_bad_overrides(cifar_dir, tmp_path, setting, fragment):
    user_error(run(cifar_dir, '--set', setting, tmp_path=tmp_path), fragment)
    assert not (tmp_path / 'logs').exists()


def test_batch_larger_than_the_training_set(cifar_dir, tmp_path):
    user_error(run(cifar_dir, '--set', 'opt.batch_size=4096', tmp_path=tmp_path),
               'opt.batch_size=4096 is larger than the training set (2000 images')


def test_unavailable_device(cifar_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    user_error(run(cifar_dir, '--device', 'cuda', tmp_path=tmp_path), '--device cuda')


def test_unwritable_log_folder_is_detected_before_training(cifar_dir, tmp_path):
    blocker = tmp_path / 'not_a_folder'
    blocker.write_text('x')
    proc = run_script(SCRIPT, '--data-dir', cifar_dir, '--log-dir', str(blocker / 'logs'), '--runs', '1', *TINY)
    user_error(proc, str(blocker / 'logs'), '--log-dir')


# ---------------------------------------------------------------- failures during training


def test_nan_loss_stops_the_run_naming_the_step(cifar_dir, tmp_path):
    proc = run(cifar_dir, '--set', 'opt.lr=1e30', tmp_path=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'NaN or infinite at step' in lines[0] and 'of 30' in lines[0]
    log = read_log(log_dir_of(proc.stdout))
    assert log['status'] == 'diverged' and log['runs'] == [] and 'step' in log['message']


def test_interrupt_keeps_the_finished_runs(cifar_dir, tmp_path):
    logs = tmp_path / 'logs'
    cmd = [sys.executable, str(REPO / f'{SCRIPT}.py'), '--data-dir', cifar_dir, '--log-dir', str(logs),
           '--runs', '50', '--no-warmup', '--seed', '1', *TINY]
    # a shell starts background jobs with SIGINT ignored, and children inherit that: give Ctrl-C
    # back its default, so the test means the same however pytest itself was started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    folder = None
    for line in proc.stdout:
        if line.startswith('log: '):
            folder = line[5:].strip()
            break
    deadline = time.time() + 120
    while time.time() < deadline and len(read_log(folder)['runs']) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    no_traceback(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    assert proc.returncode == 130, err
    log = read_log(folder)
    k = len(log['runs'])
    assert 2 <= k < 50 and log['status'] == 'interrupted'
    assert [r['run'] for r in log['runs']] == list(range(1, k + 1))
    assert log['summary']['n'] == k
    pt = torch.load(os.path.join(folder, 'log.pt'), weights_only=True)
    assert pt['accs'].tolist() == [r['tta_val_acc'] for r in log['runs']] and pt['status'] == 'interrupted'
    assert sorted(os.listdir(folder)) == ['log.json', 'log.pt']
    assert 'Mean:' in out and f'after {k} finished runs' in out
