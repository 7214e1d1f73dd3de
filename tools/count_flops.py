"""FLOPs per run of every script's default configuration (and airbench96's first version),
counted by each script's own flops_per_run() on the meta device, for the 50,000 / 10,000 split.

    python tools/count_flops.py            # prints a table; also written by us to logs/flops-*.json
"""
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLAIMS = {'airbench94': 0.36, 'airbench94_compiled': 0.36, 'airbench95': 1.4, 'airbench96': 4.9,
          'airbench94_muon': 0.29, 'airbench96_faster': 3.1}


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    rows = []
    for name, claim in CLAIMS.items():
        m = load(name)
        rows.append({'script': name, 'overrides': {}, 'pflops': m.flops_per_run(m.hyp, 50000, 10000) / 1e15,
                     'published_pflops': claim})
    m = load('airbench96')
    overrides = ['opt.train_epochs=40', 'net.widths.block2=512']
    hyp, _ = m.apply_overrides(m.hyp, overrides)
    rows.append({'script': 'airbench96', 'overrides': overrides, 'pflops': m.flops_per_run(hyp, 50000, 10000) / 1e15,
                 'published_pflops': 7.2})
    for r in rows:
        print(f"{r['script']:<22} {' '.join(r['overrides']):<44} {r['pflops']:.3f} PFLOPs "
              f"(published {r['published_pflops']}, {100 * (r['pflops'] / r['published_pflops'] - 1):+.1f}%)")
    if '--json' in sys.argv:
        print(json.dumps(rows, indent=1), file=sys.stderr)


if __name__ == '__main__':
    main()
