"""Every bad input ends in one clear sentence, exit status 2 (1 for a diverged run), no traceback,
and nothing half-written. Through airbench94.py: in-process for the data files (load_cifar10 raises
the UserError that the command prints), as a command where the exit status is the point. The other
scripts share these blocks verbatim."""
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


def refused(ab94, data, *fragments):
    """load_cifar10(data) raises the one-sentence UserError with the fragments; returns its text."""
    with pytest.raises(ab94.UserError) as e:
        ab94.load_cifar10(str(data))
    message = str(e.value)
    assert '\n' not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


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


def copy_official(official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    return data


# ---------------------------------------------------------------- data


def test_no_data_and_no_torchvision(tmp_path):
    empty = tmp_path / 'nothing'
    empty.mkdir()
    msg = user_error(run(empty, tmp_path=tmp_path), str(empty), 'torchvision', 'put the archive there')
    assert list(empty.iterdir()) == [] and not (tmp_path / 'logs').exists()


def test_no_data_and_no_network(ab94, tmp_path, monkeypatch):
    """torchvision's download_url fails half-way: no partial archive is left behind."""
    fake = tmp_path / 'fake_site' / 'torchvision'
    (fake / 'datasets').mkdir(parents=True)
    (fake / '__init__.py').write_text('')
    (fake / 'datasets' / '__init__.py').write_text('')
    (fake / 'datasets' / 'utils.py').write_text(
        'import os, urllib.error\n'
        'def download_url(url, root, filename=None, md5=None):\n'
        '    os.makedirs(root, exist_ok=True)\n'
        '    open(os.path.join(root, filename), "wb").write(b"partial")\n'
        '    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")\n')
    monkeypatch.syspath_prepend(str(tmp_path / 'fake_site'))
    data = tmp_path / 'data'
    refused(ab94, data, str(data), 'download', 'name resolution')
    assert list(data.iterdir()) == []  # the partial download was not left behind


def test_data_dir_is_a_file(tmp_path):
    f = tmp_path / 'file'
    f.write_text('x')
    user_error(run(f, tmp_path=tmp_path), str(f), 'is a file')


def test_truncated_cache(ab94, cifar_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    path = data / 'train.pt'
    path.write_bytes(path.read_bytes()[:5000])
    before = snapshot(data)
    refused(ab94, data, str(path), 'cannot be read', 'delete train.pt and test.pt')
    assert snapshot(data) == before


def test_corrupt_cache(cifar_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    # a pickle protocol torch does not know: torch.load warns before it fails, and the warning must not
    # add a line to the one sentence
    (data / 'test.pt').write_bytes(b'\x80\x13' + bytes(range(256)) * 10)
    user_error(run(data, tmp_path=tmp_path), str(data / 'test.pt'))


def test_truncated_pickle(ab94, official_dir, tmp_path):
    data = copy_official(official_dir, tmp_path)
    path = data / 'cifar-10-batches-py' / 'data_batch_3'
    path.write_bytes(path.read_bytes()[:1000])
    before = snapshot(data)
    refused(ab94, data, str(path), 'not an official CIFAR-10 file')
    assert snapshot(data) == before  # no cache was written from bad files


def test_missing_pickle(ab94, official_dir, tmp_path):
    data = copy_official(official_dir, tmp_path)
    (data / 'cifar-10-batches-py' / 'test_batch').unlink()
    refused(ab94, data, 'test_batch', 'missing')


def test_corrupt_archive(ab94, tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    path = data / 'cifar-10-python.tar.gz'
    path.write_bytes(path.read_bytes()[:2000])
    refused(ab94, data, str(path), 'damaged', 'download it again')
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz']  # nothing extracted


def rewrite_batch(data, name, change):
    path = data / 'cifar-10-batches-py' / name
    with open(path, 'rb') as f:
        batch = pickle.load(f, encoding='bytes')
    change(batch)
    with open(path, 'wb') as f:
        pickle.dump(batch, f)
    return path


@pytest.mark.parametrize('name, change, fragment', [
    ('data_batch_2', lambda b: b.update({b'data': b[b'data'][:, :1024]}), 'rows of 3,072 uint8'),
    ('test_batch', lambda b: b.update({b'data': b[b'data'].astype('float32')}), 'rows of 3,072 uint8'),
    ('data_batch_1', lambda b: b.update({b'data': b[b'data'].reshape(-1, 3, 32, 32)}), 'rows of 3,072 uint8'),
    ('data_batch_5', lambda b: b[b'labels'].pop(), 'labels'),
])
def test_pickled_images_of_the_wrong_shape_or_dtype(ab94, official_dir, tmp_path, name, change, fragment):
    data = copy_official(official_dir, tmp_path)
    path = rewrite_batch(data, name, change)
    refused(ab94, data, str(path), fragment)
    assert not (data / 'train.pt').exists()


@pytest.mark.parametrize('label, file', [(10, 'data_batch_1'), (-1, 'data_batch_3'), (2**70, 'data_batch_3'),
                                         (0.7, 'data_batch_4')])
def test_pickled_labels_that_are_not_integers_in_0_to_9_are_refused_in_their_own_file(
        ab94, official_dir, tmp_path, label, file):
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, file, lambda b: b[b'labels'].__setitem__(5, label))
    message = refused(ab94, data, file, 'labels in 0..9')
    assert 'data_batch_2' not in message and not (data / 'train.pt').exists()


def test_an_empty_split_is_refused_and_never_cached(ab94, official_dir, tmp_path):
    """An empty test split trained and reported NaN accuracy with exit 0, and cached a split the next
    start refused."""
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, 'test_batch', lambda b: b.update({b'data': b[b'data'][:0], b'labels': []}))
    refused(ab94, data, 'test_batch', 'not an official')
    assert not (data / 'train.pt').exists() and not (data / 'test.pt').exists()


def cache_of(cifar_dir, tmp_path, change):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    split = torch.load(data / 'train.pt', weights_only=True)
    change(split)
    torch.save(split, data / 'train.pt')
    return data


@pytest.mark.parametrize('change, fragment', [
    (lambda s: s.update(images=s['images'].float()), 'images'),
    (lambda s: s.update(images=s['images'].permute(0, 3, 1, 2).contiguous()), 'images'),
    (lambda s: s.update(images=s['images'][:0]), 'images'),
    (lambda s: s.update(images=s['images'].to('meta')), 'images'),     # no storage behind it
    (lambda s: s.update(images=s['images'].to_sparse()), 'images'),
    (lambda s: s.update(labels=s['labels'][:-1]), 'labels'),
    (lambda s: s.update(labels=s['labels'] - 1), 'labels'),
    (lambda s: s.update(labels=s['labels'].to('meta')), 'labels'),
    (lambda s: s.pop('classes'), 'classes'),
    (lambda s: s.update(classes=['a'] * 9), 'classes'),
])
def test_cache_with_bad_tensors(ab94, cifar_dir, tmp_path, change, fragment):
    data = cache_of(cifar_dir, tmp_path, change)
    refused(ab94, data, str(data / 'train.pt'), fragment, 'delete train.pt and test.pt')


def test_a_cache_that_refers_to_more_images_than_cifar_10_has_is_refused(ab94, cifar_dir, tmp_path):
    """An expanded view: a few bytes on disk that would become gigabytes once made dense."""
    data = cache_of(cifar_dir, tmp_path, lambda s: s.update(
        images=s['images'][:1].clone().expand(10**6, 32, 32, 3), labels=torch.zeros(1).long().expand(10**6)))
    assert (data / 'train.pt').stat().st_size < 10**7
    refused(ab94, data, str(data / 'train.pt'), 'images')


# ---------------------------------------------------------------- untrusted data files (hardening)


class RunsCode:
    """A pickle that, unpickled without restriction, runs a shell command (here: creates a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('name', ['data_batch_2', 'batches.meta'])
def test_a_pickle_that_would_run_code_is_refused(ab94, official_dir, tmp_path, name):
    data, marker = copy_official(official_dir, tmp_path), tmp_path / 'ran'
    with open(data / 'cifar-10-batches-py' / name, 'wb') as f:
        pickle.dump({b'data': RunsCode(marker), b'labels': [0], b'label_names': RunsCode(marker)}, f)
    refused(ab94, data, name, 'system', 'not an official CIFAR-10 file')
    assert not marker.exists()
    assert not (data / 'train.pt').exists()


@pytest.mark.parametrize('names', [
    list(range(10)),
    [b'\xff\xfe'] * 10,                                 # not UTF-8
    [c.encode() for c in synthetic.CLASSES[:9]],        # 9 names
])
def test_class_names_that_are_not_ten_utf8_byte_strings(ab94, official_dir, tmp_path, names):
    data = copy_official(official_dir, tmp_path)
    rewrite_batch(data, 'batches.meta', lambda b: b.update({b'label_names': names}))
    refused(ab94, data, 'cifar-10-batches-py')


def test_an_archive_with_a_bad_crc_is_refused_before_anything_is_cached(ab94, tmp_path):
    """tar stops reading at its end-of-archive marker, before gzip's CRC: the whole stream is inflated
    first. One bit flipped in the CRC."""
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    path = data / 'cifar-10-python.tar.gz'
    packed = bytearray(path.read_bytes())
    packed[-8] ^= 0x01  # the first byte of the CRC-32 in the gzip trailer
    path.write_bytes(bytes(packed))
    refused(ab94, data, str(path), 'damaged', 'download it again')
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz']


def test_an_archive_whose_files_are_bad_is_named_as_the_thing_to_replace(ab94, tmp_path):
    """A whole, CRC-checked archive without test_batch: reading it again would not help."""
    staging, data = tmp_path / 'staging', tmp_path / 'data'
    synthetic.write_official(str(staging))
    (staging / 'cifar-10-batches-py' / 'test_batch').unlink()
    data.mkdir()
    with tarfile.open(data / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        tar.add(staging / 'cifar-10-batches-py', arcname='cifar-10-batches-py')
    refused(ab94, data, 'test_batch', 'cifar-10-python.tar.gz is not CIFAR-10', 'download it again')
    assert not (data / 'train.pt').exists()


def test_the_log_says_whether_the_archive_is_the_official_release(tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    md5 = hashlib.md5((data / 'cifar-10-python.tar.gz').read_bytes()).hexdigest()
    proc = run(data, '--set', 'opt.train_epochs=0.1', tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = read_log(log_dir_of(proc.stdout))
    assert log['data']['source'] == 'archive'
    assert log['data']['origin'] == f'{data / "cifar-10-python.tar.gz"}, MD5 {md5} (not as released)'
    again = run(data, '--set', 'opt.train_epochs=0.1', tmp_path=tmp_path)  # from the cache now, which keeps it
    assert read_log(log_dir_of(again.stdout))['data'] == {**log['data'], 'source': 'cache'}


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize('seed, fragment', [('99999999999999999999', 'must be in 0..2^53'),
                                            ('-1', 'must be in 0..2^53'), ('x', "invalid int value: 'x'")])
def test_a_seed_out_of_range_is_refused_before_anything_runs(ab94, seed, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 1, ['--seed', seed])
    assert e.value.code == 2 and f'argument --seed: {fragment}' in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize('runs, fragment', [('0', 'must be in 1..10^6'), ('-3', 'must be in 1..10^6'),
                                            ('1000000001', 'must be in 1..10^6'),
                                            ('99999999999999999999999999', 'must be in 1..10^6'),
                                            ('two', "invalid int value: 'two'")])
def test_bad_run_count(ab94, runs, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 1, ['--runs', runs])
    assert e.value.code == 2 and f'argument --runs: {fragment}' in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize('setting, fragment', [
    ('opt.train_epochs=-1', 'opt.train_epochs=-1.0 is out of range'),
    ('opt.train_epochs=0', 'in [0.001, 1000]'),
    ('opt.train_epochs=1e12', 'in [0.001, 1000]'),      # would build a schedule list of 5e13 steps
    ('opt.train_epochs=1e300', 'in [0.001, 1000]'),
    ('opt.train_epochs=1e999', 'expected a finite float'),
    ('opt.lr=1' + '0' * 400, 'expected a finite float'),  # an int beyond a float's range
    ('net.widths.block1=' + '1' + '0' * 30, 'in [1, 4096]'),
    ('opt.batch_size=1.5', 'expected a finite int, like the default 1024'),
    ('opt.lr=fast', 'expected a finite float'),
    ('opt.lr=nan', 'expected a finite float'),
    ('opt.lr=' + '[' * 100000, 'expected a finite float'),  # JSON nested beyond the recursion limit
    ('aug.flip=maybe', "must be 'alternating' or 'random' or 'none'"),
    ('aug.translate=2.5', 'expected a finite int'),
    ('opt.learning_rate=1', 'is not KEY=VALUE with a KEY of: opt.train_epochs'),
    ('net.widths=3', 'is not KEY=VALUE'),
    ('opt.lr', 'is not KEY=VALUE'),
    ('net.tta_level=3', 'in [0, 2]'),
])
def test_bad_overrides(ab94, setting, fragment):
    with pytest.raises(ab94.UserError) as e:
        ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 1, ['--set', setting])
    assert fragment in str(e.value) and '\n' not in str(e.value) and len(str(e.value)) < 2000


def test_a_bad_override_is_one_sentence_and_exit_status_2(cifar_dir, tmp_path):
    user_error(run(cifar_dir, '--set', 'opt.train_epochs=1e12', tmp_path=tmp_path), 'opt.train_epochs')
    assert not (tmp_path / 'logs').exists()


def test_batch_larger_than_the_training_set(cifar_dir, tmp_path):
    user_error(run(cifar_dir, '--set', 'opt.batch_size=4096', tmp_path=tmp_path),
               'opt.batch_size=4096 exceeds the 2000 images')


def test_unavailable_device(ab94):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    with pytest.raises(ab94.UserError, match='--device cuda'):
        ab94.Device('cuda')


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
           '--runs', '50', '--no-warmup', '--seed', '1', *TINY, '--set', 'opt.train_epochs=0.5']  # 5 steps a run
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
    deadline = time.time() + 300
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
    assert pt['code'] == (REPO / f'{SCRIPT}.py').read_text() == log['code']
    assert sorted(os.listdir(folder)) == ['log.json', 'log.pt']
    assert 'Mean:' in out and f'interrupted after {k} runs' in out
