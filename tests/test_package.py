"""The airbench package: the original package's API on top of the scripts, adding no method code.
Its examples (the original README's, verbatim apart from the data path) run on the synthetic data;
its functions are the scripts' own; a seeded train94 repeats the script's run with that seed."""
import ast
import copy
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY, read_log, run_script

sys.path.insert(0, str(REPO))  # the package, also where the project is not installed (pip install -e .)
import airbench  # noqa: E402
import airbench94  # noqa: E402
import airbench94_muon  # noqa: E402
import airbench94_speedrun  # noqa: E402
import airbench95  # noqa: E402
import airbench96  # noqa: E402
import airbench96_faster  # noqa: E402
import airbench96_paper  # noqa: E402

TINY_WIDTHS = {'block1': 16, 'block2': 32, 'block3': 32}

# The original README's two examples, as published (its "Using the GPU-accelerated dataloader
# independently" and "Example data-selection experiment"). The docs carry them verbatim.
EXAMPLE_LOADER = """\
import airbench
train_loader = airbench.CifarLoader('/tmp/cifar10', train=True, aug=dict(flip=True, translate=4, cutout=16), batch_size=500)
test_loader = airbench.CifarLoader('/tmp/cifar10', train=False, batch_size=1000)

for epoch in range(200):
    for inputs, labels in train_loader:
        # outputs = model(inputs)
        # loss = F.cross_entropy(outputs, labels)
        ...
"""
EXAMPLE_SUBSET = """\
import airbench
train_loader = airbench.CifarLoader('/tmp/cifar10', train=True, aug=dict(flip=True, translate=4, cutout=16), batch_size=500)
mask = (train_loader.labels < 6) # (this is just an example, the mask can be anything)
train_loader.images = train_loader.images[mask]
train_loader.labels = train_loader.labels[mask]
print(len(train_loader)) # The loader now contains 30,000 images and has batch size 500, so this prints 60.
"""
EXAMPLE_SELECTION = """\
import torch
from airbench import train94, infer, evaluate, CifarLoader

net = train94(label_smoothing=0) # train this network without label smoothing to get a better confidence signal

loader = CifarLoader('cifar10', train=True, batch_size=1000)
logits = infer(net, loader)
conf = logits.log_softmax(1).amax(1) # confidence

train_loader = CifarLoader('cifar10', train=True, batch_size=1024, aug=dict(flip=True, translate=2))
mask = (torch.rand(len(train_loader.labels)) < 0.6)
print('Training on %d images selected randomly' % mask.sum())
train_loader.images = train_loader.images[mask]
train_loader.labels = train_loader.labels[mask]
train94(train_loader, epochs=16) # yields around 93% accuracy

train_loader = CifarLoader('cifar10', train=True, batch_size=1024, aug=dict(flip=True, translate=2))
mask = (conf < conf.float().quantile(0.6))
print('Training on %d images selected based on minimum confidence' % mask.sum())
train_loader.images = train_loader.images[mask]
train_loader.labels = train_loader.labels[mask]
train94(train_loader, epochs=16) # yields around 94% accuracy => low-confidence sampling is better than random.
"""


def run_example(text, data_dir, *edits):
    """Runs an example with the data path replaced by data_dir and each (old, new) edit applied once."""
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    text = text.replace("'/tmp/cifar10'", repr(data_dir)).replace("'cifar10'", repr(data_dir))
    namespace = {}
    exec(compile(text, 'example', 'exec'), namespace)
    return namespace


def test_the_docs_carry_the_original_examples_verbatim():
    docs = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]  # the package's page, wherever it is
    blocks = [b for page in docs for b in re.findall(r'```python\n(.*?)```', page.read_text(), re.S)]
    for example in (EXAMPLE_LOADER, EXAMPLE_SUBSET, EXAMPLE_SELECTION):
        assert example in blocks, example.splitlines()[1]


def test_example_loader(cifar_dir):
    # 200 epochs of augmentation take 20 s on one core; the test data forces nothing else
    ns = run_example(EXAMPLE_LOADER, cifar_dir, ('range(200)', 'range(2)'))
    assert ns['train_loader'].epoch == 2 and len(ns['train_loader']) == 4 and len(ns['test_loader']) == 1
    assert ns['inputs'].shape == (500, 3, 32, 32) and ns['labels'].shape == (500,)
    assert ns['train_loader'].aug == {'flip': True, 'translate': 4, 'cutout': 16}  # as given, as the original's
    assert ns['train_loader'].augmentation() == ('random', 4, 16)  # flip=True without altflip: the random flip


