"""tools/gpu_check.py on a CPU: it runs the scripts and tables the figures of their own logs, stops a
script at its budget and goes on, writes the originals' data in torchvision's form, runs an original's
patched copy beside that data, parses the originals' printed tables, and refuses bad input in one
sentence (exit status 2). The originals themselves need CUDA: here they are stand-ins written in their
print format."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

import synthetic
from conftest import REPO, TINY, load_script, no_traceback

sys.path.insert(0, str(REPO / 'tools'))
import gpu_check  # noqa: E402

TOOL = REPO / 'tools' / 'gpu_check.py'
FAST = [*TINY, '--set', 'opt.train_epochs=1', '--set', 'opt.batch_size=100']  # 4 steps on 400 images


@pytest.fixture(scope='module')
def small_dir(tmp_path_factory):
    """The tests' synthetic CIFAR-10, 400 train / 200 test images, with its cache built."""
    root = synthetic.write_official(tmp_path_factory.mktemp('gpu_check') / 'data', n_train=400, n_test=200)
    load_script('airbench94').load_cifar10(str(root))
    return str(root)


def tool(*args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != 'AIRBENCH_DATA'}
    env['OMP_NUM_THREADS'] = '1'  # the scripts it starts share the two cores with the other tests
    proc = subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    no_traceback(proc)
    return proc


# ---------------------------------------------------------------- stand-ins for the originals

# The originals' logging functions, verbatim but for the column list split over two lines
# (KellerJordan/cifar10-airbench legacy/airbench94.py at f1c599c; airbench94_muon.py and hiverge's
# cifar10_speedrun.py differ only in their columns: no train_loss, and time_seconds for total_time_seconds).
ORIGINAL_PRINTING = '''
def print_columns(columns_list, is_head=False, is_final_entry=False):
    print_string = ''
    for col in columns_list:
        print_string += '|  %s  ' % col
    print_string += '|'
    if is_head:
        print('-'*len(print_string))
    print(print_string)
    if is_head or is_final_entry:
        print('-'*len(print_string))

logging_columns_list = ['run   ', 'epoch', 'train_loss', 'train_acc', 'val_acc', 'tta_val_acc',
                        'total_time_seconds']
def print_training_details(variables, is_final_entry):
    formatted = []
    for col in logging_columns_list:
        var = variables.get(col.strip(), None)
        if type(var) in (int, str):
            res = str(var)
        elif type(var) is float:
            res = '{:0.4f}'.format(var)
        else:
            assert var is None
            res = ''
        formatted.append(res.rjust(len(col)))
    print_columns(formatted, is_final_entry=is_final_entry)
'''

# A stand-in for legacy/airbench94.py: its printing, and its __main__ block verbatim (the commented-out
# warmup and the 25-run loop that the tool patches); main() trains nothing but reads ./cifar10/train.pt
# where the original does, sleeps instead of training and prints the rows the original prints.
FAKE_LEGACY_94 = ORIGINAL_PRINTING + '''
import os, sys, time, uuid

def main(run):
    assert min(os.path.getsize(os.path.join('cifar10', f)) for f in ('train.pt', 'test.pt')) > 0
    warmup, total_time_seconds = run == 'warmup', 0.0
    for epoch in range(2):
        time.sleep(0.4 if warmup else 0.05)  # the warmup compiles
        total_time_seconds += 0.25 + (run if isinstance(run, int) else 0) / 100
        train_loss, train_acc, val_acc = 1.1, 0.95, 0.91
        print_training_details(locals(), is_final_entry=False)
        run = None
    tta_val_acc = 0.93 + len(accs_so_far) / 100
    epoch = 'eval'
    print_training_details(locals(), is_final_entry=True)
    accs_so_far.append(tta_val_acc)
    return tta_val_acc

accs_so_far = []

if __name__ == "__main__":
    with open(sys.argv[0]) as f:
        code = f.read()

    print_columns(logging_columns_list, is_head=True)
    #main('warmup')
    accs_so_far.clear()
    accs = [main(run) for run in range(25)]
    print('Mean: %.4f    Std: %.4f' % (sum(accs) / len(accs), 0.0))

    log = {'code': code, 'accs': accs}
    log_dir = os.path.join('logs', str(uuid.uuid4()))
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, 'log.pt')
    print(os.path.abspath(log_path))
    with open(log_path, 'w') as f:
        f.write(repr(log['accs']))
'''

