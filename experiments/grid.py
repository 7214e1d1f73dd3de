"""The engine under every experiment command: a grid of cells (a script, its overrides, a data order,
a number of runs), run with the script's own train(), dealt to torchrun's processes, resumable.

    python experiments/table1.py --preset smoke --data-dir DIR            # seconds
    torchrun --nproc_per_node 8 experiments/table1.py --preset paper      # one node, 8 GPUs
    python experiments/table1.py --preset cpu --analyze                   # the table, from what finished

A grid's folder is <log-dir>/<experiment>-<preset>/ (the same for every invocation, so rerunning the
command continues the grid): plan.json (the grid, written once; a rerun with another grid is refused),
labels.pt (the CIFAR-10 test labels, uint8, once; labels-<dataset>.pt for another dataset's) and
runs/<cell>/<k>.json and .pt for run k of each cell. The .pt holds the predicted class of every test
example (uint8; of the cell's test subset if it has one), from one trained net, for each evaluation
(no TTA and the cell's TTA); the .json (written last, by temp file and rename) marks the run finished
and holds its seed, config, code version, device, accuracies and time (training plus the TTA
evaluation, the paper's clock). A run whose .json exists is skipped, so a grid stopped at any point
and restarted finishes with every run exactly once. A cell whose script is not in the checkout, or
whose dataset's folder was not given, is skipped with a line saying so and stays in the plan: rerunning
once it can run adds its runs. Each dataset is read once per process.
Run k of every cell has seed S + k (common random numbers across cells). Under torchrun the grid's
runs are dealt round-robin, k-major, by their place in the whole grid, and each process skips those
already finished (so concurrent processes never train or write the same run, however late each
looks), and a partial grid has every cell.
"""
import argparse
import dataclasses
import hashlib
import importlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import airbench94  # noqa: E402  (the harness pieces every script shares: the same in all of them)

UserError = airbench94.UserError


@dataclasses.dataclass(frozen=True)
class Cell:
    """One configuration of a grid: `runs` runs of `script` with `overrides` (--set keys and values)."""
    name: str
    script: str
    overrides: dict
    runs: int
    sampling: str = 'reshuffle'   # or 'replacement' (the loader's, paper Table 1)
    train_subset: int = 0         # the first N training images only; 0: all
    dataset: str = 'cifar10'      # experiments/datasets.py: cifar10, cifar100, svhn, cinic10
    test_subset: int = 0          # the first N test images only; 0: all

    def config(self):
        """The cell as plan.json and every run record hold it; the fields added later (dataset,
        test_subset) only where they differ from their defaults, so the plans of grids started
        before them still match."""
        config = dataclasses.asdict(self)
        for key, default in LATER_FIELDS.items():
            if config[key] == default:
                del config[key]
        return config


LATER_FIELDS = {'dataset': 'cifar10', 'test_subset': 0}
DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'svhn': 'SVHN', 'cinic10': 'CINIC-10'}


