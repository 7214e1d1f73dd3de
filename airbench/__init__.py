"""airbench: the scripts' methods as a library, with the API of the original airbench package (0.1.8).

Every public name is a script's own (`airbench.infer is airbench94.infer`) or a thin adapter to one:
the original's keyword arguments become overrides of the script's hyperparameter dict, checked by the
script's own check_hyp; `device=` (or the original's `gpu=`) becomes the script's Device; a folder
becomes tensors through the script's load_cifar10; the default loaders are the script's make_loaders;
and the table's header is printed as the original prints it. CifarLoader is a subclass of the
scripts' loader whose __init__ only adapts the original's arguments. The network, the loader, the
optimizers and the training loop exist only in the scripts, so a fix there is a fix here
(tests/test_package.py checks that no file of the package defines any of them).

    import airbench
    net = airbench.train94(label_smoothing=0, seed=1)        # ./cifar10, else $AIRBENCH_DATA
    logits = airbench.infer(net, airbench.CifarLoader('cifar10', train=False))

docs/package.md has every function, what it does on each device, and each difference from 0.1.8.
"""
import copy
import math
import numbers
import os
import re

import torch

import airbench94
import airbench94_muon
import airbench94_speedrun
import airbench95
import airbench96
import airbench96_faster
import airbench96_paper

# The scripts' own functions and classes, unchanged.
infer = airbench94.infer
evaluate = airbench94.evaluate
load_cifar10 = airbench94.load_cifar10
Device = airbench94.Device
UserError = airbench94.UserError                # a ValueError: bad input, one sentence
TrainingDiverged = airbench94.TrainingDiverged  # an ArithmeticError: the loss became NaN or infinite

SCRIPTS = (airbench94, airbench94_muon, airbench94_speedrun, airbench95, airbench96, airbench96_faster,
           airbench96_paper)
# The scripts whose train() sizes its own net's head by the loader's classes (the others: 10 classes).
HEAD_FROM_CLASSES = (airbench94, airbench95, airbench96, airbench96_paper)

# train93: airbench94's method with 11 epochs and widths 64/128/128 (the original package's
# lib_airbench93.py: "93.00 in n=50"; everything else is airbench94's).
HYP93 = copy.deepcopy(airbench94.hyp)
HYP93['opt']['train_epochs'] = 11.0
HYP93['net']['widths'] = {'block1': 64, 'block2': 128, 'block3': 128}

# The original's argument names for the SGD family's hyperparameters.
SGD_ARGS = {'epochs': 'opt.train_epochs', 'label_smoothing': 'opt.label_smoothing', 'learning_rate': 'opt.lr',
            'bias_scaler': 'opt.bias_scaler', 'momentum': 'opt.momentum', 'weight_decay': 'opt.weight_decay',
            'whiten_bias_epochs': 'opt.whiten_bias_epochs', 'tta_level': 'net.tta_level',
            'lr_peak': 'opt.lr_peak_at', 'lr_end': 'opt.lr_end'}
MUON_ARGS = {'epochs': 'opt.train_epochs', 'label_smoothing': 'opt.label_smoothing', 'filter_lr': 'opt.filter_lr',
             'filter_momentum': 'opt.filter_momentum', 'bias_lr': 'opt.bias_lr', 'head_lr': 'opt.head_lr',
             'momentum': 'opt.momentum', 'weight_decay': 'opt.weight_decay',
             'whiten_bias_epochs': 'opt.whiten_bias_epochs', 'tta_level': 'net.tta_level'}
FASTER_ARGS = {**SGD_ARGS, 'batch_size_masked': 'opt.batch_size_masked', 'proxy_every': 'opt.proxy_every'}
SPEEDRUN_ARGS = {**{k: v for k, v in MUON_ARGS.items() if k != 'tta_level'}, 'tta_fraction': 'net.tta_fraction'}


def default_data_dir():
    """The scripts' default --data-dir: $AIRBENCH_DATA, else ./cifar10."""
    return os.environ.get('AIRBENCH_DATA', 'cifar10')