def test_example_subset_and_len_after_subsetting(cifar_dir, capsys):
    ns = run_example(EXAMPLE_SUBSET, cifar_dir)
    kept = int((ns['mask']).sum())
    assert 0 < kept < 2000 and capsys.readouterr().out == f'{kept // 500}\n'  # 60 on the real 50,000 images
    loader = airbench.CifarLoader(cifar_dir, train=False, batch_size=200)  # keeps its last partial batch
    loader.images, loader.labels = loader.images[:450], loader.labels[:450]
    assert len(loader) == 3 and [len(y) for _, y in loader] == [200, 200, 50]


def spy_on_train(monkeypatch, script):
    """Every call of script.train: (its hyp, its training images), the call itself unchanged."""
    calls, real = [], script.train

    def spy(hyp, dev, train_loader, *args, **kwargs):
        calls.append((copy.deepcopy(hyp), len(train_loader.images)))
        return real(hyp, dev, train_loader, *args, **kwargs)
    monkeypatch.setattr(script, 'train', spy)
    return calls


def narrow_the_default_net(monkeypatch):
    """make_net94()'s default widths (the dict its signature holds, a copy of airbench94.hyp's) and
    airbench94.hyp's own, narrowed to TINY_WIDTHS for this test: the full-width net costs the suite
    minutes on a CPU, and which widths the defaults are is test_the_signatures_and_defaults_are_the_originals'."""
    for widths in (airbench.make_net94.__defaults__[0], airbench94.hyp['net']['widths']):
        for block, width in TINY_WIDTHS.items():
            monkeypatch.setitem(widths, block, width)


def test_example_data_selection(cifar_dir, monkeypatch, capsys):
    # On 2,000 synthetic images a batch of 1024 is one step per epoch; one epoch per train94 call
    # keeps the test at three steps (the example trains 9.9 + 16 + 16 epochs), of a narrow net.
    monkeypatch.setenv('AIRBENCH_DATA', cifar_dir)  # train94()'s default loader: $AIRBENCH_DATA, else ./cifar10
    narrow_the_default_net(monkeypatch)
    calls = spy_on_train(monkeypatch, airbench94)
    torch.manual_seed(0)
    ns = run_example(EXAMPLE_SELECTION, cifar_dir, ('train94(label_smoothing=0)', 'train94(label_smoothing=0, epochs=1)'),
                     *[(f'train94(train_loader, epochs=16) # yields around {a}', 'train94(train_loader, epochs=1) #')
                       for a in ('93', '94')])
    out = capsys.readouterr().out
    assert ns['logits'].shape == (2000, 10) and ns['conf'].shape == (2000,)
    counts = [int(m) for m in re.findall(r'Training on (\d+) images', out)]
    assert len(counts) == 2 and all(1024 <= c <= 1400 for c in counts)  # about 60% of 2,000
    assert [n for _, n in calls] == [2000] + counts
    assert [h['opt']['label_smoothing'] for h, _ in calls] == [0.0, 0.2, 0.2]
    assert [h['opt']['batch_size'] for h, _ in calls] == [1024] * 3
    rows = [line for line in out.splitlines() if line.startswith('|')]
    assert sum('train_loss' in r for r in rows) == 3  # the header of each train94() call (run 0), as the original
    assert sum(' eval ' in r for r in rows) == 3 and sum(re.match(r'\|\s+0 \|\s+1 \|', r) is not None for r in rows) == 3


# ---------------------------------------------------------------- one source of truth

# What the package may touch in torch: device queries, the seed, type checks. Everything else (layers,
# functional ops, optimizers, autograd, tensor maths) would be method code of its own.
TORCH_ALLOWED = {'torch.device', 'torch.cuda.is_available', 'torch.cuda.device_count', 'torch.backends.mps.is_available',
                 'torch.manual_seed', 'torch.nn.Module', 'torch.int64'}
METHOD_CALLS = {'backward', 'step', 'zero_grad', 'forward', 'no_grad', 'autocast', 'compile', 'cross_entropy',
                'conv2d', 'linear', 'randperm', 'flip', 'pad', 'eigh', 'lerp_', 'parameters', 'state_dict'}


def dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return '.'.join([node.id] + parts[::-1]) if isinstance(node, ast.Name) else None


TORCH_ALIASES = {'torch', 'nn', 'F', 'optim', 'dist'}  # the names under which the scripts import torch's parts
SCRIPT_MODULES = {p.stem for p in REPO.glob('airbench*.py')}


