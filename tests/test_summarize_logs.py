"""tools/summarize_logs.py: both log layouts merged into one row per invocation; logs it cannot use
(hostile ones included: FIFOs, deep nesting, huge numbers and files, escape sequences) each skipped with
one warning naming the file, never a hang or a traceback, the others summarized; bad --plot and --target
values are one sentence, exit status 2; a plot written whole or not at all."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

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


def one_warning(proc, *fragments):
    """Whether the tool succeeded with exactly one warning, holding every fragment."""
    warned = proc.stderr.count('warning') == 1 and all(f in proc.stderr for f in fragments)
    return proc.returncode == 0 and warned


def summarize(*args, timeout=120):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
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
    assert one_warning(proc, str(bad / 'log.json')), (why, proc.stderr)
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
    assert one_warning(proc, str(folder / 'runs-rank1.json')), proc.stderr
    assert 'log.json' not in proc.stderr and 'fanned' in proc.stdout.splitlines()[1]  # log.json's runs kept


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


# ---------------------------------------------------------------- one row per invocation, both layouts


def write_part(folder, name, accs, **fields):
    """A log file of the scripts' form in folder: runs {run number: TTA accuracy}, fields on top."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = [{'run': k, 'tta_val_acc': a, 'time_seconds': 2.0, 'epochs': [{'val_acc': a - 0.01}]}
            for k, a in accs.items()]
    doc = {'script': 'airbench94', 'status': 'complete', 'world_size': 1, 'environment': {'device': 'cpu'},
           'runs': runs, **fields}
    (folder / name).write_text(json.dumps(doc))
    return folder


def row_of(proc, name):
    return next(line for line in proc.stdout.splitlines() if line.startswith(name)).split()


def test_the_new_layout_merges_every_rank_into_one_row(tmp_path):
    folder = write_part(tmp_path / 'fan', 'log.json', {1: 0.90, 4: 0.93}, world_size=3)
    write_part(folder, 'log-rank1.json', {2: 0.91, 5: 0.94}, world_size=3)
    write_part(folder, 'log-rank2.json', {3: 0.92, 1: 0.50}, world_size=3, status='failed')  # run 1 again
    proc = summarize(folder)
    assert proc.returncode == 0 and proc.stderr == '', proc.stderr
    cells = row_of(proc, 'fan')  # log script device x3 torch n mean ...
    assert cells[2:4] == ['cpu', 'x3'] and cells[5:7] == ['5', '92.00'] and cells[-1] == 'failed'


def test_a_missing_or_unreadable_rank_is_a_warning_and_the_rest_is_kept(tmp_path):
    folder = write_part(tmp_path / 'fan', 'log.json', {1: 0.90, 4: 0.94}, world_size=3)
    (folder / 'log-rank1.json').write_text('{"runs": [{"run": 2, "tta_')
    proc = summarize(folder)  # and log-rank2.json was never written
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count('warning') == 2
    assert str(folder / 'log-rank1.json') in proc.stderr and str(folder / 'log-rank2.json') in proc.stderr
    cells = row_of(proc, 'fan')
    assert cells[5:7] == ['2', '92.00'] and cells[-1] == 'running'  # as the scripts count an unheard rank


def test_the_old_layout_still_completes_a_lagging_log_json(tmp_path):
    folder = write_part(tmp_path / 'old', 'log.json', {1: 0.90}, world_size=2, status='running')
    write_part(folder, 'runs-rank1.json', {2: 0.92}, rank=1)
    proc = summarize(folder / 'log.json')
    assert proc.returncode == 0 and proc.stderr == '', proc.stderr  # no part of the old layout is missing
    assert row_of(proc, 'old')[5:7] == ['2', '91.00']


# ---------------------------------------------------------------- hostile logs


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no FIFOs here')
@pytest.mark.parametrize('where', ['log.json in a folder of logs', 'passed itself', 'log-rank1.json',
                                   'runs-rank1.json'])
def test_a_fifo_is_skipped_not_waited_for(tmp_path, where):
    good = good_log(tmp_path / 'logs' / 'good', world_size=2 if where.endswith('rank1.json') else 1)
    if where == 'log.json in a folder of logs':
        fifo, args = tmp_path / 'logs' / 'fifo' / 'log.json', [tmp_path / 'logs']
        fifo.parent.mkdir()
    elif where == 'passed itself':
        fifo, args = tmp_path / 'fifo', [good, tmp_path / 'fifo']
    else:
        fifo, args = good / where, [good]
    os.mkfifo(fifo)
    proc = summarize(*args, timeout=20)  # no writer ever opens it: reading it would wait forever
    assert one_warning(proc, f'{fifo} is not a regular file'), proc.stderr
    assert '92.00' in row_of(proc, 'good')


DEEP = 100_000  # far beyond Python's recursion limit


