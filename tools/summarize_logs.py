"""A table of run logs, the difference between two of them, and their curves.

    python tools/summarize_logs.py logs/airbench94-*                # one row per log
    python tools/summarize_logs.py LOG_A LOG_B                      # ... and A - B with a Welch test
    python tools/summarize_logs.py logs/ --target 94                # ... and each log against 94%
    python tools/summarize_logs.py LOG_A LOG_B --plot curves.png    # per-epoch curves and final accuracies

A LOG is a log folder (holding log.json), a log.json, or a folder of log folders. Runs are read from
log.json and, for an invocation under torchrun whose log.json lags (a process was killed), also from
its runs-rank<r>.json files. A file that is not a readable run log is skipped with a warning naming
it; with no readable log left the exit status is 2. The statistics (confidence intervals, the test
against a target with the runs such a test needs, Welch's test) are this tool's, not the scripts':
the scripts print mean, std and n as the original does. They need nothing beyond Python; --plot
needs matplotlib (pip install -e ".[analysis]").
"""
import argparse
import json
import math
import sys
from pathlib import Path

COLUMNS = ('log', 'script', 'device', 'torch', 'n', 'mean', 'std', '95% CI', 's/run', 'PFLOPs', 'status')


# ---------------------------------------------------------------- Student's t for any df


def incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (modified Lentz)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean: use the symmetry
        return 1.0 - incomplete_beta(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            numerator = 1.0
        elif i % 2 == 0:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0)


def t_sf(t, df):
    """P(T > t) for Student's t with df degrees of freedom (df need not be an integer)."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def welch(a, b):
    """Welch's t-test of mean(a) = mean(b): difference, t, df (Welch-Satterthwaite), two-sided p."""
    (ma, va), (mb, vb) = mean_var(a), mean_var(b)
    sa, sb = va / len(a), vb / len(b)
    t = (ma - mb) / math.sqrt(sa + sb)
    df = (sa + sb)**2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    return {'difference': ma - mb, 't': t, 'df': df, 'p_two_sided': 2 * t_sf(abs(t), df)}


def one_sided(a, target):
    """One-sided t-test of mean(a) > target: t, p, and the runs with this mean and std that would give
    p < 0.05 (None if the mean is not above the target): the paper's evidence for a claim like 94%."""
    m, v = mean_var(a)
    t = (m - target) / math.sqrt(v / len(a))
    return {'t': t, 'p': t_sf(t, len(a) - 1), 'runs_needed': runs_needed(m, math.sqrt(v), target)}


def runs_needed(mean, std, target):
    """The smallest n with t_0.95(n - 1) * std / sqrt(n) < mean - target, searched up from the normal
    approximation; beyond 10,000 runs (slow to search) the approximation itself, a few runs short at most."""
    if mean <= target:
        return None
    n = max(2, math.ceil((1.6448536 * std / (mean - target))**2))
    while n < 10000 and t_quantile(0.95, n - 1) * std / math.sqrt(n) >= mean - target:
        n += 1
    return n


def mean_var(x):
    m = sum(x) / len(x)
    return m, sum((v - m)**2 for v in x) / (len(x) - 1)


def t_quantile(p, df):
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 - t_sf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------- logs


class BadLog(Exception):
    pass


def find_logs(paths):
    """The log.json files that the arguments name, in order."""
    found = []
    for arg in paths:
        p = Path(arg)
        if p.is_file():
            found.append(p)
        elif (p / 'log.json').is_file():
            found.append(p / 'log.json')
        elif p.is_dir() and sorted(p.glob('*/log.json')):
            found += sorted(p.glob('*/log.json'))
        else:
            raise BadLog(f'{arg} is not a log: expected a folder holding log.json, a log.json, or a folder of them')
    return found


def runs_of(path):
    """The runs a log.json or runs-rank<r>.json holds, each checked for what this tool reads."""
    try:
        doc = json.loads(Path(path).read_text())
        runs = doc['runs'] if isinstance(doc, dict) else None
        if not isinstance(runs, list):
            raise BadLog(f'{path} holds no list of runs: it is not a log of these scripts')
        for r in runs:
            if not (isinstance(r, dict) and isinstance(r.get('run'), int) and all(
                    isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in ('tta_val_acc', 'time_seconds'))):
                raise BadLog(f'{path} holds a run without a run number, TTA accuracy or time: {str(r)[:80]}')
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadLog(f'{path} is not a readable run log ({type(e).__name__}: {e})') from None
    return doc, runs


def warn(message):
    print(f'summarize_logs.py: warning: {message}', file=sys.stderr)


def read_log(path):
    """The log as a dict, with 'runs' completed from runs-rank<r>.json where log.json lags (a part
    file that cannot be read is skipped with a warning)."""
    log, runs = runs_of(path)
    runs = {r['run']: r for r in runs}
    for part in sorted(Path(path).parent.glob('runs-rank*.json')):
        try:
            for r in runs_of(part)[1]:
                runs.setdefault(r['run'], r)
        except BadLog as e:
            warn(f'{e}; the log\'s other runs are kept')
    world = log.get('world_size')
    log.update(runs=[runs[k] for k in sorted(runs)], path=str(Path(path).parent),
               world_size=world if isinstance(world, int) else 1,
               environment=log['environment'] if isinstance(log.get('environment'), dict) else {})
    return log


