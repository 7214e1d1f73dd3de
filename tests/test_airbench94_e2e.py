"""airbench94.py end to end on the synthetic data, as a user runs it."""
import json
import os
import re

import pytest
import torch

from conftest import REPO, TINY, load_script, log_dir_of, no_traceback, read_log, run_script


@pytest.fixture(scope='module')
def invocation(cifar_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp('logs')
    proc = run_script('airbench94', '--data-dir', cifar_dir, '--log-dir', str(logs), '--runs', '2',
                      '--seed', '7', *TINY)
    return proc, logs


def test_exits_cleanly(invocation):
    proc, _ = invocation
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr


def test_table_has_a_row_per_epoch_and_an_eval_row_per_run(invocation):
    proc, _ = invocation
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in proc.stdout.splitlines()
            if line.startswith('|')]
    assert rows[0] == ['run', 'epoch', 'train_loss', 'train_acc', 'val_acc', 'tta_val_acc', 'time_seconds']
    body = rows[1:]
    # the warmup run, then runs 1 and 2: epochs 1..3 and an eval row each
    assert [r[0] for r in body if r[0]] == ['warmup', '1', '2']
    assert [r[1] for r in body] == ['1', '2', '3', 'eval'] * 3
    for row in body:
        if row[1] == 'eval':
            assert 0 <= float(row[5]) <= 1 and float(row[6]) > 0
        else:
            assert float(row[2]) > 0 and 0 <= float(row[3]) <= 1 and 0 <= float(row[4]) <= 1


def test_mean_line_matches_the_log(invocation):
    proc, _ = invocation
    log = read_log(log_dir_of(proc.stdout))
    mean_lines = [line for line in proc.stdout.splitlines() if line.startswith('Mean:')]
    assert len(mean_lines) == 1
    m = re.match(r'Mean: ([\d.]+)\s+Std: ([\d.]+)\s+n: 2\s+time per run: ([\d.]+) s$', mean_lines[0])
    assert m, mean_lines[0]
    accs = [r['tta_val_acc'] for r in log['runs']]
    assert float(m.group(1)) == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert float(m.group(2)) == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5, abs=1e-4)  # the sample std
    assert log['summary'] == {'n': 2, 'mean': pytest.approx(sum(accs) / 2), 'std': pytest.approx(float(m.group(2)), abs=1e-4)}


def test_accuracy_beats_chance_by_a_wide_margin(invocation):
    proc, _ = invocation
    for run in read_log(log_dir_of(proc.stdout))['runs']:
        assert run['tta_val_acc'] > 0.5, run  # chance is 0.1


def test_log_files(invocation, cifar_dir):
    proc, logs = invocation
    folder = log_dir_of(proc.stdout)
    assert folder.parent == logs and re.fullmatch(r'airbench94-\d{8}-\d{6}-[0-9a-f]{8}', folder.name)
    assert sorted(p.name for p in folder.iterdir()) == ['log.json', 'log.pt']  # no temp files left
    log = read_log(folder)
    assert log['status'] == 'complete' and log['script'] == 'airbench94'
    assert log['seed'] == 7 and [r['seed'] for r in log['runs']] == [8, 9]
    assert log['overrides']['opt.batch_size'] == 200 and log['hyp']['opt']['batch_size'] == 200
    assert log['environment']['device'] == 'cpu' and log['environment']['torch'] == torch.__version__
    # the cache remembers where it was read from (conftest builds it from the official folder)
    assert log['data'] == {'dir': log['data']['dir'], 'source': 'cache',
                           'origin': os.path.join(cifar_dir, 'cifar-10-batches-py'), 'train': 2000, 'test': 500}
    assert log['summary']['n'] == 2 and log['flops_per_run'] > 0
    for run in log['runs']:
        assert run['steps'] == load_script('airbench94').train_steps(log['hyp']['opt'], 2000) == 30
        assert len(run['epochs']) == 3 and 0 <= run['val_acc'] <= 1 and run['time_seconds'] > 0
    assert log['code'] == (REPO / 'airbench94.py').read_text()  # the script, in log.json too
    assert log['rank'] == 0 and log['world_size'] == 1 and log['warmup'] and log['warmup_seconds'] > 0
    pt = torch.load(folder / 'log.pt', weights_only=True)
    assert pt['code'] == (REPO / 'airbench94.py').read_text()
    assert pt['accs'].tolist() == [r['tta_val_acc'] for r in log['runs']]
    assert json.loads(json.dumps(pt['hyp'])) == log['hyp']
    assert proc.stdout.rstrip().splitlines()[-1] == f'log: {os.path.abspath(folder)}'


def test_same_seed_same_device_repeats_the_run(invocation, cifar_dir, tmp_path):
    proc, _ = invocation
    first = read_log(log_dir_of(proc.stdout))['runs'][0]  # seed 7 + 1
    again = run_script('airbench94', '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1',
                       '--seed', '7', '--no-warmup', *TINY)
    assert again.returncode == 0, again.stderr
    repeat = read_log(log_dir_of(again.stdout))['runs'][0]
    assert repeat['seed'] == first['seed']
    assert repeat['tta_val_acc'] == first['tta_val_acc'] and repeat['val_acc'] == first['val_acc']
    assert [e['train_loss'] for e in repeat['epochs']] == [e['train_loss'] for e in first['epochs']]


def test_different_seeds_give_different_runs(invocation):
    proc, _ = invocation
    first, second = read_log(log_dir_of(proc.stdout))['runs']  # seeds 8 and 9
    assert [e['train_loss'] for e in first['epochs']] != [e['train_loss'] for e in second['epochs']]


def test_the_default_seed_is_random_logged_and_reproduces_the_run(cifar_dir, tmp_path):
    args = ['--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1', '--no-warmup', *TINY,
            '--set', 'opt.train_epochs=0.3']  # 3 steps: enough to tell two seeds' runs apart
    drawn = [run_script('airbench94', *args) for _ in range(2)]
    for proc in drawn:
        assert proc.returncode == 0, proc.stderr
    logs = [read_log(log_dir_of(proc.stdout)) for proc in drawn]
    assert logs[0]['seed'] != logs[1]['seed']  # drawn at random (1 in 2**31 to collide)
    seed = logs[0]['seed']
    assert f'seed {seed};' in drawn[0].stdout and logs[0]['runs'][0]['seed'] == seed + 1
    again = run_script('airbench94', *args, '--seed', str(seed))
    assert again.returncode == 0, again.stderr
    repeat = read_log(log_dir_of(again.stdout))['runs'][0]
    assert repeat['epochs'] == logs[0]['runs'][0]['epochs'] and repeat['tta_val_acc'] == logs[0]['runs'][0]['tta_val_acc']


def test_help_explains_every_flag():
    proc = run_script('airbench94', '--help')
    assert proc.returncode == 0
    for flag in ('--runs', '--data-dir', '--device', '--seed', '--log-dir', '--no-warmup', '--set'):
        assert flag in proc.stdout
    assert 'opt.train_epochs' in proc.stdout and 'AIRBENCH_DATA' in proc.stdout


def test_importing_the_script_runs_nothing(tmp_path):
    code = f'import importlib.util as u; s = u.spec_from_file_location("m", r"{REPO / "airbench94.py"}"); ' \
           'u.module_from_spec(s).__spec__.loader.exec_module(u.module_from_spec(s))'
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout == '' and proc.stderr == ''
    assert list(tmp_path.iterdir()) == []
