"""The wires (issue 30, section 3): every hyperparameter that must reach the loss, the loader, the
optimizer or the clock, checked where it arrives, in every script that has it.

Each script trains once, tiny (9 steps of 100 of the first 600 training images, widths 8; 200 test
images), on the tests' synthetic data, with marker values that are none of its defaults (label
smoothing 0.13, 345 whitening images, ...), so a wire that falls back to a default, to the module's
own hyp or to a constant is caught. Spies record every call that matters: F.cross_entropy, the
whitening filters, the TTA, the loader's augmentations, Newton-Schulz, the optimizers and their
steps, the callback; a fake clock replaces the one Timer reads, and only the spies advance it, each
kind by its own power of two, so the seconds a run reports say which calls were inside a timed
block. The recording is made once per script and shared by the pytest-xdist workers (a file under a
lock in the session's temp folder). The speedrun's between-run protocol has its own test, a whole
invocation on the CPU with the protocol run as on CUDA.

The cuts: CUTS lists, per test, one edit of a script that cuts the wire (old text -> new text). With
AIRBENCH_WIRE_CUT=NAME in the environment, the script is loaded from a copy with that edit (under
another module name; the file is never changed), and the test named in CUTS[NAME] must fail:

    AIRBENCH_WIRE_CUT=speedrun_no_jitter python -m pytest -q -n 0 tests/test_wires.py -k jitter
    python tests/test_wires.py          # every cut in turn: each must fail its test (a few minutes)

test_every_cut_applies (always run) checks that every cut's old text is still in its script, once.
"""
import copy
import importlib.util
import inspect
import os
import pickle
import subprocess
import sys
import types
from math import ceil

import pytest
import torch
import torch.nn.functional as F
from filelock import FileLock

sys.path.insert(0, os.path.dirname(__file__))
from conftest import REPO  # noqa: E402

RECORDS = ['airbench94', 'airbench94_compiled', 'airbench95', 'airbench96', 'airbench94_muon', 'airbench96_faster',
           'airbench94_speedrun']
RUNGS = ['ablations/main0_network', 'ablations/main1_whiten', 'ablations/main2_dirac', 'ablations/main3_scalebias',
         'ablations/main4_freeze', 'ablations/main5_lookahead', 'ablations/main6_tta', 'ablations/main7_mirror',
         'ablations/main8_compile', 'ablations/train_resnet18']
LEGACY = ['legacy/cifar10_fast', 'legacy/hlb_cifar10']
SCRIPTS = RECORDS + RUNGS + LEGACY
SCRIPT_ID = {s: s.split('/')[-1] for s in SCRIPTS}  # the tests' ids: main0_network, hlb_cifar10, ...

# Where each wire exists (test_the_wire_lists_match_the_scripts keeps these lists honest).
NO_WHITENING = {'ablations/main0_network', 'ablations/train_resnet18'}
WHITENING = [s for s in SCRIPTS if s not in NO_WHITENING]
SELECTIVE_TTA = ['airbench94_speedrun']
TTA_LEVEL = [s for s in SCRIPTS if s not in SELECTIVE_TTA]
PER_EPOCH_EVAL = TTA_LEVEL  # the speedrun evaluates once, at the end, as its original
JITTER = ['airbench94_speedrun']
TRANSLATE = SCRIPTS  # batch_crop (hlb_cifar10: crop_corner) of the padded images
CUTOUT = [s for s in SCRIPTS if s not in ('legacy/cifar10_fast', 'legacy/hlb_cifar10')]
MUON = ['airbench94_muon', 'airbench94_speedrun']
COMPILED = {'airbench94_compiled', 'ablations/main8_compile'}  # trained here on an eager net, as test_ablations does
# The whitening bias freezes after opt.whiten_bias_epochs: at an epoch's end in the SGD family, at step
# ceil(whiten_bias_epochs x steps per epoch) in the Muon scripts and airbench96_faster.
BIAS_FREEZE = ['airbench94', 'airbench94_compiled', 'airbench95', 'airbench96', 'ablations/main4_freeze',
               'ablations/main5_lookahead', 'ablations/main6_tta', 'ablations/main7_mirror', 'ablations/main8_compile']
BIAS_FREEZE_AT_STEP = ['airbench94_muon', 'airbench96_faster', 'airbench94_speedrun']

N_TRAIN, N_TEST = 600, 200  # the first images of each split of the synthetic data (conftest)
WIDTH, BATCH, EPOCHS = 8, 100, 1.5  # 9 steps: a full epoch of 6 and half of another

# The fake clock: only the spies advance it, each kind by its own power of two (exact in float sums).
ADVANCE = {'whitening': 2.0**10, 'loss': 2.0**-6, 'tta': 2.0**4, 'selective_tta': 2.0**4, 'eval': 2.0**14,
           'callback': 2.0**18}

