"""The ablation ladder (ablations/): every rung runs and logs like the top-level scripts, consecutive
rungs differ by their feature only (in the code and in the hyperparameters), each rung trains with
exactly the features of the rungs up to it and with the original ladder's lr, schedule and
BatchNorm momentum, main7 is airbench94 and main8 is airbench94_compiled, train_resnet18 is the
original's recipe, and ablations/README.md agrees with the scripts (epochs, FLOPs, diff sizes)."""
import ast
import copy
import difflib
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from math import ceil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import REPO, TINY, load_script, log_dir_of, no_traceback, read_log, run_script, train_on

RUNGS = ['main0_network', 'main1_whiten', 'main2_dirac', 'main3_scalebias', 'main4_freeze', 'main5_lookahead',
         'main6_tta', 'main7_mirror', 'main8_compile']
EPOCHS = {'train_resnet18': 26.0, 'main0_network': 35.0, 'main1_whiten': 21.0, 'main2_dirac': 18.0,
          'main3_scalebias': 13.5, 'main4_freeze': 13.5, 'main5_lookahead': 12.0, 'main6_tta': 10.8,
          'main7_mirror': 9.9, 'main8_compile': 9.9}


def module(rung):
    return load_script(f'ablations/{rung}')


# ---------------------------------------------------------------- what each feature may change


@dataclass
class Feature:
    """What rung k+1 may change relative to rung k: hyperparameter keys (added, removed or changed;
    opt.train_epochs always may), top-level definitions that belong wholly to the feature, and for
    the definitions it edits in place, a pattern that every added or removed line must match; the
    shared blocks and section banners it brings or takes away."""
    keys: set
    units: set = field(default_factory=set)
    lines: dict = field(default_factory=dict)
    blocks: set = field(default_factory=set)
    banners: set = field(default_factory=set)


FEATURES = {
    'main1_whiten': Feature(
        keys={'net.whiten_images', 'net.whiten_eps'},
        units={'get_patches', 'get_whitening_parameters', 'whitening_filters', 'init_whitening_conv'},
        lines={'check_hyp': r'whiten', 'make_net': r'whiten|net\[0\]', 'flops_per_run': r'whiten|first conv|Left out:',
               'train': r'whiten|with timer:  # timing starts when the training data'},
        blocks={'whitening'}, banners={'Whitening conv initialization'}),
    'main2_dirac': Feature(keys=set(), units={'Conv'}, blocks={'conv'}),
    'main3_scalebias': Feature(keys={'opt.bias_scaler'}),
    'main4_freeze': Feature(
        keys={'opt.whiten_bias_epochs'},
        lines={'check_hyp': r'whiten_bias_epochs', 'train': r'whiten_bias_epochs',
               'flops_per_run': r'bias|trainable|\bflops\b'}),
    'main5_lookahead': Feature(  # lookahead and the settings it needs (the original ladder's main5)
        keys={'opt.lookahead_every', 'opt.lookahead_decay', 'net.batchnorm_momentum', 'opt.lr', 'opt.lr_peak_at',
              'opt.lr_end'}, units={'LookaheadState'},
        lines={'check_hyp': r'lookahead', 'train': r'lookahead'}, blocks={'lookahead'}, banners={'Lookahead'}),
    'main6_tta': Feature(keys={'net.tta_level'}),
    'main7_mirror': Feature(keys={'aug.flip'}),
    'main8_compile': Feature(
        keys=set(), units={'compile_net', 'reinit_net', 'graphs_compiled'}, blocks={'reinit'},
        lines={'train': r'compile|reinit_net|def train\(|\bnet\b'
                        r'|model = dev\.prepare\(make_net\(hyp(, len\(train_loader\.classes\))?\) if model is None'
                        r"|outputs = model\(inputs\)|evaluate\(model, test_loader|'steps': step, 'epochs': history"
                        r'|The record holds|seconds, the steps|without a test loader|the per-epoch table; callback',
               'main': r'compiled|net = \[\]|net\.extend|if not net:|return train\(|return benchmark\(args, run_hyp'}),
}
PAIRS = list(zip(RUNGS, RUNGS[1:]))

