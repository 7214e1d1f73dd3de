"""A table of run logs, the difference between two of them, and their curves.

    python tools/summarize_logs.py logs/airbench94-*                # one row per log
    python tools/summarize_logs.py LOG_A LOG_B                      # ... and A - B with a Welch test
    python tools/summarize_logs.py logs/ --target 94                # ... and each log against 94%
    python tools/summarize_logs.py LOG_A LOG_B --plot curves.png    # per-epoch curves and final accuracies

A LOG is a log folder (one invocation of a script), its log.json, a folder of log folders, or any other
file, read alone. A log folder is one row, all its parts merged: runs by run number, each counted once,
and the status the worst of the parts'. Under torchrun with W processes the folder holds, beside the
rank 0 process's log.json, either log-rank<r>.json for each rank r >= 1, with its own runs only (the
scripts now), or runs-rank<r>.json parts that log.json merged as it went and that complete it where it
lags (older logs, logs/ among them). A missing or unreadable part is a warning, counts as 'running' (as
the scripts count a process not heard from) and the other parts are kept.

A file that is not a readable run log is skipped with a warning naming it: not a regular file (a FIFO
would never end), over 256 MiB, not JSON or nested too deeply, or holding a run without a run number,
a TTA accuracy in [0, 1], a time in seconds (0 to 1e7), or with epochs that are not a list of records.
With no readable log left the exit status is 2. A field of the wrong kind that a row only shows (a
device that is not text, FLOPs no float holds) shows as '?' or blank. Text from a log is printed with
control characters escaped and table cells cut at 80 characters, so a log cannot redraw the terminal
or forge a line.

The statistics (confidence intervals, the test against a target with the runs such a test needs,
Welch's test) are experiments/stats.py's, not the scripts': the scripts print mean, std and n as the
original does. They need nothing beyond Python; --plot needs matplotlib (pip install -e ".[analysis]")
and writes its file whole or not at all.
"""
import argparse
import contextlib
import json
import math
import os
import re
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the root holds experiments/
from experiments.stats import describe, one_sided, welch  # noqa: E402

COLUMNS = ('log', 'script', 'device', 'torch', 'n', 'mean', 'std', '95% CI', 's/run', 'PFLOPs', 'status')
MAX_BYTES = 256 * 2**20  # 10,000 runs of 100 epochs log about 100 MB: a bigger file is not a log
MAX_SECONDS = 1e7  # about four months for one run: more is a corrupt log
MAX_WORLD = 4096  # processes of one invocation, so that a corrupt world_size cannot ask for a billion parts
STATUSES = ('complete', 'running', 'interrupted', 'failed', 'diverged')  # best to worst, as the scripts rank
PART = re.compile(r'(log|runs)-rank(\d+)\.json')


class BadLog(Exception):
    pass


def inert(text, limit=None):
    """text safe to print: unprintable characters (controls, escapes, line and direction marks, lone
    surrogates) written as Python escapes like \\x1b or \\n, and cut to limit characters if given."""
    shown = ''.join(c if c.isprintable() else c.encode('unicode_escape').decode('ascii') for c in text)
    return shown if limit is None or len(shown) <= limit else shown[:limit - 3] + '...'


def warn(message):
    print(f'summarize_logs.py: warning: {inert(message)}', file=sys.stderr)


# ---------------------------------------------------------------- reading, with nothing trusted


def read_json(path):
    """The JSON document in path, if path is a regular file of at most MAX_BYTES; else BadLog. The file
    is opened without blocking and checked before any read, so a FIFO or a device cannot hang the tool."""
    not_regular = BadLog(f'{path} is not a regular file: not a log of these scripts')
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # checked before opening, so a device is never opened
            raise not_regular
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))  # a FIFO swapped in meanwhile: no wait
        with open(fd, 'rb') as f:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise not_regular
            data = f.read(MAX_BYTES + 1) if info.st_size <= MAX_BYTES else b''
    except OSError as e:
        raise BadLog(f'{path} cannot be read ({e.strerror or e})') from None
    if info.st_size > MAX_BYTES or len(data) > MAX_BYTES:
        raise BadLog(f'{path} is over {MAX_BYTES // 2**20} MiB: not a log of these scripts')
    try:
        return json.loads(data)
    except RecursionError:
        raise BadLog(f'{path} nests its JSON too deeply to be a log') from None
    except ValueError as e:  # UnicodeDecodeError included
        raise BadLog(f'{path} is not a readable run log ({type(e).__name__}: {e})') from None