@pytest.mark.parametrize('run, why', [
    ({'tta_val_acc': 1e200}, 'finite but no accuracy'),
    ({'tta_val_acc': 10**400}, 'an integer no float can hold'),
    ({'tta_val_acc': 1.5}, 'above 1'),
    ({'tta_val_acc': math.inf}, 'written as Infinity'),
    ({'time_seconds': 1e200}, 'a time beyond any run'),
    ({'time_seconds': 10**400}, 'an integer no float can hold'),
    ({'time_seconds': -1.0}, 'negative'),
    ({'run': True}, 'a bool, not a run number'),
    ({'epochs': 5}, 'epochs not a list'),
    ({'epochs': 'abc'}, 'epochs a string'),
    ({'epochs': [{'val_acc': 7}]}, 'a per-epoch accuracy above 1'),
])
def test_a_run_out_of_range_is_refused(tmp_path, run, why):
    good = good_log(tmp_path / 'good')
    bad = good_log(tmp_path / 'bad')
    log = json.loads((bad / 'log.json').read_text())
    log['runs'][1].update(run)
    (bad / 'log.json').write_text(json.dumps(log))
    proc = summarize(good, bad)
    assert one_warning(proc, str(bad / 'log.json')), (why, proc.stderr)
    assert 'good' in proc.stdout and 'bad ' not in proc.stdout


@pytest.mark.parametrize('where', ['the document', 'a run'])
def test_json_nested_too_deeply_is_a_warning(tmp_path, where):
    good = good_log(tmp_path / 'good')
    (tmp_path / 'deep').mkdir()
    nested = '[' * DEEP + ']' * DEEP
    text = nested if where == 'the document' else \
        '{"runs": [{"run": 1, "tta_val_acc": 0.9, "time_seconds": 1, "epochs": ' + nested + '}]}'
    (tmp_path / 'deep' / 'log.json').write_text(text)
    proc = summarize(good, tmp_path / 'deep')
    assert one_warning(proc, 'too deeply'), proc.stderr


def test_log_fields_of_the_wrong_kind_show_as_unknown(tmp_path):
    environments = {'list': ['cuda'], 'text': 'cuda', 'fields': {'device': ['cuda'], 'torch': 2.13}}
    folders = [good_log(tmp_path / f'odd-{name}', flops_per_run=10**400, world_size=10**400, environment=env)
               for name, env in environments.items()]
    proc = summarize(*folders)
    assert proc.returncode == 0 and proc.stderr == '', proc.stderr
    for name in environments:
        cells = row_of(proc, f'odd-{name}')  # log script device torch n mean std [lo, hi] s/run status
        assert cells[2:5] == ['?', '?', '3'] and len(cells) == 11 and cells[-1] == 'complete'


def test_a_huge_file_is_refused_unread(tmp_path):
    good = good_log(tmp_path / 'good')
    (tmp_path / 'huge').mkdir()
    with open(tmp_path / 'huge' / 'log.json', 'wb') as f:
        f.truncate(300 * 2**20)  # sparse: no disk used, and nothing to read in a test's time
    proc = summarize(good, tmp_path / 'huge')
    assert one_warning(proc, 'over 256 MiB'), proc.stderr


def test_text_from_a_log_is_printed_inert(tmp_path):
    folder = good_log(tmp_path / 'a\nforged row', script='air\x1b[2J\rbench\ud800',
                      status='complete\x1b]0;x\x07', environment={'device': '\u202ecpu', 'torch': '2.13\n'})
    (tmp_path / 'bad\x1b[31m').mkdir()
    (tmp_path / 'bad\x1b[31m' / 'log.json').write_text('not json')
    proc = summarize(folder, tmp_path / 'bad\x1b[31m')
    assert proc.returncode == 0, proc.stderr
    for raw in '\x1b', '\r', '\x07', '\u202e':
        assert raw not in proc.stdout and raw not in proc.stderr, repr(raw)
    assert len(proc.stdout.splitlines()) == 2 and len(proc.stderr.splitlines()) == 1  # nothing forged
    assert 'a\\nforged' in proc.stdout and 'air\\x1b[2J\\rbench\\ud800' in proc.stdout
    assert 'bad\\x1b[31m' in proc.stderr


# ---------------------------------------------------------------- statistics and the plot


def test_the_interval_and_welch_match_scipy(tmp_path):
    a, b = (0.9401, 0.9387, 0.9412, 0.9395), (0.9380, 0.9366, 0.9391, 0.9359, 0.9377)
    proc = summarize(good_log(tmp_path / 'a', accs=a), good_log(tmp_path / 'b', accs=b))
    assert proc.returncode == 0, proc.stderr
    low, high = scipy_stats.t.interval(0.95, len(a) - 1, loc=100 * sum(a) / len(a),
                                       scale=100 * scipy_stats.sem(a))
    assert f'[{low:.2f}, {high:.2f}]' in proc.stdout
    w = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert f"Welch's t = {w.statistic:.3f}, df = {w.df:.1f}, two-sided p = {w.pvalue:.4g}" in proc.stdout


def load_tool():
    spec = importlib.util.spec_from_file_location('summarize_logs', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plot_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    from matplotlib.figure import Figure
    tool, good = load_tool(), good_log(tmp_path / 'good')
    tool.main([str(good), '--plot', str(tmp_path / 'curves.png')])
    assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    def disk_full(self, target, **kwargs):  # half a file, then the error a full disk gives
        if isinstance(target, (str, os.PathLike)):
            with open(target, 'wb') as f:
                f.write(b'\x89PNG half')
        else:
            target.write(b'\x89PNG half')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(Figure, 'savefig', disk_full)
    with pytest.raises(SystemExit):
        tool.main([str(good), '--plot', str(tmp_path / 'new.png')])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['curves.png', 'good']  # no half file, no temp file
    with pytest.raises(SystemExit):
        tool.main([str(good), '--plot', str(tmp_path / 'curves.png')])
    assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'  # the old plot stays whole