# airbench94_muon.py's __main__ block, verbatim (its warmup is on; the tool patches only the run count)
FAKE_MUON = '''
if __name__ == "__main__":

    # We re-use the compiled model between runs to save the non-data-dependent compilation time
    model = CifarNet().cuda().to(memory_format=torch.channels_last)
    model.compile(mode="max-autotune")

    print_columns(logging_columns_list, is_head=True)
    main("warmup", model)
    accs = torch.tensor([main(run, model) for run in range(200)])
    print("Mean: %.4f    Std: %.4f" % (accs.mean(), accs.std()))
'''


def fake_originals(root, files=None):
    """ORIG as docs/gpu.md makes it, holding stand-ins for the originals of airbench94 and airbench94_muon."""
    files = files or {'cifar10-airbench/legacy/airbench94.py': FAKE_LEGACY_94,
                      'cifar10-airbench/airbench94_muon.py': FAKE_MUON}
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


# ---------------------------------------------------------------- the check, end to end on a CPU


def test_runs_the_scripts_and_tables_the_figures_of_their_own_logs(small_dir, tmp_path):
    out, tar = tmp_path / 'check', tmp_path / 'check.tgz'
    originals = fake_originals(tmp_path / 'originals')
    proc = tool('--data-dir', small_dir, '--device', 'cpu', '--runs', '2', '--seed', '3', '--scripts',
                'airbench94', '--originals', originals, '--out', out, '--tar', tar, *FAST)
    assert proc.returncode == 0, proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith('originals:')]
    assert len(skipped) == 1 and 'skipped' in skipped[0] and 'CUDA' in skipped[0], proc.stdout
    doc = json.loads((out / 'table.json').read_text())
    assert doc['status'] == 'finished' and doc['data']['train'] == 400 and doc['data']['source'] == 'cache'
    assert [(r['script'], r['variant'], r['status']) for r in doc['rows']] == [
        ('airbench94', 'project', 'complete'), ('airbench94', 'original', 'skipped')]
    text = (out / 'table.txt').read_text()
    assert text.split('\n')[0].split() == ['script', 'variant', 'device', 'torch', 'runs', 'TTA', '%', 'std',
                                           's/run', 'warmup', 's', 'status', 'log']
    for row in doc['rows'][::2]:
        log = json.loads((out / row['log'] / 'log.json').read_text())
        times = [r['time_seconds'] for r in log['runs']]
        assert log['script'] == row['script'] and log['seed'] == 3
        assert log['overrides']['opt.batch_size'] == 100
        assert row['runs'] == log['summary']['n'] == 2
        assert row['tta_mean'] == log['summary']['mean'] and row['tta_std'] == log['summary']['std']
        assert row['seconds_per_run'] == pytest.approx(sum(times) / 2, rel=1e-12)
        assert row['device'] == log['environment']['device'] == 'cpu'
        assert row['torch'] == log['environment']['torch'] == torch.__version__
        if log.get('warmup_seconds') is not None:  # the harness's own figure, where it records one
            assert (row['warmup_seconds'], row['warmup_source']) == (log['warmup_seconds'], 'log')
        else:  # the table's header to the warmup's eval row, as the lines arrived
            assert row['warmup_source'] == 'lines' and 0 < row['warmup_seconds'] < row['wall_seconds']
        assert row['command'][row['command'].index('--device') + 1] == 'cpu'
        assert row['command'][-len(FAST):] == FAST
        line = next(x for x in text.splitlines() if x.startswith(row['script'] + ' ') and ' project ' in x)
        assert f"{100 * log['summary']['mean']:.2f}" in line and f'{sum(times) / 2:.3f}' in line, line
        printed = (out / row['output']).read_text().splitlines()
        assert sum(' eval ' in line for line in printed) == 3  # the warmup and 2 runs
    with tarfile.open(tar) as f:  # one file brings everything back
        names = f.getnames()
    assert 'check/table.json' in names and 'check/table.txt' in names
    assert all(f"check/{r['log']}/log.json" in names for r in doc['rows'][::2])