def real(value, low, high):
    """value as a float if it is a number (not a bool) in [low, high], else None: NaN, infinities and
    integers too large for a float (JSON allows 400 digits) are None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if low <= value <= high else None


def text(value):
    return value if isinstance(value, str) else '?'


def checked_run(path, i, run):
    """The fields of run entry i of path that this tool reads, checked: {'run', 'tta_val_acc',
    'time_seconds', 'curve' (the per-epoch accuracies without TTA, None where missing)}."""
    def bad(what):
        return BadLog(f'{path} holds a run (entry {i + 1}) {what}')
    if not isinstance(run, dict):
        raise bad('that is not a record')
    number, acc = run.get('run'), real(run.get('tta_val_acc'), 0, 1)
    seconds, epochs = real(run.get('time_seconds'), 0, MAX_SECONDS), run.get('epochs', [])
    if type(number) is not int or not 0 <= number < 2**63:
        raise bad('without a run number')
    if acc is None:
        raise bad('without a TTA accuracy in [0, 1]')
    if seconds is None:
        raise bad(f'without a time in seconds (0 to {MAX_SECONDS:.0e})')
    if epochs is None:
        epochs = []
    if not isinstance(epochs, list) or not all(isinstance(e, dict) for e in epochs):
        raise bad('with epochs that are not a list of records')
    curve = [e.get('val_acc') for e in epochs]
    if any(a is not None and real(a, 0, 1) is None for a in curve):
        raise bad('with a per-epoch accuracy outside [0, 1]')
    return {'run': number, 'tta_val_acc': acc, 'time_seconds': seconds,
            'curve': [None if a is None else float(a) for a in curve]}


def read_part(path):
    """(the document, its checked runs) of one file of a log."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get('runs'), list):
        raise BadLog(f'{path} holds no list of runs: it is not a log of these scripts')
    return doc, [checked_run(path, i, r) for i, r in enumerate(doc['runs'])]


def is_log_folder(path):
    return os.path.lexists(path / 'log.json') or any(PART.fullmatch(p.name) for p in path.glob('log-rank*'))


def listing(folder):
    try:
        return list(folder.iterdir())
    except OSError as e:
        raise BadLog(f'{folder} cannot be listed ({e.strerror or e})') from None


def find_logs(paths):
    """What the arguments name, in order: log folders (a row each, parts merged) and other files (alone)."""
    found = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir() and is_log_folder(p):
            found.append(p)
        elif p.is_dir() and (inner := sorted(q for q in listing(p) if q.is_dir() and is_log_folder(q))):
            found += inner
        elif os.path.lexists(p) and not p.is_dir():
            found.append(p.parent if p.name == 'log.json' else p)
        else:
            raise BadLog(f'{arg} is not a log: expected a folder holding log.json, a log.json, '
                         'or a folder of them')
    return found


def parts_of(folder):
    """log.json, then the log-rank<r>.json and runs-rank<r>.json parts, each kind by rank."""
    matches = [(PART.fullmatch(p.name), p) for p in listing(folder)]
    return [folder / 'log.json'] + [p for _, _, p in sorted((m[1], int(m[2]), p) for m, p in matches if m)]


def worst(statuses):
    """The worst status, ranked as the scripts rank them; one they do not write ranks worst, so it shows."""
    return max(statuses, key=lambda s: STATUSES.index(s) if s in STATUSES else len(STATUSES))


