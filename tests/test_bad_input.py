"""Every bad input ends in one clear sentence, exit status 2 (1 for a diverged run), no traceback,
and nothing half-written. Run through airbench94.py; the other scripts share these blocks verbatim."""
import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
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
    # a pickle protocol torch does not know: torch.load warns before it fails, and the warning must not
    # add a line to the one sentence
    (data / 'test.pt').write_bytes(b'\x80\x13' + bytes(range(256)) * 10)
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
    user_error(run(data, tmp_path=tmp_path), 'data_batch_1', 'integers in 0..9')
    assert not (data / 'train.pt').exists()


@pytest.mark.parametrize('change, fragment', [
    (lambda s: s.update(images=s['images'].float()), 'dtype torch.float32'),
    (lambda s: s.update(images=s['images'].permute(0, 3, 1, 2).contiguous()), '(N, 32, 32, 3)'),
    (lambda s: s.update(labels=s['labels'][:-1]), 'labels of shape'),
    (lambda s: s.update(labels=s['labels'] - 1), 'in 0..9'),
    (lambda s: s.pop('classes'), 'classes of'),
    (lambda s: s.update(classes=['a'] * 9), 'classes of'),
    (lambda s: s.update(images=s['images'].to_sparse()), 'dense uint8'),
    (lambda s: s.update(labels=s['labels'].to_sparse()), 'dense int64'),
    (lambda s: s.update(images=s['images'].transpose(1, 2)), 'dense uint8'),  # same shape, not contiguous
])
def test_cache_with_bad_tensors(cifar_dir, tmp_path, change, fragment):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    split = torch.load(data / 'train.pt', weights_only=True)
    change(split)
    torch.save(split, data / 'train.pt')
    user_error(run(data, tmp_path=tmp_path), str(data / 'train.pt'), fragment, 'delete it')


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize('seed, fragment', [('99999999999999999999', 'must be in 0..2^53'),
                                            ('-1', 'must be in 0..2^53'), ('x', "invalid int value: 'x'")])
def test_a_seed_out_of_range_is_refused_before_anything_runs(cifar_dir, tmp_path, seed, fragment):
    proc = run(cifar_dir, '--seed', seed, tmp_path=tmp_path)
    no_traceback(proc)
    assert proc.returncode == 2 and f'argument --seed: {fragment}' in proc.stderr.splitlines()[-1]
    assert not (tmp_path / 'logs').exists()


@pytest.mark.parametrize('runs, fragment', [('0', 'must be a positive integer'), ('-3', 'must be a positive integer'),
                                            ('two', "invalid int value: 'two'")])
def test_bad_run_count(cifar_dir, tmp_path, runs, fragment):
    proc = run_script(SCRIPT, '--data-dir', cifar_dir, '--runs', runs)
    no_traceback(proc)
    assert proc.returncode == 2 and f'argument --runs: {fragment}' in proc.stderr.splitlines()[-1]


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


# ---------------------------------------------------------------- untrusted data files (hardening)