BANNER = re.compile(r'^#{45}$|^#\s+(.*?)\s+#$')
MARKER = re.compile(r'^#=== (?:end )?shared: ([\w-]+)$')


def unit_name(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.Assign):
        return ','.join(ast.unparse(t) for t in node.targets)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return ast.unparse(node)
    return ast.unparse(node).splitlines()[0]  # if __name__ == '__main__':


def anatomy(rung):
    """(units, blocks, banners) of a script below its header docstring: units maps each top-level
    definition to its lines (with the comments above it, without banners and shared-block markers)."""
    text = (REPO / 'ablations' / f'{rung}.py').read_text()
    lines, tree = text.splitlines(), ast.parse(text)
    units, blocks, banners, prev = {}, set(), set(), tree.body[0].end_lineno  # body[0]: the header docstring
    for node in tree.body[1:]:
        own = []
        for line in lines[prev:node.end_lineno]:
            marker, banner = MARKER.match(line), BANNER.match(line)
            if marker:
                blocks.add(marker.group(1))
            elif banner:
                banners.update(b for b in banner.groups() if b)
            else:
                own.append(line)
        units[unit_name(node)] = own
        prev = node.end_lineno
    return units, blocks, banners


def flat(tree, prefix=''):
    return {key: value for k, v in tree.items()
            for key, value in (flat(v, f'{prefix}{k}.').items() if isinstance(v, dict) else [(f'{prefix}{k}', v)])}


def changed_keys(a, b):
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, 'absent') != fb.get(k, 'absent')}


def outside_the_feature(before, after, feature):
    """Every change from rung `before` to rung `after` (their anatomy()) that the feature does not
    account for."""
    (ua, ba, na), (ub, bb, nb) = before, after
    problems = [f'shared block {b!r} added or removed' for b in sorted(ba ^ bb) if b not in feature.blocks]
    problems += [f'section banner {b!r} added or removed' for b in sorted(na ^ nb) if b not in feature.banners]
    lines = {'hyp': "'train_epochs'|" + '|'.join(f"'{k.split('.')[-1]}'" for k in feature.keys), **feature.lines}
    for name in sorted(ua.keys() | ub.keys()):
        a, b = ua.get(name), ub.get(name)
        if a == b or name in feature.units:
            continue
        if a is None or b is None or name not in lines:
            problems.append(f'{name} {"added" if a is None else "removed" if b is None else "changed"}')
            continue
        for line in difflib.ndiff(a, b):
            if line[:2] in ('- ', '+ ') and line[2:].strip() and not re.search(lines[name], line[2:]):
                problems.append(f'{name}: {line}')
    return problems


@pytest.mark.parametrize('before, after', PAIRS, ids=[b for _, b in PAIRS])
def test_consecutive_rungs_differ_only_by_the_feature(before, after):
    problems = outside_the_feature(anatomy(before), anatomy(after), FEATURES[after])
    assert not problems, f'{before} -> {after} changes more than its feature:\n' + '\n'.join(problems)


@pytest.mark.parametrize('before, after', PAIRS, ids=[b for _, b in PAIRS])
def test_consecutive_rungs_differ_only_in_the_hyperparameters_of_the_feature(before, after):
    assert changed_keys(module(before).hyp, module(after).hyp) - {'opt.train_epochs'} == FEATURES[after].keys


def test_the_pair_check_notices_a_change_outside_the_feature():
    """A change in main4 outside the freeze (here the loss), a block or a definition more, or the
    freeze checked as if it were another feature: each is reported."""
    main3, main4 = anatomy('main3_scalebias'), anatomy('main4_freeze')
    assert outside_the_feature(main3, main4, FEATURES['main4_freeze']) == []
    units = {**main4[0], 'train': [line.replace("label_smoothing=o['label_smoothing']", 'label_smoothing=0.1')
                                    for line in main4[0]['train']]}
    found = outside_the_feature(main3, (units, *main4[1:]), FEATURES['main4_freeze'])
    assert found and all('label_smoothing=' in p for p in found)
    found = outside_the_feature(main3, ({**main4[0], 'helper': ['def helper():']}, main4[1] | {'lookahead'},
                                        main4[2]), FEATURES['main4_freeze'])
    assert found == ["shared block 'lookahead' added or removed", 'helper added']
    found = outside_the_feature(main3, main4, FEATURES['main3_scalebias'])
    assert any('whiten_bias_epochs' in p for p in found)


