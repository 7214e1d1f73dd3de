"""Figure 3 of the paper (Jordan, arXiv:2404.00498, §4): FLOPs against error rate for airbench94,
airbench95 and airbench96, which "apparently" lie on a line in log-log (the paper's points: 3.6e14,
1.4e15 and 7.2e15 FLOPs at 5.99%, 4.99% and 3.95% error; least squares gives error ~ FLOPs^-0.139).
The FLOPs of a run are the script's own count, flops_per_run (as tools/count_flops.py takes it: every
training step plus the TTA pass, on the meta device), for the cell's settings and its data's size;
the error is 100 - the mean TTA accuracy of the runs.

    python experiments/figure3.py --preset smoke --data-dir DIR      # seconds: the plumbing only
    python experiments/figure3.py --preset cpu --data-dir DIR        # about 4 CPU-hours (2 h on 2 cores)
    torchrun --nproc_per_node 8 experiments/figure3.py --preset paper --data-dir DIR
    python experiments/figure3.py --preset cpu --analyze             # the points, the slope and the figure

Presets (docs/experiments.md gives their costs and what each can and cannot show):
- paper: each method as published, 1000 / 200 / 200 runs (the runs behind the code headers' means;
  about 4.2 A100-hours). The third method is airbench96_paper (the paper's airbench96: 40 epochs,
  widths 128/512/512); its cells are skipped, with a line saying so, while it is not in the checkout.
- cpu: the three methods at a quarter of their widths and a quarter of their epochs, on the first
  10,000 training images in batches of 256 and the first 5,000 test images, 8 runs each. It can show
  that error falls with FLOPs across the three scaled methods and the log-log slope with a bootstrap
  interval at this scale; not the published slope or whether the published points lie on one line.
- smoke: 1 epoch or less of 256 images at widths 8, 100 test images: the code paths. airbench96_paper's
  cell uses airbench96.py while the paper's version is not in the checkout.
Choices where the paper is silent: the FLOPs are counted by the scripts (multiply-adds x 2 of every
convolution and matmul of every step actually taken: 48 batches of 1024 an epoch, where the author's
calc_flops counts 50,000 images an epoch), and printed beside the paper's; the slope's interval is a
percentile bootstrap over each method's runs.
"""
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import grid, stats  # noqa: E402

SCRIPT96 = 'airbench96_paper'
PAPER = {'airbench94': (3.6e14, 5.99), 'airbench95': (1.4e15, 4.99), 'airbench96': (7.2e15, 3.95)}  # FLOPs, error %
PAPER_SLOPE = -0.139
REPLICATES = {'paper': 2000, 'cpu': 2000, 'smoke': 20}
# the methods' published widths and epochs, from which the cpu preset scales (airbench96: the paper's)
METHODS = {'airbench94': ((64, 256, 256), 9.9), 'airbench95': ((128, 384, 384), 15.0),
           'airbench96': ((128, 512, 512), 40.0)}


def method(cell):
    return 'airbench96' if cell.script not in ('airbench94', 'airbench95') else cell.script


def scaled(width, epochs, runs, common=None, script96=SCRIPT96, **fields):
    """A cell per method: its widths * width and its epochs * epochs (1, 1: the method as published)."""
    out = []
    for name, (widths, e) in METHODS.items():
        overrides = dict(common or {})
        if width != 1:
            overrides.update({f'net.widths.block{i + 1}': max(1, round(w * width)) for i, w in enumerate(widths)})
        if epochs != 1:
            overrides['opt.train_epochs'] = round(e * epochs, 6)
        out.append(grid.Cell(name, script96 if name == 'airbench96' else name, overrides,
                             runs[name] if isinstance(runs, dict) else runs, **fields))
    return out


def smoke_script96():
    return SCRIPT96 if (grid.REPO / f'{SCRIPT96}.py').is_file() else 'airbench96'