def resolve_device(device, where):
    """A Device from device=: None or 'auto' (cuda, else mps, else cpu), 'cpu', 'cuda', 'cuda:N', 'mps', a
    torch.device, or a script's Device."""
    if isinstance(device, tuple(s.Device for s in SCRIPTS)):
        return device
    text = str(device) if isinstance(device, torch.device) else 'auto' if device is None else device
    name, _, index = text.partition(':') if isinstance(text, str) else ('', '', '')
    if name not in ('auto', 'cpu', 'cuda', 'mps') or index and (name != 'cuda' or not index.isdigit()):
        raise UserError(f"{where}: device={device!r} is not a device: use None (auto), 'cpu', 'cuda', 'cuda:N' or 'mps'")
    available = {'auto': True, 'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available[name]:
        raise UserError(f"{where}: device={device!r}, but this machine and torch build have no {name.upper()}: "
                        "use device=None (auto) or 'cpu'")
    if index and int(index) >= torch.cuda.device_count():
        raise UserError(f'{where}: device={device!r}, but only {torch.cuda.device_count()} GPUs are visible')
    return airbench94.Device(name, index=int(index or 0))


def with_overrides(script, base, values, where):
    """A copy of the hyperparameters `base` with values {hyp key: (argument name, value)}: each value
    must be a number like the default (an integer where the default is one), and the whole is checked
    by the script's check_hyp, whose message then names the argument instead of the --set flag."""
    hyp = copy.deepcopy(base)
    for key, (arg, value) in values.items():
        tree, leaf = script.leaves(hyp)[key]
        integer = isinstance(tree[leaf], int)
        if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
                or integer and not float(value).is_integer()):
            raise UserError(f"{where}: {arg}={value!r} is not {'an integer' if integer else 'a finite number'}, "
                            f'like the default {tree[leaf]!r}')
        tree[leaf] = int(value) if integer else float(value)
    try:
        script.check_hyp(hyp)
    except script.UserError as e:
        keys = '|'.join(re.escape(k) for k in sorted(values, key=len, reverse=True))  # the longest first
        message = re.sub(rf'(--set )?({keys})\b', lambda m: values[m.group(2)][0], str(e)) if values else str(e)
        raise UserError(f'{where}: {message}') from None
    return hyp


def gpu_device(gpu, device, where):
    """device= from the original's gpu=: an index N is 'cuda:N', a name or torch.device is itself;
    None leaves device= (the project's) to say."""
    if gpu is None:
        return device
    if isinstance(gpu, bool) or not isinstance(gpu, (int, str, torch.device)):
        raise UserError(f"{where}: gpu={gpu!r} is not a GPU index or a device name such as 'cuda:0' or 'cpu'")
    if isinstance(gpu, int) and not 0 <= gpu < torch.cuda.device_count():
        raise UserError(f'{where}: gpu={gpu!r} names CUDA device {gpu}, but this machine and torch build have '
                        f"{torch.cuda.device_count()}: use gpu='cpu', or leave gpu out to choose automatically")
    name = f'cuda:{gpu}' if isinstance(gpu, int) else gpu
    try:
        chosen = resolve_device(name, where)
    except UserError as e:  # its sentence, naming the argument given
        raise UserError(str(e).replace(f'device={name!r}', f'gpu={gpu!r}')) from None
    if device is not None and resolve_device(device, where).torch_device != chosen.torch_device:
        raise UserError(f'{where}: gpu={gpu!r} and device={device!r} name different devices: give one of them')
    return name


class CifarLoader(airbench94.CifarLoader):
    """The original's CifarLoader: the training (train=True) or test split of the CIFAR-10 folder
    `path`, resident on the device, as the scripts' loader (an airbench94.CifarLoader). The folder is
    read as the scripts read --data-dir (the original's train.pt/test.pt, a cache, the official files,
    the archive, else a download). aug takes the original's dict (flip True/False, translate, cutout)
    and altflip chooses the alternating flip for flip=True; both are read at every epoch. gpu= is the
    original's (an index N: cuda:N; or a device name); device= the project's; neither: the best device."""

    def __init__(self, path, train=True, batch_size=500, aug=None, drop_last=None, shuffle=None, altflip=False,
                 gpu=None, *, device=None):
        where = 'CifarLoader'
        if not isinstance(path, (str, os.PathLike)):
            raise UserError(f'{where}: path={path!r} is not a folder name')
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f'{where}: path={os.fspath(path)!r} is a file, not a folder')
        for name, value in (('train', train), ('altflip', altflip)):
            if not isinstance(value, bool):
                raise UserError(f'{where}: {name}={value!r} must be True or False')
        for name, value in (('drop_last', drop_last), ('shuffle', shuffle)):
            if value is not None and not isinstance(value, bool):
                raise UserError(f'{where}: {name}={value!r} must be None, True or False')
        if aug is not None and not isinstance(aug, dict):
            raise UserError(f'{where}: aug={aug!r} is not a dict, e.g. dict(flip=True, translate=2)')
        with_overrides(airbench94, airbench94.hyp, {'opt.batch_size': ('batch_size', batch_size)}, where)
        dev = resolve_device(gpu_device(gpu, device, where), where)
        split = load_cifar10(os.fspath(path))[0]['train' if train else 'test']
        super().__init__(split, dev, int(batch_size), train=train, aug=aug, drop_last=drop_last, shuffle=shuffle)
        self.altflip = altflip
        self.data_dir = os.fspath(path)  # where the default test loader of a train function comes from