def test_every_rung_keeps_airbench94s_values_but_for_the_features_it_lacks(ab94):
    """A rung differs from airbench94 exactly in the keys of the features added after it, with the
    values the ladder names for their absence (before main5's lookahead: BatchNorm momentum 0.9,
    lr 10.0 and the schedule 0.2 -> 1 at 20% -> 0)."""
    absent = {'main0_network': 0.9, 'main1_whiten': 0.9, 'main2_dirac': 0.9, 'main3_scalebias': 0.9,
              'main4_freeze': 0.9}
    for k, rung in enumerate(RUNGS):
        hyp = module(rung).hyp
        missing = set().union(*(FEATURES[r].keys for r in RUNGS[k + 1:]))
        assert changed_keys(ab94.hyp, hyp) - {'opt.train_epochs'} == missing, rung
        assert hyp['opt']['train_epochs'] == EPOCHS[rung]
        o, n = hyp['opt'], hyp['net']
        assert o['bias_scaler'] == (64.0 if k >= 3 else 1.0)
        assert n['batchnorm_momentum'] == absent.get(rung, 0.6)
        assert (o['lr'], o['lr_start'], o['lr_peak_at'], o['lr_end']) == ((10.0, 0.2, 0.2, 0.0) if rung in absent
                                                                          else (11.5, 0.2, 0.23, 0.07))
        assert n['tta_level'] == (2 if k >= 6 else 1) and hyp['aug']['flip'] == ('alternating' if k >= 7 else 'random')


# ---------------------------------------------------------------- each rung trains with its features


FEATURE_ORDER = ['whiten', 'dirac', 'scalebias', 'freeze', 'lookahead', 'bn_momentum_0.6', 'tta', 'mirror']
ADDS = {'main1_whiten': ['whiten'], 'main2_dirac': ['dirac'], 'main3_scalebias': ['scalebias'],
        'main4_freeze': ['freeze'], 'main5_lookahead': ['lookahead', 'bn_momentum_0.6'], 'main6_tta': ['tta'],
        'main7_mirror': ['mirror']}