def read_log(target):
    """One row's log as a dict (the first readable part's fields, with 'runs', 'status', 'path' and a
    checked 'world_size' and 'environment'); BadLog if no part of it is readable."""
    parts = parts_of(target) if target.is_dir() else [target]
    docs, runs, statuses, problems = [], {}, [], []
    for part in parts:
        try:
            doc, part_runs = read_part(part)
        except BadLog as e:
            problems.append(f'{part} is missing' if not os.path.lexists(part) else str(e))
            continue
        docs.append(doc)
        statuses.append(text(doc.get('status')))
        for r in part_runs:
            runs.setdefault(r['run'], r)  # a run read twice keeps its first record, log.json's if it has one
    if not docs:
        raise BadLog('; '.join(problems))
    log = docs[0]
    world = log.get('world_size')
    world = world if type(world) is int and 1 <= world <= MAX_WORLD else 1
    if target.is_dir() and not any(p.name.startswith('runs-') for p in parts):  # new layout: a part a rank
        expected = [target / f'log-rank{r}.json' for r in range(1, world)]
        problems += [f'{p} is missing (world size {world})' for p in expected if p not in parts]
    for problem in problems:
        warn(f"{problem}; the log's other parts are kept")
    environment = log.get('environment')
    return {**log, 'runs': [runs[k] for k in sorted(runs)], 'world_size': world,
            'path': str(target if target.is_dir() else target.parent),
            'environment': environment if isinstance(environment, dict) else {},
            'status': worst(statuses + ['running'] * len(problems))}


# ---------------------------------------------------------------- output


def row(log):
    accs = [r['tta_val_acc'] for r in log['runs']]
    env, flops = log['environment'], real(log.get('flops_per_run'), 0, 1e30)
    cells = {'log': Path(log['path']).name, 'script': text(log.get('script')),
             'device': text(env.get('device')) + (f" x{log['world_size']}" if log['world_size'] > 1 else ''),
             'torch': text(env.get('torch')), 'n': str(len(accs)), 'mean': '', 'std': '', '95% CI': '',
             's/run': '', 'PFLOPs': '' if flops is None else f'{flops / 1e15:.3f}', 'status': log['status']}
    if accs:
        d = describe(accs)
        cells['mean'] = f"{100 * d['mean']:.2f}"
        cells['s/run'] = f"{math.fsum(r['time_seconds'] for r in log['runs']) / len(accs):.2f}"
        if d['std'] is not None:
            cells['std'] = f"{100 * d['std']:.2f}"
            cells['95% CI'] = f"[{100 * d['ci_low']:.2f}, {100 * d['ci_high']:.2f}]"
    return {k: inert(v, 80) for k, v in cells.items()}


def print_table(rows):
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    print('  '.join(c.ljust(widths[c]) for c in COLUMNS))
    for r in rows:
        print('  '.join(r[c].ljust(widths[c]) for c in COLUMNS))