def test_a_script_past_its_budget_is_stopped_recorded_and_the_check_goes_on(small_dir, tmp_path):
    started = time.monotonic()
    proc = tool('--data-dir', small_dir, '--device', 'cpu', '--runs', '1', '--scripts',
                'airbench94_muon,airbench94', '--budget-s', '1.5', '--grace-s', '1', '--out', tmp_path / 'c',
                *FAST)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60  # each script stopped after its 1.5 s, not run to its end
    rows = json.loads((tmp_path / 'c' / 'table.json').read_text())['rows']
    assert [(r['script'], r['status']) for r in rows] == [  # by value, not as listed
        ('airbench94', 'timed out'), ('airbench94_muon', 'timed out')]
    for row in rows:  # the second one ran too: the check went on
        assert row['budget_seconds'] == 1.5 and 1.5 <= row['wall_seconds'] < 5 and row['runs'] == 0
    assert (tmp_path / 'c' / 'table.txt').read_text().count('timed out') == 2


def alive(pid):
    try:
        return Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] not in 'ZX'
    except OSError:
        return False


def test_the_budget_stops_the_whole_process_group_even_what_ignores_sigterm(tmp_path):
    """A compile spawns workers: the whole group goes, a child that ignores SIGTERM too (SIGKILL)."""
    program = ('import os, signal, subprocess, sys, time\n'
               'child = subprocess.Popen([sys.executable, "-c", "import signal, time; '
               'signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])\n'
               'signal.signal(signal.SIGTERM, signal.SIG_IGN)\n'
               'print("child", child.pid, flush=True)\n'
               'time.sleep(60)\n')
    started = time.monotonic()
    result = gpu_check.run_process([sys.executable, '-c', program], 1.5, 0.5, tmp_path / 'o', tmp_path / 'e')
    assert result['timed_out'] and 1.5 <= result['wall_seconds'] and time.monotonic() - started < 10
    child = int(next(text for _, text in result['lines'] if text.startswith('child')).split()[1])
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    given = {'budgets': {'airbench94': 60}, 'default_budget': 300}
    assert gpu_check.budget_for('airbench94', given, None, 0) == 60  # its own budget
    assert gpu_check.budget_for('airbench95', given, 100, 30) == 70  # the rest of --total-s
    assert gpu_check.budget_for('airbench95', given, 100, 99.5) is None  # under 1 s left: not started


# ---------------------------------------------------------------- the originals


def test_the_originals_data_is_torchvisions_form_of_the_data_the_scripts_read(cifar_dir, tmp_path):
    data = load_script('airbench94').load_cifar10(cifar_dir)[0]
    folder = gpu_check.prepare_originals_data(data, tmp_path)
    assert folder == tmp_path / 'cifar10'
    assert sorted(os.listdir(folder)) == ['test.pt', 'train.pt']  # no temp file left
    for split in ('train', 'test'):
        written = torch.load(folder / f'{split}.pt', weights_only=True)  # as the originals' load reads it
        assert set(written) == {'images', 'labels', 'classes'}
        images, labels = written['images'], written['labels']
        assert images.dtype == torch.uint8 and images.shape == (len(data[split]['labels']), 32, 32, 3)
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
        assert torch.equal(images, data[split]['images']) and torch.equal(labels, data[split]['labels'])
        assert written['classes'] == data[split]['classes'] == synthetic.CLASSES


