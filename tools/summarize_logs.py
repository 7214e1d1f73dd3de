"""A table of run logs, the difference between two of them, and their curves.

    python tools/summarize_logs.py logs/airbench94-*                # one row per log
    python tools/summarize_logs.py LOG_A LOG_B                      # ... and A - B with a Welch test
    python tools/summarize_logs.py logs/ --target 94                # ... and each log against 94%
    python tools/summarize_logs.py LOG_A LOG_B --plot curves.png    # per-epoch curves and final accuracies

A LOG is a log folder (holding log.json), a log.json, or a folder of log folders. Runs are read from
log.json and, for an invocation under torchrun whose log.json lags (a process was killed), also from
its runs-rank<r>.json files. The statistics need nothing beyond Python; --plot needs matplotlib
(pip install -e ".[analysis]").
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
    """One-sided t-test of mean(a) > target: t and p."""
    m, v = mean_var(a)
    t = (m - target) / math.sqrt(v / len(a))
    return {'t': t, 'p': t_sf(t, len(a) - 1)}


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


def read_log(path):
    """The log as a dict, with 'runs' completed from runs-rank<r>.json where log.json lags."""
    try:
        log = json.loads(Path(path).read_text())
        runs = {r['run']: r for r in log['runs']}
        for part in sorted(Path(path).parent.glob('runs-rank*.json')):
            for r in json.loads(part.read_text())['runs']:
                runs.setdefault(r['run'], r)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadLog(f'{path} is not a readable run log ({type(e).__name__}: {e})') from None
    log['runs'] = [runs[k] for k in sorted(runs)]
    log['path'] = str(Path(path).parent)
    return log


def row(log, target=None):
    accs = [r['tta_val_acc'] for r in log['runs']]
    env = log.get('environment', {})
    cells = {'log': Path(log['path']).name, 'script': log.get('script', '?'),
             'device': f"{env.get('device', '?')}" + (f" x{log['world_size']}" if log.get('world_size', 1) > 1 else ''),
             'torch': env.get('torch', '?'), 'n': str(len(accs)), 'mean': '', 'std': '', '95% CI': '', 's/run': '',
             'PFLOPs': f"{log['flops_per_run'] / 1e15:.3f}" if log.get('flops_per_run') else '',
             'status': log.get('status', '?')}
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


def plot(logs, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadLog('--plot needs matplotlib: pip install -e ".[analysis]"') from None
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(12, 4.5))
    every = [100 * r['tta_val_acc'] for log in logs for r in log['runs']] or [0.0]
    count = max(5, min(40, len(every) // 3))
    step = max(max(every) - min(every), 0.05) / count
    bins = [min(every) + i * step for i in range(count + 1)]  # shared by every log, so they compare
    for i, log in enumerate(logs):
        color, label = f'C{i}', f"{log.get('script', '?')} ({Path(log['path']).name})"
        histories = [[e['val_acc'] for e in r.get('epochs', [])] for r in log['runs']]
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('logs', nargs='+', help='log folders, log.json files, or folders of log folders')
    p.add_argument('--target', type=float, default=None, metavar='ACC',
                   help='also test each log\'s mean TTA accuracy against ACC (0.94 or 94), one-sided')
    p.add_argument('--plot', metavar='FILE.png', help='draw per-epoch curves and final accuracies (needs matplotlib)')
    args = p.parse_args(argv)
    try:
        logs = [read_log(path) for path in find_logs(args.logs)]
        print_table([row(log) for log in logs])
        target = None if args.target is None else args.target / 100 if args.target > 1 else args.target
        if target is not None:
            for log in logs:
                accs = [r['tta_val_acc'] for r in log['runs']]
                if len(accs) > 1 and len(set(accs)) > 1:
                    test = one_sided(accs, target)
                    print(f"{Path(log['path']).name}: mean > {100 * target:.2f}%? t = {test['t']:.3f}, "
                          f"p = {test['p']:.4g} (one-sided, n = {len(accs)})")
        if len(logs) == 2:
            a, b = ([r['tta_val_acc'] for r in log['runs']] for log in logs)
            if len(a) > 1 and len(b) > 1 and (len(set(a)) > 1 or len(set(b)) > 1):
                w = welch(a, b)
                print(f"difference of the means (first - second): {100 * w['difference']:+.3f} points; Welch's t = "
                      f"{w['t']:.3f}, df = {w['df']:.1f}, two-sided p = {w['p_two_sided']:.4g}")
            else:
                print('difference of the means: a Welch test needs at least 2 runs per log, not all equal')
        if args.plot:
            plot(logs, args.plot)
            print(f'plot: {args.plot}')
    except BadLog as e:
        print(f'summarize_logs.py: error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
