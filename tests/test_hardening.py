"""What a second red team found (issue 27, section 6), each case held: signals end a process that
waits for torchrun peers that never come; inconsistent torchrun variables are one sentence; no small
input makes unbounded work (a FIFO, a quadratic codec, a gzip bomb, numpy's array constructor); a
full stdout stops no run; text from a file cannot forge output; stale temp files are removed; the
tools that rewrite files do it by temp file and rename. Through airbench94.py, whose harness every
script carries verbatim."""
import contextlib
import io
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile

import pytest
import torch

import synthetic
from conftest import REPO, TINY, log_dir_of, no_traceback, read_log, run_script

SCRIPT = str(REPO / 'airbench94.py')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def listening(port):
    with socket.socket() as s:
        return s.connect_ex(('127.0.0.1', port)) == 0


# ---------------------------------------------------------------- torchrun variables


@pytest.mark.parametrize('signum, status', [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_leftover_torchrun_variables_do_not_make_a_hang_that_ignores_signals(cifar_dir, tmp_path, signum, status):
    """WORLD_SIZE=2 RANK=0 and a MASTER_ADDR/PORT, but no torchrun: the process waits for a peer that
    never comes; Ctrl-C and SIGTERM must still end it at once, in one sentence."""
    port = free_port()
    env = {**os.environ, 'WORLD_SIZE': '2', 'RANK': '0', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}
    proc = subprocess.Popen([sys.executable, SCRIPT, '--data-dir', cifar_dir, '--log-dir', str(tmp_path), *TINY],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not listening(port) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)  # rank 0 listens for its peer once it waits in the join
        assert listening(port), 'the process never started to wait for its peer'
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert 'Traceback' not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err


@pytest.mark.parametrize('env', [{'WORLD_SIZE': '0'}, {'WORLD_SIZE': '-1'}, {'WORLD_SIZE': '2', 'RANK': '2'},
                                 {'LOCAL_RANK': 'abc'}, {'WORLD_SIZE': 'x'}, {'WORLD_SIZE': str(2**70)},
                                 {'WORLD_SIZE': '2', 'RANK': '0', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '1'}])
def test_inconsistent_torchrun_variables_are_one_sentence(ab94, monkeypatch, env):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ab94.UserError, match='torchrun variables .* disagree'):
        ab94.join_torchrun()


def test_a_negative_world_size_is_exit_status_2_not_a_silent_success(cifar_dir, tmp_path):
    proc = run_script('airbench94', '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1',
                      '--no-warmup', *TINY, env={'WORLD_SIZE': '-1'})
    no_traceback(proc)
    assert proc.returncode == 2 and "WORLD_SIZE='-1'" in proc.stderr
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- unbounded work from small inputs


def test_a_fifo_as_a_data_file_is_refused_at_once(official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    (data / 'cifar-10-batches-py' / 'test_batch').unlink()
    os.mkfifo(data / 'cifar-10-batches-py' / 'test_batch')
    code = f'import runpy; runpy.run_path({SCRIPT!r})["load_cifar10"]({str(data)!r})'
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert 'UserError' in proc.stderr and 'test_batch is no CIFAR-10 file: not a regular file' in proc.stderr


def meta_with(folder, label_names):
    with open(folder / 'cifar-10-batches-py' / 'batches.meta', 'wb') as f:
        pickle.dump({b'label_names': label_names}, f, protocol=2)


class Punycode:
    """Pickles as _codecs.encode(text, 'punycode'): allowed by torch's weights_only unpickler and, before,
    by ours; its cost is quadratic in the text (a 300 KB file took hours)."""

    def __init__(self, text):
        self.text = text

    def __reduce__(self):
        import _codecs
        return _codecs.encode, (self.text, 'punycode')


def test_a_pickle_asking_for_a_codec_is_refused(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    meta_with(data, [Punycode('\u00e9' * 200)] * 10)
    with pytest.raises(ab94.UserError, match=r'batches.meta is not an official CIFAR-10 file .*_codecs\.encode'):
        ab94.load_cifar10(str(data))


def test_a_cache_asking_for_a_codec_is_refused_before_torch_load(ab94, cifar_dir, tmp_path):
    """torch.load(weights_only=True) allows _codecs.encode too; torch.save pickles bytes through it."""
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    split = torch.load(data / 'train.pt', weights_only=True)
    torch.save({**split, 'note': Punycode('\u00e9' * 200)}, data / 'train.pt')
    with pytest.raises(ab94.UserError, match='train.pt cannot be read .*more than tensors'):
        ab94.load_cifar10(str(data))


def test_a_compressed_member_in_a_cache_is_refused(ab94, cifar_dir, tmp_path):
    """torch.load inflates deflated members too, which would hide a codec from the scan."""
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    raw = (data / 'test.pt').read_bytes()
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(out, 'w') as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    (data / 'test.pt').write_bytes(out.getvalue())
    with pytest.raises(ab94.UserError, match='more than tensors'):
        ab94.load_cifar10(str(data))


def test_an_archive_that_unpacks_to_more_than_cifar_10_holds_is_refused(ab94, tmp_path, monkeypatch):
    """A gzip bomb, scaled down: 8 MiB of zeros pack into a few KiB; the cap on the inflated bytes is
    lowered to 4 MiB (it is 256 MiB: CIFAR-10's archive unpacks to 178 MB)."""
    data = tmp_path / 'data'
    data.mkdir()
    zeros = tmp_path / 'cifar-10-batches-py' / 'data_batch_1'
    zeros.parent.mkdir()
    zeros.write_bytes(bytes(8 * 2**20))
    with tarfile.open(data / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        tar.add(zeros.parent, arcname='cifar-10-batches-py')
    assert (data / 'cifar-10-python.tar.gz').stat().st_size < 2**20
    monkeypatch.setattr(ab94, 'LIMIT', 4 * 2**20)
    with pytest.raises(ab94.UserError, match='damaged .*unpacks to more than CIFAR-10 holds'):
        ab94.load_cifar10(str(data))


class Uninitialised:
    """Pickles as numpy.ndarray(shape, uint8): gigabytes of uninitialised images from a few bytes."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        import numpy
        return numpy.ndarray, (self.shape, numpy.uint8)


def test_numpys_array_constructor_allocates_nothing(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    path = data / 'cifar-10-batches-py' / 'data_batch_1'
    with open(path, 'wb') as f:
        pickle.dump({b'data': Uninitialised((5000, 3072)), b'labels': [0] * 5000}, f)
    assert path.stat().st_size < 20000
    with pytest.raises(ab94.UserError, match='data_batch_1 is not an official CIFAR-10 file'):
        ab94.load_cifar10(str(data))


# ---------------------------------------------------------------- streams and forged output


def test_stdout_on_a_full_device_stops_no_run(cifar_dir, tmp_path):
    with open('/dev/full', 'w') as full:
        proc = subprocess.run([sys.executable, SCRIPT, '--data-dir', cifar_dir, '--log-dir', str(tmp_path),
                               '--runs', '2', '--no-warmup', *TINY, '--set', 'opt.train_epochs=1'],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == \
        ['note: stdout failed (No space left on device); the runs go on, and the log keeps them']
    log = read_log(next(tmp_path.iterdir()))
    assert log['status'] == 'complete' and [r['run'] for r in log['runs']] == [1, 2]


def test_a_refused_global_is_printed_inert(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    forged = b'\x80\x02c\x1b[2J\x1b[Hall runs complete\nsystem\n)R.'  # GLOBAL with escapes in its module
    (data / 'cifar-10-batches-py' / 'data_batch_1').write_bytes(forged)
    with pytest.raises(ab94.UserError) as e:
        ab94.load_cifar10(str(data))
    assert '\x1b' not in str(e.value) and '\\x1b[2J' in str(e.value)


def test_a_cache_origin_cannot_forge_output(cifar_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(cifar_dir, data)
    for split in ('train', 'test'):
        saved = torch.load(data / f'{split}.pt', weights_only=True)
        torch.save({**saved, 'origin': '\x1b[2J\rMean: 1.0000    n: 25\nlog: /elsewhere'}, data / f'{split}.pt')
    proc = run_script('airbench94', '--data-dir', str(data), '--log-dir', str(tmp_path / 'logs'), '--runs', '1',
                      '--no-warmup', *TINY, '--set', 'opt.train_epochs=1')
    assert proc.returncode == 0, proc.stderr
    assert '\x1b' not in proc.stdout and '\r' not in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith(('Mean:', 'log: '))][0].startswith('log: ')
    assert read_log(log_dir_of(proc.stdout))['data']['origin'] == '\\x1b[2J\\rMean: 1.0000    n: 25\\nlog: /elsewhere'


# ---------------------------------------------------------------- temp files, full disks, the tools


def test_temp_files_of_killed_processes_are_removed_and_of_running_ones_kept(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    host = ab94.platform.node()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()  # a pid that has just ended
    stale = data / f'train.pt.tmp-{host}-{dead}'
    alive = data / f'train.pt.tmp-{host}-{os.getppid()}'
    other_host = data / f'train.pt.tmp-{host}x-{dead}'
    for path in (stale, alive, other_host):
        path.write_bytes(b'half a cache')
    ab94.load_cifar10(str(data))
    assert not stale.exists() and alive.exists() and other_host.exists()


def test_shared_blocks_sync_never_leaves_a_script_half_written(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / 'tools'))
    import shared_blocks
    script = tmp_path / 'airbench94_compiled.py'
    script.write_text('old text\n' * 1000)
    real = type(script).write_text

    def full_disk(self, text, *args, **kwargs):
        real(self, text[:len(text) // 3])  # a third written, then the disk is full
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(type(script), 'write_text', full_disk)
    with pytest.raises(OSError):
        shared_blocks.write_atomically(script, 'new text\n' * 1000)
    monkeypatch.undo()
    assert script.read_text() == 'old text\n' * 1000
    assert [p.name for p in tmp_path.iterdir()] == ['airbench94_compiled.py']


def test_count_flops_write_into_a_folder_is_one_sentence_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO / 'tools'))
    import count_flops
    monkeypatch.setattr(count_flops, 'REPO', tmp_path)
    monkeypatch.setattr(count_flops, 'table', lambda: [])
    target = tmp_path / 'logs' / f'flops-{time.strftime("%Y%m%d")}.json'
    target.mkdir(parents=True)  # the path it writes is a folder
    with pytest.raises(SystemExit) as e:
        count_flops.main(['--write'])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('count_flops.py: error: cannot write') and err.count('\n') == 1
    assert sorted(p.name for p in (tmp_path / 'logs').iterdir()) == [target.name]