def test_an_original_runs_its_patched_copy_beside_the_data_and_its_table_is_read(tmp_path):
    originals = fake_originals(tmp_path / 'originals')
    args = gpu_check.parse_args(['--data-dir', str(tmp_path), '--runs', '3'])
    text = gpu_check.original_text(originals, 'airbench94', 3, warmup=True)
    cifar = tmp_path / 'prepared' / 'cifar10'
    cifar.mkdir(parents=True)
    (cifar / 'train.pt').write_bytes(b'prepared')
    (cifar / 'test.pt').write_bytes(b'prepared')
    out = tmp_path / 'out'
    (out / 'output').mkdir(parents=True)
    row = {'script': 'airbench94', 'variant': 'original', 'budget_seconds': 60}
    saved = [out / 'output' / 'o.txt', out / 'output' / 'e.txt']
    result = gpu_check.run_original(row, args, out, tmp_path / 'work', cifar, text, dict(os.environ), saved)
    assert result['returncode'] == 0, result['stderr']
    assert row['status'] == 'complete' and row['runs'] == 3
    assert row['tta_mean'] == pytest.approx(0.94) and row['tta_std'] == pytest.approx(0.01)
    assert row['seconds_per_run'] == pytest.approx((0.5 + 0.51 + 0.52) / 3)  # as printed, 4 decimals
    assert row['warmup_source'] == 'lines' and 0.7 <= row['warmup_seconds'] < 10  # the warmup slept 0.8 s
    kept = (out / 'originals' / 'airbench94' / 'airbench94.py').read_text()
    assert "\n    main('warmup')\n" in kept and 'for run in range(3)' in kept
    assert len(list((out / row['log']).glob('*/log.pt'))) == 1


def test_where_cuda_is_each_original_runs_after_its_script_in_the_check(small_dir, tmp_path, monkeypatch):
    """The originals' way through the whole check, which on a CPU only a stand-in can take: CUDA
    pretended, airbench94 (full width, stopped at its budget) and then the stand-in for its original,
    which reads ./cifar10/train.pt and test.pt where the tool put them."""
    originals = fake_originals(tmp_path / 'originals')
    monkeypatch.setattr(gpu_check, 'skip_originals', lambda args: None)
    monkeypatch.setattr(gpu_check, 'gpu_name', lambda: 'a stand-in GPU')
    monkeypatch.setattr(signal, 'signal', lambda *args: None)  # the tool's SIGTERM handler: not in pytest
    with pytest.raises(SystemExit) as stopped:
        gpu_check.main(['--data-dir', small_dir, '--device', 'cpu', '--runs', '3', '--scripts', 'airbench94',
                        '--originals', str(originals), '--budget-s', '6', '--out', str(tmp_path / 'c'),
                        '--set', 'opt.batch_size=100'])
    assert stopped.value.code == 1  # the project's script timed out
    doc = json.loads((tmp_path / 'c' / 'table.json').read_text())
    project, original = doc['rows']
    assert project['status'] == 'timed out' and not any('skipped' in note for note in doc['notes'])
    assert original['status'] == 'complete' and original['runs'] == 3, original.get('message')
    assert original['device'] == 'a stand-in GPU' and original['torch'] == torch.__version__
    assert original['tta_mean'] == pytest.approx(0.94) and original['warmup_source'] == 'lines'
    assert original['command'][1] == 'airbench94.py'
    assert original['source'] == 'cifar10-airbench/legacy/airbench94.py'
    assert doc['originals']['cifar10-airbench']['path'] == str(originals.resolve() / 'cifar10-airbench')


