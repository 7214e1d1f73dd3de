"""legacy/cifar10_fast.py: Page's "bag of tricks" ResNet (cifar10-fast, 2019), 94% in 10 epochs.

Published (David Page's; not ours): 94.1% test accuracy with mirror TTA after 10 epochs, 26 s per
run on a V100; the original airbench ablation table lists 14.9 A100-seconds and 1144 TFLOPs per run.
Ours: 91.20% in one CPU run on the JPEG copy (logs/cifar10_fast-20261201-143931-e350f0d4).
Parent: none in this project; hlb_cifar10.py started from it. Facts and what this reproduction
changes: legacy/README.md, "Fact sheet 1" and "What the reproductions keep and change".

    python legacy/cifar10_fast.py                            # warmup + 10 timed runs
    python legacy/cifar10_fast.py --runs 1 --no-warmup       # one run (CPU time: legacy/README.md)
    python legacy/cifar10_fast.py --set opt.train_epochs=2   # any hyperparameter (--help)

Needs torch (numpy to read the official CIFAR-10 files, torchvision only to download them). Data and
logs: docs/data.md and docs/logs.md.
"""

#############################################
#              Hyperparameters              #
#############################################

# The original sums the loss over the batch and gives PyTorch's SGD lr / batch_size and
# weight_decay x batch_size; 'lr' and 'weight_decay' below are the equivalent values for a
# batch-mean loss (the same updates), as the fact sheet states them.
hyp = {
    'opt': {
        'train_epochs': 10.0,      # epochs of floor(50000 / 512) = 97 steps -> 970 steps
        'batch_size': 512,         # examples per step
        'lr': 1.0,                 # peak learning rate, for a batch-mean loss
        'momentum': 0.9,           # Nesterov momentum
        'weight_decay': 5e-4,      # for a batch-mean loss: each step decays by lr x weight_decay
        'bias_scaler': 64.0,       # BatchNorm biases: lr x 64 and weight decay / 64 (the same decay per step)
        'label_smoothing': 0.2,
        'lr_peak_epoch': 2.0,      # lr multiplier: 0 at epoch 0, linear to 1.0 at this epoch ...
        'lr_end_epoch': 8.0,       # ... then linear to lr_end at this epoch, held there to the end
        'lr_end': 0.1,
        'ema_every': 5,            # steps between EMA updates, counted within each epoch: after steps 1, 6, ..., 96
        'ema_momentum': 0.99,      # per step: every update uses rho = ema_momentum**ema_every
    },
    'aug': {
        'flip': 'random',          # 'random' (p=0.5 per image per epoch, the original), 'alternating' or 'none'
        'translate': 4,            # pixels of reflect-padded random translation
    },
    'net': {
        'widths': {'prep': 64, 'layer1': 128, 'layer2': 256, 'layer3': 512},  # output channels
        'ghost_splits': 16,        # training BatchNorm statistics per split of batch_size / 16 = 32 images
        'batchnorm_momentum': 0.1, # PyTorch's convention: the weight of the new batch in the running stats
        'batchnorm_eps': 1e-5,
        'celu_alpha': 0.3,
        'scaling_factor': 1 / 16,  # multiplies the logits
        'whiten_images': 10000,    # training images whose 3x3 patches initialise the whitening conv
        'whiten_eps': 1e-2,        # added to the patch second-moment eigenvalues
        'tta_level': 1,            # test-time augmentation: 0 none, 1 mirror (the original), 2 mirror + 2 translations
    },
}

#############################################
#                   Setup                   #
#############################################
# What the method needs before it starts: the errors it raises, the device with its number formats
# and clock, the timer, the per-epoch table and the FLOPs counter. The same in every script.

#=== shared: setup
import contextlib
import math
import os
import sys
import time
from math import ceil

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10


class UserError(ValueError):
    """Bad input (a flag, a hyperparameter, a data file, a path): one sentence, exit status 2."""


class TrainingDiverged(ArithmeticError):
    """The training loss became NaN or infinite; the message names the step. Exit status 1."""


def require(ok, key, value, rule):
    if not ok:
        raise UserError(f'--set {key}={value!r} is out of range: it {rule}')


