"""Checks that a change to the scripts changed nothing they compute: every script trains one tiny run
on the tests' synthetic data at a git revision and in the working tree, and the per-epoch losses and
accuracies must be identical, bit for bit.

    python tools/same_results.py HEAD~3                  # every script of both trees
    python tools/same_results.py main airbench94 ablations/main3_scalebias

Each run is `python SCRIPT.py --seed 0 --runs 1 --no-warmup --device cpu` on 2,000 synthetic training
images with one torch thread (so the float sums are in one order), and overrides that make it tiny
(batch 200, 2 epochs, narrow widths; the SGD family freezes its whitening bias after epoch 1). The
revision is checked out with `git worktree` into a temp folder, removed at the end. Exit status 0 if
every script agrees, 1 if one differs or fails, 2 for bad arguments. Needs numpy (the synthetic data).
"""
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / 'tests'))
sys.path.insert(0, str(REPO / 'tools'))
import shared_blocks  # noqa: E402  (the list of the project's scripts)
import synthetic  # noqa: E402

TINY = {'opt.batch_size': 200, 'opt.batch_size_masked': 100, 'opt.train_epochs': 2, 'opt.whiten_bias_epochs': 1,
        'opt.lookahead_epochs': 1, 'aug.cutmix_epochs': 1, 'net.whiten_images': 1000, 'net.whiten_chunk': 500,
        'net.ghost_splits': 4}
COMPARED = ('train_loss', 'train_acc', 'val_acc')


def overrides(tree, script):
    """--set flags for the keys of TINY that the script's hyp has, and every width set to 16."""
    code = (f'import importlib.util, json; s = importlib.util.spec_from_file_location("m", {str(tree / script)!r}); '
            'm = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n'
            'def leaves(t, p=""):\n'
            '    return [k for n, v in t.items() for k in (leaves(v, p + n + ".") if isinstance(v, dict) else [p + n])]\n'
            'print(json.dumps(leaves(m.hyp)))')
    keys = json.loads(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout)
    chosen = {k: TINY[k] for k in keys if k in TINY}
    chosen.update({k: 16 for k in keys if '.widths.' in k})
    return [arg for k, v in chosen.items() for arg in ('--set', f'{k}={v}')]


def run(tree, script, data, logs):
    """The run's record from its log.json, or the reason it has none."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(tree)}
    env.pop('AIRBENCH_DATA', None)
    out = Path(logs) / script.replace('/', '_')
    proc = subprocess.run([sys.executable, str(tree / script), '--data-dir', data, '--log-dir', str(out), '--seed', '0',
                           '--runs', '1', '--no-warmup', '--device', 'cpu', *overrides(tree, script)],
                          capture_output=True, text=True, env=env, cwd=tree)
    logs_found = sorted(out.glob('*/log.json'))
    if proc.returncode or not logs_found:
        return f'exit status {proc.returncode}: {proc.stderr.strip()[-300:]}'
    record = json.loads(logs_found[0].read_text())['runs'][0]
    return {'epochs': [{k: e[k] for k in COMPARED} for e in record['epochs']],
            'tta_val_acc': record['tta_val_acc'], 'steps': record['steps']}


def main(argv):
    if not argv or argv[0].startswith('-'):
        sys.exit(__doc__)
    rev, wanted = argv[0], [s if s.endswith('.py') else s + '.py' for s in argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / 'before'
        if subprocess.run(['git', '-C', str(REPO), 'worktree', 'add', '--detach', str(before), rev],
                          capture_output=True).returncode:
            print(f'same_results.py: error: {rev!r} is not a revision of {REPO}', file=sys.stderr)
            sys.exit(2)
        try:
            data = synthetic.write_official(os.path.join(tmp, 'data'))
            scripts = wanted or sorted(set(shared_blocks.project_scripts(REPO)) | set(shared_blocks.project_scripts(before)))
            failed = 0
            with ThreadPoolExecutor(2) as pool:  # the two trees side by side, one thread each
                for script in scripts:
                    results = list(pool.map(lambda tree: run(tree, script, data, Path(tmp) / tree.name / 'logs')
                                            if (tree / script).exists() else 'no such script', (before, REPO)))
                    same = results[0] == results[1] and isinstance(results[0], dict)
                    failed += not same
                    shown = results[1] if same else f'before: {results[0]}\n    after:  {results[1]}'
                    print(f"{'same' if same else 'DIFFERENT'}  {script}: {shown if not same else ''}"
                          + (f"{len(results[1]['epochs'])} epochs, TTA {results[1]['tta_val_acc']:.4f}" if same else ''),
                          flush=True)
        finally:
            subprocess.run(['git', '-C', str(REPO), 'worktree', 'remove', '--force', str(before)], capture_output=True)
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main(sys.argv[1:])
