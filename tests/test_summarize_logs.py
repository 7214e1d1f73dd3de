"""tools/summarize_logs.py on logs it cannot use: each is skipped with one warning naming the file,
the others are summarized; bad --plot and --target values are one sentence, exit status 2."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

TOOL = str(REPO / 'tools' / 'summarize_logs.py')


def good_log(folder, accs=(0.91, 0.93, 0.92), **fields):
    folder.mkdir(parents=True)
    runs = [{'run': i + 1, 'tta_val_acc': a, 'time_seconds': 1.5, 'epochs': [{'val_acc': a - 0.01}]}
            for i, a in enumerate(accs)]
    log = {'script': 'airbench94', 'status': 'complete', 'world_size': 1, 'flops_per_run': 3.5e14,
           'environment': {'device': 'cpu', 'torch': '2.13.0'}, 'runs': runs, **fields}
    (folder / 'log.json').write_text(json.dumps(log))
    return folder


def summarize(*args):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert 'Traceback' not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize('run, why', [
    ({'run': 1, 'tta_val_acc': None, 'time_seconds': 1.0}, 'null accuracy'),
    ({'run': 1, 'time_seconds': 1.0}, 'missing accuracy'),
    ({'run': 1, 'tta_val_acc': 0.9}, 'missing time'),
    ('run 1', 'not a run'),
])
def test_a_log_with_an_unusable_run_is_skipped_with_a_warning(tmp_path, run, why):
    good = good_log(tmp_path / 'good')
    bad = good_log(tmp_path / 'bad')
    log = json.loads((bad / 'log.json').read_text())
    log['runs'][0] = run
    (bad / 'log.json').write_text(json.dumps(log))
    proc = summarize(good, bad)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count('warning') == 1 and str(bad / 'log.json') in proc.stderr, why
    assert 'good' in proc.stdout and 'bad ' not in proc.stdout


def test_a_null_world_size_and_a_log_of_another_tool(tmp_path):
    odd = good_log(tmp_path / 'odd', world_size=None, environment=None)
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'log.json').write_text(json.dumps({'loss': [1.0, 0.5], 'runs': 'three'}))
    proc = summarize(odd, other, '--target', '90')
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith('odd'))
    assert row.split()[2] == '?' and '92.00' in row  # no device recorded; the mean of the runs
    assert 'other' in proc.stderr and 'not a log of these scripts' in proc.stderr
    assert 'about' in proc.stdout and 'runs like these would give p < 0.05' in proc.stdout


def test_a_truncated_part_file_is_named_as_itself(tmp_path):
    folder = good_log(tmp_path / 'fanned', world_size=2)
    (folder / 'runs-rank1.json').write_text('{"rank": 1, "runs": [{"run": 2, "tta_')
    proc = summarize(folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count('warning') == 1 and str(folder / 'runs-rank1.json') in proc.stderr
    assert 'log.json' not in proc.stderr and 'fanned' in proc.stdout.splitlines()[1]  # log.json's runs are kept


def test_only_bad_logs_is_exit_status_2(tmp_path):
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'log.json').write_text('not json')
    proc = summarize(tmp_path / 'x')
    assert proc.returncode == 2 and 'no readable run log' in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize('target', ['nope', '0', '150', 'nan'])
def test_a_bad_target(tmp_path, target):
    proc = summarize(good_log(tmp_path / 'a'), '--target', target)
    assert proc.returncode == 2 and '--target: must be an accuracy like 0.94 or 94' in proc.stderr


@pytest.mark.parametrize('name, fragment', [('missing/folder/curves.png', 'does not exist'),
                                            ('curves.xyz', 'must end in one of')])
def test_a_plot_that_cannot_be_written_is_refused_before_any_work(tmp_path, name, fragment):
    pytest.importorskip('matplotlib')
    proc = summarize(good_log(tmp_path / 'a'), '--plot', tmp_path / name)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and proc.stdout == ''