def command_line(experiment, presets, description, argv=None, datasets=()):
    """The flags of every experiment command; returns the args and the preset's cells. datasets: the
    names besides cifar10 whose folders the command takes (--cifar100-dir DIR, ...)."""
    p = argparse.ArgumentParser(prog=f'experiments/{experiment}.py', description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Exit status: 0 done, 2 bad input, 130 interrupted, 143 terminated.')
    p.add_argument('--preset', choices=list(presets), required=True, help='the grid: ' + ', '.join(presets))
    p.add_argument('--data-dir', default=os.environ.get('AIRBENCH_DATA') or 'cifar10', metavar='DIR',
                   help='the CIFAR-10 folder, as for the scripts (default: $AIRBENCH_DATA or ./cifar10)')
    for name in datasets:
        p.add_argument(f'--{name}-dir', metavar='DIR', dest=f'{name}_dir',
                       help=f'the {DATASET_NAMES[name]} folder (experiments/datasets.py says what it holds); '
                            'without it, its cells are skipped')
    p.add_argument('--log-dir', default='logs', metavar='DIR',
                   help=f'the grid goes to DIR/{experiment}-PRESET/ (default ./logs); rerun to continue it')
    p.add_argument('--device', choices=['auto', 'cuda', 'cpu', 'mps'], default='auto')
    p.add_argument('--seed', type=int, default=0, metavar='S', help='run k of every cell uses seed S + k')
    p.add_argument('--analyze', nargs='*', metavar='FOLDER', default=None,
                   help="print the table from the runs finished so far (also of other folders, e.g. other "
                        "nodes'), and draw the figure if the command has one; runs nothing")
    p.add_argument('--plot', metavar='FILE.png', help='with --analyze: where the figure goes')
    args = p.parse_args(argv)
    if not 0 <= args.seed <= 2**40:
        p.error(f'argument --seed: must be in 0..2^40, got {args.seed}')
    args.folder = Path(args.log_dir) / f'{experiment}-{args.preset}'
    return args, presets[args.preset]


def run_list(cells):
    """[(cell, k)] k-major: run 1 of every cell, then run 2 of every cell, ..."""
    return [(cell, k) for k in range(1, max(c.runs for c in cells) + 1) for cell in cells if k <= cell.runs]


def code_version(script):
    """The git commit of the repository (with '+changes' if its tree differs) and the script's sha256."""
    try:
        commit = subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', '-C', str(REPO), 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = '', ''
    source = (REPO / f'{script}.py').read_bytes()
    return {'commit': (commit or 'unknown') + ('+changes' if dirty else ''),
            'script_sha256': hashlib.sha256(source).hexdigest()}


def write_plan(folder, experiment, preset, seed, cells):
    """plan.json, written once; a rerun must plan the same grid (else another folder is needed)."""
    plan = {'experiment': experiment, 'preset': preset, 'seed': seed, 'cells': [c.config() for c in cells]}
    path = folder / 'plan.json'
    if path.exists():
        try:
            found = json.loads(airbench94.read_bytes(str(path)))
        except ValueError:
            found = None
        if found != plan:
            raise UserError(f'{path} holds another grid than this command plans (another preset, seed or code): '
                            'pass another --log-dir, or delete that folder to start afresh')
        return
    folder.mkdir(parents=True, exist_ok=True)
    airbench94.atomic_write(str(path), lambda tmp: Path(tmp).write_text(json.dumps(plan, indent=1)))


def finished(folder, cell, k):
    """The record of run k of cell if it finished (its .json reads), else None."""
    path = folder / 'runs' / cell.name / f'{k}.json'
    try:
        return json.loads(airbench94.read_bytes(str(path)))
    except (UserError, ValueError):
        return None


def subset(split, n):
    """The first n images of a split (all if n is 0): a view, nothing copied."""
    if not n:
        return split
    return {**split, 'images': split['images'][:n], 'labels': split['labels'][:n]}


def one_run(module, cell, k, seed, dev, data, folder, version):
    """Trains run k of cell with the script's own train(); writes its predictions, then its record.

    The test set is read only after training: train() gets no test loader (so no untimed per-epoch
    evaluation), and the two evaluations are made here from the one trained net, the TTA one timed
    and added to the training time, as the paper's clock counts it (§2)."""
    hyp, _ = module.apply_overrides(module.hyp, [f'{key}={json.dumps(v)}' for key, v in cell.overrides.items()])
    module.check_hyp(hyp)
    train_split, test_split = subset(data['train'], cell.train_subset), subset(data['test'], cell.test_subset)
    if hyp['opt']['batch_size'] > len(train_split['labels']):
        raise UserError(f"cell {cell.name}: opt.batch_size={hyp['opt']['batch_size']} exceeds its "
                        f"{len(train_split['labels'])} training images")
    torch.manual_seed(seed)
    train_loader, test_loader = module.make_loaders(hyp, dev, {'train': train_split, 'test': test_split})
    train_loader.sampling = cell.sampling
    started = time.time()
    model, record = module.train(hyp, dev, train_loader, None, seed=seed, run=k, verbose=False)
    tta_level = hyp['net'].get('tta_level', 2)
    predictions, tta_seconds = {}, 0.0
    for name, level in (('tta', tta_level), ('plain', 0)):  # both from the one trained net
        clock = time.perf_counter()
        predictions[name] = module.infer(model, test_loader, level).argmax(1).to(torch.uint8).cpu()
        if name == 'tta':  # .cpu() waits for the device, so the clock holds the whole evaluation
            tta_seconds = time.perf_counter() - clock
    labels = test_loader.labels.cpu()
    out = folder / 'runs' / cell.name
    out.mkdir(parents=True, exist_ok=True)
    airbench94.atomic_write(str(out / f'{k}.pt'), lambda tmp: torch.save(predictions, tmp))
    result = {'cell': cell.name, 'run': k, 'seed': seed, 'config': cell.config(), 'hyp': hyp,
              'code': version, 'device': str(dev.torch_device),
              'environment': {'torch': str(torch.__version__), 'host': platform.node(),
                              'threads': torch.get_num_threads(),
                              'gpu': torch.cuda.get_device_name(dev.torch_device) if dev.type == 'cuda' else None},
              'dataset': cell.dataset, 'n_train': len(train_split['labels']), 'n_test': len(labels),
              'time_seconds': record['time_seconds'] + tta_seconds, 'wall_seconds': time.time() - started,
              'steps': record['steps'], 'tta_level': tta_level,
              'tta_val_acc': (predictions['tta'].long() == labels).float().mean().item(),
              'val_acc': (predictions['plain'].long() == labels).float().mean().item(),
              'finished': time.strftime('%Y-%m-%d %H:%M:%S')}
    airbench94.atomic_write(str(out / f'{k}.json'), lambda tmp: Path(tmp).write_text(json.dumps(result)))
    return result


def labels_path(folder, dataset):
    """Where a grid keeps a dataset's test labels: labels.pt for CIFAR-10 (as grids always had),
    labels-<dataset>.pt for the others."""
    return Path(folder) / ('labels.pt' if dataset == 'cifar10' else f'labels-{dataset}.pt')


def unavailable(cell, args):
    """Why a cell cannot run in this checkout or with these flags (its script is not here, its
    dataset's folder was not given), else None. Such cells stay in the plan: rerun once they can."""
    if not (REPO / f'{cell.script}.py').is_file():
        return f'{cell.script}.py is not in this checkout'
    if cell.dataset != 'cifar10' and not getattr(args, f'{cell.dataset}_dir', None):
        return f'no --{cell.dataset}-dir was given'
    return None


def load_data(dataset, args):
    """{'train': split, 'test': split} of a dataset, from the folder its flag names."""
    if dataset == 'cifar10':
        return airbench94.load_cifar10(args.data_dir)[0]
    from experiments import datasets  # the other readers: only for the grids that use them
    return datasets.load(dataset, getattr(args, f'{dataset}_dir'))


def run_grid(experiment, args, cells):
    """Every run of the grid not yet finished, dealt to this process; returns how many it ran."""
    rank, world, _, local_world = airbench94.join_torchrun()
    dev = airbench94.Device(args.device, index=int(os.environ.get('LOCAL_RANK') or 0))
    if world > 1 and dev.type == 'cpu':  # the node's cores, divided between its processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if rank == 0:
        write_plan(args.folder, experiment, args.preset, args.seed, cells)
    else:  # the plan is rank 0's: wait until it is there
        while not (args.folder / 'plan.json').exists():
            time.sleep(0.5)
    say = print if rank == 0 else (lambda *a, **k: None)
    skipped = {cell.name: unavailable(cell, args) for cell in cells}
    for name, reason in skipped.items():
        if reason:
            say(f'skipping cell {name}: {reason}; rerun the command once it is there to add its runs', flush=True)
    todo = [(cell, k) for cell, k in run_list(cells)
            if not skipped[cell.name] and finished(args.folder, cell, k) is None]
    data = {}
    for dataset in dict.fromkeys(cell.dataset for cell, _ in todo):  # each dataset read once, in order
        data[dataset] = load_data(dataset, args)
        labels = labels_path(args.folder, dataset)
        if rank == 0 and not labels.exists():
            airbench94.atomic_write(str(labels), lambda tmp: torch.save(
                data[dataset]['test']['labels'].to(torch.uint8), tmp))
    # dealt by each run's place in the whole grid, not in what is left: a process that looks later (and sees
    # a run another process has just finished) deals the same, so no run is done by two processes
    mine = [run for i, run in enumerate(run_list(cells)) if i % world == rank and run in todo]
    say(f'{experiment} ({args.preset}): {len(cells)} cells, {sum(c.runs for c in cells)} runs, '
        f'{len(todo)} to do, {len(mine)} in this process of {world}; folder {args.folder}', flush=True)
    modules, versions = {}, {}
    for i, (cell, k) in enumerate(mine):
        if cell.script not in modules:  # the code version of what is imported, not of a later edit
            modules[cell.script] = importlib.import_module(cell.script.replace('/', '.'))
            versions[cell.script] = code_version(cell.script)
        result = one_run(modules[cell.script], cell, k, args.seed + k, dev, data[cell.dataset], args.folder,
                         versions[cell.script])
        say(f"[{i + 1}/{len(mine)}] {cell.name} run {k}: TTA {result['tta_val_acc']:.4f}, "
            f"plain {result['val_acc']:.4f}, {result['time_seconds']:.1f} s", flush=True)
    return len(mine)


def load_results(folders, cells=None):
    """{cell name: [record, ...]} of every finished run in the folders, each run once (by cell and k)."""
    found = {}
    for folder in folders:
        for path in sorted(Path(folder).glob('runs/*/*.json')):
            try:
                record = json.loads(airbench94.read_bytes(str(path)))
                record['folder'] = str(folder)  # where its predictions are; not stored
                found.setdefault(record['cell'], {})[record['run']] = record
            except (UserError, ValueError, KeyError, TypeError):
                print(f'warning: {airbench94.inert(path)} is not a run record; skipped', file=sys.stderr)
    names = [c.name for c in cells] if cells else sorted(found)
    return {name: [found[name][k] for k in sorted(found.get(name, {}))] for name in names}


def load_predictions(folder, cell_name, runs, evaluation, dataset='cifar10'):
    """runs x examples uint8 predictions of one evaluation ('plain' or 'tta') of runs stored in folder, and
    the labels (int64; those of the cell's test subset: the first as many as a run predicted)."""
    labels = torch.load(labels_path(folder, dataset), weights_only=True).long()
    rows = [torch.load(Path(folder) / 'runs' / cell_name / f"{r['run']}.pt", weights_only=True)[evaluation]
            for r in runs]
    if not rows:
        return torch.zeros(0, len(labels), dtype=torch.uint8), labels
    return torch.stack(rows), labels[:len(rows[0])]


def predictions_of(cell, runs, evaluation):
    """load_predictions of runs as load_results gives them, each read from the folder it was found in
    (runs of one grid from several folders: other nodes' copies); (runs x examples, labels)."""
    folders = list(dict.fromkeys(r['folder'] for r in runs))
    if not folders:
        return torch.zeros(0, 0, dtype=torch.uint8), torch.zeros(0, dtype=torch.long)
    parts = [load_predictions(f, cell.name, [r for r in runs if r['folder'] == f], evaluation, cell.dataset)
             for f in folders]
    order = [r for f in folders for r in runs if r['folder'] == f]  # back into the runs' own order
    rows = torch.cat([p for p, _ in parts])
    index = {id(r): i for i, r in enumerate(order)}
    return rows[torch.tensor([index[id(r)] for r in runs])], parts[0][1]


def percent(x):
    return 'n/a' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{100 * x:.2f}'


def interval(d, scale=100, digits=2):
    """'[low, high]' of describe()'s 95% interval, scaled (percent by default); '' for one value."""
    if d is None or d.get('ci_low') is None:
        return ''
    return f"[{scale * d['ci_low']:.{digits}f}, {scale * d['ci_high']:.{digits}f}]"


def describe(values):
    """stats.describe of a cell's values, or None for none."""
    from experiments import stats
    return stats.describe(values) if values else None


def figure(args, folders, name, draw):
    """Draws a figure with matplotlib (draw(pyplot) fills it) into --plot, else <first folder>/<name>.png,
    by temp file and rename; one sentence instead if matplotlib is missing or the file cannot be written."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('(no figure: drawing it needs matplotlib, which is not installed: pip install matplotlib)')
        return None
    path = Path(args.plot) if args.plot else Path(folders[0]) / f'{name}.png'
    plt.rcParams['text.usetex'] = False
    try:
        fig = draw(plt)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        airbench94.atomic_write(str(path), lambda tmp: fig.savefig(tmp, format='png', dpi=120))
    except OSError as e:
        print(f'(no figure: cannot write {airbench94.inert(path)}: {airbench94.inert(e.strerror or e)})')
        return None
    finally:
        plt.close('all')
    print(f'figure: {path}')
    return path


def label(ax, xlabel, ylabel, title, **title_kwargs):
    """An axes' labels, title and legend (the legend only if something is labelled)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, **title_kwargs)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def main(experiment, presets, description, analyze, argv=None, datasets=()):
    """The command: run the grid (or with --analyze, print its table); one sentence for bad input, and
    Ctrl-C or SIGTERM keep every finished run."""
    def terminated(signum, frame):
        raise KeyboardInterrupt('terminated (SIGTERM)', 143)
    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        args, cells = command_line(experiment, presets, description, argv, datasets)
        if args.analyze is not None:
            analyze(args, cells, [Path(f) for f in args.analyze] or [args.folder])
            return
        run_grid(experiment, args, cells)
        if int(os.environ.get('RANK') or 0) == 0:
            analyze(args, cells, [args.folder])
    except UserError as e:
        print(f'{experiment}.py: error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f'{experiment}.py: {e.args[0] if e.args else "interrupted"}; every finished run is kept: rerun the '
              'command to continue', file=sys.stderr)
        sys.exit(e.args[1] if len(e.args) > 1 else 130)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def command(experiment, names):
    """The main(argv=None) of an experiment module, from its globals (names): its PRESETS, __doc__,
    analyze and, if it has one, DATASET_FLAGS (the datasets whose folders it takes), read when called."""
    def main_of_module(argv=None):
        main(experiment, names['PRESETS'], names['__doc__'], names['analyze'], argv, names.get('DATASET_FLAGS', ()))
    return main_of_module


def scaled(widths, factor):
    """Block widths multiplied by factor (rounded), as overrides."""
    return {f'net.widths.{block}': max(1, round(width * factor)) for block, width in widths.items()}