def adapter(node):
    """Whether a class only adapts arguments to a script's class: one base, a class of a script module
    (airbench94.CifarLoader), and a body of a docstring and an __init__ alone (whose code the rest of
    method_code checks like any other)."""
    base = dotted(node.bases[0]) if len(node.bases) == 1 else None
    body = [n for n in node.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return (base is not None and base.count('.') == 1 and base.split('.')[0] in SCRIPT_MODULES and not node.keywords
            and not node.decorator_list and len(body) == 1 and isinstance(body[0], ast.FunctionDef)
            and body[0].name == '__init__' and not body[0].decorator_list)


def method_code(source):
    """What in source would be method code: a class (network, loader, optimizer) other than an adapter of
    a script's class, a training step (backward, step, ...), or torch beyond TORCH_ALLOWED."""
    found, tree = [], ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            if not adapter(node):
                found.append(f'class {node.name}')
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or '']
            found += [f'import {n}' for n in names if n.startswith('torch.') or n == 'torch' and
                      isinstance(node, ast.ImportFrom)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in METHOD_CALLS:
            found.append(f'call .{node.func.attr}()')
        elif isinstance(node, ast.Attribute) and (dotted(node) or 'torch').split('.')[0] != 'torch' and set(
                dotted(node).split('.')[1:-1]) & TORCH_ALIASES:
            found.append(dotted(node))  # torch reached through a script module: airbench94.nn.Conv2d, ...
        elif isinstance(node, ast.Attribute) and (dotted(node) or '').startswith('torch.'):
            name = dotted(node)
            if not any(name == a or a.startswith(name + '.') for a in TORCH_ALLOWED):
                found.append(name)
        elif isinstance(node, (ast.While, ast.AsyncFor)) or isinstance(node, ast.For) and not (
                isinstance(node.iter, (ast.Tuple, ast.List)) or isinstance(node.iter, ast.Call)
                and isinstance(node.iter.func, ast.Attribute) and node.iter.func.attr in ('items', 'keys', 'values')):
            found.append(f'a {type(node).__name__} loop at line {node.lineno}')  # over a loader, a range of epochs
    return found


def test_the_package_adds_no_method_code():
    files = sorted((REPO / 'airbench').rglob('*.py'))
    assert {'__init__.py', 'utils.py', 'lib_airbench94.py'} <= {f.name for f in files}
    for f in files:
        assert method_code(f.read_text()) == [], f.name
    # the check finds what it looks for
    assert method_code('class Net(torch.nn.Module): pass') == ['class Net']
    adapter_source = ('class L(airbench94.CifarLoader):\n    """Doc."""\n    def __init__(self, path):\n'
                      '        super().__init__(load(path), dev)\n')
    assert method_code(adapter_source) == []
    for bad in (adapter_source.replace('airbench94.CifarLoader', 'torch.nn.Module'),  # not a script's class
                adapter_source.replace('airbench94.CifarLoader', 'airbench94.CifarLoader, object'),  # two bases
                adapter_source.replace('(airbench94.CifarLoader)', '(CifarLoader)'),  # not reached through a script
                adapter_source + '    def __iter__(self):\n        pass\n',  # a method beyond __init__
                adapter_source + '    batch_size = 5\n'):  # an attribute
        assert method_code(bad) == ['class L'], bad
    assert method_code(adapter_source + '        for x in self: pass\n') == ['a For loop at line 5']  # its body
    assert sorted(method_code('x = torch.nn.Linear(3, 4)\nloss.backward()\nfor b in loader: pass\n'
                              'for k in d.items(): pass\nwhile True: pass')) == [
        'a For loop at line 3', 'a While loop at line 5', 'call .backward()', 'torch.nn.Linear']
    assert method_code('net = airbench94.nn.Sequential()\ny = ab.F.relu(x)\nz = s.torch.zeros(3)') == [
        'airbench94.nn.Sequential', 'ab.F.relu', 's.torch.zeros']


def test_the_public_names_are_the_scripts_own(cifar_dir):
    assert airbench.infer is airbench94.infer and airbench.evaluate is airbench94.evaluate
    assert airbench.load_cifar10 is airbench94.load_cifar10 and airbench.Device is airbench94.Device
    assert airbench.UserError is airbench94.UserError and issubclass(airbench.UserError, ValueError)
    loader = airbench.CifarLoader(cifar_dir, device='cpu')
    assert isinstance(loader, airbench94.CifarLoader) and airbench.CifarLoader.__mro__[1] is airbench94.CifarLoader
    every = dict(flip=False, translate=1, cutout=4)  # the loader's every key, read back as given
    assert airbench.CifarLoader(cifar_dir, device='cpu', aug=every).aug == every
    for make_net, script in ((airbench.make_net93, airbench94), (airbench.make_net94, airbench94),
                             (airbench.make_net95, airbench95), (airbench.make_net96, airbench96_paper),
                             (airbench.make_net96_later, airbench96)):
        net = make_net(device='cpu')
        assert {type(m) for m in net.modules() if 'BatchNorm' in type(m).__name__} == {script.BatchNorm}
    assert [m.out_channels for m in airbench.make_net93(device='cpu').modules() if isinstance(m, airbench94.Conv)][::2] \
        == [64, 128, 128]


# The original package's defaults (0.1.8's lib_airbench93.py ... lib_airbench96.py, utils.py), as published;
# train96_later: the repository's later train96 (its unreleased version 0.1.9).
ORIGINAL = {
    'train93': dict(epochs=11.0, label_smoothing=0.2, learning_rate=11.5, bias_scaler=64.0, momentum=0.85,
                    weight_decay=0.0153, whiten_bias_epochs=3, tta_level=2, run=0, verbose=True),
    'train94': dict(epochs=9.9, label_smoothing=0.2, learning_rate=11.5, bias_scaler=64.0, momentum=0.85,
                    weight_decay=0.0153, whiten_bias_epochs=3, tta_level=2, run=0, verbose=True),
    'train95': dict(epochs=15.0, label_smoothing=0.2, learning_rate=10.0, bias_scaler=64.0, momentum=0.85,
                    weight_decay=0.0153, whiten_bias_epochs=3, tta_level=2, run=0, verbose=True),
    'train96': dict(epochs=40.0, label_smoothing=0.2, learning_rate=9.0, bias_scaler=64.0, momentum=0.85,
                    weight_decay=0.0153, whiten_bias_epochs=3, tta_level=2, run=0, verbose=True),
    'train96_later': dict(epochs=37.0, label_smoothing=0.2, learning_rate=9.0, bias_scaler=64.0, momentum=0.85,
                          weight_decay=0.012, whiten_bias_epochs=3, tta_level=2, run=0, verbose=True, lr_peak=0.1,
                          lr_end=0),
}
ORDER = ['train_loader', 'epochs', 'label_smoothing', 'learning_rate', 'bias_scaler', 'momentum', 'weight_decay',
         'whiten_bias_epochs', 'tta_level', 'make_net', 'run', 'verbose']


def test_the_signatures_and_defaults_are_the_originals():
    for name, defaults in ORIGINAL.items():
        params = inspect.signature(getattr(airbench, name)).parameters
        positional = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert [p.name for p in positional] == ORDER + (['lr_peak', 'lr_end'] if 'later' in name else []), name
        assert {p.name: p.default for p in positional if p.name in defaults} == defaults, name
        assert params['make_net'].default is getattr(airbench, 'make_net' + name[5:])
        assert [p.name for p in params.values() if p.kind is p.KEYWORD_ONLY] == ['seed', 'device', 'test_loader',
                                                                                 'callback']
    loader = inspect.signature(airbench.CifarLoader).parameters
    assert {k: p.default for k, p in loader.items()} == dict(
        path=inspect.Parameter.empty, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None,
        altflip=False, gpu=None, device=None)  # gpu: None (the original's 0 needs CUDA), then device= by keyword
    assert loader['device'].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(airbench.make_net94).parameters['widths'].default == {'block1': 64, 'block2': 256,
                                                                                     'block3': 256}
    assert list(inspect.signature(airbench.infer).parameters)[:3] == ['model', 'loader', 'tta_level']
    # every train function's defaults are its script's hyperparameters
    for train, script, base, names in (
            (airbench.train93, airbench94, airbench.HYP93, airbench.SGD_ARGS), (airbench.train94, airbench94,
            airbench94.hyp, airbench.SGD_ARGS), (airbench.train95, airbench95, airbench95.hyp, airbench.SGD_ARGS),
            (airbench.train96, airbench96_paper, airbench96_paper.hyp, airbench.SGD_ARGS),
            (airbench.train96_later, airbench96, airbench96.hyp, airbench.SGD_ARGS),
            (airbench.train94_muon, airbench94_muon, airbench94_muon.hyp, airbench.MUON_ARGS),
            (airbench.train94_speedrun, airbench94_speedrun, airbench94_speedrun.hyp, airbench.SPEEDRUN_ARGS),
            (airbench.train96_faster, airbench96_faster, airbench96_faster.hyp, airbench.FASTER_ARGS)):
        params = inspect.signature(train).parameters
        hyp_args = [a for a in params if a in names]
        assert hyp_args and all(params[a].default == script.leaves(base)[names[a]][0][names[a].split('.')[-1]]
                                for a in hyp_args), train.__name__


@pytest.fixture
def loader200(cifar_dir):
    """A training loader of the synthetic data with airbench94's augmentation, 10 batches of 200."""
    return airbench.CifarLoader(cifar_dir, batch_size=200, aug=dict(flip=True, translate=2), altflip=True,
                                device='cpu')


def tiny_net(make_net):
    return lambda: make_net(widths=TINY_WIDTHS, device='cpu')


@pytest.mark.parametrize('name, script, base, overrides, expected', [
    ('train93', airbench94, airbench.HYP93, dict(learning_rate=3.0), {'opt.lr': 3.0, 'opt.train_epochs': 11.0,
                                                                       'net.widths.block2': 128}),
    ('train94', airbench94, airbench94.hyp, dict(momentum=0.9, tta_level=1), {'opt.momentum': 0.9, 'net.tta_level': 1}),
    ('train95', airbench95, airbench95.hyp, dict(weight_decay=0.01), {'opt.weight_decay': 0.01}),
    ('train96', airbench96_paper, airbench96_paper.hyp, dict(weight_decay=0.01), {'opt.weight_decay': 0.01}),
    ('train96_later', airbench96, airbench96.hyp, dict(lr_peak=0.2, lr_end=0.05),
     {'opt.lr_peak_at': 0.2, 'opt.lr_end': 0.05}),
    ('train94_muon', airbench94_muon, airbench94_muon.hyp, dict(filter_lr=0.1, head_lr=0.5),
     {'opt.filter_lr': 0.1, 'opt.head_lr': 0.5}),
    ('train96_faster', airbench96_faster, airbench96_faster.hyp, dict(batch_size_masked=100, proxy_every=2),
     {'opt.batch_size_masked': 100, 'opt.proxy_every': 2}),
    ('train94_speedrun', airbench94_speedrun, airbench94_speedrun.hyp, dict(tta_fraction=0.5, whiten_bias_epochs=1),
     {'net.tta_fraction': 0.5, 'opt.whiten_bias_epochs': 1.0}),
])
def test_each_train_function_is_its_scripts_train(name, script, base, overrides, expected, loader200, monkeypatch):
    calls = []
    monkeypatch.setattr(script, 'train', lambda hyp, dev, train_loader, test_loader=None, **kw: calls.append(
        (hyp, dev, train_loader, test_loader, kw)) or ('the net', {}))
    assert getattr(airbench, name)(loader200, epochs=2, verbose=False, seed=7, **overrides) == 'the net'
    [(hyp, dev, train_loader, test_loader, kw)] = calls
    want = copy.deepcopy(base)
    for key, value in {**expected, 'opt.train_epochs': 2.0, 'opt.batch_size': 200}.items():
        tree, leaf = script.leaves(want)[key]
        tree[leaf] = value
    assert hyp == want  # everything else is the script's (train93's: airbench94's, 11 epochs, 64/128/128)
    assert train_loader is loader200 and dev is loader200.dev and test_loader is None
    assert kw == {'seed': 7, 'run': 0, 'verbose': False, 'callback': None}


def test_train94_with_a_seed_repeats_the_scripts_run_with_that_seed(cifar_dir, loader200, tmp_path):
    # python airbench94.py --seed 4: run 1 has seed 5
    proc = run_script('airbench94', *TINY, '--seed', '4', '--runs', '1', '--no-warmup', '--device', 'cpu',
                      '--data-dir', cifar_dir, '--log-dir', str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    [logged] = read_log(next(tmp_path.iterdir()))['runs']
    seen = []
    airbench.train94(loader200, epochs=3, make_net=tiny_net(airbench.make_net94), seed=5, verbose=False,
                     callback=lambda model, epoch: seen.append(epoch))
    assert logged['seed'] == 5 and len(seen) == 3
    assert [(e['train_loss'], e['train_acc']) for e in seen] == [(e['train_loss'], e['train_acc'])
                                                                  for e in logged['epochs']]


def test_train94_default_loaders_and_net_are_the_scripts(cifar_dir, monkeypatch):
    # one step of 1024: what python airbench94.py --set opt.train_epochs=1 runs (with narrow blocks)
    monkeypatch.setenv('AIRBENCH_DATA', cifar_dir)
    narrow_the_default_net(monkeypatch)
    seen = []
    net = airbench.train94(epochs=1.0, seed=5, verbose=False, device='cpu', callback=lambda m, e: seen.append(e))
    hyp, dev = copy.deepcopy(airbench94.hyp), airbench94.Device('cpu')
    hyp['opt']['train_epochs'] = 1.0
    torch.manual_seed(5)
    model, record = airbench94.train(hyp, dev, *airbench94.make_loaders(hyp, dev, airbench.load_cifar10(cifar_dir)[0]),
                                     seed=5, verbose=False)
    assert [e['train_loss'] for e in seen] == [e['train_loss'] for e in record['epochs']]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize('name', ['airbench94', 'airbench95', 'airbench96', 'airbench94_muon', 'airbench96_faster'])
def test_evaluate_equals_the_scripts_own_evaluation(name, cifar_dir):
    script = sys.modules[name]
    hyp, dev = copy.deepcopy(script.hyp), script.Device('cpu')
    hyp['opt'].update(batch_size=200, train_epochs=2.0)
    hyp['net']['widths'] = dict(TINY_WIDTHS)
    if 'proxy' in hyp:
        hyp['opt']['batch_size_masked'] = 100
    test_loader = airbench.CifarLoader(cifar_dir, train=False, batch_size=1000, device='cpu')
    train_loader = script.make_loaders(hyp, dev, airbench.load_cifar10(cifar_dir)[0])[0]
    model, record = script.train(hyp, dev, train_loader, test_loader, seed=1, verbose=False)
    assert airbench.evaluate(model, test_loader, tta_level=hyp['net']['tta_level']) == record['tta_val_acc']
    assert airbench.evaluate(model, test_loader) == record['val_acc']  # the last epoch's, without TTA
    assert record['tta_val_acc'] > 0.3


def test_infer_gives_every_images_logits_in_order(loader200):
    torch.manual_seed(0)
    net = airbench.train94(loader200, epochs=1, make_net=tiny_net(airbench.make_net94), verbose=False)
    shuffled = airbench.CifarLoader(loader200.data_dir, batch_size=300, aug=dict(flip=True), device='cpu')
    logits = airbench.infer(net, shuffled)  # a loader that shuffles and drops its last 200: all 2000, in order
    assert logits.shape == (2000, 10) and logits.dtype == torch.float32
    with torch.no_grad(), loader200.dev.autocast():
        direct = torch.cat([net(x).float() for x in loader200.normalize(loader200.images).split(100)])
    assert torch.allclose(logits, direct, atol=1e-2, rtol=0)
    assert torch.allclose(airbench.infer(net, shuffled, eval_batch_size=700), direct, atol=1e-2, rtol=0)  # 3 chunks
    test, changed = (airbench.CifarLoader(loader200.data_dir, train=False, device='cpu') for _ in range(2))
    changed.images, changed.labels = changed.images.flip(0), changed.labels.flip(0)  # the images in reverse order
    assert torch.allclose(airbench.infer(net, changed, tta_level=2), airbench.infer(net, test, tta_level=2).flip(0),
                          atol=1e-2, rtol=0)
    changed = airbench.CifarLoader(loader200.data_dir, train=False, device='cpu')
    changed.images = changed.images.flip(-1)  # mirrored: the mirror TTA's logits do not change
    assert torch.allclose(airbench.infer(net, changed, 1), airbench.infer(net, test, 1), atol=1e-2, rtol=0)
    assert not torch.allclose(airbench.infer(net, changed, 0), airbench.infer(net, test, 0), atol=1e-2, rtol=0)
    assert airbench.evaluate(net, loader200) == (logits.argmax(1) == loader200.labels).float().mean().item()


def test_replacing_images_after_the_first_epoch_is_an_error(loader200):
    loader200.images, loader200.labels = loader200.images[:1000], loader200.labels[:1000]  # before: fine
    next(iter(loader200))  # the first epoch has begun
    for name in ('images', 'labels'):
        with pytest.raises(ValueError, match='only before its first epoch'):
            setattr(loader200, name, getattr(loader200, name)[:500])
    torch.manual_seed(0)
    airbench.train94(loader200, epochs=1, make_net=tiny_net(airbench.make_net94), verbose=False)  # trains again
    with pytest.raises(ValueError, match='only before its first epoch'):
        loader200.images = loader200.images[:500]


def test_callback_sees_every_epoch_and_verbose_prints_the_table(loader200, capsys):
    seen = []
    torch.manual_seed(0)
    net = airbench.train94(loader200, epochs=2, make_net=tiny_net(airbench.make_net94),
                           callback=lambda model, epoch: seen.append((model, epoch)))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(('|', '-'))]
    assert [e['epoch'] for _, e in seen] == [1, 2] and all(m is net for m, _ in seen)
    assert all(0 < e['val_acc'] <= 1 for _, e in seen)  # verbose: the test split of the loader's own folder
    assert rows[0].startswith('---') and 'train_loss' in rows[1] and rows[2].startswith('---')  # run 0: the header
    assert len(rows) == 7 and ' eval ' in rows[5]
    airbench.train94(loader200, epochs=1, make_net=tiny_net(airbench.make_net94), run=3)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('|')]
    assert len(rows) == 2 and not any('train_loss' in r for r in rows) and re.match(r'\|\s+3 \|', rows[0])