class Device:
    """The accelerator and its number formats, resolved once. cuda (the record path): fp16
    weights and activations, BatchNorm in fp32, channels_last, cudnn.benchmark, CUDA events.
    cpu: fp32 weights, bf16 autocast around the forward pass only (around backward and the
    optimizer step too, learning stalled at chance), channels_last; fp32 throughout without fast
    bf16. mps: fp32 weights, fp16 autocast forward, contiguous layout. Off CUDA the clock is
    perf_counter, read after the device has finished its queued work."""

    def __init__(self, name='auto', index=0):
        available = {'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available(), 'cpu': True}
        if name == 'auto':
            name = next(n for n in ('cuda', 'mps', 'cpu') if available[n])
        if not available[name]:
            raise UserError(f'--device {name} was asked for, but this machine and torch build have no '
                            f'{name.upper()}: use --device auto or cpu')
        self.type, self.torch_device, self.note = name, torch.device(name), ''
        if name == 'cuda':  # one GPU per process: torchrun's local rank picks it
            if index >= torch.cuda.device_count():
                raise UserError(f'process {index} of this node needs GPU {index}, but only '
                                f'{torch.cuda.device_count()} are visible: start at most that many per node')
            self.torch_device = torch.device('cuda', index)
            torch.cuda.set_device(self.torch_device)
        self.memory_format = torch.contiguous_format if name == 'mps' else torch.channels_last
        self.model_dtype = self.data_dtype = torch.float16 if name == 'cuda' else torch.float32
        self.autocast_dtype = {'cuda': None, 'mps': torch.float16}.get(name, torch.bfloat16)
        if name == 'cuda':
            torch.backends.cudnn.benchmark = True
        elif name == 'cpu' and not (torch.backends.mkldnn.is_available()
                                    and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            self.autocast_dtype, self.note = None, 'this CPU has no fast bf16, so it trains in fp32 (slower)'

    def prepare(self, net):
        """Moves a freshly built net to the device in its training formats (BatchNorm in fp32)."""
        net = net.to(self.torch_device).to(self.model_dtype).to(memory_format=self.memory_format)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.float()
        return net

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.type, dtype=self.autocast_dtype)

    def start_clock(self):
        if self.type != 'cuda':
            return self.read_clock(0.0)
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        return start

    def read_clock(self, start):
        """Seconds since start_clock(), after all queued work has finished."""
        if self.type == 'cuda':
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize()
            return 1e-3 * start.elapsed_time(end)
        if self.type == 'mps':
            torch.mps.synchronize()
        return time.perf_counter() - start


class Timer:
    """Sums the seconds spent inside `with timer:` blocks; everything else is untimed."""

    def __init__(self, dev):
        self.dev, self.seconds = dev, 0.0

    def __enter__(self):
        self.start = self.dev.start_clock()
        return self

    def __exit__(self, *exc):
        self.seconds += self.dev.read_clock(self.start)


def say(text):
    """print(), except that once stdout is closed (`| head`) the rest goes to /dev/null: the runs go on."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


COLUMNS = ('run', 'epoch', 'train_loss', 'train_acc', 'val_acc', 'tta_val_acc', 'time_seconds')


def print_row(cells, rule_before=False, rule_after=False):
    """One fixed-width row of the per-epoch table; cells maps column names to values."""
    assert set(cells) <= set(COLUMNS), set(cells) - set(COLUMNS)
    def fmt(value):
        return '' if value is None else f'{value:.4f}' if isinstance(value, float) else str(value)
    line = '| ' + ' | '.join(fmt(cells.get(c)).rjust(max(len(c), 6)) for c in COLUMNS) + ' |'
    rows, rule = [line], '-' * len(line)
    if rule_before:
        rows.insert(0, rule)
    if rule_after:
        rows.append(rule)
    say('\n'.join(rows))


def count_flops(fn):
    """FLOPs of fn() as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode  # it imports sympy: only when counting
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
#=== end shared: setup

import copy  # the EMA keeps a copy of the net


def check_hyp(hyp):
    """Rejects values the method cannot run with (types were checked when parsing --set)."""
    o, a, n = hyp['opt'], hyp['aug'], hyp['net']
    require(o['train_epochs'] > 0, 'opt.train_epochs', o['train_epochs'], 'must be positive')
    require(o['batch_size'] >= 1, 'opt.batch_size', o['batch_size'], 'must be at least 1')
    require(o['lr'] > 0, 'opt.lr', o['lr'], 'must be positive')
    require(0 <= o['momentum'] < 1, 'opt.momentum', o['momentum'], 'must be in [0, 1)')
    require(o['weight_decay'] >= 0, 'opt.weight_decay', o['weight_decay'], 'must be >= 0')
    require(o['bias_scaler'] > 0, 'opt.bias_scaler', o['bias_scaler'], 'must be positive')
    require(0 <= o['label_smoothing'] <= 1, 'opt.label_smoothing', o['label_smoothing'], 'must be in [0, 1]')
    require(o['lr_peak_epoch'] > 0, 'opt.lr_peak_epoch', o['lr_peak_epoch'], 'must be positive')
    require(o['lr_end_epoch'] > o['lr_peak_epoch'], 'opt.lr_end_epoch', o['lr_end_epoch'],
            'must come after opt.lr_peak_epoch')
    require(o['lr_end'] >= 0, 'opt.lr_end', o['lr_end'], 'must be >= 0')
    require(o['ema_every'] >= 1, 'opt.ema_every', o['ema_every'], 'must be at least 1')
    require(0 <= o['ema_momentum'] <= 1, 'opt.ema_momentum', o['ema_momentum'], 'must be in [0, 1]')
    require(a['flip'] in ('alternating', 'random', 'none'), 'aug.flip', a['flip'], "must be 'alternating', 'random' or 'none'")
    require(0 <= a['translate'] <= 8, 'aug.translate', a['translate'], 'must be in [0, 8] pixels')
    for block, width in n['widths'].items():
        require(width >= 1, f'net.widths.{block}', width, 'must be at least 1')
    require(n['ghost_splits'] >= 1, 'net.ghost_splits', n['ghost_splits'], 'must be at least 1')
    require(o['batch_size'] % n['ghost_splits'] == 0, 'net.ghost_splits', n['ghost_splits'],
            f"must divide opt.batch_size ({o['batch_size']})")
    require(0 <= n['batchnorm_momentum'] <= 1, 'net.batchnorm_momentum', n['batchnorm_momentum'], 'must be in [0, 1]')
    require(n['batchnorm_eps'] > 0, 'net.batchnorm_eps', n['batchnorm_eps'], 'must be positive')
    require(n['celu_alpha'] > 0, 'net.celu_alpha', n['celu_alpha'], 'must be positive')
    require(n['whiten_images'] >= 1, 'net.whiten_images', n['whiten_images'], 'must be at least 1')
    require(n['whiten_eps'] > 0, 'net.whiten_eps', n['whiten_eps'], 'must be positive')
    require(n['tta_level'] in (0, 1, 2), 'net.tta_level', n['tta_level'], 'must be 0, 1 or 2')

#############################################
#       Data loading and augmentation       #
#############################################

#=== shared: loader
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def batch_flip_lr(images, generator=None):
    """Mirrors a random half of the images."""
    flip = torch.rand(len(images), device=images.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def batch_crop(images, size, generator=None):
    """A random size x size crop of each (padded) image: an independent shift in [-r, r]
    per axis per image, r = (side - size) // 2, drawn as one (N, 2) randint (rows, columns);
    all crops are one gather."""
    n, c, r = len(images), images.size(1), (images.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, size=(n, 2), device=images.device, generator=generator)
    offsets = torch.arange(size, device=images.device)
    rows = (r + shifts[:, 0]).view(n, 1, 1, 1) + offsets.view(1, 1, size, 1)
    cols = (r + shifts[:, 1]).view(n, 1, 1, 1) + offsets.view(1, 1, 1, size)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    return images[batch, torch.arange(c, device=images.device).view(1, c, 1, 1), rows, cols]


def batch_color_jitter(images, brightness, contrast, generator=None):
    """Per image, one brightness shift b uniform in [-brightness, brightness] and one contrast
    factor g uniform in [1 - contrast, 1 + contrast] (drawn in that order, in the images' dtype),
    shared by all channels and pixels: x -> (x + b) * g, shift first, then scale."""
    shape = (len(images), 1, 1, 1)
    shift = (torch.rand(shape, device=images.device, dtype=images.dtype, generator=generator) * 2 - 1) * brightness
    scale = (torch.rand(shape, device=images.device, dtype=images.dtype, generator=generator) * 2 - 1) * contrast + 1
    return (images + shift) * scale


def batch_cutout(images, size, generator=None):
    """Zeroes one size x size square per image, its top-left corner uniform over the positions
    that keep it inside the image."""
    n, _, h, w = images.shape
    top = torch.randint(0, h - size + 1, size=(n, 1, 1, 1), device=images.device, generator=generator)
    left = torch.randint(0, w - size + 1, size=(n, 1, 1, 1), device=images.device, generator=generator)
    ys = torch.arange(h, device=images.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=images.device).view(1, 1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill(inside, 0)


class CifarLoader:
    """The whole split resident on the device; batches are index gathers, no workers.

    split: uint8 NHWC `images`, int64 `labels` and `classes` (load_cifar10() reads them from a data
    folder). `images` (NCHW, in [0, 1], not yet normalised) and `labels` may be replaced, by a
    subset say, until the first epoch begins; len() is the number of batches per epoch.
    aug: flip ('alternating': epoch 0 mirrors a random half, every later epoch mirrors every
    image relative to the epoch before; 'random': each image mirrored with p=0.5, drawn anew every
    epoch; 'none'), translate r (reflect-pad r once, then a random crop per image per epoch),
    brightness, contrast (batch_color_jitter per image per epoch, after cropping and flipping, in
    normalised space; off unless one of them is above 0, and then both are drawn), cutout s (one
    zeroed s x s square per image per epoch, after the jitter, in normalised space). Training
    loaders (train=True) reshuffle every epoch and drop the last partial batch, unless shuffle or
    drop_last say otherwise. Random draws come from `generator` (a torch.Generator on the
    device), else torch's global RNG.
    """

    def __init__(self, split, dev, batch_size=500, train=True, aug=None, drop_last=None, shuffle=None,
                 generator=None):
        self.dev, self.generator, self.epoch = dev, generator, 0
        self.images = split['images'].to(dev.torch_device).permute(0, 3, 1, 2)
        self.images = (self.images.to(dev.data_dtype) / 255).contiguous(memory_format=dev.memory_format)
        self.labels = split['labels'].to(dev.torch_device)
        self.classes = split['classes']
        self.aug = dict(aug or {})
        unknown = set(self.aug) - {'flip', 'translate', 'brightness', 'contrast', 'cutout'}
        if unknown or self.aug.get('flip', 'none') not in ('alternating', 'random', 'none'):
            raise ValueError(f'bad augmentation {self.aug}: use flip (alternating, random, none), translate, '
                             'brightness, contrast, cutout')
        self.batch_size = batch_size
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.mean = torch.tensor(CIFAR_MEAN, device=dev.torch_device, dtype=dev.data_dtype).view(1, 3, 1, 1)
        self.std = torch.tensor(CIFAR_STD, device=dev.torch_device, dtype=dev.data_dtype).view(1, 3, 1, 1)

    def __setattr__(self, name, value):
        if name in ('images', 'labels') and self.epoch > 0:  # epoch 0 has prepared (flipped, padded) the images
            raise ValueError(f'the loader\'s {name} can be replaced only before its first epoch begins')
        super().__setattr__(name, value)

    def normalize(self, images):
        return (images - self.mean) / self.std

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else ceil(n / self.batch_size)

    def next_epoch(self):
        """Augments every image for the coming epoch; returns (images, labels, order)."""
        flip, pad, cutout = self.aug.get('flip', 'none'), self.aug.get('translate', 0), self.aug.get('cutout', 0)
        brightness, contrast = self.aug.get('brightness', 0), self.aug.get('contrast', 0)
        if self.epoch == 0:
            base = self.normalize(self.images)
            if flip == 'alternating':
                base = batch_flip_lr(base, self.generator)
            self.base = F.pad(base, (pad,) * 4, 'reflect') if pad > 0 else base
        images = batch_crop(self.base, self.images.size(-1), self.generator) if pad > 0 else self.base
        if flip == 'alternating' and self.epoch % 2 == 1:
            images = images.flip(-1)
        elif flip == 'random':
            images = batch_flip_lr(images, self.generator)
        if brightness > 0 or contrast > 0:
            images = batch_color_jitter(images, brightness, contrast, self.generator)
        if cutout > 0:
            images = batch_cutout(images, cutout, self.generator)
        images = images.contiguous(memory_format=self.dev.memory_format)
        self.epoch += 1
        n = len(images)
        if self.shuffle:
            order = torch.randperm(n, device=images.device, generator=self.generator)
        else:
            order = torch.arange(n, device=images.device)
        return images, self.labels, order

    def __iter__(self):
        images, labels, order = self.next_epoch()
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield images[idx], labels[idx]
#=== end shared: loader

# The original normalises with these per-channel statistics on the 0-255 scale; airbench's
# CIFAR_MEAN / CIFAR_STD above are the same numbers rounded to 4 digits.
PAGE_MEAN = (125.31, 122.95, 113.87)
PAGE_STD = (62.99, 62.09, 66.70)


class PageLoader(CifarLoader):
    """The shared loader with the original's normalisation constants."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mean, self.std = (torch.tensor(v, device=self.dev.torch_device).view(1, 3, 1, 1).div(255).to(self.dev.data_dtype)
                               for v in (PAGE_MEAN, PAGE_STD))

#############################################
#                  Network                  #
#############################################

class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from `splits` equal parts of the batch, each with
    its own running statistics (row k of running_mean and running_var). The scale is frozen at 1;
    only the bias learns. momentum is PyTorch's (the weight of the new batch in the running stats).
    Split k is the k-th run of batch_size / splits images of the batch (the original interleaves
    them, images k, k + splits, ...: the same partition in law, the batches being shuffled); each
    part keeps the input's memory layout, so channels_last needs no copy.
    Eval, as the original's: when the module leaves training mode, every split's statistics are
    replaced by their mean, and eval normalises with split 0's. The EMA copy switches to eval once,
    at its first evaluation, and stays there while its statistics keep averaging the live net's
    per split, so from the second evaluation on it normalises with split 0's average alone."""

    def __init__(self, num_features, splits, momentum, eps):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.splits = splits
        self.weight.requires_grad = False
        self.register_buffer('running_mean', torch.zeros(splits, num_features))
        self.register_buffer('running_var', torch.ones(splits, num_features))

    def train(self, mode=True):
        if self.training and not mode:
            with torch.no_grad():
                for stat in (self.running_mean, self.running_var):
                    stat.copy_(stat.mean(0, keepdim=True).expand_as(stat))
        return super().train(mode)

    def forward(self, x):
        if self.training:
            parts = x.split(len(x) // self.splits)
            return torch.cat([F.batch_norm(part, self.running_mean[k], self.running_var[k], self.weight, self.bias,
                                           True, self.momentum, self.eps) for k, part in enumerate(parts)])
        return F.batch_norm(x, self.running_mean[0], self.running_var[0], self.weight, self.bias,
                            False, 0.0, self.eps)


class ConvBN(nn.Module):
    """3x3 conv (no bias, PyTorch's default init) -> [MaxPool2d(2)] -> ghost BatchNorm -> CELU."""

    def __init__(self, channels_in, channels_out, net, pool=False):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm = GhostBatchNorm(channels_out, net['ghost_splits'], net['batchnorm_momentum'], net['batchnorm_eps'])
        self.activ = nn.CELU(net['celu_alpha'])

    def forward(self, x):
        return self.activ(self.norm(self.pool(self.conv(x))))


class Residual(nn.Module):
    """x + (conv-BN-CELU twice)(x)."""

    def __init__(self, channels, net):
        super().__init__()
        self.res1, self.res2 = ConvBN(channels, channels, net), ConvBN(channels, channels, net)

    def forward(self, x):
        return x + self.res2(self.res1(x))


#=== shared: mul
class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale
#=== end shared: mul


def make_net(hyp):
    """The network in fp32 on the current default device; Device.prepare() moves it."""
    n = hyp['net']
    widths = n['widths']
    whiten_width = 3 * 3**2  # 27 filters: every direction of a 3x3x3 patch
    net = nn.Sequential(
        nn.Conv2d(3, whiten_width, kernel_size=3, padding=1, bias=False),  # set by init_whitening_conv()
        nn.Conv2d(whiten_width, widths['prep'], kernel_size=1, bias=False),
        GhostBatchNorm(widths['prep'], n['ghost_splits'], n['batchnorm_momentum'], n['batchnorm_eps']),
        nn.CELU(n['celu_alpha']),
        ConvBN(widths['prep'], widths['layer1'], n, pool=True),
        Residual(widths['layer1'], n),
        ConvBN(widths['layer1'], widths['layer2'], n, pool=True),
        ConvBN(widths['layer2'], widths['layer3'], n, pool=True),
        Residual(widths['layer3'], n),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Linear(widths['layer3'], NUM_CLASSES, bias=False),
        Mul(n['scaling_factor']),
    )
    net[0].weight.requires_grad = False
    return net

#############################################
#       Whitening conv initialization       #
#############################################

def whitening_filters(images, eps, kernel_size=3, chunk=1000):
    """Eigenvectors of the uncentred second-moment matrix of every kernel_size^2 patch (stride 1,
    no padding) of the images, divided by (number of patches - 1) as the original does, each
    divided by sqrt(eigenvalue + eps), largest eigenvalue first. fp32, outside autocast; the
    upper triangle goes to eigh, as in the original. Summed over chunks of images to bound memory."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        c = images.size(1)
        moments, count = torch.zeros(c * kernel_size**2, c * kernel_size**2, device=images.device), 0
        for x in images.split(chunk):
            patches = x.float().unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # N, C, H', W', k, k
            patches = patches.transpose(1, 3).reshape(-1, c * kernel_size**2)  # rows in (C, k, k) order
            moments += patches.T @ patches
            count += len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(moments / (count - 1), UPLO='U')
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = eigenvectors / torch.sqrt(eigenvalues + eps).view(-1, 1)
        return filters.view(-1, c, kernel_size, kernel_size)


def init_whitening_conv(conv, images, eps):
    conv.weight.data.copy_(whitening_filters(images, eps, conv.kernel_size[0]))

#############################################
#        Exponential moving average         #
#############################################

class EMA:
    """A copy of the net holding the moving average of every float tensor of its state dict
    (parameters and BatchNorm running statistics): ema = rho x ema + (1 - rho) x current. Unlike
    lookahead, the live net is not touched; the copy is what gets evaluated."""

    def __init__(self, net):
        self.net = copy.deepcopy(net).requires_grad_(False)

    @torch.no_grad()
    def update(self, net, rho):
        ema = self.net.state_dict()
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                ema[k].mul_(rho).add_(v, alpha=1 - rho)

#############################################
#             Evaluation and TTA            #
#############################################

#=== shared: tta
def tta_logits(model, inputs, tta_level):
    """Logits of a batch under test-time augmentation (fp32).
    0: the image; 1: mean of the image and its mirror; 2: 0.5 x level 1 + 0.5 x the mean of
    level 1 on two 1-pixel translations (reflect-pad 1, crops at (0, 0) and (2, 2)),
    i.e. 6 views weighted 0.25, 0.25, 0.125 x 4."""
    def mirror(x):
        return 0.5 * model(x).float() + 0.5 * model(x.flip(-1)).float()
    if tta_level == 0:
        return model(inputs).float()
    if tta_level == 1:
        return mirror(inputs)
    side = inputs.size(-1)
    padded = F.pad(inputs, (1,) * 4, 'reflect')
    translated = [padded[:, :, 0:side, 0:side], padded[:, :, 2:side + 2, 2:side + 2]]
    return 0.5 * mirror(inputs) + 0.5 * torch.stack([mirror(x) for x in translated]).mean(0)


def infer(model, loader, tta_level=0, eval_batch_size=2000):
    """Logits for every image of the loader, in order, without augmentation other than TTA."""
    model.eval()
    images = loader.normalize(loader.images)
    with torch.no_grad(), loader.dev.autocast():
        return torch.cat([tta_logits(model, x, tta_level) for x in images.split(eval_batch_size)])


def evaluate(model, loader, tta_level=0):
    logits = infer(model, loader, tta_level)
    return (logits.argmax(1) == loader.labels).float().mean().item()
#=== end shared: tta

#############################################
#                  Training                 #
#############################################

#=== shared: steps
def train_steps(opt, n_train):
    """Optimizer steps of one run: floor(n_train / batch) per epoch, fractional epochs end mid-epoch."""
    return ceil(opt['train_epochs'] * (n_train // opt['batch_size']))
#=== end shared: steps


def lr_schedule(total_steps, steps_per_epoch, peak_epoch, end_epoch, end):
    """lr multiplier of optimizer step k = 1..total_steps at index k - 1 (the original evaluates
    its schedule at step k / steps_per_epoch epochs): piecewise linear through (0 epochs, 0),
    (peak_epoch, 1.0), (end_epoch, end), then held at end. One more entry for the scheduler's
    final step."""
    def at(epoch):
        if epoch <= peak_epoch:
            return epoch / peak_epoch
        if epoch <= end_epoch:
            return 1 + (end - 1) * (epoch - peak_epoch) / (end_epoch - peak_epoch)
        return end
    return [at((k + 1) / steps_per_epoch) for k in range(total_steps + 1)]


class PageNesterov(torch.optim.Optimizer):
    """The original's Nesterov SGD, whose momentum buffer holds lr-scaled steps. With the step's
    lr and d = gradient + weight_decay x w:  v = momentum x v - lr x d;  w = w - lr x d + momentum x v.
    PyTorch's SGD keeps the buffer of unscaled gradients (v = momentum x v + d) and steps
    w = w - lr x (d + momentum x v): the same while the lr is constant, but while it changes
    PyTorch's applies the current lr to the whole buffer (with a constant gradient on the default
    schedule, 1.45x the original's step at step 10, 1.38x at step 20, smaller when the lr falls)."""

    def __init__(self, params, lr, momentum, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for w in group['params']:
                if w.grad is None:
                    continue
                state = self.state[w]
                if 'momentum_buffer' not in state:
                    state['momentum_buffer'] = torch.zeros_like(w)
                v = state['momentum_buffer']
                dw = w.grad.add(w, alpha=group['weight_decay']).mul_(-group['lr'])
                v.mul_(group['momentum']).add_(dw)
                w.add_(dw.add_(v, alpha=group['momentum']))


def make_optimizer(model, opt):
    """The original's Nesterov SGD for the summed loss: lr / batch_size and weight_decay x
    batch_size (its values); BatchNorm biases get bias_scaler x the lr and 1 / bias_scaler x the
    weight decay."""
    lr, wd = opt['lr'] / opt['batch_size'], opt['weight_decay'] * opt['batch_size']
    norm_biases = [p for m in model.modules() if isinstance(m, GhostBatchNorm) for p in m.parameters() if p.requires_grad]
    ids = {id(p) for p in norm_biases}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [dict(params=norm_biases, lr=lr * opt['bias_scaler'], weight_decay=wd / opt['bias_scaler']),
              dict(params=others, lr=lr, weight_decay=wd)]
    return PageNesterov(groups, lr=lr, momentum=opt['momentum'], weight_decay=wd)


def make_loaders(hyp, dev, data):
    """Fresh loaders for one run: the training split augmented as hyp['aug'] says, the test split plain."""
    return (PageLoader(data['train'], dev, hyp['opt']['batch_size'], train=True, aug=hyp['aug']),
            PageLoader(data['test'], dev, 2000, train=False))


def train(hyp, dev, train_loader, test_loader=None, seed=None, run=0, verbose=True, callback=None, model=None):
    """One training run on the loaders' data; returns (the trained model, the run's record).

    seed, if given, seeds torch's generator first; model, if given, is the untrained net to train
    instead of make_net(hyp)'s. The record holds the final TTA accuracy and the plain one (None
    without a test loader), the timed seconds, the steps and the per-epoch history; verbose prints
    the per-epoch table; callback(model, epoch record), if given, runs after every epoch, untimed.
    Raises TrainingDiverged when the loss becomes NaN or infinite."""
    if seed is not None:
        torch.manual_seed(seed)
    o = hyp['opt']
    total_steps = train_steps(o, len(train_loader.images))
    train_loader.epoch = 0  # a loader may be trained on again: its epoch 0 prepares the images afresh

    model = dev.prepare(make_net(hyp) if model is None else model)
    optimizer = make_optimizer(model, o)
    schedule = lr_schedule(total_steps, len(train_loader), o['lr_peak_epoch'], o['lr_end_epoch'], o['lr_end'])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule[step])
    timer = Timer(dev)

    with timer:  # timing starts when the training data is first touched
        whiten_images = train_loader.normalize(train_loader.images[:hyp['net']['whiten_images']])
        init_whitening_conv(model[0], whiten_images, hyp['net']['whiten_eps'])
        ema = EMA(model)  # the average starts from the initial net, whitening included

    step, history, val_acc, tta_val_acc = 0, [], None, None
    for epoch in range(ceil(o['train_epochs'])):
        finite = []
        with timer:
            model.train()
            for i, (inputs, labels) in enumerate(train_loader):
                with dev.autocast():
                    outputs = model(inputs)
                loss = F.cross_entropy(outputs.float(), labels, label_smoothing=o['label_smoothing'], reduction='sum')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                finite.append(torch.isfinite(loss))
                step += 1
                if i % o['ema_every'] == 0:  # counted within the epoch, as the original: after its steps 1, 6, ...
                    ema.update(model, rho=o['ema_momentum']**o['ema_every'])
                if step >= total_steps:
                    break
        if not torch.stack(finite).all():
            bad = step - len(finite) + 1 + int(torch.stack(finite).logical_not().nonzero()[0])
            raise TrainingDiverged(f'the training loss became NaN or infinite at step {bad} of {total_steps} '
                                   f'(run {run}, epoch {epoch + 1})')
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        train_loss = loss.item() / len(labels)
        if test_loader is not None:
            val_acc = evaluate(ema.net, test_loader, tta_level=0)  # untimed, for the table only
        history.append({'epoch': epoch + 1, 'train_loss': train_loss, 'train_acc': train_acc, 'val_acc': val_acc})
        if verbose:
            print_row({'run': run if epoch == 0 else None, **history[-1], 'time_seconds': timer.seconds})
        if callback is not None:
            callback(ema.net, history[-1])

    if test_loader is not None:
        with timer:
            tta_val_acc = evaluate(ema.net, test_loader, tta_level=hyp['net']['tta_level'])
    if verbose:
        print_row({'epoch': 'eval', 'tta_val_acc': tta_val_acc, 'time_seconds': timer.seconds}, rule_after=True)
    return ema.net, {'run': run, 'seed': seed, 'tta_val_acc': tta_val_acc, 'val_acc': val_acc,
                   'time_seconds': timer.seconds, 'steps': step, 'epochs': history}


def flops_per_run(hyp, n_train, n_test):
    """FLOPs of one run: every training step plus the final TTA pass of the EMA net. Counted on
    the meta device, so nothing is computed and the timed runs are not slowed. Left out: the
    whitening init (~1 GFLOP for 10,000 images), the EMA updates and the untimed per-epoch eval."""
    o = hyp['opt']
    total_steps = train_steps(o, n_train)
    with torch.device('meta'):
        model = make_net(hyp)
        inputs, labels = torch.empty(o['batch_size'], 3, 32, 32), torch.zeros(o['batch_size'], dtype=torch.long)
        test_inputs = torch.empty(n_test, 3, 32, 32)

        def step():
            F.cross_entropy(model(inputs), labels, reduction='sum').backward()
        flops = count_flops(step)
        with torch.no_grad():
            tta = count_flops(lambda: tta_logits(model.eval(), test_inputs, hyp['net']['tta_level']))
    return total_steps * flops + tta

#############################################
#      Harness: the same in every script    #
#############################################

#=== shared: harness
import argparse
import datetime
import difflib
import hashlib
import io
import json
import pathlib
import pickle
import platform
import secrets
import shutil
import signal
import subprocess
import tarfile
import warnings
import zlib

import torch.distributed as dist

CIFAR_FILES = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
OFFICIAL_MD5 = 'c58f30108f718f92721af3b95e74349a'  # of cifar-10-python.tar.gz as released


def atomic_write(path, write):
    """write(tmp), then tmp renamed over path: never a half-written file, and a failed write leaves the old one."""
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        write(tmp)
        os.replace(tmp, path)
    except RuntimeError as e:  # how torch.save reports a failed write
        raise OSError(str(e).strip().splitlines()[-1]) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def check(where, fix, *rules):
    """UserError naming the file and its first field that is wrong; a rule: (field, value, ok, expected)."""
    for field, value, ok, expected in rules:
        if not ok:
            found = f'shape {tuple(value.shape)}, dtype {value.dtype}' if hasattr(value, 'dtype') else type(value)
            raise UserError(f'{where} holds {field} of {found}, expected {expected}: {fix}')


def read_cache(path):
    """The split in a cache file, if dense uint8 (N, 32, 32, 3) images, int64 (N,) labels in 0..9 and 10 classes."""
    fix = 'delete it and it will be rebuilt from the official files'
    try:  # weights_only: tensors and plain data, never code
        with warnings.catch_warnings():  # torch's warnings about a garbled file would only add noise to the error
            warnings.simplefilter('ignore')
            split = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'{path} cannot be read ({type(e).__name__}; truncated or corrupt?): {fix}') from None
    images, labels, classes = map((split if isinstance(split, dict) else {}).get, ('images', 'labels', 'classes'))
    dense = [isinstance(x, torch.Tensor) and x.layout == torch.strided and x.is_contiguous() for x in (images, labels)]
    n = len(images) if dense[0] and images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3) else 0
    check(path, fix, ('images', images, n > 0, 'a dense uint8 tensor of shape (N, 32, 32, 3)'),
          ('labels', labels, dense[1] and labels.dtype == torch.int64 and n > 0 and labels.shape == (n,)
           and 0 <= labels.min() and labels.max() < NUM_CLASSES, f'a dense int64 tensor of shape ({n},) in 0..9'),
          ('classes', classes, isinstance(classes, list) and len(classes) == NUM_CLASSES
           and all(isinstance(c, str) for c in classes), f'a list of {NUM_CLASSES} class names'))
    return split


class OfficialUnpickler(pickle.Unpickler):
    """A pickle may name any function to call: this one refuses all but those the official files' arrays need."""
    allowed = {('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', '_reconstruct'),
               ('numpy._core.multiarray', '_reconstruct'), ('_codecs', 'encode')}

    def find_class(self, module, name):
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f'it asks to call {module}.{name}, which no CIFAR-10 file does')
        return super().find_class(module, name)


def read_official(folder, origin, fix):
    """The official python layout (pickled dicts of numpy arrays), each file checked on its own."""
    splits, classes = {'train': [], 'test': []}, []  # what the files hold, filled in below
    for name in ['batches.meta'] + CIFAR_FILES:
        path = os.path.join(folder, name)
        try:
            with open(path, 'rb') as f:
                content = OfficialUnpickler(f, encoding='bytes').load()
        except FileNotFoundError:
            raise UserError(f'{path} is missing: {folder} is not a complete CIFAR-10 folder; {fix}') from None
        except ModuleNotFoundError:
            raise UserError(f'reading {path} needs numpy, which is not installed: pip install numpy') from None
        except Exception as e:  # truncated, corrupt, or refused by the unpickler
            raise UserError(f'{path} cannot be read ({type(e).__name__}: {e}): truncated or corrupt, or not an '
                            f'official CIFAR-10 file; {fix}') from None
        get = content.get if isinstance(content, dict) else {}.get
        if name == 'batches.meta':
            with contextlib.suppress(AttributeError, TypeError, UnicodeDecodeError):
                classes = [c.decode() for c in get(b'label_names')]
            check(path, fix, ('label_names', get(b'label_names'), len(classes) == NUM_CLASSES, '10 UTF-8 byte strings'))
            continue
        data, labels = get(b'data'), get(b'labels')
        rows = len(data) if getattr(data, 'dtype', '') == 'uint8' and getattr(data, 'shape', ())[1:] == (3072,) else -1
        check(path, fix, ('data', data, rows >= 0, 'a uint8 array of shape (N, 3072)'),
              ('labels', labels, isinstance(labels, list) and len(labels) == rows
               and all(type(v) is int and 0 <= v < NUM_CLASSES for v in labels),
               f'a list of {rows} integers in 0..{NUM_CLASSES - 1}'))
        split = {'images': torch.from_numpy(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()),
                 'labels': torch.tensor(labels, dtype=torch.int64), 'classes': classes}
        splits['test' if name == 'test_batch' else 'train'].append(split)
    return {s: {'images': torch.cat([p['images'] for p in parts]), 'labels': torch.cat([p['labels'] for p in parts]),
                'classes': classes, 'origin': origin} for s, parts in splits.items()}


def extract_archive(archive, data_dir):
    """cifar-10-batches-py/ next to the archive, through a temp folder and a rename (if another invocation
    renames first, its folder is used); returns what the archive is, by its MD5."""
    try:
        packed = pathlib.Path(archive).read_bytes()
    except OSError as e:
        raise UserError(f'cannot read {archive} ({e.strerror or e})') from None
    try:  # all of the gzip stream first: its CRC is at the end, which tar stops before
        tar = tarfile.open(fileobj=io.BytesIO(zlib.decompress(packed, 16 + zlib.MAX_WBITS)))
        top = 'cifar-10-batches-py' + os.sep
        members = [m for m in tar.getmembers() if m.isfile() and os.path.normpath(m.name).startswith(top)]
    except (OSError, zlib.error, tarfile.TarError) as e:
        raise UserError(f'{archive} is damaged ({e}): delete it and download it again') from None
    if not members:
        raise UserError(f'{archive} holds no cifar-10-batches-py/ folder: it is not the CIFAR-10 python archive')
    tmp = os.path.join(data_dir, f'.extract-{os.getpid()}')
    target = os.path.join(data_dir, 'cifar-10-batches-py')
    try:
        tar.extractall(tmp, members=members, **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))
        os.replace(os.path.join(tmp, 'cifar-10-batches-py'), target)
    except OSError as e:
        if not os.path.isdir(target):
            raise UserError(f'cannot extract {archive} into {data_dir} ({e.strerror or e}): extract it yourself '
                            '(tar xzf) or use a writable --data-dir with room for it') from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    md5 = hashlib.md5(packed).hexdigest()
    return f'cifar-10-python.tar.gz with MD5 {md5}: ' + ('the official release' if md5 == OFFICIAL_MD5 else
                                                          'not the official release (repacked or synthetic)')