PRESETS = {
    'paper': scaled(1, 1, {'airbench94': 1000, 'airbench95': 200, 'airbench96': 200}),
    'cpu': scaled(1 / 4, 1 / 4, 8, {'opt.batch_size': 256}, train_subset=10000, test_subset=5000),
    'smoke': [grid.Cell(c.name, c.script, {**c.overrides, 'opt.batch_size': 64, 'opt.train_epochs': e,
                                           **{f'net.widths.block{i}': 8 for i in (1, 2, 3)}},
                        c.runs, train_subset=256, test_subset=100)
              for c, e in zip(scaled(1, 1, 2, script96=smoke_script96()), (0.5, 1.0, 1.0))],
}


def flops(cell, runs):
    """The script's flops_per_run for the cell's settings and the size of its runs' data; None (with the
    reason) if the script is not in the checkout."""
    if not (grid.REPO / f'{cell.script}.py').is_file():
        return None, f'{cell.script}.py is not in this checkout'
    module = importlib.import_module(cell.script)
    hyp, _ = module.apply_overrides(module.hyp, [f'{k}={json.dumps(v)}' for k, v in cell.overrides.items()])
    n_train = runs[0]['n_train'] if runs else (cell.train_subset or 50000)
    n_test = runs[0]['n_test'] if runs else (cell.test_subset or 10000)
    return module.flops_per_run(hyp, n_train, n_test), None


def analyze(args, cells, folders):
    """Each method's FLOPs and error beside the paper's, the log-log slope with its interval, Figure 3."""
    results = grid.load_results(folders, cells)
    points = []
    print(f"{'method':<12} {'script':<18} {'n':>5} {'FLOPs':>10} {'error %':>8} {'95% CI':>16}   paper: FLOPs, error %")
    for cell in cells:
        runs = results[cell.name]
        count, reason = flops(cell, runs)
        errors = [1 - r['tta_val_acc'] for r in runs]
        d = grid.describe(errors)
        paper = PAPER[method(cell)]
        print(f"{cell.name:<12} {cell.script:<18} {len(runs):>5} "
              f"{format(count, '.3g') if count else 'n/a':>10} {grid.percent(d and d['mean']):>8} "
              f"{grid.interval(d):>16}   {paper[0]:.2g}, {paper[1]}" + (f'  ({reason})' if reason else ''))
        if count and errors:
            points.append((cell.name, count, errors))
    slope = None
    if len(points) >= 2 and all(sum(e) > 0 for _, _, e in points):
        def fit(*groups):
            return stats.log_log_fit([c for _, c, _ in points], [sum(g) / len(g) for g in groups])[0]
        slope = fit(*[e for _, _, e in points])
        interval = stats.bootstrap_interval([e for _, _, e in points], fit, REPLICATES.get(args.preset, 2000), seed=5)
        ci = '' if interval['low'] is None else f" [{interval['low']:.3f}, {interval['high']:.3f}]"
        print(f'log-log slope of error against FLOPs: {slope:.3f}{ci} (bootstrap 95% CI over runs; '
              f'{len(points)} methods); paper: {PAPER_SLOPE} (error falls as FLOPs^{PAPER_SLOPE})')
    grid.figure(args, folders, 'figure3', lambda plt: draw(plt, points, slope))


def draw(plt, points, slope):
    """Figure 3: error against FLOPs, log-log, ours with 95% CIs and the paper's three points."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, count, errors in points:
        d = stats.describe(errors)
        half = 0 if d['ci_high'] is None else 100 * (d['ci_high'] - d['mean'])
        ax.errorbar([count], [100 * d['mean']], yerr=[half], marker='o', capsize=3, color='tab:blue')
        ax.annotate(name, (count, 100 * d['mean']), textcoords='offset points', xytext=(5, 5), fontsize=8)
    xs = [f for f, _ in PAPER.values()]
    ax.plot(xs, [e for _, e in PAPER.values()], 's--', color='grey', label='paper (A100, full scale)')
    if points:
        ax.plot([], [], 'o', color='tab:blue', label='this grid' + (f' (slope {slope:.3f})' if slope else ''))
    ax.set_xscale('log')
    ax.set_yscale('log')
    grid.label(ax, 'FLOPs per run (training + TTA)', 'test error with TTA (%)', 'Figure 3: FLOPs against error')
    return fig


main = grid.command('figure3', globals())


if __name__ == '__main__':
    main()