# The originals' per-epoch tables as they print them, written here from their print format (above):
# legacy/airbench94.py's (train_loss, total_time_seconds; the eval row keeps the last epoch's figures,
# which it prints from locals()), airbench96_faster.py's (the same, with its proxy's lines between)
# and airbench94_muon.py's (no train_loss; time_seconds).
LEGACY_OUTPUT = '''\
------------------------------------------------------------------------------------------------------
|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |
------------------------------------------------------------------------------------------------------
Proxy parameters: 194778
Main model parameters: 1972240
Training small proxy...
|  warmup  |      1  |      0.0023  |     0.1016  |   0.1000  |               |             40.1250  |
|          |      2  |      0.0022  |     0.1045  |   0.1000  |               |             41.0025  |
|          |   eval  |      0.0022  |     0.1045  |   0.1000  |       0.1000  |             41.4410  |
------------------------------------------------------------------------------------------------------
|       0  |      1  |      0.0012  |     0.7051  |   0.6902  |               |              1.9000  |
|          |      2  |      0.0009  |     0.8291  |   0.9302  |               |              3.6013  |
|          |   eval  |      0.0009  |     0.8291  |   0.9302  |       0.9401  |              3.8316  |
------------------------------------------------------------------------------------------------------
|       1  |      1  |      0.0012  |     0.7012  |   0.6815  |               |              1.9021  |
|          |      2  |      0.0009  |     0.8350  |   0.9291  |               |              3.6030  |
|          |   eval  |      0.0009  |     0.8350  |   0.9291  |       0.9387  |              3.8297  |
------------------------------------------------------------------------------------------------------
Mean: 0.9394    Std: 0.0010
/root/logs/0f1e2d3c-0000-4000-8000-000000000000/log.pt
'''
MUON_OUTPUT = '''\
---------------------------------------------------------------------------------
|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
---------------------------------------------------------------------------------
|  warmup  |      1  |     0.0980  |   0.1011  |               |       61.2001  |
|          |   eval  |     0.0980  |   0.1011  |       0.1003  |       61.9000  |
---------------------------------------------------------------------------------
|       0  |      1  |     0.8355  |   0.9312  |               |        2.4000  |
|          |   eval  |     0.8355  |   0.9312  |       0.9410  |        2.5900  |
---------------------------------------------------------------------------------
'''
# hiverge's cifar10_speedrun.py prints only an eval row per run (its run number in it) and, after each
# run, a progress line ended by '\r'; these lines are its published logging/logs/run_1.log, verbatim.
SPEEDRUN_OUTPUT = (
    '---------------------------------------------------------------------------------\n'
    '|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |\n'
    '---------------------------------------------------------------------------------\n'
    'Files already downloaded and verified\n'
    '|  warmup  |   eval  |     0.1111  |   0.0978  |       0.0963  |       40.5124  |\n'
    '---------------------------------------------------------------------------------\n'
    '|       1  |   eval  |     0.9875  |   0.9314  |       0.9401  |        2.0133  |\n'
    '---------------------------------------------------------------------------------\n'
    'Mean accuracy after 1 runs: 0.940100 | Mean time: 2.013260s\r'
    '|       2  |   eval  |     0.9873  |   0.9346  |       0.9407  |        2.0133  |\n'
    '---------------------------------------------------------------------------------\n'
    'Mean accuracy after 2 runs: 0.940400 | Mean time: 2.013269s\r'
    '|       3  |   eval  |     0.9879  |   0.9320  |       0.9401  |        2.0130  |\n'
    '---------------------------------------------------------------------------------\n'
    'Mean accuracy after 3 runs: 0.940300 | Mean time: 2.013163s\n'
    'Accuracies: Mean: 0.940300    Std: 0.000346\n'
    'Times (s):  Mean: 2.013200    Std: 0.000173\n')


@pytest.mark.parametrize('output, runs', [
    (LEGACY_OUTPUT, [('warmup', 0.1000, 0.1000, 41.4410), (0, 0.9401, 0.9302, 3.8316),
                     (1, 0.9387, 0.9291, 3.8297)]),
    (MUON_OUTPUT, [('warmup', 0.1003, 0.1011, 61.9000), (0, 0.9410, 0.9312, 2.5900)]),
    (SPEEDRUN_OUTPUT, [('warmup', 0.0963, 0.0978, 40.5124), (1, 0.9401, 0.9314, 2.0133),
                       (2, 0.9407, 0.9346, 2.0133), (3, 0.9401, 0.9320, 2.0130)]),
], ids=['legacy', 'muon', 'speedrun'])
def test_the_originals_printed_tables_are_parsed(output, runs):
    header_at, found = gpu_check.parse_table(gpu_check.split_lines(output, at=7.0))
    assert header_at == 7.0
    assert [(r['run'], r['tta_val_acc'], r['val_acc'], r['time_seconds']) for r in found] == runs
    row = gpu_check.original_row({}, {'lines': gpu_check.split_lines(output), 'timed_out': False,
                                      'returncode': 0, 'wall_seconds': 100.0})
    timed = [r for r in runs if r[0] != 'warmup']
    assert row['runs'] == len(timed) and row['status'] == 'complete'
    assert row['tta_mean'] == pytest.approx(sum(r[1] for r in timed) / len(timed))
    assert row['seconds_per_run'] == pytest.approx(sum(r[3] for r in timed) / len(timed))