def plotter(path):
    """matplotlib's pyplot, once it is clear that it can write path (checked before any work)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadLog('--plot needs matplotlib: pip install -e ".[analysis]"') from None
    plt.rcParams['text.parse_math'] = False  # a script named '$\frac' is a name, not TeX to typeset
    kinds = plt.figure().canvas.get_supported_filetypes()
    plt.close('all')
    if Path(path).suffix.lstrip('.').lower() not in kinds:
        endings = ', '.join('.' + k for k in sorted(kinds))
        raise BadLog(f'--plot {path}: the file name must end in one of {endings}')
    if not Path(path).resolve().parent.is_dir():
        raise BadLog(f'--plot {path}: the folder {Path(path).resolve().parent} does not exist')
    return plt


def write_whole(path, write):
    """write(file) into a new temp file beside path, then renamed over it: a failed write leaves neither a
    half file nor the temp file, and whatever path held before stays."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{name}.{os.getpid()}.tmp')
    f = open(tmp, 'xb')  # x: a new file, never someone else's; its permissions as the umask gives
    try:
        with f:
            write(f)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def plot(logs, path, plt):
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(12, 4.5))
    every = [100 * r['tta_val_acc'] for log in logs for r in log['runs']] or [0.0]
    count = max(5, min(40, len(every) // 3))
    step = max(max(every) - min(every), 0.05) / count
    bins = [min(every) + i * step for i in range(count + 1)]  # shared by every log, so they compare
    for i, log in enumerate(logs):
        color, label = f'C{i}', inert(f"{text(log.get('script'))} ({Path(log['path']).name})", 80)
        histories = [r['curve'] for r in log['runs'] if None not in r['curve']]
        for h in histories:
            curves.plot(range(1, len(h) + 1), [100 * a for a in h], color=color, alpha=0.25, linewidth=0.8)
        length = min((len(h) for h in histories), default=0)
        if length:
            mean = [100 * sum(h[e] for h in histories) / len(histories) for e in range(length)]
            curves.plot(range(1, length + 1), mean, color=color, linewidth=2.5, label=label)
        accs = [100 * r['tta_val_acc'] for r in log['runs']]
        if accs:
            finals.hist(accs, bins=bins, color=color, alpha=0.5, label=f'{label}, n={len(accs)}')
    curves.set(xlabel='epoch', ylabel='test accuracy without TTA (%)',
               title='per-epoch test accuracy (mean bold)')
    finals.set(xlabel='final TTA accuracy (%)', ylabel='runs', title='final accuracies')
    for ax in (curves, finals):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        write_whole(path, lambda f: fig.savefig(f, dpi=120, format=Path(path).suffix.lstrip('.').lower()))
    except OSError as e:
        raise BadLog(f'--plot {path} cannot be written ({e.strerror or e})') from None
    finally:
        plt.close(fig)


def accuracy(value):
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 < number < 100:
        raise argparse.ArgumentTypeError(f'must be an accuracy like 0.94 or 94, got {value!r}')
    return number / 100 if number > 1 else number


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('logs', nargs='+', help='log folders, log.json files, or folders of log folders')
    p.add_argument('--target', type=accuracy, default=None, metavar='ACC',
                   help='also test each log\'s mean TTA accuracy against ACC (0.94 or 94), one-sided')
    p.add_argument('--plot', metavar='FILE.png',
                   help='draw per-epoch curves and final accuracies (needs matplotlib)')
    args = p.parse_args(argv)
    try:
        plt = plotter(args.plot) if args.plot else None
        logs = []
        for target in find_logs(args.logs):
            try:
                logs.append(read_log(target))
            except BadLog as e:
                warn(f'skipped: {e}')
        if not logs:
            raise BadLog('no readable run log among ' + ', '.join(args.logs))
        print_table([row(log) for log in logs])
        if args.target is not None:
            for log in logs:
                accs = [r['tta_val_acc'] for r in log['runs']]
                if len(set(accs)) > 1:
                    test = one_sided(accs, args.target)
                    need = 'no number of runs like these would: the mean is not above it'
                    if test['runs_needed']:
                        need = f"about {test['runs_needed']} runs like these would give p < 0.05"
                    print(f"{inert(Path(log['path']).name, 80)}: mean > {100 * args.target:.2f}%? "
                          f"t = {test['t']:.3f}, p = {test['p']:.4g} (one-sided, n = {len(accs)}); {need}")
        if len(logs) == 2:
            a, b = ([r['tta_val_acc'] for r in log['runs']] for log in logs)
            if len(a) > 1 and len(b) > 1 and (len(set(a)) > 1 or len(set(b)) > 1):
                w = welch(a, b)
                print(f"difference of the means (first - second): {100 * w['difference']:+.3f} points; "
                      f"Welch's t = {w['t']:.3f}, df = {w['df']:.1f}, two-sided p = {w['p_two_sided']:.4g}")
            else:
                print('difference of the means: a Welch test needs at least 2 runs per log, not all equal')
        if plt:
            plot(logs, args.plot, plt)
            print(f'plot: {inert(args.plot)}')
    except BadLog as e:
        print(f'summarize_logs.py: error: {inert(str(e))}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:  # the reader of the output went away (| head): quietly
        sys.stdout = None