def load_cifar10(data_dir):
    """({'train': split, 'test': split}, source), a split of uint8 NHWC `images`, int64 `labels`, `classes` and
    `origin`, from the cache, else the official folder, else its archive, else a download; then cached."""
    caches = {s: os.path.join(data_dir, f'{s}.pt') for s in ('train', 'test')}
    if all(os.path.isfile(p) for p in caches.values()):
        return {split: read_cache(path) for split, path in caches.items()}, 'cache'
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f'--data-dir {data_dir} is a file, not a folder: point it at the folder holding CIFAR-10')
    folder = os.path.join(data_dir, 'cifar-10-batches-py')
    archive = os.path.join(data_dir, 'cifar-10-python.tar.gz')
    source, origin = 'official pickles', 'cifar-10-batches-py/ as found'
    fix = f'delete {folder} and extract cifar-10-python.tar.gz again'
    if not os.path.isdir(folder):
        source = 'official archive' if os.path.isfile(archive) else 'download'
        tmp = f'{data_dir}/.download-{os.getpid()}'
        try:
            if source == 'download':
                os.makedirs(tmp)
                import torchvision
                say(f'downloading CIFAR-10 into {data_dir} ...')
                torchvision.datasets.CIFAR10(tmp, download=True)
                os.replace(os.path.join(tmp, 'cifar-10-python.tar.gz'), archive)
        except Exception as e:  # no torchvision (installed only to download), no network, no room
            raise UserError(f'no CIFAR-10 in {data_dir} and downloading it with torchvision failed ({type(e).__name__}:'
                            f' {e}): check the network, or put cifar-10-python.tar.gz there') from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        origin = extract_archive(archive, data_dir)
        fix = f'{archive} is not a good copy of CIFAR-10: delete it and {folder}, and download it again'
    splits, written = read_official(folder, origin, fix), []
    try:
        for split, path in caches.items():
            atomic_write(path, lambda tmp: torch.save(splits[split], tmp))
            written.append(path)
    except BaseException as e:  # a full disk, a read-only folder or Ctrl-C: no half cache is left
        for path in written:
            os.remove(path)
        if not isinstance(e, OSError):
            raise
        say(f'note: could not write the cache in {data_dir} ({e.strerror or e}); reading the pickles again next time')
    return splits, source


