"""Tables 2 and 6 and Figure 5 of the paper (Jordan, arXiv:2404.00498, §5.2, App. D): does alternating
flip generalise? Random against alternating flip (and, in Table 6, no flip) for airbench94, airbench94
with 12-pixel Cutout and the paper's airbench96, at 10, 20, 40 and 80 epochs, each run evaluated with
and without TTA. Table 6 is the mean accuracy per cell; Table 2 the effective speedup of alternating
flip, E'/E - 1, where E' is the epochs at which the power law error = c + b * epochs**a fitted to the
random-flip errors (stats.power_law_fit) reaches the alternating-flip error at E (stats.effective_speedup).

    python experiments/table2.py --preset smoke --data-dir DIR      # seconds: the plumbing only
    python experiments/table2.py --preset cpu --data-dir DIR        # about 4 CPU-hours (2 h on 2 cores)
    torchrun --nproc_per_node 8 experiments/table2.py --preset paper --data-dir DIR
    python experiments/table2.py --preset cpu --analyze             # the tables and Figure 5, so far

Presets (docs/experiments.md gives their costs and what each can and cannot show):
- paper: airbench94 and airbench94 + Cutout 12 with no, random and alternating flip, and
  airbench96_paper with random and alternating flip, at 10/20/40/80 epochs: 32 cells of 400 runs
  (12,800 runs, about 78 A100-hours). airbench96_paper's cells are skipped, with a line saying so,
  while that script is not in the checkout.
- cpu: the main claim only, alternating against random flip for airbench94 without Cutout, both
  evaluations: widths quartered (16/64/64), the first 10,000 training images in batches of 512, 2/4/8
  epochs, the first 5,000 test images, 12 runs per cell (72 runs). It can show the sign of alternating
  flip's gain at each epoch count (Welch intervals) and a speedup with its bootstrap interval at this
  small scale (accuracies of about 40-60%); not the published magnitudes, nor the Cutout and
  airbench96 rows.
- smoke: 1 epoch or less of 256 images at widths 8, 100 test images: the code paths, no effect.
  airbench96_paper's cells use airbench96.py while the paper's version is not in the checkout.
Choices where the paper is silent: the TTA and no-TTA columns come from the same runs (one trained net
evaluated both ways); "10 epochs" is 10.0 (not airbench94's 9.9); Cutout for airbench94 is 12 pixels,
airbench96's; the intervals of the speedups are percentile bootstraps over the runs of each cell.
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import grid, stats  # noqa: E402

import airbench94  # noqa: E402

SCRIPT96 = 'airbench96_paper'
FLIPS = ('none', 'random', 'alternating')

# Table 6 (airbench94, n = 400 per cell): (Cutout, TTA, epochs) -> accuracy % with no, random, alternating flip
TABLE6 = {
    (False, False, 10): (92.3053, 93.0988, 93.2798), (False, False, 20): (92.8166, 93.7446, 93.8652),
    (False, False, 40): (93.0143, 94.0133, 94.0729), (False, False, 80): (93.0612, 94.1169, 94.1628),
    (False, True, 10): (93.4071, 93.9488, 94.0186), (False, True, 20): (93.8528, 94.5565, 94.6530),
    (False, True, 40): (94.0381, 94.7803, 94.8203), (False, True, 80): (94.0638, 94.8506, 94.8676),
    (True, False, 10): (91.8487, 92.0402, 92.1374), (True, False, 20): (92.8474, 93.3825, 93.4876),
    (True, False, 40): (93.2675, 94.1014, 94.1952), (True, False, 80): (93.4193, 94.4311, 94.5204),
    (True, True, 10): (92.6455, 92.7780, 92.8103), (True, True, 20): (93.7862, 94.1306, 94.1670),
    (True, True, 40): (94.3090, 94.8511, 94.8960), (True, True, 80): (94.5253, 95.1839, 95.2362),
}
# Table 2: (configuration, epochs) -> effective speedup in % without and with TTA (None: not measured)
TABLE2 = {
    ('airbench94', 10): (15.0, 5.30), ('airbench94', 20): (27.1, 21.3), ('airbench94', 40): (38.3, 36.4),
    ('airbench94', 80): (102, 31.8), ('airbench94+cutout', 10): (3.84, 1.13),
    ('airbench94+cutout', 20): (7.42, 2.00), ('airbench94+cutout', 40): (18.6, 9.28),
    ('airbench94+cutout', 80): (29.2, 14.25), ('airbench96', 10): (4.94, 1.11), ('airbench96', 20): (8.99, 3.58),
    ('airbench96', 40): (17.2, 6.48), ('airbench96', 80): (18.8, None),
}
REPLICATES = {'paper': 200, 'cpu': 500, 'smoke': 10}  # bootstrap replicates of each speedup's interval


def configuration(cell):
    """'airbench94', 'airbench94+cutout' or 'airbench96' (any other script: the paper's airbench96)."""
    if cell.script != 'airbench94':
        return 'airbench96'
    return 'airbench94+cutout' if cell.overrides.get('aug.cutout') else 'airbench94'


def cells(configs, epochs, runs, common=None, flips94=FLIPS, script96=SCRIPT96, **fields):
    """The grid: for each configuration and epoch count, a cell per flip option."""
    out = []
    for config in configs:
        script = script96 if config == 'airbench96' else 'airbench94'
        flips = flips94 if config != 'airbench96' else ('random', 'alternating')
        for e in epochs:
            for flip in flips:
                overrides = {**(common or {}), 'opt.train_epochs': float(e), 'aug.flip': flip}
                if config == 'airbench94+cutout':
                    overrides['aug.cutout'] = 12
                name = f"{config.replace('+', '-')}-{flip}-{e:g}ep"
                out.append(grid.Cell(name, script, overrides, runs, **fields))
    return out


def smoke_script96():
    """The paper's airbench96 if it is in the checkout, else airbench96.py (smoke tests code paths only)."""
    return SCRIPT96 if (grid.REPO / f'{SCRIPT96}.py').is_file() else 'airbench96'


TINY = {'opt.batch_size': 64, **{f'net.widths.block{i}': 8 for i in (1, 2, 3)}}
PRESETS = {
    'paper': cells(('airbench94', 'airbench94+cutout', 'airbench96'), (10, 20, 40, 80), 400),
    'cpu': cells(('airbench94',), (2, 4, 8), 12, {**grid.scaled(airbench94.hyp['net']['widths'], 0.25),
                                                  'opt.batch_size': 512},
                 flips94=('random', 'alternating'), train_subset=10000, test_subset=5000),
    'smoke': cells(('airbench94',), (0.5, 1, 1.5), 2, TINY, flips94=('random', 'alternating'),
                   train_subset=256, test_subset=100)
    + cells(('airbench96',), (1,), 1, TINY, script96=smoke_script96(),
            train_subset=256, test_subset=100),
}


def accuracies(results, cell, tta):
    return [r['tta_val_acc' if tta else 'val_acc'] for r in results[cell.name]]


def speedup(random_cells, alternating, tta, results, replicates):
    """(effective speedup %, bootstrap interval dict or None) of one alternating-flip cell against the
    random-flip cells of its configuration; (None, None) without runs at 3 epoch counts."""
    groups = [accuracies(results, c, tta) for c in random_cells]
    epochs = [c.overrides['opt.train_epochs'] for c in random_cells]
    alt = accuracies(results, alternating, tta)
    present = [(e, g) for e, g in zip(epochs, groups) if g]
    if len({e for e, _ in present}) < 3 or not alt:
        return None, None
    e_alt = alternating.overrides['opt.train_epochs']

    def value(alt_accs, *random_accs):
        errors = [100 * (1 - sum(g) / len(g)) for g in random_accs]
        return 100 * stats.effective_speedup([e for e, _ in present], errors, e_alt,
                                             100 * (1 - sum(alt_accs) / len(alt_accs)))
    try:
        point = value(alt, *[g for _, g in present])
    except ValueError:  # the fit does not fall with the epochs
        point = math.nan
    interval = stats.bootstrap_interval([alt] + [g for _, g in present], value, replicates, seed=1)
    return point, interval


def speedup_text(point, interval):
    if point is None:
        return 'n/a'
    if math.isnan(point):
        return 'no fit'
    text = f'{point:.1f}' if math.isfinite(point) else 'inf'
    if interval and interval['low'] is not None:
        ends = (interval['low'], interval['high'])
        text += ' [' + ', '.join(f'{v:.1f}' if math.isfinite(v) else 'inf' for v in ends) + ']'
    return text


def analyze(args, cells, folders):
    """Table 6 (means with 95% CIs beside the paper's), Table 2 (speedups with bootstrap CIs), the
    alternating - random differences (Welch), and Figure 5."""
    results = grid.load_results(folders, cells)
    by_key = {(configuration(c), c.overrides['aug.flip'], c.overrides['opt.train_epochs']): c for c in cells}
    configs = list(dict.fromkeys(configuration(c) for c in cells))
    epochs = sorted({c.overrides['opt.train_epochs'] for c in cells})
    print('Table 6: mean accuracy % [95% CI] (n); paper\'s in parentheses where published (airbench94, 10-80 epochs)')
    for config in configs:
        for tta in (False, True):
            for e in epochs:
                parts = []
                for i, flip in enumerate(FLIPS):
                    cell = by_key.get((config, flip, e))
                    if cell is None:
                        continue
                    accs = accuracies(results, cell, tta)
                    d = grid.describe(accs)
                    paper = TABLE6.get((config == 'airbench94+cutout', tta, e)) if config != 'airbench96' else None
                    parts.append(f"{flip} {grid.percent(d and d['mean'])} {grid.interval(d)} (n={len(accs)})"
                                 + (f' ({paper[i]:.2f})' if paper else ''))
                if parts:
                    print(f"  {config:<18} {'TTA' if tta else 'no TTA':<6} {e:>5g} ep: " + '; '.join(parts))
    print('Table 2: effective speedup of alternating over random flip, % [bootstrap 95% CI]; paper\'s in parentheses')
    replicates = REPLICATES.get(args.preset, 200)
    for config in configs:
        random_cells = [by_key[(config, 'random', e)] for e in epochs if (config, 'random', e) in by_key]
        for e in epochs:
            alternating = by_key.get((config, 'alternating', e))
            if alternating is None or len(random_cells) < 3:
                continue
            paper = TABLE2.get((config, e), (None, None))
            texts = []
            for tta, published in zip((False, True), paper):
                texts.append(speedup_text(*speedup(random_cells, alternating, tta, results, replicates))
                             + (f' ({published:g})' if published is not None else ''))
            print(f'  {config:<18} {e:>5g} ep: no TTA {texts[0]:<28} TTA {texts[1]}')
        if not any((config, e) in TABLE2 for e in epochs):  # other epochs than the paper's: its row for reference
            print(f'  {config:<18} paper, 10/20/40/80 ep: no TTA '
                  + ' '.join(f'{TABLE2[config, e][0]:g}' for e in (10, 20, 40, 80)) + '; TTA '
                  + ' '.join(f'{TABLE2[config, e][1]:g}' if TABLE2[config, e][1] else '-' for e in (10, 20, 40, 80)))
    print('Alternating - random flip, points [95% CI] (Welch); the paper\'s (Table 6, airbench94) in parentheses:')
    for config in configs:
        for e in epochs:
            pair = [by_key.get((config, flip, e)) for flip in ('alternating', 'random')]
            if None in pair:
                continue
            for tta in (False, True):
                a, b = (accuracies(results, c, tta) for c in pair)
                if len(a) > 1 and len(b) > 1 and len(set(a + b)) > 1:
                    w = stats.welch(a, b)
                    paper = TABLE6.get((config == 'airbench94+cutout', tta, e)) if config != 'airbench96' else None
                    print(f"  {config:<18} {e:>5g} ep {'TTA' if tta else 'no TTA':<6}: {100 * w['difference']:+.3f} "
                          f"[{100 * w['ci_low']:+.3f}, {100 * w['ci_high']:+.3f}], p = {w['p_two_sided']:.3g} "
                          f'(n = {len(a)}, {len(b)})' + (f' ({paper[2] - paper[1]:+.3f})' if paper else ''))
    grid.figure(args, folders, 'figure5', lambda plt: draw(plt, cells, results, configs, epochs, by_key))


def draw(plt, cells, results, configs, epochs, by_key):
    """Figure 5: accuracy against epochs, random and alternating flip, 95% CIs, a panel per setting."""
    fig, axes = plt.subplots(2, len(configs), figsize=(4.5 * len(configs), 7), squeeze=False)
    for j, config in enumerate(configs):
        for i, tta in enumerate((False, True)):
            ax = axes[i][j]
            for flip, colour in (('none', 'grey'), ('random', 'tab:blue'), ('alternating', 'tab:red')):
                xs, ys, errs = [], [], []
                for e in epochs:
                    cell = by_key.get((config, flip, e))
                    d = grid.describe(accuracies(results, cell, tta)) if cell else None
                    if d:
                        xs.append(e)
                        ys.append(100 * d['mean'])
                        errs.append(100 * (d['ci_high'] - d['mean']) if d['ci_high'] is not None else 0)
                if xs:
                    ax.errorbar(xs, ys, yerr=errs, marker='o', capsize=3, color=colour, label=f'{flip} flip')
            ax.set_xscale('log', base=2)
            ax.set_xticks(epochs, [f'{e:g}' for e in epochs])
            grid.label(ax, 'epochs', 'test accuracy (%)', f"{config}, {'TTA' if tta else 'no TTA'}", fontsize=10)
    fig.suptitle('Figure 5: alternating vs random flip (95% CIs)')
    return fig


main = grid.command('table2', globals())


if __name__ == '__main__':
    main()