def features_in_training(m, data, monkeypatch, ab94):
    """Trains rung m for 4 epochs of 5 steps on the synthetic data and returns the features it used,
    as seen from outside: the net it built, the optimizer groups, every step, the evaluation."""
    hyp = copy.deepcopy(m.hyp)
    hyp['opt'].update(batch_size=400, train_epochs=4.0)
    hyp['net']['widths'] = {'block1': 8, 'block2': 16, 'block3': 16}
    seen = {'bias_trains': [], 'syncs': 0, 'tta': [], 'flip': []}
    make_net, make_optimizer, loader, tta_logits = m.make_net, m.make_optimizer, m.CifarLoader, m.tta_logits

    def recording_net(h, *args, **kwargs):  # train() passes the number of classes too
        net = make_net(h, *args, **kwargs)
        convs = [c for c in net.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
        seen['dirac'] = all(torch.equal(c.weight[:c.weight.size(1)], nn.init.dirac_(torch.empty_like(
            c.weight[:c.weight.size(1)]))) for c in convs)
        seen['net'] = net
        return net

    def recording_optimizer(model, opt):
        optimizer = make_optimizer(model, opt)
        seen['lr_ratio'] = optimizer.param_groups[0]['lr'] / optimizer.param_groups[1]['lr']
        optimizer.register_step_pre_hook(lambda *_: seen['bias_trains'].append(
            None if model[0].bias is None else model[0].bias.grad is not None))  # main0's first conv has none
        return optimizer

    def recording_loader(split, dev, batch_size, train, aug=None, generator=None):
        if train:
            seen['flip'].append((aug or {}).get('flip'))
        return loader(split, dev, batch_size, train, aug, generator)

    def recording_tta(model, inputs, tta_level):
        seen['tta'].append(tta_level)
        return tta_logits(model, inputs, tta_level)

    monkeypatch.setattr(m, 'make_net', recording_net)
    monkeypatch.setattr(m, 'make_optimizer', recording_optimizer)
    monkeypatch.setattr(m, 'CifarLoader', recording_loader)
    monkeypatch.setattr(m, 'tta_logits', recording_tta)
    if hasattr(m, 'init_whitening_conv'):
        init_whitening_conv = m.init_whitening_conv

        def recording_whitening(conv, images, eps):
            init_whitening_conv(conv, images, eps)
            seen['whitened'] = conv.weight.detach().clone()
        monkeypatch.setattr(m, 'init_whitening_conv', recording_whitening)
    if hasattr(m, 'LookaheadState'):
        class RecordingLookahead(m.LookaheadState):
            def update(self, net, decay):
                seen['syncs'] += 1
                return super().update(net, decay)
        monkeypatch.setattr(m, 'LookaheadState', RecordingLookahead)
    train_on(m, hyp, m.Device('cpu'), data, seed=0)

    net = seen['net']
    images = ab94.CifarLoader(data['train'], ab94.Device('cpu'), 100, train=False)
    whitened = 'whitened' in seen and torch.allclose(seen['whitened'], ab94.whitening_filters(
        images.normalize(images.images[:hyp['net']['whiten_images']]), 2, 5e-4))
    norms = [b for b in net.modules() if isinstance(b, nn.BatchNorm2d)]
    found = {
        'whiten': whitened and not net[0].weight.requires_grad and not isinstance(net[1], nn.BatchNorm2d)
                  and net[0].weight.grad is None,
        'dirac': seen['dirac'],
        'scalebias': seen['lr_ratio'] == pytest.approx(64),
        'freeze': seen['bias_trains'] == [True] * 15 + [False] * 5,
        'lookahead': seen['syncs'] == 20 // 5 + 1,
        'bn_momentum_0.6': all(b.momentum == pytest.approx(0.4) for b in norms),
        'tta': seen['tta'][-1] == 2,
        'mirror': seen['flip'] == ['alternating'],
    }
    # without a feature, the rung does what its absence means
    assert found['freeze'] or seen['bias_trains'] == [True if net[0].bias is not None else None] * 20
    assert found['lookahead'] or seen['syncs'] == 0
    assert found['bn_momentum_0.6'] or all(b.momentum == pytest.approx(0.1) for b in norms)
    assert found['tta'] or seen['tta'][-1] == 1
    assert found['mirror'] or seen['flip'] == ['random']
    assert found['scalebias'] or seen['lr_ratio'] == 1
    return {f for f, present in found.items() if present}


@pytest.mark.parametrize('k, rung', list(enumerate(RUNGS[:-1])), ids=RUNGS[:-1])
def test_each_rung_trains_with_exactly_the_features_up_to_it(k, rung, data, monkeypatch, ab94):
    expected = {f for r in RUNGS[1:k + 1] for f in ADDS[r]}
    assert features_in_training(module(rung), data, monkeypatch, ab94) == expected


def test_main0_trains_its_first_conv_and_normalises_after_it():
    """As the original main0: the first conv trains from the default init, without a bias (the
    BatchNorm after it would cancel one); main1 on: frozen whitening weights and a zero-initialised
    bias that trains."""
    m = module('main0_network')
    net = m.make_net(m.hyp)
    assert isinstance(net[1], m.BatchNorm) and isinstance(net[2], nn.GELU)
    assert net[0].weight.requires_grad and net[0].bias is None and net[0].weight.shape == (24, 3, 2, 2)
    for rung in RUNGS[1:]:
        first = module(rung).make_net(module(rung).hyp)[0]
        assert not first.weight.requires_grad and first.bias.requires_grad and torch.equal(first.bias, torch.zeros(24))


@pytest.mark.parametrize('rung', RUNGS)
def test_every_3x3_conv_is_same_padded_without_a_bias(rung):
    """The six 3x3 convs of every rung (main0 and main1 have their own Conv class, outside the
    shared block that main2 on carry): 'same' padding, no bias, as in the original ladder."""
    m = module(rung)
    convs = [c for c in m.make_net(m.hyp).modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
    assert len(convs) == 6
    assert all(c.bias is None and c.padding == 'same' and c.stride == (1, 1) for c in convs)


# The original ladder's settings (cifar10-zoo, airbench/ablations/, commit 68c301d): main0-main4 train
# at lr 10.0 with the multiplier 0.2 -> 1 at int(0.2 x steps) -> 0 and BatchNorm momentum PyTorch 0.1;
# main5 on (with lookahead) at lr 11.5, 0.2 -> 1 at int(0.23 x steps) -> 0.07, PyTorch 0.4.
ORIGINAL_SETTINGS = {rung: (10.0, 0.2, 0.0, 0.1) if k < 5 else (11.5, 0.23, 0.07, 0.4) for k, rung in enumerate(RUNGS)}


class ScheduleSeen(Exception):
    pass


@pytest.mark.parametrize('rung', RUNGS)
def test_each_rung_trains_with_the_original_ladders_lr_schedule_and_batchnorm_momentum(rung, data, monkeypatch):
    """What train() itself builds, at the rung's own epoch count (batches of 20, 100 steps per
    epoch): the lr of the weights' group at every step, against the original's knots written out
    here, and the momentum of every BatchNorm. airbench94's settings fail this for main0-main4."""
    m = module(rung)
    lr, peak_at, end, momentum = ORIGINAL_SETTINGS[rung]
    hyp = copy.deepcopy(m.hyp)
    hyp['opt']['batch_size'] = 20
    seen = {}
    make_net = m.make_net

    def recording_net(h, *args, **kwargs):  # train() passes the number of classes too
        seen['net'] = make_net(h, *args, **kwargs)
        return seen['net']

    def recording_lambda_lr(optimizer, lr_lambda):
        seen['base'], seen['multiplier'] = optimizer.param_groups[1]['lr'], lr_lambda
        raise ScheduleSeen

    monkeypatch.setattr(m, 'make_net', recording_net)
    monkeypatch.setattr(m.torch.optim.lr_scheduler, 'LambdaLR', recording_lambda_lr)
    extra = {}
    if rung == 'main8_compile':  # its train() takes the invocation's net; an eager one will do here
        model = m.Device('cpu').prepare(m.make_net(hyp))
        extra['net'] = (model, model)
    with pytest.raises(ScheduleSeen):
        train_on(m, hyp, m.Device('cpu'), data, seed=0, **extra)
    total = ceil(hyp['opt']['train_epochs'] * 100)
    peak = int(peak_at * total)
    kilostep = 1024 * (1 + 1 / (1 - 0.85))  # the decoupled lr: per 1024 examples, momentum 0.85
    for step in range(total + 1):
        f = 0.2 + 0.8 * step / peak if step < peak else 1 + (end - 1) * (step - peak) / (total - peak)
        assert seen['base'] * seen['multiplier'](step) == pytest.approx(lr / kilostep * f, rel=1e-9, abs=1e-15), step
    norms = [b for b in (extra['net'][0] if extra else seen['net']).modules() if isinstance(b, nn.BatchNorm2d)]
    assert norms and all(b.momentum == pytest.approx(momentum) for b in norms)


# ---------------------------------------------------------------- main7 = airbench94, main8 = airbench94_compiled


def below_the_header(path):
    """(imports, code after them) of a script below its header docstring."""
    text = path.read_text()
    text = text[text.index('"""', 3) + 3:]
    split = text.index('#' * 45)
    return text[:split], text[split:]


@pytest.mark.parametrize('rung, script', [('main7_mirror', 'airbench94'), ('main8_compile', 'airbench94_compiled')])
def test_the_last_rungs_are_the_scripts_text_for_text(rung, script):
    """Below the header and the imports (every rung imports what airbench94.py imports, which the
    shared harness needs), main7 is airbench94.py and main8 airbench94_compiled.py."""
    imports, code = below_the_header(REPO / 'ablations' / f'{rung}.py')
    assert code == below_the_header(REPO / f'{script}.py')[1], \
        f'ablations/{rung}.py must be {script}.py below the header docstring and the imports'
    assert imports == below_the_header(REPO / 'airbench94.py')[0]


# ---------------------------------------------------------------- end to end, as a user runs them


RESNET_TINY = ['--set', 'opt.batch_size=200', '--set', 'opt.train_epochs=2', '--set', 'net.widths.stage1=8',
               '--set', 'net.widths.stage2=16', '--set', 'net.widths.stage3=16', '--set', 'net.widths.stage4=32']
AIRBENCH_TINY = [*TINY, '--set', 'opt.train_epochs=2']
FAST = {'train_resnet18': RESNET_TINY, **{r: AIRBENCH_TINY for r in RUNGS}}
FAST['main4_freeze'] = FAST['main5_lookahead'] = FAST['main6_tta'] = FAST['main7_mirror'] = FAST['main8_compile'] = \
    [*AIRBENCH_TINY, '--set', 'opt.whiten_bias_epochs=1']  # the freeze fires in the second epoch


@pytest.fixture(scope='module')
def invocations(cifar_dir, tmp_path_factory):
    """One run of a script (`ablations/<rung>` or a top-level one) per name, made on first use."""
    logs, done = tmp_path_factory.mktemp('logs'), {}

    def invoke(name):
        if name not in done:
            rung = name.split('/')[-1]
            done[name] = run_script(name, '--data-dir', cifar_dir, '--log-dir', str(logs), '--runs', '1',
                                    '--seed', '3', '--no-warmup', *FAST.get(rung, FAST['main8_compile']), timeout=900)
        return done[name]
    return invoke


# main7 and main8 are airbench94.py and airbench94_compiled.py below their headers (checked text for text
# above), and those two scripts run end to end in their own tests: the same code needs no second run.
@pytest.mark.parametrize('rung', ['train_resnet18'] + RUNGS[:-2])
def test_every_rung_runs_end_to_end_and_writes_its_log(rung, invocations):
    proc = invocations(f'ablations/{rung}')
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith('|')]
    assert len(rows) == 1 + 2 + 1  # head, 2 epochs, eval
    log_dir = log_dir_of(proc.stdout)
    assert log_dir.name.startswith(f'{rung}-') and (log_dir / 'log.pt').exists()
    log = read_log(log_dir)
    assert log['script'] == rung and log['status'] == 'complete' and log['seed'] == 3
    run = log['runs'][0]
    assert run['steps'] == 20 and len(run['epochs']) == 2
    assert run['epochs'][1]['train_loss'] < run['epochs'][0]['train_loss']
    # 20 steps teach the airbench nets the synthetic classes; a narrow ResNet-18 learns them as fast
    # (train accuracy) but its BatchNorm running statistics lag behind, so its test accuracy is noise
    assert run['tta_val_acc'] > 0.3 if rung != 'train_resnet18' else run['epochs'][1]['train_acc'] > 0.3
    code = (REPO / 'ablations' / f'{rung}.py').read_text()
    assert code.startswith(f'"""ablations/{rung}.py:')  # the header names the rung
    assert log['flops_per_run'] > 0 and torch.load(log_dir / 'log.pt', weights_only=True)['code'] == code
    assert log['code'] == code


def test_default_run_counts(monkeypatch):
    for rung, runs in [('train_resnet18', 10)] + [(r, 25) for r in RUNGS]:
        m = module(rung)
        monkeypatch.setattr(m, 'benchmark', lambda args, *rest: args)
        assert m.main([]).runs == runs


# ---------------------------------------------------------------- ablations/README.md agrees with the scripts


README = (REPO / 'ablations' / 'README.md').read_text()


def readme_row(first_cell):
    rows = [[c.strip() for c in line.strip().strip('|').split('|')] for line in README.splitlines()
            if line.startswith(f'| {first_cell} |')]
    assert len(rows) == 1, f'ablations/README.md needs one row starting with {first_cell}'
    return rows[0]


@pytest.mark.parametrize('rung', ['train_resnet18'] + RUNGS)
def test_readme_epochs_and_flops(rung):
    m = module(rung)
    epochs, published, ours = readme_row(f'`{rung}.py`')[3:6]
    steps = m.train_steps(m.hyp['opt'], 50000)
    assert epochs.split(' (')[0] == f"{m.hyp['opt']['train_epochs']:g}" and f'({steps}' in epochs
    counted = m.flops_per_run(m.hyp, 50000, 10000) / 1e12
    assert float(ours) == pytest.approx(counted, abs=0.5)
    assert counted == pytest.approx(float(published.split(', ')[1]), rel=0.10)  # the 10%


def diff_counts(before, after, tmp_path):
    """(removed, added) lines as `diff` counts them, of the whole files and of the code below their
    header docstrings."""
    paths = [REPO / 'ablations' / f'{r}.py' for r in (before, after)]
    bodies = [tmp_path / f'{r}.code' for r in (before, after)]
    for path, code in zip(paths, bodies):
        text = path.read_text()
        code.write_text(text[text.index('"""', 3) + 3:])
    counts = []
    for a, b in (paths, bodies):
        out = subprocess.run(['diff', str(a), str(b)], capture_output=True, text=True).stdout.splitlines()
        counts.append(f"-{sum(line.startswith('<') for line in out)} +{sum(line.startswith('>') for line in out)}")
    return counts


@pytest.mark.skipif(shutil.which('diff') is None, reason='needs the diff command')
@pytest.mark.parametrize('before, after', PAIRS, ids=[b for _, b in PAIRS])
def test_readme_lists_the_size_of_each_diff(before, after, tmp_path):
    _, whole, code = readme_row(f'`diff ablations/{before}.py ablations/{after}.py`')
    assert [whole, code] == diff_counts(before, after, tmp_path)


def test_train_resnet18_follows_its_fact_sheet():
    """The baseline's recipe (ablations/README.md, "The baseline: ResNet-18"), written out here."""
    m = module('train_resnet18')
    o, a, n = m.hyp['opt'], m.hyp['aug'], m.hyp['net']
    assert (o['batch_size'], o['train_epochs'], m.train_steps(o, 50_000)) == (500, 26.0, 2600)
    assert (o['lr'], o['momentum'], o['weight_decay'], o['label_smoothing']) == (0.2, 0.9, 5e-4, 0.0)
    assert (a['flip'], a['translate'], a['cutout'], n['tta_level']) == ('random', 4, 12, 1)
    schedule = m.lr_schedule(2600, o['lr_start'], o['lr_peak_at'], o['lr_end'])
    assert schedule[0] == pytest.approx(0.2) and schedule[260] == pytest.approx(0.6)  # linear warmup over 20%
    assert schedule[520] == pytest.approx(1.0) and schedule[1560] == pytest.approx(0.5) and schedule[2600] == 0.0
    net = m.make_net(m.hyp)
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    stem = net[0]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.bias) == (3, 64, (3, 3), (1, 1), None)
    assert not any(isinstance(x, nn.MaxPool2d) for x in net.modules())
    blocks = [x for x in net if isinstance(x, m.BasicBlock)]
    assert [(b.conv1.in_channels, b.conv1.out_channels, b.conv1.stride[0], len(b.shortcut)) for b in blocks] == [
        (64, 64, 1, 0), (64, 64, 1, 0), (64, 128, 2, 2), (128, 128, 1, 0),
        (128, 256, 2, 2), (256, 256, 1, 0), (256, 512, 2, 2), (512, 512, 1, 0)]
    assert isinstance(net[-3], nn.AvgPool2d) and net[-3].kernel_size == 4
    assert (net[-1].in_features, net[-1].out_features) == (512, 10) and net[-1].bias is not None
    assert all(x.momentum == 0.1 and x.weight.requires_grad for x in net.modules() if isinstance(x, nn.BatchNorm2d))
    opt = m.make_optimizer(net, o)
    assert isinstance(opt, torch.optim.SGD) and len(opt.param_groups) == 1
    g = opt.param_groups[0]
    # the original's values for its summed loss: lr 0.2 / 500 and weight decay 5e-4 x 500
    assert g['nesterov'] and (g['lr'], g['momentum'], g['weight_decay']) == (0.2 / 500, 0.9, 5e-4 * 500)
    assert len(g['params']) == len(list(net.parameters()))