def environment(dev):
    """The machine and software, for the log; 'summary' is its one-line form."""
    gpu, smi, cpu = None, None, platform.processor() or platform.machine()
    model, autocast = (str(t).replace('torch.', '') if t else None for t in (dev.model_dtype, dev.autocast_dtype))
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # the GPU and nvidia-smi's report, if any
        gpu = torch.cuda.get_device_name(dev.torch_device) if dev.type == 'cuda' else None
        smi = subprocess.run(['nvidia-smi'], capture_output=True, text=True, timeout=10).stdout if gpu else None
    summary = f"{dev.type} ({gpu or cpu}; {model} weights" + (f', {autocast} autocast forward)' if autocast else ')')
    return {'device': dev.type, 'model_dtype': model, 'autocast_dtype': autocast, 'torch': str(torch.__version__),
            'cuda': torch.version.cuda, 'gpu': gpu, 'nvidia_smi': smi, 'python': platform.python_version(), 'cpu': cpu,
            'threads': torch.get_num_threads(), 'summary': summary + (f'; note: {dev.note}' if dev.note else '')}


class RunLog:
    """logs/<script>-<date>-<time>-<id>/log.json and log.pt (with the `code` and `accs`), rewritten after every run.
    Under torchrun each process also writes runs-rank<r>.json, merging what it sees; rank 0 merges all at the end."""

    def __init__(self, folder, code, record, part):
        self.dir, self.code, self.record, self.part = folder, code, record, part
        self.write()

    def write(self, parts=None):
        """This process's part, then log.json and log.pt from it or from the parts given or found."""
        world = self.record['world_size']
        files = [os.path.join(self.dir, f'runs-rank{r}.json') for r in range(world)]

        def dump(path, obj):
            atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(obj, indent=1)))
        try:
            os.makedirs(self.dir, exist_ok=True)
            if world > 1:
                dump(files[self.part['rank']], self.part)
                parts = parts or [json.loads(pathlib.Path(f).read_text()) for f in files if os.path.isfile(f)]
                self.record['processes'] = [{k: v for k, v in p.items() if k != 'runs'} for p in parts]
            statuses = [p['status'] for p in parts or [self.part]] + ['running'] * (world - len(parts or [1]))
            status = next((s for s in ('diverged', 'failed', 'interrupted', 'running') if s in statuses), 'complete')
            runs = sorted((r for p in parts or [self.part] for r in p['runs']), key=lambda r: r['run'])
            accs = [r['tta_val_acc'] for r in runs]
            mean = sum(accs) / len(accs) if runs else None  # mean, std and n, as the original reports them
            std = math.sqrt(sum((a - mean)**2 for a in accs) / (len(accs) - 1)) if len(runs) > 1 else None
            self.record.update(status=status, runs=runs, summary={'n': len(runs), 'mean': mean, 'std': std})
            dump(os.path.join(self.dir, 'log.json'), self.record)
            full = {**self.record, 'code': self.code, 'accs': torch.tensor(accs, dtype=torch.float64)}
            atomic_write(os.path.join(self.dir, 'log.pt'), lambda tmp: torch.save(full, tmp))
        except OSError as e:
            raise UserError(f'cannot write the log in {self.dir} ({e.strerror or e}): free some space or pass '
                            'another --log-dir; its log.json keeps every run it could record') from None

    def finish(self, status, message=None):
        self.part.update(status=status, finished=time.strftime('%Y-%m-%d %H:%M:%S'), message=message)
        self.record.update(finished=self.part['finished'], message=message)
        self.write()


