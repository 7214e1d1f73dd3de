"""Faults while a script runs: SIGTERM, a closed stdout, a full disk, and a torchrun process killed
while another waits for it. Each ends in one sentence and its documented exit status, and keeps
every finished run in the log."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TINY, log_dir_of, no_traceback, read_log

SCRIPT = REPO / 'airbench94.py'


def start(cifar_dir, logs, *args, prelude=''):
    """The script as a user starts it (through runpy after `prelude`), its stdout a pipe."""
    code = ('import runpy, sys\n' + prelude + f'sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]\n'
            'runpy.run_path(sys.argv[0], run_name="__main__")\n')
    cmd = [sys.executable, '-c', code, '--data-dir', cifar_dir, '--log-dir', str(logs), '--no-warmup', '--seed', '1',
           *TINY, *args]
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
    assert f'interrupted after {k} finished runs' in out


def test_a_closed_stdout_loses_no_run(cifar_dir, tmp_path):
    """`python airbench94.py ... | head -3`: the reader goes away, the runs and their log go on."""
    proc = start(cifar_dir, tmp_path, '--runs', '2')
    lines = [proc.stdout.readline() for _ in range(3)]
    folder = lines[2][5:].strip()
    proc.stdout.close()  # what head does after its third line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert err == '', err
    log = read_log(folder)
    assert log['status'] == 'complete' and [r['run'] for r in log['runs']] == [1, 2]


FULL_DISK = '''import torch
_real_save, _calls = torch.save, [0]
def _save(obj, path, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] >= {k}:  # as torch.save reports it when the disk is full
        raise RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\\n'
                           'PytorchStreamWriter failed writing file data/0: file write failed')
    return _real_save(obj, path, *args, **kwargs)
torch.save = _save
'''


def test_a_full_log_disk_ends_in_one_sentence_and_log_json_keeps_every_finished_run(cifar_dir, tmp_path):
    # torch.save of log.pt: 1 when the log is made, 2 after run 1, 3 after run 2 (the disk is full from then on)
    proc = start(cifar_dir, tmp_path, '--runs', '4', prelude=FULL_DISK.replace('{k}', '3'))
    folder = folder_of(proc)
    out, err = proc.communicate(timeout=300)
    assert 'Traceback' not in err, err
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f'cannot write the log in {folder}' in lines[0] and 'failed writing' in lines[0]
    log = read_log(folder)
    assert [r['run'] for r in log['runs']] == [1, 2]  # log.json was written before log.pt failed
    assert log['status'] == 'failed' and 'cannot write the log' in log['message']
    assert sorted(os.listdir(folder)) == ['log.json', 'log.pt']  # no temp file left
    assert torch.load(os.path.join(folder, 'log.pt'), weights_only=True)['accs'].tolist() == \
        [log['runs'][0]['tta_val_acc']]  # the last log.pt that fitted: whole, a run behind


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
    assert source == 'official pickles' and len(splits['train']['labels']) == 2000
    assert 'could not write the cache' in capsys.readouterr().out
    assert sorted(os.listdir(data)) == ['cifar-10-batches-py']
    monkeypatch.setattr(torch, 'save', real_save)


def test_rank_0_killed_while_rank_1_waits_at_the_end(cifar_dir, tmp_path):
    """Rank 1 finishes its one run and waits for rank 0's two; rank 0 dies. Rank 1 still ends its
    part and the merged log with a final status, and says so in one sentence."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(SCRIPT),
           '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '3', '--seed', '1', '--no-warmup', *TINY,
           '--set', 'opt.train_epochs=2']
    env = {k: v for k, v in os.environ.items() if k not in ('AIRBENCH_DATA', 'OMP_NUM_THREADS')}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env, 'PYTHONUNBUFFERED': '1'})
    try:
        folder = folder_of(proc)
        deadline = time.time() + 300
        while time.time() < deadline:  # until rank 1 is done with its run and waits for rank 0
            time.sleep(0.2)
            parts = {p['rank']: p for p in read_log(folder).get('processes', [])}
            if parts.get(1, {}).get('status') == 'complete':
                break
        os.kill(parts[0]['pid'], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert 'pair.cc' not in err and 'Connection closed' not in err, err  # no gloo traceback from rank 1
    assert '(rank 1): interrupted' in err, err
    log = read_log(folder)
    ranks = {p['rank']: p['status'] for p in log['processes']}
    assert ranks[1] == 'interrupted' and log['status'] == 'interrupted'
    assert 2 in [r['run'] for r in log['runs']]  # rank 1's run
