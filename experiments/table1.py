"""Table 1 of the paper (Jordan, arXiv:2404.00498, §3.6): airbench94 with random reshuffling against
sampling with replacement (the textbook SGD: every epoch's 48 batches drawn i.i.d., not a fixed
order), each with alternating and with random flip. Mean TTA accuracy per cell.

    python experiments/table1.py --preset smoke --data-dir DIR      # seconds: the plumbing only
    python experiments/table1.py --preset cpu --data-dir DIR        # about 5.5 CPU-hours (docs/experiments.md)
    torchrun --nproc_per_node 8 experiments/table1.py --preset paper --data-dir DIR
    python experiments/table1.py --preset cpu --analyze             # the table, from what finished

Presets (docs/experiments.md says what each can and cannot show):
- paper: airbench94 as published, the 2 x 2 cells, 400 runs each (the paper does not say how many;
  400 is Table 6's n, CIs of about +-0.014 points).
- cpu: the main claim only, reshuffling against with-replacement under alternating flip: widths
  halved (32/128/128, about a third of the FLOPs), 5 epochs on all 50,000 images, 10 runs each.
- smoke: every cell twice, 1 epoch of 256 images at widths 8, 100 test images: the code paths, no effect.
Choices where the paper is silent: an image drawn twice in one epoch gets one crop and one flip (the
augmented epoch is indexed, as the released loader does); alternating flip stays defined per image and
epoch parity; steps per epoch stay floor(N / batch) under both samplers.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import grid, stats  # noqa: E402

import airbench94  # noqa: E402

PAPER = {('reshuffle', 'alternating'): 94.01, ('reshuffle', 'random'): 93.92,
         ('replacement', 'alternating'): 93.48, ('replacement', 'random'): 93.40}  # mean TTA accuracy, %


def cells(overrides, runs, flips=('alternating', 'random')):
    return [grid.Cell(f'{sampling}-{flip}', 'airbench94', {**overrides, 'aug.flip': flip}, runs, sampling)
            for sampling in ('reshuffle', 'replacement') for flip in flips]


PRESETS = {
    'paper': cells({}, 400),
    'cpu': cells({'opt.train_epochs': 5.0, **grid.scaled(airbench94.hyp['net']['widths'], 0.5)}, 10,
                 flips=('alternating',)),
    'smoke': [grid.Cell(c.name, c.script, c.overrides, c.runs, c.sampling, train_subset=256, test_subset=100)
              for c in cells({'opt.train_epochs': 1.0, 'opt.batch_size': 64,
                              **{f'net.widths.block{i}': 8 for i in (1, 2, 3)}}, 2)],
}


def analyze(args, cells, folders):
    """The table (mean TTA accuracy with its 95% CI beside the paper's) and the reshuffling effect."""
    results = grid.load_results(folders, cells)
    print(f"{'cell':<26} {'n':>4} {'TTA acc %':>10} {'95% CI':>17} {'no TTA %':>9} {'paper %':>8}")
    for cell in cells:
        accs = [r['tta_val_acc'] for r in results[cell.name]]
        plain = [r['val_acc'] for r in results[cell.name]]
        d = stats.describe(accs) if accs else {'n': 0, 'mean': None, 'ci_low': None, 'ci_high': None}
        ci = f"[{grid.percent(d['ci_low'])}, {grid.percent(d['ci_high'])}]" if d['ci_low'] is not None else ''
        paper = PAPER[(cell.sampling, cell.overrides['aug.flip'])]
        print(f"{cell.name:<26} {d['n']:>4} {grid.percent(d['mean']):>10} {ci:>17} "
              f"{grid.percent(sum(plain) / len(plain) if plain else None):>9} {paper:>8.2f}")
    for flip in ('alternating', 'random'):
        a = [r['tta_val_acc'] for r in results.get(f'reshuffle-{flip}', [])]
        b = [r['tta_val_acc'] for r in results.get(f'replacement-{flip}', [])]
        if len(a) > 1 and len(b) > 1 and len(set(a + b)) > 1:
            w = stats.welch(a, b)
            paper = PAPER[('reshuffle', flip)] - PAPER[('replacement', flip)]
            print(f"reshuffling - with replacement ({flip} flip): {100 * w['difference']:+.2f} points, 95% CI "
                  f"[{100 * w['ci_low']:+.2f}, {100 * w['ci_high']:+.2f}], Welch p = {w['p_two_sided']:.3g} "
                  f"(n = {len(a)} and {len(b)}); paper: {paper:+.2f} at full scale")


main = grid.command('table1', globals())


if __name__ == '__main__':
    main()