# One edit per test that cuts its wire: name -> (script, old text, new text, the test that must fail).
CUTS = {
    'speedrun_no_jitter': (
        'airbench94_speedrun', "        if brightness > 0 or contrast > 0:\n            images = batch_color_jitter(",
        "        if brightness > 0 or contrast > 0:\n            batch_color_jitter(",
        'test_the_jitter_reaches_the_training_batches'),
    'speedrun_jitter_dropped_by_make_loaders': (
        'airbench94_speedrun', "train=True, aug=hyp['aug']),",
        "train=True, aug={k: v for k, v in hyp['aug'].items() if k not in ('brightness', 'contrast')}),",
        'test_the_jitter_reaches_the_training_batches'),
    'speedrun_default_smoothing': (
        'airbench94_speedrun', "training_step(inputs, labels, o['label_smoothing'])",
        "training_step(inputs, labels, 0.09)", 'test_label_smoothing_reaches_the_loss'),
    'airbench94_smoothing_of_the_module_hyp': (
        'airbench94', "label_smoothing=o['label_smoothing'], reduction='sum')",
        "label_smoothing=globals()['hyp']['opt']['label_smoothing'], reduction='sum')",
        'test_label_smoothing_reaches_the_loss'),
    'faster_proxy_without_smoothing': (
        'airbench96_faster', "proxy_losses = F.cross_entropy(proxy_outputs.float(), labels, label_smoothing=o['label_smoothing'],",
        "proxy_losses = F.cross_entropy(proxy_outputs.float(), labels, label_smoothing=0.0,",
        'test_label_smoothing_reaches_the_loss'),
    'speedrun_mean_loss': (
        'airbench94_speedrun', "label_smoothing=label_smoothing, reduction='sum')",
        "label_smoothing=label_smoothing, reduction='mean')", 'test_the_loss_is_summed'),
    'muon_mean_loss': (
        'airbench94_muon', "label_smoothing=o['label_smoothing'], reduction='sum')",
        "label_smoothing=o['label_smoothing'])", 'test_the_loss_is_summed'),
    'airbench96_batch_of_the_module_hyp': (
        'airbench96', "return (CifarLoader(data['train'], dev, hyp['opt']['batch_size']",
        "return (CifarLoader(data['train'], dev, globals()['hyp']['opt']['batch_size'] // 8",
        'test_the_batch_size_reaches_the_loss'),
    'airbench95_whole_epochs': (
        'airbench95', "    total_steps = train_steps(o, len(train_loader.images))",
        "    total_steps = train_steps({**o, 'train_epochs': ceil(o['train_epochs'])}, len(train_loader.images))",
        'test_train_epochs_set_the_steps'),
    'speedrun_whitening_960': (
        'airbench94_speedrun', "train_loader.images[:n['whiten_images']]", "train_loader.images[:960]",
        'test_the_whitening_takes_hyps_images_and_eps'),
    'airbench94_whitening_eps_default': (
        'airbench94', "init_whitening_conv(model[0], whiten_images, hyp['net']['whiten_eps'])",
        "init_whitening_conv(model[0], whiten_images, 5e-4)", 'test_the_whitening_takes_hyps_images_and_eps'),
    'faster_whitening_of_augmented_images': (
        'airbench96_faster', "        whiten_images = train_loader.normalize(train_loader.images[:hyp['net']['whiten_images']])",
        "        whiten_images = train_loader.normalize(train_loader.images.flip(-1)[:hyp['net']['whiten_images']])",
        'test_the_whitening_takes_hyps_images_and_eps'),
    'speedrun_tta_on_every_image': (
        'airbench94_speedrun', "selective_tta(compiled, test_loader, n['tta_fraction'])",
        "selective_tta(compiled, test_loader, 1.0)", 'test_the_selective_tta_takes_tta_fraction_of_the_images'),
    'muon_tta_level_2': (
        'airbench94_muon', "tta_val_acc = evaluate(compiled, test_loader, tta_level=hyp['net']['tta_level'])",
        "tta_val_acc = evaluate(compiled, test_loader, tta_level=2)", 'test_the_final_tta_runs_at_hyps_level'),
    'speedrun_clock_after_whitening': (
        'airbench94_speedrun',
        "    timer.__enter__()  # one interval, from the whitening init to the end of the TTA: no host sync inside\n"
        "    whiten_images = train_loader.normalize(train_loader.images[:n['whiten_images']])\n"
        "    init_whitening_conv(model[0], whiten_images, n['whiten_eps'])\n",
        "    whiten_images = train_loader.normalize(train_loader.images[:n['whiten_images']])\n"
        "    init_whitening_conv(model[0], whiten_images, n['whiten_eps'])\n    timer.__enter__()\n",
        'test_the_clock_starts_before_the_whitening_init'),
    'airbench94_whitening_untimed': (
        'airbench94', "    with timer:  # timing starts when the training data is first touched (paper §2)\n",
        "    with contextlib.nullcontext():\n", 'test_the_clock_starts_before_the_whitening_init'),
    'speedrun_clock_stops_before_tta': (
        'airbench94_speedrun',
        "        plain, logits = selective_tta(compiled, test_loader, n['tta_fraction'])\n"
        "        hits = torch.stack([(x.argmax(1) == test_loader.labels).float().mean() for x in (plain, logits)])\n"
        "    timer.__exit__()\n",
        "        timer.__exit__()\n"
        "        plain, logits = selective_tta(compiled, test_loader, n['tta_fraction'])\n"
        "        hits = torch.stack([(x.argmax(1) == test_loader.labels).float().mean() for x in (plain, logits)])\n"
        "    else:\n        timer.__exit__()\n",
        'test_the_clock_stops_after_the_final_tta'),
    'airbench96_final_tta_untimed': (
        'airbench96', "        with timer:\n            tta_val_acc = evaluate(",
        "        with contextlib.nullcontext():\n            tta_val_acc = evaluate(",
        'test_the_clock_stops_after_the_final_tta'),
    'airbench95_per_epoch_eval_timed': (
        'airbench95', "        if test_loader is not None:\n            val_acc = evaluate(model, test_loader, tta_level=0)",
        "        if test_loader is not None:\n            with timer:\n"
        "                val_acc = evaluate(model, test_loader, tta_level=0)",
        'test_the_per_epoch_evaluation_and_the_callback_are_untimed'),
    'speedrun_callback_timed': (
        'airbench94_speedrun', "            timer.__exit__()\n            if (error := diverged_at(",
        "            if (error := diverged_at(", 'test_the_per_epoch_evaluation_and_the_callback_are_untimed'),
    'compiled_training_untimed': (
        'airbench94_compiled', "        finite = []\n        with timer:\n            model.train()",
        "        finite = []\n        with contextlib.nullcontext():\n            model.train()",
        'test_the_training_steps_are_timed'),
    'muon_seconds_of_the_whitening_only': (
        'airbench94_muon', "'time_seconds': timer.seconds, 'steps': step, 'epochs': history}",
        "'time_seconds': timer.seconds * 0 + 2.0**10, 'steps': step, 'epochs': history}",
        'test_the_run_reports_the_seconds_of_its_timed_blocks'),
    'speedrun_ns_coefficients_default': (
        'airbench94_speedrun', "ns_coefficients=opt['ns_coefficients'],",
        "ns_coefficients=(3.4576, -4.7391, 2.0843),", 'test_muon_gets_hyps_newton_schulz'),
    'speedrun_ns_eps_fixed': (
        'airbench94_speedrun', "ns_eps=opt['ns_eps'],", "ns_eps=1e-5,", 'test_muon_gets_hyps_newton_schulz'),
    'muon_ns_steps_fixed': (
        'airbench94_muon', "ns_steps=opt['ns_steps'],", "ns_steps=3,", 'test_muon_gets_hyps_newton_schulz'),
    'speedrun_renorm_every_fixed': (
        'airbench94_speedrun', "renorm_every=opt['renorm_every'],", "renorm_every=2,",
        'test_muon_renormalises_on_hyps_schedule'),
    'speedrun_filter_momentum_fixed': (
        'airbench94_speedrun', "momentum=opt['filter_momentum'],", "momentum=0.655,",
        'test_the_optimizers_get_hyps_values'),
    'airbench94_optimizer_of_the_module_hyp': (
        'airbench94', "    optimizer = make_optimizer(model, o)\n",
        "    optimizer = make_optimizer(model, globals()['hyp']['opt'])\n", 'test_the_optimizers_get_hyps_values'),
    'airbench96_translate_2': (
        'airbench96', "self.aug.get('translate', 0)", "2",
        'test_translate_reaches_the_training_loader'),
    'speedrun_bias_trains_a_step_more': (
        'airbench94_speedrun', "model[0].bias.requires_grad = step < bias_steps",
        "model[0].bias.requires_grad = step <= bias_steps", 'test_the_whitening_bias_trains_for_whiten_bias_epochs'),
    'main5_bias_never_frozen': (
        'ablations/main5_lookahead', "model[0].bias.requires_grad = epoch < o['whiten_bias_epochs']",
        "model[0].bias.requires_grad = True", 'test_the_whitening_bias_trains_for_whiten_bias_epochs'),
    'resnet18_no_cutout': (
        'ablations/train_resnet18', "                images = batch_cutout(images, cutout, self.generator)\n",
        "                pass\n", 'test_cutout_reaches_the_training_loader'),
    'speedrun_no_sleep': (
        'airbench94_speedrun',
        "        else:  # as the original's: no sleep before the warmup, one before every timed run, untimed\n"
        "            between_runs(dev)\n",
        "",
        'test_the_speedrun_sleeps_before_each_timed_run_untimed'),
    'speedrun_sleep_in_the_interval': (
        'airbench94_speedrun', "    init_whitening_conv(model[0], whiten_images, n['whiten_eps'])\n",
        "    init_whitening_conv(model[0], whiten_images, n['whiten_eps'])\n    between_runs(dev)\n",
        'test_the_speedrun_sleeps_before_each_timed_run_untimed'),
    'speedrun_sleep_without_sync': (
        'airbench94_speedrun', "        torch.cuda.synchronize()\n        torch.cuda._sleep(6_000_000_000)",
        "        torch.cuda._sleep(6_000_000_000)", 'test_the_speedrun_sleeps_before_each_timed_run_untimed'),
}
CUT = os.environ.get('AIRBENCH_WIRE_CUT')


