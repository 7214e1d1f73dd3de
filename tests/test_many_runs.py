"""Many runs: torchrun fan-out on CPU with gloo (one log folder, a part per process, merged by
tools/summarize_logs.py), the one-sided test against a target and Welch's test (experiments/stats.py,
which the summary tool uses), and the summary tool with its plot."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import synthetic
from conftest import REPO, TINY, log_dir_of, no_traceback, pid_of_rank, read_log, run_script

sys.path.insert(0, str(REPO / 'tools'))
import summarize_logs  # noqa: E402
from experiments import stats as summary_stats  # noqa: E402  (tools/summarize_logs.py put the root on the path)


ARGS = [*TINY, '--set', 'opt.train_epochs=0.5', '--no-warmup']  # 5 steps a run: the fan-out is what is tested
CORES = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


@pytest.fixture
def stats():
    """scipy.stats, an independent implementation of the tests (the `test` extra installs it)."""
    return pytest.importorskip('scipy.stats')


def torchrun(*args, nproc=2, script='airbench94'):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
           str(REPO / f'{script}.py'), *args]
    env = {k: v for k, v in os.environ.items() if k not in ('AIRBENCH_DATA', 'OMP_NUM_THREADS')}
    return cmd, {**env, 'PYTHONUNBUFFERED': '1'}


@pytest.fixture(scope='module')
def fan_out(cifar_dir, tmp_path_factory):
    """The same invocation by two torchrun processes and by one process with the threads of one of them."""
    logs = tmp_path_factory.mktemp('logs')
    args = ['--data-dir', cifar_dir, '--log-dir', str(logs), '--runs', '3', '--seed', '5', *ARGS]
    cmd, env = torchrun(*args)
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    one = run_script('airbench94', *args, env={'OMP_NUM_THREADS': str(max(1, CORES // 2))})
    return two, one


def merged_log(folder):
    """Every process's part of a log folder, merged as tools/summarize_logs.py merges them (the status
    the worst of the parts', each run once, with the fields the tool reads)."""
    return summarize_logs.read_log(Path(folder))


def merged_runs(folder):
    """Every run of a log folder with all its fields: rank 0's log.json and each log-rank<r>.json, by run."""
    parts = [Path(folder) / 'log.json', *sorted(Path(folder).glob('log-rank*.json'))]
    return sorted((r for part in parts for r in json.loads(part.read_text())['runs']), key=lambda r: r['run'])


def test_two_processes_give_the_runs_of_one(fan_out):
    two, one = fan_out
    for proc in (two, one):
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
    merged, alone = merged_runs(log_dir_of(two.stdout)), read_log(log_dir_of(one.stdout))['runs']
    keys = ('run', 'seed', 'tta_val_acc', 'val_acc', 'steps')
    assert [{k: r[k] for k in keys} for r in merged] == [{k: r[k] for k in keys} for r in alone]
    assert [r['epochs'] for r in merged] == [r['epochs'] for r in alone]
    assert [r['seed'] for r in merged] == [6, 7, 8]


def test_one_log_folder_with_a_part_per_process(fan_out):
    two, _ = fan_out
    folder = log_dir_of(two.stdout)
    assert sorted(p.name for p in folder.iterdir()) == ['log-rank1.json', 'log-rank1.pt', 'log.json', 'log.pt']
    parts = [read_log(folder), json.loads((folder / 'log-rank1.json').read_text())]
    for rank, (part, runs) in enumerate(zip(parts, [[1, 3], [2]])):  # each process logs its own runs only
        assert (part['rank'], part['world_size'], part['status']) == (rank, 2, 'complete')
        assert [(r['run'], r['rank'], r['device']) for r in part['runs']] == [(k, rank, 'cpu') for k in runs]
        accs = [r['tta_val_acc'] for r in part['runs']]
        assert part['summary']['n'] == len(runs) and part['summary']['mean'] == pytest.approx(sum(accs) / len(accs))
        assert part['environment']['threads'] == max(1, CORES // 2)  # the cores divided between them
        assert part['seed'] == 5 and part['code'] == (REPO / 'airbench94.py').read_text()
    pt = torch.load(folder / 'log-rank1.pt', weights_only=True)
    assert pt['accs'].tolist() == [parts[1]['runs'][0]['tta_val_acc']] and pt['rank'] == 1
    merged = merged_log(folder)
    assert merged['status'] == 'complete' and merged['world_size'] == 2 and [r['run'] for r in merged['runs']] == [1, 2, 3]
    # rank 0 prints its own runs' rows and their summary, marked as its own, and names the merging tool
    out = two.stdout
    assert out.count('Mean:') == 1 and out.count('log: ') == 2
    mean = next(line for line in out.splitlines() if line.startswith('Mean:'))
    assert mean.endswith('(process 0)') and 'n: 2' in mean
    assert [line.split('|')[1].strip() for line in out.splitlines() if line.startswith('|') and
            line.split('|')[1].strip() not in ('', 'run')] == ['1', '3']
    assert out.rstrip().splitlines()[-1] == f'log: {os.path.abspath(folder)}; tools/summarize_logs.py merges its 2 processes'


@pytest.mark.parametrize('target', [0.9390, 0.9395, 0.9405])
def test_p_value_and_runs_needed_against_scipy(target, stats):
    accs = [0.9401, 0.9395, 0.9410, 0.9388, 0.9420, 0.9399, 0.9413]
    s = summary_stats.one_sided(accs, target)
    expected = stats.ttest_1samp(accs, target, alternative='greater')
    assert s['t'] == pytest.approx(expected.statistic, rel=1e-9)
    assert s['p'] == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)
    mean, std = sum(accs) / len(accs), stats.tstd(accs)

    def enough(n):  # runs with this mean and std reach p < 0.05 at n
        return stats.t.sf((mean - target) / (std / n**0.5), n - 1) < 0.05
    if mean > target:
        n = s['runs_needed']
        assert enough(n) and not enough(n - 1)
    else:
        assert s['runs_needed'] is None