class Seeing(nn.Module):
    """Records the training batches a net sees."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        if self.training:
            self.seen.append(x.detach().clone())
        return x


def explained(out, x, pad, cutout):
    """Whether the augmented image `out` is crop(reflect-pad(cutout(flip(x)))) for some flip,
    cutout square and crop, as the original train_resnet18 augments: the flip and the crop from
    the pixels the cutout left alone, then the square from the zeroed ones."""
    side = x.size(-1)
    zero = (out == 0).all(0)
    for flipped in (x, x.flip(-1)):
        padded = F.pad(flipped[None], (pad,) * 4, 'reflect')[0]
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                crop = padded[:, dy:dy + side, dx:dx + side]
                if not torch.allclose(crop[:, ~zero], out[:, ~zero], atol=1e-5):
                    continue
                squares = torch.zeros((side - cutout + 1)**2, 1, side, side)
                for i, (top, left) in enumerate((a, b) for a in range(side - cutout + 1) for b in range(side - cutout + 1)):
                    squares[i, :, top:top + cutout, left:left + cutout] = 1
                moved = F.pad(squares, (pad,) * 4, 'reflect')[:, 0, dy:dy + side, dx:dx + side] > 0
                if (moved == zero).all((1, 2)).any():
                    return True
    return False


def test_train_resnet18_sums_its_loss_and_augments_in_the_originals_order(data, monkeypatch):
    """One epoch of train() with a linear net that records its batches, the labels replaced by the
    image indices (so a batch names its images): the loss is summed, and every training image is
    flipped, cut out, then translated (reflect-pad 4 and crop), in that order: the zeroed square
    moves with the image and can be cropped or reflected into the padding. The shared loader's
    order (crop, flip, cutout) explains only the images whose square stays inside the crop."""
    m = module('train_resnet18')
    hyp = copy.deepcopy(m.hyp)
    hyp['opt'].update(batch_size=200, train_epochs=1.0)
    n = len(data['train']['labels'])
    indexed = {'train': {**data['train'], 'labels': torch.arange(n)}, 'test': data['test']}
    batches, reductions = [], []
    monkeypatch.setattr(m, 'make_net', lambda h, *rest: nn.Sequential(Seeing(batches), nn.Flatten(),
                                                                     nn.Linear(3 * 32 * 32, n)))
    real = F.cross_entropy

    def cross_entropy(*args, **kwargs):
        reductions.append(kwargs.get('reduction', 'mean'))
        return real(*args, **kwargs)
    monkeypatch.setattr(m.F, 'cross_entropy', cross_entropy)
    seen_labels = []
    real_iter = m.CifarLoader.__iter__

    def recording_iter(loader):
        for inputs, labels in real_iter(loader):
            seen_labels.append(labels.clone())
            yield inputs, labels
    monkeypatch.setattr(m.CifarLoader, '__iter__', recording_iter)
    train_on(m, hyp, m.Device('cpu'), indexed, seed=0)
    assert reductions == ['sum'] * 10
    a = hyp['aug']
    images = data['train']['images'].permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(m.CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(m.CIFAR_STD).view(1, 3, 1, 1)
    normalised = (images - mean) / std
    inputs, labels = batches[0][:60], seen_labels[0][:60]
    assert all(explained(out, normalised[i], a['translate'], a['cutout']) for out, i in zip(inputs, labels.tolist()))