def test_warmup_trains_one_step_under_its_header(loader200, capsys):
    seen = []
    torch.manual_seed(0)
    net = airbench.warmup94(loader200, make_net=tiny_net(airbench.make_net94), callback=lambda m, e: seen.append(e))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('|')]
    assert isinstance(net, torch.nn.Module) and len(seen) == 1 and seen[0]['val_acc'] is None  # no evaluation
    assert 'train_loss' in rows[0] and re.match(r'\|\s+warmup \|\s+1 \|', rows[1]) and len(rows) == 3
    steps = []
    airbench.warmup96_faster(loader200, batch_size_masked=100, verbose=False,
                             callback=lambda m, e: steps.append(e['step']))
    assert steps == [1]


def test_the_other_records_train_through_the_package(loader200):
    loader200.images, loader200.labels = loader200.images[:200], loader200.labels[:200]  # 1 step per epoch
    torch.manual_seed(0)
    for train, kwargs in ((airbench.train95, {'make_net': tiny_net(airbench.make_net95)}),
                          (airbench.train96, {'make_net': tiny_net(airbench.make_net96)}),
                          (airbench.train96_later, {'make_net': tiny_net(airbench.make_net96_later)}),
                          (airbench.train93, {}), (airbench.train94_muon, {}), (airbench.train94_speedrun, {}),
                          (airbench.train96_faster, {'batch_size_masked': 100})):
        seen = []
        net = train(loader200, epochs=1, verbose=False, callback=lambda m, e: seen.append(e), **kwargs)
        assert isinstance(net, torch.nn.Module) and len(seen) == 1 and seen[0]['train_loss'] > 0, train.__name__