def leaves(tree, prefix=''):
    return {key: where for k, v in tree.items()
            for key, where in (leaves(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: (tree, k)}).items()}


def apply_overrides(hyp, pairs):
    """(a copy of hyp with the --set KEY=VALUE pairs applied, {key: value}); values are JSON, else text."""
    new, overrides = json.loads(json.dumps(hyp)), {}
    for pair in pairs:
        key, sep, text = (s.strip() for s in pair.partition('='))
        if not sep:
            raise UserError(f'--set {pair!r} is not KEY=VALUE, e.g. --set opt.train_epochs=2')
        if key not in leaves(new):
            hint = ''.join(f'did you mean {k}? ' for k in difflib.get_close_matches(key, leaves(new), n=1))
            raise UserError(f'--set {key}: no such hyperparameter; {hint}valid keys: {", ".join(leaves(new))}')
        tree, leaf = leaves(new)[key]
        default = leaves(hyp)[key][0][leaf]  # the script's, whatever --set did before
        with contextlib.suppress(ValueError):  # true/false in any case, numbers, else text
            text = json.loads(text.lower() if type(default) is bool else text)
        value = float(text) if type(default) is float and type(text) is int else text
        if type(value) is not type(default) or type(value) is float and not math.isfinite(value):
            raise UserError(f'--set {key}={text!r}: expected {type(default).__name__}, like the default {default!r}')
        tree[leaf] = overrides[key] = value
    return new, overrides