def test_each_originals_substitution_must_match_once(tmp_path):
    originals = fake_originals(tmp_path / 'o')
    muon = gpu_check.original_text(originals, 'airbench94_muon', 4, warmup=True)
    assert muon == FAKE_MUON.replace('range(200)', 'range(4)')  # its warmup is on already
    legacy = gpu_check.original_text(originals, 'airbench94', 4, warmup=False)  # --no-warmup: as published
    assert "    #main('warmup')" in legacy and 'for run in range(4)' in legacy
    edited = FAKE_LEGACY_94.replace("#main('warmup')", "main('warmup')")  # a later version, say
    changed = fake_originals(tmp_path / 'changed', {'cifar10-airbench/legacy/airbench94.py': edited})
    with pytest.raises(gpu_check.CheckError, match='not the version this tool knows'):
        gpu_check.original_text(changed, 'airbench94', 4, warmup=True)


def test_the_ratios_and_the_warmup_seconds_of_a_log():
    def row(script, variant, runs, tta, seconds):
        return dict(script=script, variant=variant, runs=runs, tta_mean=tta, seconds_per_run=seconds)
    rows = [row('airbench94', 'project', 10, 0.9401, 2.2), row('airbench94', 'original', 9, 0.9411, 2.0),
            row('airbench95', 'project', 3, 0.95, 5.0)]  # no original measured: no ratio
    (ratio,) = gpu_check.ratios(rows)
    assert ratio['script'] == 'airbench94' and ratio['time_ratio'] == pytest.approx(1.1)
    assert ratio['runs'] == [10, 9]
    assert ratio['accuracy_difference_points'] == pytest.approx(-0.1)
    result = {'lines': gpu_check.split_lines(MUON_OUTPUT, at=3.0), 'timed_out': False, 'wall_seconds': 80.0}
    assert gpu_check.warmup_of({'warmup_seconds': 61.5}, result, [2.59]) == (61.5, 'log')
    assert gpu_check.warmup_of({}, result, [2.59]) == (0.0, 'lines')  # every line arrived at 3.0 s here


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize('case', ['no data dir', 'no CIFAR-10 in it', 'bad --scripts', 'unwritable --out',
                                  'used --out', 'no --originals', 'bad --budget-s'])
def test_bad_input_is_one_sentence_and_exit_status_2(case, cifar_dir, tmp_path):
    (tmp_path / 'file').write_text('a file, not a folder')
    (tmp_path / 'used').mkdir()
    (tmp_path / 'used' / 'table.txt').write_text('an earlier check')
    args = {'no data dir': ['--data-dir', tmp_path / 'missing'],
            'no CIFAR-10 in it': ['--data-dir', tmp_path / 'used'],
            'bad --scripts': ['--scripts', 'airbench94,airbench97'],
            'unwritable --out': ['--out', tmp_path / 'file' / 'check'],
            'used --out': ['--out', tmp_path / 'used'],
            'no --originals': ['--originals', tmp_path / 'missing'],
            'bad --budget-s': ['--budget-s', 'airbench97=60']}[case]
    proc = tool('--data-dir', cifar_dir, '--device', 'cpu', '--out', tmp_path / 'check', '--scripts',
                'airbench94', '--runs', '1', *FAST, *args)  # were the input taken: a short check
    assert proc.returncode == 2 and proc.stdout == '', proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gpu_check.py: error: ')
    named = {'no data dir': 'missing', 'no CIFAR-10 in it': 'holds no CIFAR-10',
             'bad --scripts': 'airbench97', 'unwritable --out': 'Not a directory',
             'used --out': 'not an empty folder', 'no --originals': 'missing',
             'bad --budget-s': 'airbench97'}[case]
    assert named in lines[-1]
    assert not (tmp_path / 'check').exists()  # nothing made before the input was checked
