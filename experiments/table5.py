"""Table 5 of the paper (Jordan, arXiv:2404.00498, App. B): airbench96 on other datasets, with and
without its 12-pixel Cutout, with no retuning (flipping off for SVHN): CIFAR-10, CIFAR-100, CINIC-10
and SVHN, each read offline from a folder given by a flag (experiments/datasets.py says which files;
a dataset whose flag is not given has its cells skipped, with a line saying so). The head has as many
outputs as the data has classes (100 for CIFAR-100). Mean TTA accuracy per cell beside the paper's
airbench96 and the literature's ResNet-18 (not run by the author).

    python experiments/table5.py --preset smoke --data-dir DIR --cifar100-dir DIR --svhn-dir DIR --cinic10-dir DIR
    python experiments/table5.py --preset cpu --data-dir DIR --cifar100-dir DIR ...  # about 4 CPU-hours
    torchrun --nproc_per_node 8 experiments/table5.py --preset paper --data-dir DIR --cifar100-dir DIR ...
    python experiments/table5.py --preset cpu --analyze                                  # the table, so far

Presets (docs/experiments.md gives their costs and what each can and cannot show):
- paper: airbench96_paper (the paper's airbench96; skipped, with a line saying so, while it is not in
  the checkout) on the four datasets with and without Cutout, 10 runs per cell (the paper does not say
  how many): 80 runs, about 1.4 A100-hours.
- cpu: airbench96_paper at an eighth of its widths (16/64/64), 6 epochs of the first 10,000 training
  images in batches of 256, tested on the first 5,000 test images, 5 runs per cell. It can show that
  each reader and the data-sized head train to well above chance, and the sign of Cutout's effect per
  dataset with its interval at this scale, which need not be the paper's: short training is where
  Cutout costs accuracy (Table 6, 10 epochs); not the published accuracies.
- smoke: 1 run per cell, 1 epoch of 256 images at widths 8, 100 test images: the code paths. airbench96_paper's cells
  use airbench96.py while the paper's version is not in the checkout.
Choices where the paper is silent: CINIC-10 trains on train/ only (90,000 images; valid/ unused) and
tests on test/; SVHN trains on train_32x32.mat only (73,257; "extra" unused); the normalisation is
CIFAR-10's mean and std for every dataset (the whitening layer is computed from each dataset's own
training images anyway); the TTA (mirror views included) is airbench96's on every dataset, SVHN too,
and the no-TTA accuracy is printed beside it; 10 runs per cell.
Real-data accuracy on CIFAR-100, SVHN and CINIC-10 is not yet measured by this project: the readers
are tested on small synthetic files in each official format.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import grid, stats  # noqa: E402

SCRIPT96 = 'airbench96_paper'
DATASETS = ('cifar10', 'cifar100', 'cinic10', 'svhn')
DATASET_FLAGS = DATASETS[1:]  # --cifar100-dir, --cinic10-dir, --svhn-dir
# (dataset, Cutout) -> (ResNet-18 in the literature or None, airbench96 in the paper), accuracy %
PAPER = {('cifar10', False): (95.55, 95.61), ('cifar10', True): (96.01, 96.05),
         ('cifar100', False): (77.54, 79.27), ('cifar100', True): (78.04, 79.76),
         ('cinic10', False): (87.58, 87.78), ('cinic10', True): (None, 88.22),
         ('svhn', False): (97.35, 97.38), ('svhn', True): (None, 97.64)}


def cells(runs, common=None, script=SCRIPT96, **fields):
    """A cell per dataset and Cutout (0 or 12 pixels); flipping off for SVHN."""
    return [grid.Cell(f'{dataset}-cutout{cutout}', script,
                      {**(common or {}), 'aug.cutout': cutout, **({'aug.flip': 'none'} if dataset == 'svhn' else {})},
                      runs, dataset=dataset, **fields)
            for dataset in DATASETS for cutout in (0, 12)]


def smoke_script96():
    return SCRIPT96 if (grid.REPO / f'{SCRIPT96}.py').is_file() else 'airbench96'


PRESETS = {
    'paper': cells(10),
    'cpu': cells(5, {'opt.train_epochs': 6.0, 'opt.batch_size': 256, 'net.widths.block1': 16,
                     'net.widths.block2': 64, 'net.widths.block3': 64}, train_subset=10000, test_subset=5000),
    'smoke': cells(1, {'opt.train_epochs': 1.0, 'opt.batch_size': 64,
                       **{f'net.widths.block{i}': 8 for i in (1, 2, 3)}},
                   script=smoke_script96(), train_subset=256, test_subset=100),
}


def analyze(args, cells, folders):
    """Table 5 beside the paper's, and Cutout's effect per dataset (Welch)."""
    results = grid.load_results(folders, cells)
    print(f"{'dataset':<9} {'flip':<5} {'Cutout':<6} {'n':>4} {'TTA acc %':>9} {'95% CI':>16} {'no TTA %':>8}   "
          'paper: airbench96, ResNet-18 (literature)')
    by_name = {c.name: c for c in cells}
    for cell in cells:
        runs = results[cell.name]
        d = grid.describe([r['tta_val_acc'] for r in runs])
        plain = grid.describe([r['val_acc'] for r in runs])
        resnet, ours = PAPER[cell.dataset, bool(cell.overrides['aug.cutout'])]
        print(f"{grid.DATASET_NAMES[cell.dataset]:<9} {'no' if cell.dataset == 'svhn' else 'yes':<5} "
              f"{'yes' if cell.overrides['aug.cutout'] else 'no':<6} {len(runs):>4} {grid.percent(d and d['mean']):>9} "
              f"{grid.interval(d):>16} {grid.percent(plain and plain['mean']):>8}   {ours:.2f}, "
              + (f'{resnet:.2f}' if resnet else 'not measured'))
    print('Cutout - no Cutout, TTA accuracy points [95% CI] (Welch); paper:')
    for dataset in DATASETS:
        with_, without = (results[by_name[f'{dataset}-cutout{c}'].name] for c in (12, 0))
        a, b = [r['tta_val_acc'] for r in with_], [r['tta_val_acc'] for r in without]
        paper = PAPER[dataset, True][1] - PAPER[dataset, False][1]
        if len(a) > 1 and len(b) > 1 and len(set(a + b)) > 1:
            w = stats.welch(a, b)
            print(f"  {grid.DATASET_NAMES[dataset]:<9}: {100 * w['difference']:+.2f} [{100 * w['ci_low']:+.2f}, "
                  f"{100 * w['ci_high']:+.2f}], p = {w['p_two_sided']:.3g} (n = {len(a)}, {len(b)}); "
                  f'paper {paper:+.2f}')
        else:
            print(f'  {grid.DATASET_NAMES[dataset]:<9}: too few runs (n = {len(a)}, {len(b)}); paper {paper:+.2f}')
    print('(Table 5 has no figure.)')


main = grid.command('table5', globals())


if __name__ == '__main__':
    main()