def row(log, target=None):
    accs = [r['tta_val_acc'] for r in log['runs']]
    env = log.get('environment', {})
    cells = {'log': Path(log['path']).name, 'script': str(log.get('script', '?')),
             'device': f"{env.get('device', '?')}" + (f" x{log['world_size']}" if log.get('world_size', 1) > 1 else ''),
             'torch': str(env.get('torch', '?')), 'n': str(len(accs)), 'mean': '', 'std': '', '95% CI': '',
             's/run': '', 'PFLOPs': f"{log['flops_per_run'] / 1e15:.3f}"
             if isinstance(log.get('flops_per_run'), (int, float)) else '', 'status': str(log.get('status', '?'))}
    if accs:
        cells['mean'] = f'{100 * sum(accs) / len(accs):.2f}'
        cells['s/run'] = f"{sum(r['time_seconds'] for r in log['runs']) / len(accs):.2f}"
    if len(accs) > 1:
        m, v = mean_var(accs)
        half = t_quantile(0.975, len(accs) - 1) * math.sqrt(v / len(accs))
        cells['std'] = f'{100 * math.sqrt(v):.2f}'
        cells['95% CI'] = f'[{100 * (m - half):.2f}, {100 * (m + half):.2f}]'
    return cells


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
    kinds = plt.figure().canvas.get_supported_filetypes()
    plt.close('all')
    if Path(path).suffix.lstrip('.').lower() not in kinds:
        raise BadLog(f'--plot {path}: the file name must end in one of {", ".join("." + k for k in sorted(kinds))}')
    if not Path(path).resolve().parent.is_dir():
        raise BadLog(f'--plot {path}: the folder {Path(path).resolve().parent} does not exist')
    return plt


def plot(logs, path, plt):
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(12, 4.5))
    every = [100 * r['tta_val_acc'] for log in logs for r in log['runs']] or [0.0]
    count = max(5, min(40, len(every) // 3))
    step = max(max(every) - min(every), 0.05) / count
    bins = [min(every) + i * step for i in range(count + 1)]  # shared by every log, so they compare
    for i, log in enumerate(logs):
        color, label = f'C{i}', f"{log.get('script', '?')} ({Path(log['path']).name})"
        histories = [[e.get('val_acc') for e in r.get('epochs') or [] if isinstance(e, dict)] for r in log['runs']]
        histories = [h for h in histories if all(isinstance(a, (int, float)) for a in h)]
        for h in histories:
            curves.plot(range(1, len(h) + 1), [100 * a for a in h], color=color, alpha=0.25, linewidth=0.8)
        length = min((len(h) for h in histories), default=0)
        if length:
            mean = [100 * sum(h[e] for h in histories) / len(histories) for e in range(length)]
            curves.plot(range(1, length + 1), mean, color=color, linewidth=2.5, label=label)
        accs = [100 * r['tta_val_acc'] for r in log['runs']]
        if accs:
            finals.hist(accs, bins=bins, color=color, alpha=0.5, label=f'{label}, n={len(accs)}')
    curves.set(xlabel='epoch', ylabel='test accuracy without TTA (%)', title='per-epoch test accuracy (mean bold)')
    finals.set(xlabel='final TTA accuracy (%)', ylabel='runs', title='final accuracies')
    for ax in (curves, finals):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise BadLog(f'--plot {path} cannot be written ({e.strerror or e})') from None
    finally:
        plt.close(fig)


def accuracy(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 100:
        raise argparse.ArgumentTypeError(f'must be an accuracy like 0.94 or 94, got {text!r}')
    return value / 100 if value > 1 else value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('logs', nargs='+', help='log folders, log.json files, or folders of log folders')
    p.add_argument('--target', type=accuracy, default=None, metavar='ACC',
                   help='also test each log\'s mean TTA accuracy against ACC (0.94 or 94), one-sided')
    p.add_argument('--plot', metavar='FILE.png', help='draw per-epoch curves and final accuracies (needs matplotlib)')
    args = p.parse_args(argv)
    try:
        plt = plotter(args.plot) if args.plot else None
        logs = []
        for path in find_logs(args.logs):
            try:
                logs.append(read_log(path))
            except BadLog as e:
                warn(f'skipped: {e}')
        if not logs:
            raise BadLog('no readable run log among ' + ', '.join(args.logs))
        print_table([row(log) for log in logs])
        target = args.target
        if target is not None:
            for log in logs:
                accs = [r['tta_val_acc'] for r in log['runs']]
                if len(accs) > 1 and len(set(accs)) > 1:
                    test = one_sided(accs, target)
                    need = f"about {test['runs_needed']} runs like these would give p < 0.05" \
                        if test['runs_needed'] else 'no number of runs like these would: the mean is not above it'
                    print(f"{Path(log['path']).name}: mean > {100 * target:.2f}%? t = {test['t']:.3f}, "
                          f"p = {test['p']:.4g} (one-sided, n = {len(accs)}); {need}")
        if len(logs) == 2:
            a, b = ([r['tta_val_acc'] for r in log['runs']] for log in logs)
            if len(a) > 1 and len(b) > 1 and (len(set(a)) > 1 or len(set(b)) > 1):
                w = welch(a, b)
                print(f"difference of the means (first - second): {100 * w['difference']:+.3f} points; Welch's t = "
                      f"{w['t']:.3f}, df = {w['df']:.1f}, two-sided p = {w['p_two_sided']:.4g}")
            else:
                print('difference of the means: a Welch test needs at least 2 runs per log, not all equal')
        if plt:
            plot(logs, args.plot, plt)
            print(f'plot: {args.plot}')
    except BadLog as e:
        print(f'summarize_logs.py: error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    try:
        main()
    except BrokenPipeError:  # the reader of the output went away (| head): quietly
        sys.stdout = None