def test_welch_and_t_tail_against_scipy(stats):
    a, b = [0.9401, 0.9395, 0.9410, 0.9388, 0.9420], [0.9380, 0.9392, 0.9371, 0.9399]
    w = summary_stats.welch(a, b)
    expected = stats.ttest_ind(a, b, equal_var=False)
    assert w['t'] == pytest.approx(expected.statistic, rel=1e-9)
    assert w['p_two_sided'] == pytest.approx(expected.pvalue, rel=1e-6)
    assert w['difference'] == pytest.approx(sum(a) / 5 - sum(b) / 4)
    for t, df in ((2.5, 3.7), (-1.2, 17.3), (0.3, 1.0), (4.0, 250.0)):
        assert summary_stats.t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-7)


def runs_of(path):
    try:
        return {r['run'] for r in json.loads(path.read_text())['runs']}
    except FileNotFoundError:
        return set()


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds the processes through /proc')
def test_killing_one_process_keeps_every_finished_run(cifar_dir, tmp_path):
    cmd, env = torchrun('--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '40', '--seed', '1', *ARGS)
    env['AIRBENCH_TEST_TAG'] = str(tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    folder, deadline = None, time.time() + 300
    try:
        for line in proc.stdout:
            if line.startswith('log: '):
                folder = Path(line[5:].strip())
                break
        parts = [folder / 'log.json', folder / 'log-rank1.json']
        while time.time() < deadline and not all(runs_of(part) for part in parts):
            time.sleep(0.5)  # until each process has finished at least one run
        before, rank1_pid = [runs_of(part) for part in parts], pid_of_rank(tmp_path, 1)
        assert rank1_pid, 'no process of rank 1'
        os.kill(rank1_pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode != 0
    after = [runs_of(part) for part in parts]
    assert all(b and b <= a for b, a in zip(before, after)) and len(after[0] | after[1]) < 40, (before, after)
    rank0, rank1 = (json.loads(part.read_text()) for part in parts)
    assert rank0['status'] == 'interrupted' and rank0['message'] == 'terminated (SIGTERM)'  # stopped by torchrun
    assert '(rank 0): terminated (SIGTERM); the log keeps every finished run' in err, err
    assert rank1['status'] == 'running'  # as SIGKILL left it: its finished runs are kept
    assert f'log (interrupted after {len(after[0])} runs): ' in out
    merged = merged_log(folder)  # what the summary tool makes of it: every finished run, the worst status
    assert {r['run'] for r in merged['runs']} == after[0] | after[1] and merged['status'] == 'interrupted'


def test_the_summary_tool_tabulates_compares_and_plots(fan_out, tmp_path):
    two, one = fan_out
    a, b = log_dir_of(two.stdout), log_dir_of(one.stdout)
    png = tmp_path / 'curves.png'
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'summarize_logs.py'), str(a), str(b),
                           '--target', '50', '--plot', str(png)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ['log', 'script', 'device', 'torch', 'n', 'mean', 'std', '95%', 'CI', 's/run',
                                'PFLOPs', 'status']
    first, second = lines[1].split(), lines[2].split()
    assert first[0] == a.name and first[2:4] == ['cpu', 'x2'] and second[0] == b.name and second[2] == 'cpu'
    accs = [r['tta_val_acc'] for r in merged_runs(a)]  # both processes' runs, in one row
    assert len(accs) == 3 and f'{100 * sum(accs) / 3:.2f}' in lines[1] and 'complete' in lines[1]
    assert 'difference of the means (first - second): +0.000 points' in proc.stdout  # the same runs
    assert proc.stdout.count('mean > 50.00%?') == 2
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 10_000
    bad = subprocess.run([sys.executable, str(REPO / 'tools' / 'summarize_logs.py'), str(tmp_path / 'nothing')],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and 'is not a log' in bad.stderr and 'Traceback' not in bad.stderr


def test_another_script_fans_out_too_from_the_archive(tmp_path):
    """The harness is a shared block: airbench95's copy runs under torchrun as airbench94's does. Its
    data folder holds only the official archive: both processes read it at once, in memory (nothing is
    extracted), and each writes the cache by temp file and rename, so neither meets a half-written file."""
    data = synthetic.write_archive(str(tmp_path / 'data'))
    cmd, env = torchrun('--data-dir', data, '--log-dir', str(tmp_path / 'logs'), '--runs', '2', '--seed', '3', *ARGS,
                        '--set', 'opt.train_epochs=1', script='airbench95')
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    folder = log_dir_of(proc.stdout)
    assert merged_log(folder)['status'] == 'complete' and [r['rank'] for r in merged_runs(folder)] == [0, 1]
    assert read_log(folder)['data']['source'] in ('archive', 'cache')  # whichever rank 0 met
    assert sorted(os.listdir(data)) == ['cifar-10-python.tar.gz', 'test.pt', 'train.pt']  # no folder, no temp file


def test_an_unexpected_error_marks_the_log_failed_and_keeps_the_finished_runs(ab94, cifar_dir, tmp_path):
    def train_fn(hyp, dev, train_loader, test_loader, seed, run):
        if run == 2:
            raise RuntimeError('out of memory, say')
        return None, {'run': run, 'seed': seed, 'tta_val_acc': 0.5, 'val_acc': 0.5, 'time_seconds': 1.0, 'steps': 1,
                      'epochs': []}
    args, hyp, overrides = ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 25, [
        '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '3', '--no-warmup', '--seed', '0'])
    with pytest.raises(RuntimeError, match='out of memory'):
        ab94.benchmark(args, hyp, overrides, train_fn, lambda *a: 0, str(REPO / 'airbench94.py'))
    log = read_log(next(tmp_path.iterdir()))
    assert log['status'] == 'failed' and log['message'] == 'RuntimeError: out of memory, say'
    assert [r['run'] for r in log['runs']] == [1]


def test_runs_needed_stays_fast_when_the_mean_is_just_above_the_target(stats):
    accs = [0.94 + 0.001 * (i % 3 - 1) for i in range(50)]
    mean, std = sum(accs) / 50, summary_stats.mean_var(accs)[1]**0.5
    start = time.perf_counter()
    s = summary_stats.one_sided(accs, mean - 1e-6)
    assert time.perf_counter() - start < 1.0
    n = s['runs_needed']  # exact: the smallest n whose one-sided t-test reaches p < 0.05

    def enough(k):
        return stats.t.ppf(0.95, k - 1) * std / k**0.5 < 1e-6
    assert enough(n) and not enough(n - 1)
    normal = (1.6448536 * std / 1e-6)**2  # millions of runs: about the normal approximation
    assert n == pytest.approx(normal, rel=1e-5)


def test_a_data_error_in_one_process_stops_every_process(tmp_path):
    """Each process reads the data itself; one that fails says why in one sentence and exits 2, and
    torchrun stops the others. Rank 0 fails with a bug-like error: torchvision, imported only to
    download, is replaced by a module that breaks in rank 0 and is missing in rank 1."""
    empty = tmp_path / 'empty'
    empty.mkdir()
    cmd, env = torchrun('--data-dir', str(empty), '--log-dir', str(tmp_path / 'logs'), *ARGS)
    env['PYTHONPATH'] = str(tmp_path)
    (tmp_path / 'torchvision.py').write_text(
        "import os\nif os.environ['RANK'] == '0':\n    raise RuntimeError('broken torchvision')\n"
        "raise ImportError('no torchvision')\n")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert '(rank 0): error: no CIFAR-10 in' in proc.stderr and 'RuntimeError: broken torchvision' in proc.stderr
    assert not (tmp_path / 'logs').exists()