# ---------------------------------------------------------------- bad input


def bad_calls(cifar_dir, tmp_path):
    loader = lambda **kw: airbench.CifarLoader(cifar_dir, batch_size=200, device='cpu', **kw)  # noqa: E731
    mismatched = loader()
    mismatched.labels = mismatched.labels[:10]
    out_of_range = loader()
    out_of_range.labels = out_of_range.labels + 5
    negative = loader()
    negative.labels = negative.labels - 1
    small = loader()
    small.images, small.labels = small.images[:100], small.labels[:100]
    (tmp_path / 'a_file').write_text('')
    def net94_5():  # a head of 5 classes
        net = airbench.make_net94(widths=TINY_WIDTHS, device='cpu')
        net[-2] = torch.nn.Linear(32, 5, bias=False)
        return net
    return [
        (lambda: airbench.CifarLoader(123), 'path=123 is not a folder name'),
        (lambda: airbench.CifarLoader(str(tmp_path / 'a_file')), 'is a file, not a folder'),
        (lambda: loader(aug=dict(rotate=10)), "aug['rotate']=10: use flip"),
        (lambda: loader(aug=dict(flip='sideways')), "aug['flip']='sideways': use flip"),
        (lambda: loader(aug=dict(translate=-1)), "aug['translate']=-1: use"),
        (lambda: loader(aug=dict(cutout=2.5)), "aug['cutout']=2.5: use"),
        (lambda: loader(aug=[1]), 'aug=[1] is not a dict'),
        (lambda: loader(aug=dict(brightness=0.1)), "aug['brightness']=0.1: use"),  # only the speedrun's loader
        (lambda: loader(shuffle='yes'), "shuffle='yes' must be None, True or False"),
        (lambda: loader(train='no'), "train='no' must be True or False"),
        (lambda: loader(altflip=None), 'altflip=None must be True or False'),
        (lambda: airbench.CifarLoader(cifar_dir, gpu=1.0), 'gpu=1.0 is not a GPU index or a device name'),
        (lambda: airbench.CifarLoader(cifar_dir, gpu=-1), 'gpu=-1 names CUDA device -1'),
        (lambda: airbench.CifarLoader(cifar_dir, gpu='tpu'), "gpu='tpu' is not a device"),
        (lambda: airbench.CifarLoader(cifar_dir, gpu='cpu', device='meta'), "device='meta' is not a device"),
        (lambda: airbench.CifarLoader(cifar_dir, batch_size=0), 'batch_size=0 is out of range: it must be in [1, 50000]'),
        (lambda: airbench.CifarLoader(cifar_dir, device='tpu'), "device='tpu' is not a device"),
        (lambda: airbench.CifarLoader(cifar_dir, device='cuda:x'), "device='cuda:x' is not a device"),
        (lambda: airbench.train94(loader(), learning_rate=-1.0), 'learning_rate=-1.0 is out of range'),
        (lambda: airbench.train94(loader(), epochs='ten'), "epochs='ten' is not a finite number"),
        (lambda: airbench.train94(loader(), epochs=float('nan')), 'epochs=nan is not a finite number'),
        (lambda: airbench.train94(loader(), tta_level=3), 'tta_level=3 is out of range: it must be in [0, 2]'),
        (lambda: airbench.train94(loader(), seed='x'), "seed='x' must be an integer"),
        (lambda: airbench.train94(loader(), run=1.5), 'run=1.5 must be an integer'),
        (lambda: airbench.train94(loader(), make_net=5), 'make_net=5 is not callable'),
        (lambda: airbench.train94(loader(), callback='print'), "callback='print' is not callable"),
        (lambda: airbench.train94(object()), 'train_loader is not a loader'),
        (lambda: airbench.train94(loader(), test_loader=[1]), 'test_loader is not a loader'),
        (lambda: airbench.train94(mismatched), 'train_loader.labels must be 2000 int64 labels'),
        (lambda: airbench.train94(out_of_range), 'train_loader.labels must be in 0..9, the classes of the net'),
        (lambda: airbench.train94(negative), 'train_loader.labels must be class indices, none of them negative'),
        (lambda: airbench.train94(loader(), make_net=net94_5), 'train_loader.labels must be in 0..4'),
        (lambda: airbench.train94(small), 'has 100 images, fewer than its batch size 200'),
        (lambda: airbench.train94(loader(), device='meta'), "device='meta' is not a device"),
        (lambda: airbench.train94_muon(loader(), filter_lr=0), 'filter_lr=0.0 is out of range: it must be in [1e-09, inf]'),
        (lambda: airbench.train96_faster(loader()), 'batch_size_masked must not exceed train_loader.batch_size'),
        (lambda: airbench.train94(loader(), make_net=lambda: 'net'), 'returned str, not a torch.nn.Module'),
        (lambda: airbench.make_net94(widths={'block1': 8}), 'must be a dict of block1, block2 and block3'),
        (lambda: airbench.make_net94(batchnorm_momentum=2.0), 'batchnorm_momentum=2.0 is out of range'),
    ]