# ================================================================ loading and the recording run


def script_source(name, cut=None):
    source = (REPO / f'{name}.py').read_text()
    if cut is not None:
        script, old, new, _ = CUTS[cut]
        if script == name:
            assert source.count(old) == 1, f'cut {cut}: its old text is not in {name}.py exactly once'
            source = source.replace(old, new)
    return source


def load_copy(name, cut=None, tag='run'):
    """A private copy of the script as a module (its own globals, which the spies replace), with the
    cut applied if it is in this script; the script file itself is only read."""
    module_name = f'wires_{tag}__' + name.replace('/', '__') + (f'__{cut}' if cut else '')
    spec = importlib.util.spec_from_loader(module_name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(REPO / f'{name}.py')
    sys.modules[module_name] = module
    exec(compile(script_source(name, cut), module.__file__, 'exec'), module.__dict__)
    return module


def wired_hyp(m):
    """The script's hyp, tiny, with a marker value for every wire: none is the default."""
    hyp = copy.deepcopy(m.hyp)
    o, a, n = hyp['opt'], hyp['aug'], hyp['net']
    for tree in (n, hyp.get('proxy', {})):
        if 'widths' in tree:
            tree['widths'] = {k: WIDTH for k in tree['widths']}
    o.update(batch_size=BATCH, train_epochs=EPOCHS)
    tiny = {'batch_size_masked': BATCH // 2, 'lookahead_epochs': 1, 'ghost_splits': 4,
            'cutmix_epochs': 1, 'whiten_chunk': 115}  # hlb_cifar10: 3 chunks of the 345
    markers = {'label_smoothing': 0.13, 'whiten_images': 345, 'whiten_eps': 3e-3,
               'tta_level': 1 if n.get('tta_level') == 2 else 2, 'tta_fraction': 0.37, 'whiten_bias_epochs': 0.5,
               'translate': a.get('translate', 0) + 1, 'cutout': 5 if a.get('cutout', 0) != 5 else 6,
               'brightness': 0.21, 'contrast': 0.17, 'ns_steps': 2, 'ns_coefficients': [3.3, -4.6, 2.0],
               'ns_eps': 3e-5, 'ns_magnitude': [0.4, 0.1], 'ns_pad_multiple': 8, 'renorm_every': 1,
               'renorm_every_growth': 4, 'renorm_eps': 1e-6, 'momentum': 0.8, 'filter_momentum': 0.61,
               'filter_lr': 0.19, 'bias_lr': 0.051, 'head_lr': 0.52, 'lr': round(o.get('lr', 1) * 0.9, 4)}
    for tree in (o, a, n):
        for key in tree:
            if key in tiny:
                tree[key] = tiny[key]
            if key in markers:
                assert markers[key] != tree[key], key
                tree[key] = markers[key]
    m.check_hyp(hyp)
    return hyp


def bound(fn, args, kwargs):
    """fn's arguments by name, defaults applied."""
    b = inspect.signature(fn).bind(*args, **kwargs)
    b.apply_defaults()
    return b.arguments


def nth(arguments, i):
    return list(arguments.values())[i]


class Recorder:
    """The events of one run, the fake clock and how many timed blocks are open."""

    def __init__(self):
        self.events, self.t, self.inside, self.last_aug, self.last_jitter = [], 0.0, 0, None, None

    def log(self, kind, **info):
        self.events.append({'kind': kind, 'inside': self.inside > 0, **info})
        self.t += ADVANCE.get(kind, 0.0)


def spy(rec, kind, fn, describe=lambda a: {}, after=None):
    """fn, recording an event of `kind` (with describe(its arguments)) before it runs."""
    def wrapper(*args, **kwargs):
        rec.log(kind, **describe(bound(fn, args, kwargs)))
        out = fn(*args, **kwargs)
        if after is not None:
            after(out)
        return out
    wrapper.__signature__ = inspect.signature(fn)
    return wrapper


def fake_timer(m, rec):
    class FakeClockTimer(m.Timer):
        """The script's Timer, reading the fake clock; it logs when a timed block opens and closes."""

        def now(self):
            return rec.t

        def __enter__(self):
            out = super().__enter__()
            rec.inside += 1
            rec.log('clock starts')
            return out

        def __exit__(self, *exc):
            rec.inside -= 1
            rec.log('clock stops')
            return super().__exit__(*exc)
    return FakeClockTimer


def install_spies(mp, m, rec, train_loader, test_loader, hyp):
    """Every spy of the run, on the copy's globals (and F.cross_entropy, for the duration of the run)."""
    mp.setattr(m, 'Timer', fake_timer(m, rec))
    mp.setattr(F, 'cross_entropy', spy(rec, 'loss', F.cross_entropy, lambda a: {
        'n': len(a['target']), 'label_smoothing': a['label_smoothing'], 'reduction': a['reduction']}))
    if hasattr(m, 'whitening_filters'):
        hlb = m.__file__.endswith('hlb_cifar10.py')  # its whitening images are a fresh random subset

        def describe(a):
            images = a['images']
            first = None if hlb else torch.equal(images, train_loader.normalize(train_loader.images[:len(images)]))
            return {'n': len(images), 'eps': a['eps'], 'first_training_images': first}
        mp.setattr(m, 'whitening_filters', spy(rec, 'whitening', m.whitening_filters, describe))
    if hasattr(m, 'selective_tta'):
        mp.setattr(m, 'selective_tta', spy(rec, 'selective_tta', m.selective_tta, lambda a: {
            'fraction': a['tta_fraction'], 'n': len(a['loader'].images), 'test': a['loader'] is test_loader}))
        mp.setattr(m, 'tta_views', spy(rec, 'tta_views', m.tta_views, lambda a: {'n': len(a['images'])}))
    else:
        mp.setattr(m, 'tta_logits', spy(rec, 'tta', m.tta_logits, lambda a: {'level': a['tta_level'],
                                                                             'n': len(a['inputs'])}))
        mp.setattr(m, 'evaluate', spy(rec, 'eval', m.evaluate, lambda a: {'level': a['tta_level'],
                                                                         'test': a['loader'] is test_loader}))
    # the augmentations' arguments by position (images, size; images, brightness, contrast): their names vary
    crop = 'crop_corner' if hasattr(m, 'crop_corner') else 'batch_crop'
    mp.setattr(m, crop, spy(rec, 'crop', getattr(m, crop), lambda a: {
        'padding': (nth(a, 0).size(-1) - nth(a, 1)) // 2, 'n': len(nth(a, 0))}))

    def keep(out, jitter=False):  # the speedrun's chain: jitter, then cutout, then the epoch's batches
        rec.last_aug = out
        rec.last_jitter = out if jitter else rec.last_jitter
    if hasattr(m, 'batch_cutout'):
        mp.setattr(m, 'batch_cutout', spy(rec, 'cutout', m.batch_cutout, lambda a: {
            'size': nth(a, 1), 'n': len(nth(a, 0)),
            'after_jitter': None if rec.last_jitter is None else torch.equal(nth(a, 0), rec.last_jitter)}, after=keep))
    if hasattr(m, 'batch_color_jitter'):
        mp.setattr(m, 'batch_color_jitter', spy(rec, 'jitter', m.batch_color_jitter, lambda a: {
            'n': len(nth(a, 0)), 'brightness': nth(a, 1), 'contrast': nth(a, 2)},
            after=lambda out: keep(out, jitter=True)))
        next_epoch = m.CifarLoader.next_epoch

        def served(self, *args, **kwargs):
            images, labels, order = next_epoch(self, *args, **kwargs)
            if self is train_loader:
                rec.log('epoch served', augmented=rec.last_aug is not None and torch.equal(images, rec.last_aug))
            rec.last_aug = rec.last_jitter = None
            return images, labels, order
        mp.setattr(m.CifarLoader, 'next_epoch', served)
    if hasattr(m, 'newton_schulz_stack'):
        mp.setattr(m, 'newton_schulz_stack', spy(rec, 'newton_schulz', m.newton_schulz_stack, lambda a: {
            'steps': a['steps'], 'coefficients': tuple(a['coefficients']), 'eps': a['eps'],
            'magnitude': tuple(a['magnitude']), 'pad_multiple': a['pad_multiple']}))
    if hasattr(m, 'newton_schulz'):
        mp.setattr(m, 'newton_schulz', spy(rec, 'newton_schulz', m.newton_schulz, lambda a: {'steps': a['steps']}))
    optimizers = []
    for name in ('make_optimizer', 'make_optimizers'):
        if hasattr(m, name):
            make = getattr(m, name)

            def spied(*args, make=make, **kwargs):
                a = bound(make, args, kwargs)
                rec.log('optimizer', opt=dict(a['opt']))
                out = make(*args, **kwargs)
                for optimizer in out if isinstance(out, tuple) else [out]:
                    optimizers.append(optimizer)
                    if any(p is a['model'][0].bias for g in optimizer.param_groups for p in g['params']):
                        watch_bias(rec, optimizer, a['model'][0].bias)
                return out
            spied.__signature__ = inspect.signature(make)
            mp.setattr(m, name, spied)
    return optimizers


def watch_bias(rec, optimizer, bias):
    """Logs, at each of the optimizer's steps, whether the whitening bias has a gradient (trains)."""
    step = optimizer.step

    def watched(self, *args, **kwargs):
        rec.log('bias step', trains=bias.grad is not None)
        return step(*args, **kwargs)
    optimizer.step = types.MethodType(watched, optimizer)  # a method: an lr scheduler wraps it in turn


def optimizer_summary(optimizer):
    keys = ('lr', 'initial_lr', 'momentum', 'weight_decay', 'nesterov')
    return {'type': type(optimizer).__name__, 'groups': [{k: g.get(k) for k in keys} for g in optimizer.param_groups],
            'muon': type(optimizer).__name__ == 'Muon', 'renorm': getattr(optimizer, 'renorm', None),
            'renorm_steps': list(getattr(optimizer, 'renorm_steps', []))}


def record_run(name, data, cut=None):
    """One tiny run of the script with every spy on; returns its recording as plain data."""
    m = load_copy(name, cut)
    hyp = wired_hyp(m)
    dev = m.Device('cpu')
    rec = Recorder()
    subset = {split: {**data[split], 'images': data[split]['images'][:n], 'labels': data[split]['labels'][:n]}
              for split, n in (('train', N_TRAIN), ('test', N_TEST))}
    train_loader, test_loader = m.make_loaders(hyp, dev, subset)
    extra = {}
    if name in COMPILED:
        model = dev.prepare(m.make_net(hyp))
        extra['net'] = (model, model)

    def callback(model, epoch):
        rec.log('callback', epoch=epoch['epoch'])
    with pytest.MonkeyPatch.context() as mp:
        optimizers = install_spies(mp, m, rec, train_loader, test_loader, hyp)
        _, record = m.train(hyp, dev, train_loader, test_loader, seed=0, run=1, verbose=False, callback=callback,
                            **extra)
    return {'hyp': hyp, 'defaults': copy.deepcopy(m.hyp), 'events': rec.events, 'steps_per_epoch': len(train_loader),
            'record': {k: v for k, v in record.items() if k in ('time_seconds', 'steps', 'renorm_steps')},
            'optimizers': [optimizer_summary(o) for o in optimizers]}


@pytest.fixture(scope='session')
def wired(tmp_path_factory, data):
    """wired(script): the script's recording, made by the first worker that asks and read by the others."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get('PYTEST_XDIST_WORKER') else root
    cache = {}

    def get(name):
        if name not in cache:
            path = root / f"wires-{name.replace('/', '__')}-{CUT or 'intact'}.pkl"
            with FileLock(str(path) + '.lock'):
                if not path.exists():
                    try:
                        result = record_run(name, data, CUT)
                    except Exception as e:  # a cut may break the run itself: every test of the script fails
                        result = {'error': f'{type(e).__name__}: {e}'}
                    path.write_bytes(pickle.dumps(result))
                cache[name] = pickle.loads(path.read_bytes())
        if 'error' in cache[name]:
            pytest.fail(f"{name}'s recording run failed: {cache[name]['error']}")
        return cache[name]
    return get


def events(run, kind, **match):
    return [e for e in run['events'] if e['kind'] == kind and all(e.get(k) == v for k, v in match.items())]


def main_losses(name, run):
    """The losses of the main net's steps (airbench96_faster's proxy has its own, unreduced, per batch)."""
    losses = events(run, 'loss')
    return [e for e in losses if e['reduction'] != 'none'] if name == 'airbench96_faster' else losses


# ================================================================ the loss


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_label_smoothing_reaches_the_loss(wired, name):
    """Every training loss (airbench96_faster: the main net's and the proxy's) smooths as hyp says."""
    run = wired(name)
    smoothing = run['hyp']['opt']['label_smoothing']
    assert smoothing != run['defaults']['opt']['label_smoothing']
    losses = events(run, 'loss')
    assert losses and {e['label_smoothing'] for e in losses} == {smoothing}


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_loss_is_summed(wired, name):
    """The loss is summed over the batch (airbench96_faster's proxy: per example, its selected ones summed)."""
    run = wired(name)
    kinds = {e['reduction'] for e in events(run, 'loss')}
    assert kinds == ({'sum', 'none'} if name == 'airbench96_faster' else {'sum'})


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_batch_size_reaches_the_loss(wired, name):
    """Every step's loss sees opt.batch_size examples (airbench96_faster: the proxy every batch of the
    stream, the main net batch_size_masked of them)."""
    run = wired(name)
    o = run['hyp']['opt']
    if name == 'airbench96_faster':
        assert {e['n'] for e in events(run, 'loss', reduction='none')} == {o['batch_size']}
        assert {e['n'] for e in main_losses(name, run)} == {o['batch_size_masked']}
    else:
        assert {e['n'] for e in events(run, 'loss')} == {o['batch_size']}


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_train_epochs_set_the_steps(wired, name):
    """opt.train_epochs x the steps per epoch, rounded up: that many training losses, and the record says so."""
    run = wired(name)
    o = run['hyp']['opt']
    steps = ceil(o['train_epochs'] * (N_TRAIN // o['batch_size']))
    assert len(main_losses(name, run)) == run['record']['steps'] == steps == 9


# ================================================================ the whitening


@pytest.mark.parametrize('name', WHITENING, ids=SCRIPT_ID.get)
def test_the_whitening_takes_hyps_images_and_eps(wired, name):
    """One whitening init, on net.whiten_images training images (the first ones, normalised and not
    augmented; hlb_cifar10: a random subset, as its original) with net.whiten_eps."""
    run = wired(name)
    n = run['hyp']['net']
    assert (n['whiten_images'], n['whiten_eps']) != (run['defaults']['net']['whiten_images'],
                                                      run['defaults']['net']['whiten_eps'])
    (whitening,) = events(run, 'whitening')
    assert (whitening['n'], whitening['eps']) == (n['whiten_images'], n['whiten_eps'])
    assert whitening['first_training_images'] is (None if name == 'legacy/hlb_cifar10' else True)


# ================================================================ the final TTA


@pytest.mark.parametrize('name', TTA_LEVEL, ids=SCRIPT_ID.get)
def test_the_final_tta_runs_at_hyps_level(wired, name):
    """The last evaluation, on the whole test set, is at net.tta_level; the per-epoch ones are plain."""
    run = wired(name)
    level = run['hyp']['net']['tta_level']
    assert level != run['defaults']['net']['tta_level']
    evaluations = events(run, 'eval')
    epochs = ceil(run['hyp']['opt']['train_epochs'])
    assert [e['level'] for e in evaluations] == [0] * epochs + [level]
    assert all(e['test'] for e in evaluations)
    assert [(e['level'], e['n']) for e in events(run, 'tta')][-1] == (level, N_TEST)


@pytest.mark.parametrize('name', SELECTIVE_TTA, ids=SCRIPT_ID.get)
def test_the_selective_tta_takes_tta_fraction_of_the_images(wired, name):
    """One selective TTA on the test set: the 6 views for int(net.tta_fraction x N) images, no more."""
    run = wired(name)
    fraction = run['hyp']['net']['tta_fraction']
    assert fraction != run['defaults']['net']['tta_fraction']
    (tta,) = events(run, 'selective_tta')
    assert tta['test'] and tta['fraction'] == fraction and tta['n'] == N_TEST
    assert sum(e['n'] for e in events(run, 'tta_views')) == int(fraction * N_TEST) == 74


# ================================================================ the clock


def first(run, kind):
    return next(i for i, e in enumerate(run['events']) if e['kind'] == kind)


@pytest.mark.parametrize('name', WHITENING, ids=SCRIPT_ID.get)
def test_the_clock_starts_before_the_whitening_init(wired, name):
    """The whitening init is the first thing timed: a timed block is open when it runs, and no training
    data is touched (no loss) before it."""
    run = wired(name)
    (whitening,) = events(run, 'whitening')
    assert whitening['inside']
    assert first(run, 'clock starts') < first(run, 'whitening') < first(run, 'loss')


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_training_steps_are_timed(wired, name):
    run = wired(name)
    assert all(e['inside'] for e in events(run, 'loss'))


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_clock_stops_after_the_final_tta(wired, name):
    """The final TTA, every pass of it, is inside a timed block."""
    run = wired(name)
    if name in SELECTIVE_TTA:
        final = events(run, 'selective_tta') + events(run, 'tta_views')
    else:
        final = [events(run, 'eval')[-1]] + [e for e in events(run, 'tta') if e['level'] != 0]
    assert len(final) >= 2 and all(e['inside'] for e in final)
    last_tta = max(i for i, e in enumerate(run['events']) if e['kind'] in ('eval', 'tta', 'selective_tta',
                                                                             'tta_views'))
    assert [e['kind'] for e in run['events'][last_tta + 1:]] == ['clock stops']


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_per_epoch_evaluation_and_the_callback_are_untimed(wired, name):
    """No timed block is open while the per-epoch evaluation (the speedrun has none) or the callback runs."""
    run = wired(name)
    epochs = ceil(run['hyp']['opt']['train_epochs'])
    callbacks = events(run, 'callback')
    assert [e['epoch'] for e in callbacks] == list(range(1, epochs + 1))
    untimed = callbacks + (events(run, 'eval', level=0) + events(run, 'tta', level=0) if name in PER_EPOCH_EVAL
                           else [])
    assert len(untimed) == (3 if name in PER_EPOCH_EVAL else 1) * epochs
    assert not any(e['inside'] for e in untimed)


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_run_reports_the_seconds_of_its_timed_blocks(wired, name):
    """The record's time_seconds is what the fake clock advanced inside the timed blocks: the whitening,
    the steps and the final TTA, nothing else."""
    run = wired(name)
    timed = sum(ADVANCE.get(e['kind'], 0.0) for e in run['events'] if e['inside'])
    assert run['record']['time_seconds'] == timed
    assert timed >= ADVANCE['loss'] * len(events(run, 'loss')) + ADVANCE['whitening'] * (name in WHITENING)


# ================================================================ the loader


@pytest.mark.parametrize('name', JITTER, ids=SCRIPT_ID.get)
def test_the_jitter_reaches_the_training_batches(wired, name):
    """Every epoch the training loader jitters all its images with aug.brightness and aug.contrast, and
    the batches of that epoch come from the jittered images (cut out after the jitter: the run's cutout
    is on, so its input must be the jitter's output and the epoch's images the cutout's)."""
    run = wired(name)
    a = run['hyp']['aug']
    defaults = run['defaults']['aug']
    assert (a['brightness'], a['contrast']) != (defaults['brightness'], defaults['contrast'])
    epochs = ceil(run['hyp']['opt']['train_epochs'])
    jitters = [(e['n'], e['brightness'], e['contrast']) for e in events(run, 'jitter')]
    assert jitters == [(N_TRAIN, a['brightness'], a['contrast'])] * epochs
    assert [e['augmented'] for e in events(run, 'epoch served')] == [True] * epochs  # the last augmentation's output
    assert [e['after_jitter'] for e in events(run, 'cutout')] == [True] * epochs  # the cutout's input: the jitter's


@pytest.mark.parametrize('name', TRANSLATE, ids=SCRIPT_ID.get)
def test_translate_reaches_the_training_loader(wired, name):
    """The training images are cropped from copies padded by aug.translate pixels, every epoch."""
    run = wired(name)
    translate = run['hyp']['aug']['translate']
    assert translate != run['defaults']['aug']['translate']
    crops = events(run, 'crop')
    assert crops and {e['padding'] for e in crops} == {translate}
    assert sum(e['n'] for e in crops) == N_TRAIN * ceil(run['hyp']['opt']['train_epochs'])


@pytest.mark.parametrize('name', CUTOUT, ids=SCRIPT_ID.get)
def test_cutout_reaches_the_training_loader(wired, name):
    run = wired(name)
    cutout = run['hyp']['aug']['cutout']
    assert cutout != run['defaults']['aug']['cutout']
    cutouts = events(run, 'cutout')
    assert cutouts and {e['size'] for e in cutouts} == {cutout}
    assert sum(e['n'] for e in cutouts) == N_TRAIN * ceil(run['hyp']['opt']['train_epochs'])


# ================================================================ the optimizers


@pytest.mark.parametrize('name', MUON, ids=SCRIPT_ID.get)
def test_muon_gets_hyps_newton_schulz(wired, name):
    """Every Muon step orthogonalises with opt.ns_steps iterations; the speedrun's (one batched call per
    step) with opt.ns_coefficients, ns_eps, ns_magnitude and ns_pad_multiple too. (airbench94_muon,
    one call per filter: its coefficients and eps are the original's constants, not hyperparameters.)"""
    run = wired(name)
    o, defaults = run['hyp']['opt'], run['defaults']['opt']
    calls = events(run, 'newton_schulz')
    keys = ['ns_steps'] + (['ns_coefficients', 'ns_eps', 'ns_magnitude', 'ns_pad_multiple'] if name in SELECTIVE_TTA
                           else [])
    assert all(o[k] != defaults[k] for k in keys)
    per_step = 1 if name in SELECTIVE_TTA else 6
    assert len(calls) == per_step * run['record']['steps']
    wanted = {k[3:]: tuple(o[k]) if isinstance(o[k], list) else o[k] for k in keys}
    assert all({k: e[k] for k in wanted} == wanted for e in calls)


@pytest.mark.parametrize('name', ['airbench94_speedrun'], ids=SCRIPT_ID.get)
def test_muon_renormalises_on_hyps_schedule(wired, name):
    """Muon renormalises when opt.renorm_every + floor(opt.renorm_every_growth x step / total) steps have
    passed since it last did, with opt.renorm_eps."""
    run = wired(name)
    o = run['hyp']['opt']
    total, last, wanted = run['record']['steps'], 0, []
    for step in range(1, total + 1):
        if step - last >= o['renorm_every'] + int(o['renorm_every_growth'] * step / total):
            wanted.append(step)
            last = step
    assert wanted == [1, 2, 4, 8]  # (2, 4) would give [2, 6], (1, 15) and the defaults (2, 15) no step at all
    (muon,) = [x for x in run['optimizers'] if x['muon']]
    assert muon['renorm'] == (o['renorm_every'], o['renorm_every_growth'], o['renorm_eps'])
    assert run['record']['renorm_steps'] == muon['renorm_steps'] == wanted


@pytest.mark.parametrize('name', BIAS_FREEZE + BIAS_FREEZE_AT_STEP, ids=SCRIPT_ID.get)
def test_the_whitening_bias_trains_for_whiten_bias_epochs(wired, name):
    """The whitening bias gets gradients (its optimizer steps it) for the first opt.whiten_bias_epochs
    (0.5 here) and never after: the SGD family freezes it at the end of the epoch that reaches them
    (6 steps here), the others at step ceil(0.5 x 6) = 3."""
    run = wired(name)
    o = run['hyp']['opt']
    assert o['whiten_bias_epochs'] != run['defaults']['opt']['whiten_bias_epochs']
    epochs, per_epoch = o['whiten_bias_epochs'], run['steps_per_epoch']
    trained = ceil(epochs) * per_epoch if name in BIAS_FREEZE else ceil(epochs * per_epoch)
    assert trained == (6 if name in BIAS_FREEZE else 3)
    frozen = run['record']['steps'] - trained
    assert [e['trains'] for e in events(run, 'bias step')] == [True] * trained + [False] * frozen


def sgd_groups(m, opt):
    """What each SGD param group should hold, in the scripts' order, from the script's own rules."""
    if hasattr(m, 'decoupled_hyperparameters'):  # the family's shared block
        h = m.decoupled_hyperparameters(opt)
        return [(h['lr_biases'], h['weight_decay_biases']), (h['lr'], h['weight_decay'])]
    if 'filter_lr' in opt:  # airbench94_muon, the speedrun: whitening bias, BatchNorm biases, head
        wd = opt['weight_decay'] * opt['batch_size']
        return [(opt['bias_lr'], wd / opt['bias_lr'])] * 2 + [(opt['head_lr'], wd / opt['head_lr'])]
    return None  # the legacy scripts and train_resnet18: their own rules, checked by test_legacy and test_ablations


@pytest.mark.parametrize('name', SCRIPTS, ids=SCRIPT_ID.get)
def test_the_optimizers_get_hyps_values(wired, name):
    """The optimizers are built from the run's opt (not the module's defaults): its momentum in every
    SGD group, its lrs and weight decays (airbench96_faster: both nets), Muon's filter_lr and
    filter_momentum."""
    run = wired(name)
    o = run['hyp']['opt']
    built = events(run, 'optimizer')
    assert built and all(e['opt'] == o for e in built)
    sgds = [x for x in run['optimizers'] if not x['muon']]
    assert sgds and all(g['momentum'] == o['momentum'] for x in sgds for g in x['groups'])
    assert all(g['nesterov'] for x in sgds if x['type'] == 'SGD' for g in x['groups'])  # cifar10_fast's: always
    assert o['momentum'] != run['defaults']['opt']['momentum']
    wanted = sgd_groups(load_module(name), o)
    if wanted is not None:
        for x in sgds:
            got = [(g['initial_lr'], g['weight_decay']) for g in x['groups']]
            assert got == pytest.approx(wanted, rel=1e-12)
    for x in run['optimizers']:
        if x['muon']:
            (g,) = x['groups']
            assert (g['initial_lr'], g['momentum']) == (o['filter_lr'], o['filter_momentum'])
            assert o['filter_momentum'] != run['defaults']['opt']['filter_momentum']
            if name == 'airbench94_speedrun':  # airbench94_muon's Muon has no weight decay
                assert g['weight_decay'] == pytest.approx(o['weight_decay'] * o['batch_size'], rel=1e-12)


def load_module(name):
    """The script as a module, for its rules (not for running); cut if the cut is in it."""
    if name not in LOADED:
        LOADED[name] = load_copy(name, CUT, tag='rules')
    return LOADED[name]


LOADED = {}


# ================================================================ the speedrun's between-run protocol


def test_the_speedrun_sleeps_before_each_timed_run_untimed(cifar_dir, tmp_path, monkeypatch):
    """As the original: empty_cache, synchronize, then a 6e9-cycle GPU sleep before every timed run and
    not before the warmup, each before the run's clock first starts and never inside a timed block; off
    CUDA nothing. A whole invocation (warmup and 2 runs) on the CPU, its protocol run as on CUDA: the
    spy hands the script's between_runs a CUDA stand-in, and torch.cuda's three calls are recorded."""
    m = load_copy('airbench94_speedrun', CUT)
    rec = Recorder()
    for call in ('empty_cache', 'synchronize', '_sleep'):
        monkeypatch.setattr(torch.cuda, call, lambda *args, call=call: rec.log(f'cuda.{call}', args=args))
    between_runs, train = m.between_runs, m.train
    between_runs(m.Device('cpu'))
    assert rec.events == []  # off CUDA: nothing
    cuda = types.SimpleNamespace(type='cuda', torch_device=torch.device('cpu'))

    def spied_between_runs(dev):
        rec.log('between_runs', device=dev.type)
        between_runs(cuda)

    def spied_train(*args, **kwargs):
        rec.log('train', run=kwargs['run'])
        return train(*args, **kwargs)
    monkeypatch.setattr(m, 'between_runs', spied_between_runs)
    monkeypatch.setattr(m, 'train', spied_train)
    monkeypatch.setattr(m, 'Timer', fake_timer(m, rec))
    tiny = {'opt.batch_size': 200, 'opt.train_epochs': 0.5, **{f'net.widths.block{i}': WIDTH for i in (1, 2, 3)}}
    m.main(['--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--device', 'cpu', '--seed', '0', '--runs', '2',
            *[x for k, v in tiny.items() for x in ('--set', f'{k}={v}')]])
    protocol = [('between_runs', 'cpu'), ('cuda.empty_cache', ()), ('cuda.synchronize', ()),
                ('cuda._sleep', (6_000_000_000,))]
    seen = [(e['kind'], e.get('device', e.get('args', e.get('run')))) for e in rec.events
            if e['kind'] in ('train', 'between_runs') or e['kind'].startswith('cuda.')]
    assert seen == [('train', 'warmup'), *protocol, ('train', 1), *protocol, ('train', 2)]
    assert not any(e['inside'] for e in rec.events if e['kind'] == 'between_runs' or e['kind'].startswith('cuda.'))
    assert len(events({'events': rec.events}, 'clock starts')) == 3  # one interval per run: the sleep precedes each


# ================================================================ the lists and the cuts


def hyp_text(name):
    source = (REPO / f'{name}.py').read_text()
    return source[source.index('\nhyp = {'):source.index('\n}\n', source.index('\nhyp = {'))]


def test_the_wire_lists_match_the_scripts():
    """Each list of scripts holds exactly those whose hyp (or code) has the wire."""
    def having(text, where=hyp_text):
        return [s for s in SCRIPTS if text in where(s)]
    source = lambda s: (REPO / f'{s}.py').read_text()  # noqa: E731
    assert having("'whiten_images'") == WHITENING
    assert having("'tta_level'") == TTA_LEVEL and having("'tta_fraction'") == SELECTIVE_TTA
    assert having("'brightness'") == having("'contrast'") == JITTER
    assert having("'translate'") == TRANSLATE and having("'cutout'") == CUTOUT
    assert having('class Muon', source) == MUON
    assert having("'whiten_bias_epochs'") == [s for s in SCRIPTS if s in BIAS_FREEZE + BIAS_FREEZE_AT_STEP]
    assert {s for s in SCRIPTS if "else None, dynamic=False)" in source(s)} == COMPILED  # compiled on a CPU too


def test_every_cut_applies():
    """Every cut's old text is in its script exactly once, and the test it must break exists."""
    for cut, (script, old, new, test) in CUTS.items():
        assert (REPO / f'{script}.py').read_text().count(old) == 1, cut
        assert old != new and callable(globals().get(test)), cut
    assert {c[-1] for c in CUTS.values()} == {n for n in globals() if n.startswith('test_') and n not in (
        'test_the_wire_lists_match_the_scripts', 'test_every_cut_applies')}


def node(test, script):
    params = inspect.signature(globals()[test]).parameters
    return f'{__file__}::{test}' + (f'[{SCRIPT_ID[script]}]' if 'name' in params else '')


if __name__ == '__main__':  # every cut in turn: its test must fail with the cut, and pass without it
    failures = []
    for cut, (script, old, new, test) in CUTS.items():
        env = {**os.environ, 'AIRBENCH_WIRE_CUT': cut}
        proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider',
                               node(test, script)], capture_output=True, text=True, env=env, cwd=REPO)
        ok = proc.returncode == 1 and ' failed' in proc.stdout
        crashed = 'recording run failed' in proc.stdout  # the cut broke the run, not only the wire
        print(f"{'MISS' if not ok else 'run!' if crashed else 'ok  '} {cut}: {node(test, script).split('::')[1]}",
              flush=True)
        if not ok:
            failures.append(cut)
            print(proc.stdout[-2000:])
    print(f'{len(CUTS) - len(failures)} of {len(CUTS)} cuts make their test fail'
          + (f'; not: {failures}' if failures else ''))
    sys.exit(1 if failures else 0)