def check_loader(loader, name, where):
    """A loader the scripts can train on or evaluate: images (N, 3, H, W) and N int64 labels, none
    negative (check_labels compares them with the net's head)."""
    if not all(hasattr(loader, a) for a in ('images', 'labels', 'batch_size', 'dev', 'next_epoch', 'normalize')):
        raise UserError(f'{where}: {name} is not a loader: make one with airbench.CifarLoader (or pass None)')
    images, labels = loader.images, loader.labels
    if images.dim() != 4 or images.size(1) != 3:
        raise UserError(f'{where}: {name}.images has shape {tuple(images.shape)}, expected (N, 3, 32, 32)')
    if labels.shape != (len(images),) or labels.dtype != torch.int64:
        raise UserError(f'{where}: {name}.labels must be {len(images)} int64 labels, one per image '
                        f'(it has shape {tuple(labels.shape)}, dtype {labels.dtype})')
    if len(labels) and labels.min() < 0:
        raise UserError(f'{where}: {name}.labels must be class indices, none of them negative')


def check_labels(loader, classes, where):
    """The training labels fit the net's head of `classes` outputs (None: unknown)."""
    if classes is not None and len(loader.labels) and loader.labels.max() >= classes:
        raise UserError(f'{where}: train_loader.labels must be in 0..{classes - 1}, the classes of the net it '
                        f'trains (the largest is {int(loader.labels.max())})')


def build_net(script, base, where, widths, batchnorm_momentum, device):
    """The script's make_net with these widths and BatchNorm momentum, untrained, on the device."""
    if not isinstance(widths, dict) or set(widths) != set(base['net']['widths']):
        raise UserError(f"{where}: widths={widths!r} must be a dict of block1, block2 and block3")
    values = {f'net.widths.{block}': (f"widths['{block}']", width) for block, width in widths.items()}
    values['net.batchnorm_momentum'] = ('batchnorm_momentum', batchnorm_momentum)
    hyp = with_overrides(script, base, values, where)
    return resolve_device(device, where).prepare(script.make_net(hyp))