def copy_official(official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    return data


class RunsCode:
    """A pickle that, unpickled without restriction, runs a shell command (here: creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('name', ['data_batch_2', 'batches.meta'])
def test_a_pickle_that_would_run_code_is_refused(official_dir, tmp_path, name):
    data, marker = copy_official(official_dir, tmp_path), tmp_path / 'ran'
    with open(data / 'cifar-10-batches-py' / name, 'wb') as f:
        pickle.dump({b'data': RunsCode(marker), b'labels': [0], b'label_names': RunsCode(marker)}, f)
    line = user_error(run(data, tmp_path=tmp_path), name, 'system', 'not an official CIFAR-10 file')
    assert not marker.exists(), line
    assert not (data / 'train.pt').exists()


@pytest.mark.parametrize('names, fragment', [
    ([c for c in synthetic.CLASSES], 'label_names of'),                     # str, not the official bytes
    (list(range(10)), 'label_names of'),
    ([b'\xff\xfe'] * 10, 'label_names of'),                                  # not UTF-8
    ([c.encode() for c in synthetic.CLASSES[:9]], 'label_names of'),       # 9 names
])
def test_class_names_that_are_not_ten_utf8_byte_strings(official_dir, tmp_path, names, fragment):
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, 'batches.meta', lambda b: b.update({b'label_names': names}))
    user_error(run(data, tmp_path=tmp_path), 'batches.meta', fragment, 'UTF-8 byte strings')


def test_labels_that_are_floats_are_refused_not_truncated(official_dir, tmp_path):
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, 'data_batch_4', lambda b: b.update({b'labels': [v + 0.7 for v in b[b'labels']]}))
    user_error(run(data, tmp_path=tmp_path), 'data_batch_4', 'labels of', 'integers')


def test_a_label_out_of_range_is_reported_in_its_own_file(official_dir, tmp_path):
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, 'data_batch_3', lambda b: b[b'labels'].__setitem__(5, 11))
    line = user_error(run(data, tmp_path=tmp_path), 'data_batch_3', 'integers in 0..9')
    assert 'data_batch_1' not in line


def test_a_label_beyond_int64_is_refused_in_its_own_file(official_dir, tmp_path):
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, 'data_batch_3', lambda b: b[b'labels'].__setitem__(5, 2**70))
    user_error(run(data, tmp_path=tmp_path), 'data_batch_3', 'labels of', 'integers in 0..9')


def test_an_archive_with_a_bad_crc_is_refused_before_anything_is_cached(tmp_path):
    """tar stops reading at its end-of-archive marker, before gzip's CRC: a damaged trailer (or data
    the tar members do not reach) extracted silently. One bit flipped in the CRC."""
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    path = data / 'cifar-10-python.tar.gz'
    packed = bytearray(path.read_bytes())
    packed[-8] ^= 0x01  # the first byte of the CRC-32 in the gzip trailer
    path.write_bytes(bytes(packed))
    line = user_error(run(data, tmp_path=tmp_path), str(path), 'damaged', 'download it again')
    assert 'extract' not in line.split(':')[-1]  # the advice is not to extract a bad archive again
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz']


def test_an_archive_whose_files_are_bad_is_named_as_the_thing_to_replace(tmp_path):
    """A whole, CRC-checked archive without test_batch: extracting it again would not help."""
    staging, data = tmp_path / 'staging', tmp_path / 'data'
    synthetic.write_official(str(staging))
    (staging / 'cifar-10-batches-py' / 'test_batch').unlink()
    data.mkdir()
    with tarfile.open(data / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        tar.add(staging / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
    line = user_error(run(data, tmp_path=tmp_path), 'test_batch', 'missing', 'cifar-10-python.tar.gz is not a good copy',
                      'download it again')
    assert 'extract' not in line.split(':')[-1]
    assert not (data / 'train.pt').exists()


def test_an_archive_that_cannot_be_read_is_not_called_damaged(ab94, tmp_path, monkeypatch):
    """Root reads any file, so the refusal is simulated."""
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))

    def refuse(self):
        raise PermissionError(13, 'Permission denied', str(self))
    monkeypatch.setattr(ab94.pathlib.Path, 'read_bytes', refuse)
    with pytest.raises(ab94.UserError, match=r'^cannot read .*cifar-10-python.tar.gz \(Permission denied\)$'):
        ab94.load_cifar10(str(data))
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz']


def test_the_log_says_whether_the_archive_is_the_official_release(tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    md5 = hashlib.md5((data / 'cifar-10-python.tar.gz').read_bytes()).hexdigest()
    proc = run(data, '--set', 'opt.train_epochs=1', tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = read_log(log_dir_of(proc.stdout))
    assert log['data']['source'] == 'official archive'
    assert log['data']['origin'] == f'cifar-10-python.tar.gz with MD5 {md5}: not the official release (repacked or synthetic)'
    again = run(data, '--set', 'opt.train_epochs=1', tmp_path=tmp_path)  # from the cache now, which keeps it
    assert read_log(log_dir_of(again.stdout))['data'] == {**log['data'], 'source': 'cache'}


def test_the_loser_of_an_extraction_race_uses_the_winners_folder(ab94, tmp_path, monkeypatch):
    """Another invocation renames its extracted folder into place just before this one does."""
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    real_replace, raced = os.replace, []

    def replace(src, dst):
        if str(dst).endswith('cifar-10-batches-py') and not raced:
            raced.append(dst)
            winner = tmp_path / 'winner'
            synthetic.write_official(str(winner))
            real_replace(winner / 'cifar-10-batches-py', dst)
        return real_replace(src, dst)
    monkeypatch.setattr(os, 'replace', replace)
    splits, source = ab94.load_cifar10(str(data))
    assert raced and source == 'official archive' and len(splits['train']['labels']) == 2000
    assert not [p for p in data.iterdir() if p.name.startswith('.')]  # no temp folder left


def test_two_invocations_extracting_one_fresh_archive_at_once_both_succeed(tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    code = f'import runpy; m = runpy.run_path({str(REPO / "airbench94.py")!r}); print(m["load_cifar10"]({str(data)!r})[1])'
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and 'Traceback' not in err, err
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-batches-py', 'cifar-10-python.tar.gz', 'test.pt',
                                                       'train.pt']


def test_a_data_folder_that_cannot_be_written_ends_in_one_sentence(ab94, tmp_path, monkeypatch):
    """Extraction into a read-only folder (root ignores permission bits, so the refusal is simulated)."""
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))

    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(data)):
            raise PermissionError(13, 'Permission denied', path)
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(os, 'mkdir', mkdir)
    with pytest.raises(ab94.UserError, match='cannot extract .* into .* \\(Permission denied\\): extract it yourself'):
        ab94.load_cifar10(str(data))
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz']
