"""Faults while a script runs: SIGTERM, a closed stdout, a full disk, and a torchrun process killed
after another has finished. Each ends in one sentence and its documented exit status, and keeps
every finished run in the log."""
import errno
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, log_dir_of, no_traceback, pid_of_rank, read_log

SCRIPT = REPO / 'airbench94.py'


def start(cifar_dir, logs, *args, prelude=''):
    """The script as a user starts it (through runpy after `prelude`), its stdout a pipe."""
    code = ('import runpy, sys\n' + prelude + f'sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]\n'
            'runpy.run_path(sys.argv[0], run_name="__main__")\n')
    cmd = [sys.executable, '-c', code, '--data-dir', cifar_dir, '--log-dir', str(logs), '--no-warmup', '--seed', '1',
           *TINY, '--set', 'opt.train_epochs=0.5', *args]  # 5 steps a run: these tests are about the harness
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def folder_of(proc):
    for line in proc.stdout:
        if line.startswith('log: '):
            return line[5:].strip()
    raise AssertionError('no "log: DIR" line')


def wait_for_runs(folder, k, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and len(read_log(folder)['runs']) < k:
        time.sleep(0.2)


def test_sigterm_keeps_the_finished_runs_and_exits_143(cifar_dir, tmp_path):
    proc = start(cifar_dir, tmp_path, '--runs', '50')
    folder = folder_of(proc)
    wait_for_runs(folder, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert 'Traceback' not in err, err
    assert proc.returncode == 143, err
    assert [line for line in err.splitlines() if line.strip()] == \
        [f'{SCRIPT}: terminated (SIGTERM); the log keeps every finished run'.replace(str(SCRIPT), SCRIPT.name)]
    log = read_log(folder)
    k = len(log['runs'])
    assert 2 <= k < 50 and log['status'] == 'interrupted' and log['message'] == 'terminated (SIGTERM)'
    assert torch.load(os.path.join(folder, 'log.pt'), weights_only=True)['status'] == 'interrupted'
    assert f'log (interrupted after {k} runs): ' in out


def test_a_closed_stdout_loses_no_run(cifar_dir, tmp_path):
    """`python airbench94.py ... | head -3`: the reader goes away, the runs and their log go on."""
    proc = start(cifar_dir, tmp_path, '--runs', '2')
    lines = [proc.stdout.readline() for _ in range(3)]
    folder = lines[2][5:].strip()
    proc.stdout.close()  # what head does after its third line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert err.splitlines() == ['note: stdout failed (Broken pipe); the runs go on, and the log keeps them'], err
    log = read_log(folder)
    assert log['status'] == 'complete' and [r['run'] for r in log['runs']] == [1, 2]


def entry_in_process(m, argv, monkeypatch, capsys):
    """m's entry(main) with argv, as `python airbench94.py argv` runs it: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, 'argv', [str(SCRIPT)])
    previous = signal.getsignal(signal.SIGTERM)  # entry() installs its own
    try:
        with pytest.raises(SystemExit) as end:
            m.entry(lambda: m.main(argv))
    finally:
        signal.signal(signal.SIGTERM, previous)
    out, err = capsys.readouterr()
    return end.value.code, out, err


@pytest.mark.parametrize('full', ['from the third log.json', 'for log.pt only'])
def test_a_full_log_disk_ends_in_one_sentence_and_log_json_keeps_every_finished_run(
        ab94, cifar_dir, tmp_path, monkeypatch, capsys, full):
    """The disk fills up after run 2 (every write fails from the third log.json on, which would record
    run 2), or it has no room for log.pt at the end. Each write fails as a full disk fails it: a part
    of the temp file written, then an error (OSError from Python, RuntimeError from torch.save)."""
    real_write, real_save, writes = pathlib.Path.write_text, torch.save, []

    def write_text(self, data, *args, **kwargs):
        writes.append(self)
        if full == 'for log.pt only' or len(writes) < 3:
            return real_write(self, data, *args, **kwargs)
        real_write(self, data[:10])
        raise OSError(errno.ENOSPC, 'No space left on device')

    def save(obj, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'PK\x03\x04 half a file')
        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n'
                           'PytorchStreamWriter failed writing file data/0: file write failed')
    monkeypatch.setattr(pathlib.Path, 'write_text', write_text)
    monkeypatch.setattr(torch, 'save', save)
    status, out, err = entry_in_process(ab94, ['--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '3',
                                               '--no-warmup', '--seed', '1', *TINY, '--set', 'opt.train_epochs=1'],
                                        monkeypatch, capsys)
    monkeypatch.undo()
    folder = next(tmp_path.iterdir())
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and len(lines) == 1, err
    assert lines[0].startswith(f'{SCRIPT.name}: error: cannot write the log in {folder} (')
    assert 'Pytorch' not in lines[0] and 'enforce' not in lines[0]  # not torch's internal words
    log = read_log(folder)
    if full == 'for log.pt only':  # every run and the final status are in log.json
        assert 'is the disk full?' in lines[0]
        assert [r['run'] for r in log['runs']] == [1, 2, 3] and log['status'] == 'complete'
    else:  # the last log.json that fitted: whole, a run behind, as the runs left it
        assert 'No space left on device' in lines[0] and f'log (failed after 2 runs): {folder}' in out
        assert [r['run'] for r in log['runs']] == [1] and log['status'] == 'running'
    assert sorted(os.listdir(folder)) == ['log.json']  # no temp file left, and no half log.pt


@pytest.mark.parametrize('error', [OSError(errno.ENOSPC, 'No space left on device'),
                                   RuntimeError('PytorchStreamWriter failed writing file data/0: file write failed')],
                         ids=['OSError', 'RuntimeError'])
def test_a_full_data_disk_falls_back_to_reading_the_pickles(ab94, official_dir, tmp_path, monkeypatch, capsys, error):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'PK\x03\x04 half a file')
        raise error
    monkeypatch.setattr(torch, 'save', save)
    splits, source = ab94.load_cifar10(str(data))
    assert source == 'pickles' and len(splits['train']['labels']) == 2000
    out = capsys.readouterr().out
    assert f'note: cannot write the cache in {data} (' in out and '); rereading next time' in out
    assert 'Pytorch' not in out  # the note is ours, not torch's internal words
    assert sorted(os.listdir(data)) == ['cifar-10-batches-py']  # no half-written cache, no temp file
    monkeypatch.setattr(torch, 'save', real_save)


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the processes through /proc')
def test_rank_0_killed_after_rank_1_has_finished(cifar_dir, tmp_path):
    """Rank 1 finishes its one run and ends at once, its part complete, without waiting for rank 0's two
    (nothing is gathered at the end); then rank 0 dies. Rank 1's part keeps its final status and run,
    and rank 1 printed nothing on the way out (no gloo error from a lost peer)."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(SCRIPT),
           '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '3', '--seed', '1', '--no-warmup', *TINY,
           '--set', 'opt.train_epochs=2']
    env = {k: v for k, v in os.environ.items() if k not in ('AIRBENCH_DATA', 'OMP_NUM_THREADS')}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, 'PYTHONUNBUFFERED': '1', 'AIRBENCH_TEST_TAG': str(tmp_path)})
    try:
        folder = Path(folder_of(proc))
        part, deadline = folder / 'log-rank1.json', time.time() + 300
        while time.time() < deadline and not (part.exists() and read_log_part(part)['status'] == 'complete'):
            time.sleep(0.2)
        rank0 = pid_of_rank(tmp_path, 0)
        assert read_log(folder)['status'] == 'running' and rank0, 'rank 0 should still be at its runs'
        os.kill(rank0, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert 'pair.cc' not in err and 'Connection closed' not in err and '(rank 1)' not in err, err
    rank1 = read_log_part(part)
    assert rank1['status'] == 'complete' and [r['run'] for r in rank1['runs']] == [2]
    assert rank1['rank'] == 1 and rank1['world_size'] == 2
    assert torch.load(folder / 'log-rank1.pt', weights_only=True)['accs'].tolist() == [rank1['runs'][0]['tta_val_acc']]
    assert read_log(folder)['status'] == 'running'  # rank 0's own part, as SIGKILL left it


def read_log_part(path):
    return json.loads(Path(path).read_text())