def run_training(script, base, where, names, args, default_make_net=None):
    """The adapter behind every train function: args are its arguments, names maps those that are
    hyperparameters to their keys. Returns the trained net."""
    train_loader, test_loader, run, seed = args['train_loader'], args['test_loader'], args['run'], args['seed']
    if run not in (-1, 'warmup') and (isinstance(run, bool) or not isinstance(run, int)):
        raise UserError(f"{where}: run={run!r} must be an integer (or -1 / 'warmup' for a warmup)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise UserError(f'{where}: seed={seed!r} must be an integer or None')
    for name in ('callback', 'make_net'):
        if args.get(name) is not None and not callable(args[name]):
            raise UserError(f'{where}: {name}={args[name]!r} is not callable')
    values = {key: (arg, args[arg]) for arg, key in names.items()}
    warmup, data = run in (-1, 'warmup'), None

    if train_loader is None:  # the script's own loaders, on the data of the default folder
        dev = resolve_device(args['device'], where)
        hyp = with_overrides(script, base, values, where)
        data = load_cifar10(default_data_dir())[0]
        train_loader, default_test = script.make_loaders(hyp, dev, data)
    else:  # the caller's loader: its batch size is the run's, as in the original
        check_loader(train_loader, 'train_loader', where)
        dev = train_loader.dev
        if args['device'] is not None and resolve_device(args['device'], where).torch_device != dev.torch_device:
            raise UserError(f"{where}: device={args['device']!r}, but train_loader's data is on {dev.torch_device}")
        hyp = with_overrides(script, base, {**values, 'opt.batch_size': ('train_loader.batch_size',
                                                                         train_loader.batch_size)}, where)
        default_test = None
    n, batch_size = len(train_loader.images), hyp['opt']['batch_size']
    if n < batch_size:
        raise UserError(f'{where}: the training loader has {n} images, fewer than its batch size {batch_size}, '
                        'so there is no step to train')
    if warmup:  # the original's warmup: one training step, no evaluation
        run, hyp['opt']['train_epochs'] = 'warmup', 0.5 / (n // batch_size)
    elif test_loader is None and args['verbose']:  # the table's val_acc needs a test set, as the original's
        test_loader = default_test if default_test is not None else script.CifarLoader(  # as make_loaders' own
            load_cifar10(getattr(train_loader, 'data_dir', default_data_dir()))[0]['test'], dev, 2000, train=False)
    if test_loader is not None:
        check_loader(test_loader, 'test_loader', where)
        if test_loader.dev.torch_device != dev.torch_device:
            raise UserError(f'{where}: test_loader is on {test_loader.dev.torch_device}, train_loader on {dev.torch_device}')

    model, run_seed = None, seed
    make_net = args.get('make_net')
    if make_net is not None and make_net is not default_make_net:  # the caller's net, built as train() builds its own
        if seed is not None:
            torch.manual_seed(seed)
        model, run_seed = make_net(), None
        if not isinstance(model, torch.nn.Module):
            raise UserError(f'{where}: make_net() returned {type(model).__name__}, not a torch.nn.Module')
    if args['train_loader'] is not None:  # the head: the net's last layer with out_features, else the script's
        heads = [m.out_features for m in model.modules() if hasattr(m, 'out_features')] if model is not None else [
            len(train_loader.classes) if script in HEAD_FROM_CLASSES else airbench94.NUM_CLASSES]
        check_labels(train_loader, heads[-1] if heads else None, where)
    if args['verbose'] and (run == 0 or warmup):
        script.print_row({c: c for c in script.COLUMNS}, rule_before=True, rule_after=True)
    kwargs = {} if model is None else {'model': model}
    try:
        model, _ = script.train(hyp, dev, train_loader, test_loader, seed=run_seed, run=run,
                                verbose=bool(args['verbose']), callback=args['callback'], **kwargs)
    except script.TrainingDiverged as e:  # one exception class for every train function
        raise e if script is airbench94 else TrainingDiverged(*e.args) from None
    return model


def make_net93(widths=dict(HYP93['net']['widths']), batchnorm_momentum=HYP93['net']['batchnorm_momentum'],
               device=None):
    """airbench94.make_net with train93's widths: an untrained net on the device (None: auto)."""
    return build_net(airbench94, HYP93, 'make_net93', widths, batchnorm_momentum, device)


def make_net94(widths=dict(airbench94.hyp['net']['widths']),
               batchnorm_momentum=airbench94.hyp['net']['batchnorm_momentum'], device=None):
    """airbench94.make_net: an untrained net on the device (None: auto)."""
    return build_net(airbench94, airbench94.hyp, 'make_net94', widths, batchnorm_momentum, device)


def make_net95(widths=dict(airbench95.hyp['net']['widths']),
               batchnorm_momentum=airbench95.hyp['net']['batchnorm_momentum'], device=None):
    """airbench95.make_net: an untrained net on the device (None: auto)."""
    return build_net(airbench95, airbench95.hyp, 'make_net95', widths, batchnorm_momentum, device)


def make_net96(widths=dict(airbench96_paper.hyp['net']['widths']),
               batchnorm_momentum=airbench96_paper.hyp['net']['batchnorm_momentum'], device=None):
    """airbench96_paper.make_net (the paper's airbench96, the original's make_net96): an untrained net
    on the device (None: auto)."""
    return build_net(airbench96_paper, airbench96_paper.hyp, 'make_net96', widths, batchnorm_momentum, device)


def make_net96_later(widths=dict(airbench96.hyp['net']['widths']),
                     batchnorm_momentum=airbench96.hyp['net']['batchnorm_momentum'], device=None):
    """airbench96.make_net (the repository's later airbench96): an untrained net on the device (None: auto)."""
    return build_net(airbench96, airbench96.hyp, 'make_net96_later', widths, batchnorm_momentum, device)


_o93, _o94, _o95, _o96 = HYP93['opt'], airbench94.hyp['opt'], airbench95.hyp['opt'], airbench96_paper.hyp['opt']
_o96l = airbench96.hyp['opt']
_om, _of, _os = airbench94_muon.hyp['opt'], airbench96_faster.hyp['opt'], airbench94_speedrun.hyp['opt']
_t = {name: s.hyp['net']['tta_level'] for name, s in (('94', airbench94), ('95', airbench95), ('96', airbench96_paper),
                                                      ('96l', airbench96), ('m', airbench94_muon),
                                                      ('f', airbench96_faster))}
_SGD_NO_SCHEDULE = {k: v for k, v in SGD_ARGS.items() if k not in ('lr_peak', 'lr_end')}


def train93(train_loader=None, epochs=_o93['train_epochs'], label_smoothing=_o93['label_smoothing'],
            learning_rate=_o93['lr'], bias_scaler=_o93['bias_scaler'], momentum=_o93['momentum'],
            weight_decay=_o93['weight_decay'], whiten_bias_epochs=_o93['whiten_bias_epochs'], tta_level=_t['94'],
            make_net=make_net93, run=0, verbose=True, *, seed=None, device=None, test_loader=None, callback=None):
    """airbench94.train with 11 epochs and widths 64/128/128; returns the trained net."""
    return run_training(airbench94, HYP93, 'train93', _SGD_NO_SCHEDULE, locals(), make_net93)


def train94(train_loader=None, epochs=_o94['train_epochs'], label_smoothing=_o94['label_smoothing'],
            learning_rate=_o94['lr'], bias_scaler=_o94['bias_scaler'], momentum=_o94['momentum'],
            weight_decay=_o94['weight_decay'], whiten_bias_epochs=_o94['whiten_bias_epochs'], tta_level=_t['94'],
            make_net=make_net94, run=0, verbose=True, *, seed=None, device=None, test_loader=None, callback=None):
    """airbench94.train; returns the trained net."""
    return run_training(airbench94, airbench94.hyp, 'train94', _SGD_NO_SCHEDULE, locals(), make_net94)


def train95(train_loader=None, epochs=_o95['train_epochs'], label_smoothing=_o95['label_smoothing'],
            learning_rate=_o95['lr'], bias_scaler=_o95['bias_scaler'], momentum=_o95['momentum'],
            weight_decay=_o95['weight_decay'], whiten_bias_epochs=_o95['whiten_bias_epochs'], tta_level=_t['95'],
            make_net=make_net95, run=0, verbose=True, *, seed=None, device=None, test_loader=None, callback=None):
    """airbench95.train; returns the trained net."""
    return run_training(airbench95, airbench95.hyp, 'train95', _SGD_NO_SCHEDULE, locals(), make_net95)


def train96(train_loader=None, epochs=_o96['train_epochs'], label_smoothing=_o96['label_smoothing'],
            learning_rate=_o96['lr'], bias_scaler=_o96['bias_scaler'], momentum=_o96['momentum'],
            weight_decay=_o96['weight_decay'], whiten_bias_epochs=_o96['whiten_bias_epochs'], tta_level=_t['96'],
            make_net=make_net96, run=0, verbose=True, *, seed=None, device=None, test_loader=None, callback=None):
    """airbench96_paper.train (the paper's airbench96, the original's train96); returns the trained net."""
    return run_training(airbench96_paper, airbench96_paper.hyp, 'train96', _SGD_NO_SCHEDULE, locals(), make_net96)


def train96_later(train_loader=None, epochs=_o96l['train_epochs'], label_smoothing=_o96l['label_smoothing'],
                  learning_rate=_o96l['lr'], bias_scaler=_o96l['bias_scaler'], momentum=_o96l['momentum'],
                  weight_decay=_o96l['weight_decay'], whiten_bias_epochs=_o96l['whiten_bias_epochs'],
                  tta_level=_t['96l'], make_net=make_net96_later, run=0, verbose=True, lr_peak=_o96l['lr_peak_at'],
                  lr_end=_o96l['lr_end'], *, seed=None, device=None, test_loader=None, callback=None):
    """airbench96.train (the repository's later airbench96); returns the trained net. lr_peak and lr_end
    take effect (the repository's unreleased version of this function accepted and ignored them)."""
    return run_training(airbench96, airbench96.hyp, 'train96_later', SGD_ARGS, locals(), make_net96_later)


def train94_muon(train_loader=None, epochs=_om['train_epochs'], label_smoothing=_om['label_smoothing'],
                 filter_lr=_om['filter_lr'], filter_momentum=_om['filter_momentum'], bias_lr=_om['bias_lr'],
                 head_lr=_om['head_lr'], momentum=_om['momentum'], weight_decay=_om['weight_decay'],
                 whiten_bias_epochs=_om['whiten_bias_epochs'], tta_level=_t['m'], run=0, verbose=True, *,
                 seed=None, device=None, test_loader=None, callback=None):
    """airbench94_muon.train; returns the trained net."""
    return run_training(airbench94_muon, airbench94_muon.hyp, 'train94_muon', MUON_ARGS, locals())


def train94_speedrun(train_loader=None, epochs=_os['train_epochs'], label_smoothing=_os['label_smoothing'],
                     filter_lr=_os['filter_lr'], filter_momentum=_os['filter_momentum'], bias_lr=_os['bias_lr'],
                     head_lr=_os['head_lr'], momentum=_os['momentum'], weight_decay=_os['weight_decay'],
                     whiten_bias_epochs=_os['whiten_bias_epochs'],
                     tta_fraction=airbench94_speedrun.hyp['net']['tta_fraction'], run=0, verbose=True, *,
                     seed=None, device=None, test_loader=None, callback=None):
    """airbench94_speedrun.train (its selective TTA on the test loader); returns the trained net."""
    return run_training(airbench94_speedrun, airbench94_speedrun.hyp, 'train94_speedrun', SPEEDRUN_ARGS, locals())


def train96_faster(train_loader=None, epochs=_of['train_epochs'], label_smoothing=_of['label_smoothing'],
                   learning_rate=_of['lr'], bias_scaler=_of['bias_scaler'], momentum=_of['momentum'],
                   weight_decay=_of['weight_decay'], whiten_bias_epochs=_of['whiten_bias_epochs'],
                   tta_level=_t['f'], batch_size_masked=_of['batch_size_masked'], proxy_every=_of['proxy_every'],
                   run=0, verbose=True, lr_peak=_of['lr_peak_at'], lr_end=_of['lr_end'], *,
                   seed=None, device=None, test_loader=None, callback=None):
    """airbench96_faster.train (the loader's batch size is the proxy's stream batch); returns the main net."""
    return run_training(airbench96_faster, airbench96_faster.hyp, 'train96_faster', FASTER_ARGS, locals())


def warmup93(*args, **kwargs):
    """train93(..., run=-1): one training step, no evaluation (docs/package.md)."""
    return train93(*args, run=-1, **kwargs)


def warmup94(*args, **kwargs):
    """train94(..., run=-1): one training step, no evaluation."""
    return train94(*args, run=-1, **kwargs)


def warmup95(*args, **kwargs):
    """train95(..., run=-1): one training step, no evaluation."""
    return train95(*args, run=-1, **kwargs)


def warmup96(*args, **kwargs):
    """train96(..., run=-1): one training step, no evaluation."""
    return train96(*args, run=-1, **kwargs)


def warmup96_later(*args, **kwargs):
    """train96_later(..., run=-1): one training step, no evaluation."""
    return train96_later(*args, run=-1, **kwargs)


def warmup94_muon(*args, **kwargs):
    """train94_muon(..., run=-1): one training step, no evaluation."""
    return train94_muon(*args, run=-1, **kwargs)


def warmup94_speedrun(*args, **kwargs):
    """train94_speedrun(..., run=-1): one training step, no evaluation (not the script's noise warmup)."""
    return train94_speedrun(*args, run=-1, **kwargs)


def warmup96_faster(*args, **kwargs):
    """train96_faster(..., run=-1): one training step, no evaluation."""
    return train96_faster(*args, run=-1, **kwargs)


__all__ = ['CifarLoader', 'infer', 'evaluate', 'load_cifar10', 'Device', 'UserError', 'TrainingDiverged',
           'make_net93', 'make_net94', 'make_net95', 'make_net96', 'make_net96_later', 'train93', 'train94', 'train95',
           'train96', 'train96_later', 'train94_muon', 'train94_speedrun', 'train96_faster', 'warmup93', 'warmup94',
           'warmup95', 'warmup96', 'warmup96_later', 'warmup94_muon', 'warmup94_speedrun', 'warmup96_faster']

# The original's modules, imported with the package as the original's are (airbench.utils works after
# `import airbench`); last, since they take their names from this one.
from . import utils, lib_airbench93, lib_airbench94, lib_airbench95, lib_airbench96  # noqa: E402, F401
