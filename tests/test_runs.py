"""Every script, end to end: a run never depends on the runs before it in the same invocation, and
a non-finite loss stops the invocation naming its exact step, keeping the finished runs."""
import ast
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY, fingerprint, load_script, log_dir_of, no_traceback, read_log, train_on

SCRIPTS = ['airbench94', 'airbench94_compiled', 'airbench95', 'airbench96', 'airbench94_muon', 'airbench96_faster']
# TINY trains 3 epochs of 10 steps; the whitening bias freezes after the first, so every run
# (the warmup included) ends with it frozen and the next run must unfreeze it.
FAST = {name: [*TINY, '--set', 'opt.whiten_bias_epochs=1'] for name in SCRIPTS}
FAST['airbench96_faster'] += ['--set', 'opt.batch_size_masked=100', '--set', 'proxy.widths.block1=8']


EPOCHS_2 = ['--set', 'opt.train_epochs=2']


def invoke(name, *args, cifar_dir, tmp_path, prelude=''):
    """Runs the script as `python script.py args`, after executing `prelude` in the same process."""
    code = ('import runpy, sys\n' + prelude +
            f'sys.argv = [{str(REPO / f"{name}.py")!r}] + sys.argv[1:]\n'
            'runpy.run_path(sys.argv[0], run_name="__main__")\n')
    cmd = [sys.executable, '-c', code, '--data-dir', cifar_dir, '--log-dir', str(tmp_path), *FAST[name], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, 'PYTHONUNBUFFERED': '1'})


def train_source(name):
    tree = ast.parse((REPO / f'{name}.py').read_text())
    return next(ast.unparse(node) for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == 'train')


# airbench95, airbench96 and airbench96_paper run airbench94's train() (checked below) under the shared
# harness, so airbench94's invocation covers their seeding; the others train their own way.
SAME_TRAIN = ['airbench95', 'airbench96', 'airbench96_paper']


@pytest.mark.parametrize('name', SAME_TRAIN)
def test_seeding_of_the_family_is_airbench94s(name):
    assert train_source(name) == train_source('airbench94'), (
        f'{name}.train() is no longer airbench94.train(): add {name} to the seeding test below')


# airbench94_compiled's case (after the warmup that compiles) is in test_family.py, beside the
# comparison with airbench94 that needs the same compiled invocation.
@pytest.mark.parametrize('name', [name for name in SCRIPTS if name not in SAME_TRAIN + ['airbench94_compiled']])
def test_run_k_equals_run_1_of_the_seed_k_minus_1(name, cifar_dir, tmp_path):
    """Run 2 of `--seed 10 --runs 2` (after run 1) is run 1 of `--seed 11 --runs 1`: both use seed 12.
    Two epochs, the whitening bias frozen after the first, so run 2 must unfreeze what run 1 froze."""
    many = invoke(name, '--seed', '10', '--runs', '2', '--no-warmup', *EPOCHS_2, cifar_dir=cifar_dir, tmp_path=tmp_path)
    one = invoke(name, '--seed', '11', '--runs', '1', '--no-warmup', *EPOCHS_2, cifar_dir=cifar_dir, tmp_path=tmp_path)
    for proc in (many, one):
        no_traceback(proc)
        assert proc.returncode == 0, proc.stderr
    log = read_log(log_dir_of(many.stdout))
    runs, alone = log['runs'], read_log(log_dir_of(one.stdout))['runs'][0]
    assert log['status'] == 'complete' and sum(line.startswith('Mean:') for line in many.stdout.splitlines()) == 1
    assert [r['steps'] for r in runs] == [20, 20] and min(r['tta_val_acc'] for r in runs) > 0.3  # they learn
    assert [r['seed'] for r in runs] == [11, 12] and alone['seed'] == 12  # run k uses seed S + k
    assert fingerprint(runs[1]) == fingerprint(alone)
    assert fingerprint(runs[0])['epochs'] != fingerprint(alone)['epochs']  # another seed is another run


# Makes the k-th training loss of the invocation (summed losses only, not the proxy's per-example
# ones nor the FLOPs count's on the meta device) NaN.
INJECT_NAN = '''import torch, torch.nn.functional as F
_real, _calls = F.cross_entropy, [0]
def _cross_entropy(input, *args, **kwargs):
    out = _real(input, *args, **kwargs)
    if input.device.type != 'meta' and kwargs.get('reduction') == 'sum':
        _calls[0] += 1
        if _calls[0] == {k}:
            return out * float('nan')
    return out
F.cross_entropy = _cross_entropy
'''


def test_a_nan_loss_names_its_step_and_keeps_the_finished_runs(cifar_dir, tmp_path):
    """The harness (the same block in every script): run 1 (steps 1-30) is kept, run 2 gets the NaN
    at its step 13 (in its second epoch); one sentence, exit 1, the log says why."""
    proc = invoke('airbench94', '--seed', '0', '--runs', '3', '--no-warmup', cifar_dir=cifar_dir, tmp_path=tmp_path,
                  prelude=INJECT_NAN.replace('{k}', str(30 + 13)))
    no_traceback(proc)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and 'NaN or infinite at step 13 of 30' in lines[0] and 'run 2' in lines[0], lines
    log = read_log(log_dir_of(proc.stdout))
    assert log['status'] == 'diverged' and 'step 13 of 30' in log['message']
    assert [r['run'] for r in log['runs']] == [1] and log['runs'][0]['steps'] == 30


def fast_hyp(m):
    """m.hyp with FAST's overrides, as the command line would set them."""
    pairs = [FAST[m.__name__][i + 1] for i in range(0, len(FAST[m.__name__]), 2)]
    return m.apply_overrides(m.hyp, pairs)[0]


@pytest.mark.parametrize('name', SCRIPTS)
def test_each_train_stops_at_the_step_whose_loss_is_not_finite(name, data, monkeypatch):
    """Each script's own train() (the harness above turns what it raises into the exit): the NaN of
    the 13th summed loss stops it, naming step 13 of 30."""
    m = load_script(name)
    namespace = {}
    exec(INJECT_NAN.replace('{k}', '13').replace('F.cross_entropy = _cross_entropy', ''), namespace)
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', namespace['_cross_entropy'])
    with pytest.raises(m.TrainingDiverged, match='NaN or infinite at step 13 of 30'):
        train_on(m, fast_hyp(m), m.Device('cpu'), data, seed=0)
    assert namespace['_calls'][0] == 20  # checked once per epoch (a check per step would sync): stops after it