def parse_command_line(description, hyp, check_hyp, default_runs, argv=None):
    """The flags of every script: (args, hyp with the --set overrides applied and checked, overrides)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog='Exit status: 0 done, 1 diverged, 2 bad input, 130 interrupted, 143 terminated.')
    p.add_argument('--runs', type=int, default=default_runs, metavar='N',
                   help=f'timed runs (default {default_runs}); their mean, std and n are reported')
    p.add_argument('--data-dir', default=os.environ.get('AIRBENCH_DATA', 'cifar10'), metavar='DIR',
                   help='CIFAR-10 folder (default: $AIRBENCH_DATA, else ./cifar10); README.md, "Data"')
    p.add_argument('--device', choices=['auto', 'cuda', 'cpu', 'mps'], default='auto', help='auto: cuda, mps, else cpu')
    p.add_argument('--seed', type=int, metavar='S',
                   help='run k uses seed S + k and the warmup S (default: random, recorded in the log)')
    p.add_argument('--log-dir', default='logs', metavar='DIR', help='where the log folder is made (default ./logs)')
    p.add_argument('--no-warmup', action='store_true', help='skip the untimed warmup run on random labels')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', dest='overrides',
                   help='a hyperparameter, e.g. opt.train_epochs=2 (repeatable, type-checked, logged); keys: '
                        + ', '.join(leaves(hyp)))
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f'argument --runs: must be a positive integer, got {args.runs}')
    if args.seed is not None and not 0 <= args.seed <= 2**53:  # a float64 holds it exactly, as JSON readers need
        p.error(f'argument --seed: must be in 0..2^53, got {args.seed}')
    run_hyp, overrides = apply_overrides(hyp, args.overrides)
    check_hyp(run_hyp)
    return args, run_hyp, overrides


def benchmark(args, hyp, overrides, train_fn, flops_fn, script_path):
    """The invocation. Under torchrun run k goes to process (k - 1) mod world size, with seed S + k, as in one."""
    script = os.path.basename(script_path)[:-3]
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    dev = Device(args.device, index=int(os.environ.get('LOCAL_RANK', 0)))
    if world > 1:
        if dev.type == 'cpu':  # the node's cores, divided between its processes
            cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
            torch.set_num_threads(max(1, cores // int(os.environ.get('LOCAL_WORLD_SIZE', 1))))
        # a process dealt fewer runs waits for the others at the end: allow a long CPU run
        dist.init_process_group('gloo', timeout=datetime.timedelta(days=1))
        if rank:  # rank 0 speaks for all
            sys.stdout = open(os.devnull, 'w')
    data, source = load_cifar10(args.data_dir)  # under torchrun each process: the first to extract it wins
    n_train, n_test = len(data['train']['labels']), len(data['test']['labels'])
    if hyp['opt']['batch_size'] > n_train:
        raise UserError(f"opt.batch_size={hyp['opt']['batch_size']} is larger than the training set ({n_train} images)")
    box = [rank or {
        'script': script, 'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'argv': sys.argv, 'hyp': hyp,
        'overrides': overrides, 'seed': args.seed if args.seed is not None else secrets.randbelow(2**31),
        'warmup': not args.no_warmup, 'world_size': world,
        'flops_per_run': flops_fn(hyp, n_train, n_test), 'environment': environment(dev),
        'data': {'dir': os.path.abspath(args.data_dir), 'source': source, 'origin': str(data['train'].get('origin')),
                 'train': n_train, 'test': n_test},
        'folder': os.path.join(args.log_dir, f"{script}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}")}]
    if world > 1:  # rank 0's record, with its log folder and seed, for every process
        dist.broadcast_object_list(box, src=0)
    record, seed = box[0], box[0]['seed']
    log = RunLog(record.pop('folder'), pathlib.Path(script_path).read_text(), record, {
        'rank': rank, 'status': 'running', 'runs': [], 'device': str(dev.torch_device), 'host': platform.node(),
        'pid': os.getpid(), 'threads': torch.get_num_threads()})
    say(f"{script}: {record['environment']['summary']}, torch {torch.__version__}"
        + (f'; {world} processes (torchrun), runs dealt round-robin' if world > 1 else ''))
    say(f"data: {n_train} train / {n_test} test images from {args.data_dir} ({source}; {record['data']['origin']}); "
        f"{record['flops_per_run'] / 1e15:.3g} PFLOPs per run; seed {seed}; overrides {overrides or 'none'}")
    say(f'log: {log.dir}')
    print_row({c: c for c in COLUMNS}, rule_before=True, rule_after=True)
    runs = list(range(1 + rank, args.runs + 1, world))
    try:
        for run in runs if args.no_warmup else ['warmup'] + runs:
            run_seed = seed if run == 'warmup' else seed + run
            torch.manual_seed(run_seed)
            train_loader, test_loader = make_loaders(hyp, dev, data)  # fresh: epochs and augmentation are per run
            if run == 'warmup':  # it only warms the device up, so its labels may as well be noise
                train_loader.labels = torch.randint(0, NUM_CLASSES, train_loader.labels.shape, device=dev.torch_device)
            _, result = train_fn(hyp, dev, train_loader, test_loader, seed=run_seed, run=run)
            if run != 'warmup':
                log.part['runs'].append({**result, 'rank': rank, 'device': str(dev.torch_device)})
                log.write()
        log.finish('complete')
        if world > 1:  # rank 0 merges every process's runs, also those of nodes whose folders it cannot see
            parts = [None] * world
            try:
                dist.gather_object(log.part, parts if rank == 0 else None, dst=0)
            except RuntimeError:
                raise KeyboardInterrupt('interrupted: another process stopped before the end', 143) from None
            if rank == 0:
                log.write(parts)
    except KeyboardInterrupt as e:
        log.finish('interrupted', e.args[0] if e.args else 'interrupted')
        raise
    except Exception as e:  # a bug or the machine (out of memory, ...) also shows its traceback
        with contextlib.suppress(UserError):  # a log that could not be written may have no room for this
            log.finish('diverged' if isinstance(e, TrainingDiverged) else 'failed',
                       str(e) if isinstance(e, (TrainingDiverged, UserError)) else f'{type(e).__name__}: {e}')
        raise
    finally:  # what finished, however the runs ended
        for r in log.record['runs'] if world > 1 else []:
            say(f"run {r['run']}: TTA accuracy {r['tta_val_acc']:.4f} in {r['time_seconds']:.2f} s (rank {r['rank']})")
        s, seconds = log.record['summary'], sum(r['time_seconds'] for r in log.record['runs'])
        if s['n']:
            say(f"Mean: {s['mean']:.4f}    Std: {'n/a' if s['std'] is None else format(s['std'], '.4f')}    n: {s['n']}"
                f"    time per run: {seconds / s['n']:.2f} s")
        ended = '' if log.record['status'] == 'complete' else f" ({log.record['status']} after {s['n']} finished runs)"
        say(f"log{ended}: {os.path.abspath(os.path.join(log.dir, 'log.pt'))}")
    return log


def entry(main):
    """main() as a command: every failure a user can cause or meet is one sentence and an exit status."""
    prog = os.path.basename(sys.argv[0]) + (f" (rank {os.environ['RANK']})" if 'RANK' in os.environ else '')

    def terminated(signum, frame):  # SIGTERM (torchrun's too, stopping the others) ends the runs as Ctrl-C
        raise KeyboardInterrupt('terminated (SIGTERM)', 128 + signum)
    signal.signal(signal.SIGTERM, terminated)
    try:
        main()
    except UserError as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as e:
        print(f'{prog}: {e}; stopped. Finished runs are in the log.', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"{prog}: {e.args[0] if e.args else 'interrupted'}; the log keeps every finished run", file=sys.stderr)
        sys.exit(e.args[1] if len(e.args) > 1 else 130)
#=== end shared: harness


def main(argv=None):
    args, run_hyp, overrides = parse_command_line(__doc__, hyp, check_hyp, 10, argv)
    return benchmark(args, run_hyp, overrides, train, flops_per_run, __file__)


if __name__ == '__main__':
    entry(main)