def test_every_bad_input_is_one_sentence(cifar_dir, tmp_path):
    for call, fragment in bad_calls(cifar_dir, tmp_path):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert fragment in message and '\n' not in message, (fragment, message)
    with pytest.raises(ValueError, match='have no CUDA'):
        if torch.cuda.is_available():
            pytest.skip('this machine has CUDA')
        airbench.make_net94(device='cuda')


# ---------------------------------------------------------------- installation


def test_every_script_installs_as_a_module():
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    config = tomllib.loads((REPO / 'pyproject.toml').read_text())
    # the scripts of the project: those git tracks (a script still being written joins when committed)
    tracked = subprocess.run(['git', 'ls-files', 'airbench*.py'], capture_output=True, text=True, cwd=REPO)
    names = tracked.stdout.split() if tracked.returncode == 0 else [p.name for p in REPO.glob('airbench*.py')]
    scripts = sorted(Path(n).stem for n in names if '/' not in n)  # git's * also matches airbench/__init__.py
    assert 'airbench94' in scripts
    assert sorted(config['tool']['setuptools']['py-modules']) == scripts
    assert config['tool']['setuptools']['packages'] == ['airbench']
    assert config['project']['name'] != 'airbench'  # PyPI's airbench is the original package


def test_imports_from_anywhere_once_installed(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}

    def probe(code):
        return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, env=env)
    if probe('import importlib.util as u; assert u.find_spec("airbench")').returncode:
        pytest.skip('the project is not installed here: pip install -e .')
    proc = probe('import airbench, airbench94, json; print(json.dumps([airbench.__file__, airbench94.__file__]))')
    assert proc.returncode == 0, proc.stderr
    package, script = map(Path, json.loads(proc.stdout))
    assert package == REPO / 'airbench' / '__init__.py' and script == REPO / 'airbench94.py'
