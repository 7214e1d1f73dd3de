"""FLOPs per run of every script's default configuration (plus a few documented variants), each
counted by the script's own flops_per_run() on the meta device for the 50,000 / 10,000 split.

    python tools/count_flops.py            # prints the table, with the published figure beside each
    python tools/count_flops.py --write    # also records it in logs/flops-<YYYYmmdd>.json

tests/test_flops.py pins every script's count to the newest recorded file within 0.5%, so a change
that alters the work of a run (a step more or less, a missing TTA pass) must re-record it.
"""
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (script, --set overrides, published PFLOPs per run or None, where the published figure comes from)
ROWS = [
    ('airbench94.py', [], 0.36, 'paper, Table 3'),
    ('airbench94_compiled.py', [], 0.36, 'paper'),
    ('airbench95.py', [], 1.4, 'paper, Table 3'),
    ('airbench96.py', [], 4.9, 'paper, Table 3'),
    ('airbench96_paper.py', [], 7.2, 'paper (its code header at 31ce2de: 7.46)'),
    ('airbench94_muon.py', [], 0.29, 'airbench repository README'),
    ('airbench94_speedrun.py', [], None, 'none published (hiverge/cifar10-speedrun gives times only)'),
    ('airbench96_faster.py', [], 3.1, 'airbench repository README'),
    # the ablation ladder (ablations/README.md; published TFLOPs of the original ladder's table)
    ('ablations/train_resnet18.py', [], 4.350, 'original ablation table'),
    ('ablations/main0_network.py', [], 1.223, 'original ablation table'),
    ('ablations/main1_whiten.py', [], 0.735, 'original ablation table'),
    ('ablations/main2_dirac.py', [], 0.631, 'original ablation table'),
    ('ablations/main3_scalebias.py', [], 0.474, 'original ablation table'),
    ('ablations/main4_freeze.py', [], 0.461, 'original ablation table'),
    ('ablations/main5_lookahead.py', [], 0.410, 'original ablation table'),
    ('ablations/main6_tta.py', [], 0.380, 'original ablation table'),
    ('ablations/main7_mirror.py', [], 0.350, 'original ablation table'),
    ('ablations/main8_compile.py', [], 0.350, 'original ablation table'),
    # the prior records (legacy/README.md)
    ('legacy/cifar10_fast.py', [], 1.144, 'original ablation table'),
    ('legacy/hlb_cifar10.py', [], 0.572, 'original ablation table'),
]


def load(script):
    """Imports REPO/script as a module (importing a script runs nothing)."""
    name = script.replace('/', '.').removesuffix('.py')
    spec = importlib.util.spec_from_file_location(name, REPO / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count(script, overrides, module=None):
    m = module or load(script)
    hyp, _ = m.apply_overrides(m.hyp, overrides)
    return m.flops_per_run(hyp, 50000, 10000)


def present_rows():
    """The ROWS whose script exists in this checkout."""
    return [row for row in ROWS if (REPO / row[0]).exists()]


def table():
    rows, modules = [], {}
    for script, overrides, published, source in present_rows():
        m = modules.setdefault(script, load(script))
        rows.append({'script': script, 'overrides': overrides, 'pflops': count(script, overrides, m) / 1e15,
                     'published_pflops': published, 'published_source': source})
    return rows


def main(argv):
    if set(argv) - {'--write'}:
        sys.exit(__doc__)
    rows = table()
    for r in rows:
        vs = '' if r['published_pflops'] is None else \
            f" (published {r['published_pflops']}, {100 * (r['pflops'] / r['published_pflops'] - 1):+.1f}%)"
        print(f"{r['script']:<28} {' '.join(r['overrides']):<44} {r['pflops']:.4f} PFLOPs{vs}")
    if '--write' in argv:
        path = REPO / 'logs' / f'flops-{time.strftime("%Y%m%d")}.json'
        tmp = path.with_name(f'.{path.name}.tmp-{os.getpid()}')  # a failed write leaves the old file whole
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_text(json.dumps(rows, indent=1) + '\n')
            os.replace(tmp, path)
        except OSError as e:
            print(f'count_flops.py: error: cannot write {path} ({e.strerror or e})', file=sys.stderr)
            sys.exit(2)
        finally:
            tmp.unlink(missing_ok=True)
        print(f'recorded in {path.relative_to(REPO)}')


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # the reader of the output went away (| head): quietly
        sys.stdout = None
