"""ablations/main1_whiten.py: ablation rung 1, a frozen patch-whitening first conv.

Published (the original ablation ladder's, on an A100; not ours): 94.00% mean TTA accuracy in
n=200 runs, 8.6 s per run, 735 TFLOPs per run.
Ours: 90.67% in one CPU run on the JPEG copy (logs/main1_whiten-20261201-112143-9322ad47).
Parent: ablations/main0_network.py. Facts: ablations/README.md. Changes (initialization):
- the first conv: frozen patch-whitening filters, a trainable bias; the BatchNorm after it gone
- 21 epochs instead of 35 (1008 steps)

    python ablations/main1_whiten.py                           # warmup + 25 timed runs
    python ablations/main1_whiten.py --runs 1 --no-warmup      # one run
    python ablations/main1_whiten.py --set opt.train_epochs=2  # any hyperparameter (--help)

Needs torch (numpy to read the official CIFAR-10 files, torchvision only to download them). Data and
logs: docs/data.md and docs/logs.md.
"""

#############################################
#              Hyperparameters              #
#############################################

# The optimizer's lr, momentum and weight decay are decoupled (see decoupled_hyperparameters()):
# changing one does not change the step size or decay strength set by the others.
hyp = {
    'opt': {
        'train_epochs': 21.0,      # epochs; fractional epochs end mid-epoch (21.0 x 48 -> 1008 steps)
        'batch_size': 1024,        # examples per step
        'lr': 10.0,                # learning rate per 1024 examples
        'momentum': 0.85,          # Nesterov momentum
        'weight_decay': 0.0153,    # weight decay per 1024 examples, decoupled from the lr
        'bias_scaler': 1.0,        # lr multiplier (not wd) for BatchNorm biases
        'label_smoothing': 0.2,
        'lr_start': 0.2,           # lr multiplier at step 0 ...
        'lr_peak_at': 0.2,         # ... rising linearly to 1.0 at this fraction of the steps ...
        'lr_end': 0.0,             # ... then falling linearly to this at the last step
    },
    'aug': {
        'flip': 'random',          # 'alternating' (paper section 3.6), 'random' (p=0.5 per image per epoch) or 'none'
        'translate': 2,            # pixels of reflect-padded random translation
        'cutout': 0,               # side of the zeroed square, 0 = off
    },
    'net': {
        'widths': {'block1': 64, 'block2': 256, 'block3': 256},  # output channels of the 3 ConvGroups
        'batchnorm_momentum': 0.9, # weight on the old running stats (PyTorch momentum 0.1, its default)
        'scaling_factor': 1 / 9,   # multiplies the logits
        'whiten_images': 5000,     # training images whose 2x2 patches initialise the whitening conv
        'whiten_eps': 5e-4,        # added to the patch-covariance eigenvalues
        'tta_level': 1,            # test-time augmentation: 0 none, 1 mirror, 2 mirror + 2 translations
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
    require(0 < o['lr_peak_at'] < 1, 'opt.lr_peak_at', o['lr_peak_at'], 'must be in (0, 1)')
    require(a['flip'] in ('alternating', 'random', 'none'), 'aug.flip', a['flip'], "must be 'alternating', 'random' or 'none'")
    require(0 <= a['translate'] <= 8, 'aug.translate', a['translate'], 'must be in [0, 8] pixels')
    require(0 <= a['cutout'] <= 32, 'aug.cutout', a['cutout'], 'must be in [0, 32] pixels')
    for block, width in n['widths'].items():
        require(width >= 1, f'net.widths.{block}', width, 'must be at least 1')
    require(0 <= n['batchnorm_momentum'] <= 1, 'net.batchnorm_momentum', n['batchnorm_momentum'], 'must be in [0, 1]')
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

#############################################
#                  Network                  #
#############################################

#=== shared: batchnorm
class BatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1; only the bias learns."""

    def __init__(self, num_features, momentum, eps=1e-12):
        # airbench's momentum weighs the old running stats; PyTorch's weighs the new batch.
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False
#=== end shared: batchnorm


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias, at PyTorch's default init."""

    def __init__(self, channels_in, channels_out):
        super().__init__(channels_in, channels_out, kernel_size=3, padding='same', bias=False)


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


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
    widths, momentum = hyp['net']['widths'], hyp['net']['batchnorm_momentum']
    whiten_kernel_size = 2
    whiten_width = 2 * 3 * whiten_kernel_size**2  # 12 whitening filters and their negations
    net = nn.Sequential(
        nn.Conv2d(3, whiten_width, kernel_size=whiten_kernel_size, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, widths['block1'], momentum),
        ConvGroup(widths['block1'], widths['block2'], momentum),
        ConvGroup(widths['block2'], widths['block3'], momentum),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(widths['block3'], NUM_CLASSES, bias=False),
        Mul(hyp['net']['scaling_factor']),
    )
    net[0].weight.requires_grad = False  # set by init_whitening_conv() and never trained
    net[0].bias.data.zero_()
    return net

#############################################
#       Whitening conv initialization       #
#############################################

#=== shared: whitening
def whitening_filters(images, kernel_size, eps):
    """Eigenvectors of the (uncentred) covariance of all kernel_size^2 patches of the images,
    each divided by sqrt(eigenvalue + eps), largest eigenvalue first, then their negations.
    Computed in fp32 outside autocast: a bf16/fp16 covariance gives negative eigenvalues and NaNs.
    eigh works from the upper triangle, as the originals do: LAPACK's reduction of the lower one
    returns some eigenvectors with the opposite sign (8 of 12 on CIFAR-10), i.e. swaps those
    filters with their negations."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = images.float()
        c = x.size(1)
        patches = x.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # N, C, H', W', k, k
        patches = patches.transpose(1, 3).reshape(-1, c * kernel_size**2)  # rows in (C, k, k) order
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO='U')
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = eigenvectors / torch.sqrt(eigenvalues + eps).view(-1, 1)
        filters = filters.view(-1, c, kernel_size, kernel_size)
        return torch.cat((filters, -filters))


def init_whitening_conv(conv, images, eps):
    conv.weight.data.copy_(whitening_filters(images, conv.kernel_size[0], eps))
#=== end shared: whitening

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


#=== shared: schedule
def lr_schedule(total_steps, start, peak_at, end):
    """lr multiplier for steps 0..total_steps: linear from start to 1.0 at step int(peak_at * total),
    then linear to end at the last step."""
    peak = int(peak_at * total_steps)
    return [start + (1 - start) * step / peak if step < peak else
            1 + (end - 1) * (step - peak) / (total_steps - peak) for step in range(total_steps + 1)]
#=== end shared: schedule


#=== shared: optimizer
def decoupled_hyperparameters(opt):
    """PyTorch SGD values from the decoupled ones. With constant gradients, Nesterov momentum m
    makes steps 1 + 1/(1 - m) times the gradient; dividing by that (per 1024 examples) leaves the
    step size to the lr alone. PyTorch multiplies weight decay by the lr, so it is divided by each
    group's lr to keep the decay independent of the lr."""
    kilostep = 1024 * (1 + 1 / (1 - opt['momentum']))
    lr = opt['lr'] / kilostep
    wd = opt['weight_decay'] * opt['batch_size'] / kilostep
    lr_biases = lr * opt['bias_scaler']
    return {'lr': lr, 'weight_decay': wd / lr, 'lr_biases': lr_biases, 'weight_decay_biases': wd / lr_biases}


def make_optimizer(model, opt):
    h = decoupled_hyperparameters(opt)
    norm_biases = [p for m in model.modules() if isinstance(m, BatchNorm) for p in m.parameters() if p.requires_grad]
    ids = {id(p) for p in norm_biases}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [dict(params=norm_biases, lr=h['lr_biases'], weight_decay=h['weight_decay_biases']),
              dict(params=others, lr=h['lr'], weight_decay=h['weight_decay'])]
    return torch.optim.SGD(groups, momentum=opt['momentum'], nesterov=True)
#=== end shared: optimizer


def make_loaders(hyp, dev, data):
    """Fresh loaders for one run: the training split augmented as hyp['aug'] says, the test split plain."""
    return (CifarLoader(data['train'], dev, hyp['opt']['batch_size'], train=True, aug=hyp['aug']),
            CifarLoader(data['test'], dev, 2000, train=False))


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
    schedule = lr_schedule(total_steps, o['lr_start'], o['lr_peak_at'], o['lr_end'])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule[step])
    timer = Timer(dev)

    with timer:  # timing starts when the training data is first touched
        whiten_images = train_loader.normalize(train_loader.images[:hyp['net']['whiten_images']])
        init_whitening_conv(model[0], whiten_images, hyp['net']['whiten_eps'])

    step, history, val_acc, tta_val_acc = 0, [], None, None
    for epoch in range(ceil(o['train_epochs'])):
        finite = []
        with timer:
            model.train()
            for inputs, labels in train_loader:
                with dev.autocast():
                    outputs = model(inputs)
                loss = F.cross_entropy(outputs.float(), labels, label_smoothing=o['label_smoothing'], reduction='sum')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                finite.append(torch.isfinite(loss))
                step += 1
                if step >= total_steps:
                    break
        if not torch.stack(finite).all():
            bad = step - len(finite) + 1 + int(torch.stack(finite).logical_not().nonzero()[0])
            raise TrainingDiverged(f'the training loss became NaN or infinite at step {bad} of {total_steps} '
                                   f'(run {run}, epoch {epoch + 1})')
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        train_loss = loss.item() / len(labels)
        if test_loader is not None:
            val_acc = evaluate(model, test_loader, tta_level=0)  # untimed, for the table only
        history.append({'epoch': epoch + 1, 'train_loss': train_loss, 'train_acc': train_acc, 'val_acc': val_acc})
        if verbose:
            print_row({'run': run if epoch == 0 else None, **history[-1], 'time_seconds': timer.seconds})
        if callback is not None:
            callback(model, history[-1])

    if test_loader is not None:
        with timer:
            tta_val_acc = evaluate(model, test_loader, tta_level=hyp['net']['tta_level'])
    if verbose:
        print_row({'epoch': 'eval', 'tta_val_acc': tta_val_acc, 'time_seconds': timer.seconds}, rule_after=True)
    return model, {'run': run, 'seed': seed, 'tta_val_acc': tta_val_acc, 'val_acc': val_acc,
                   'time_seconds': timer.seconds, 'steps': step, 'epochs': history}


def flops_per_run(hyp, n_train, n_test):
    """FLOPs of one run: every training step (the whitening conv's bias trains in all of them)
    plus the final TTA pass. Counted on the meta device, so nothing is computed and the timed
    runs are not slowed. Left out: the whitening init (~1 GFLOP) and the untimed per-epoch eval."""
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
    args, run_hyp, overrides = parse_command_line(__doc__, hyp, check_hyp, 25, argv)
    return benchmark(args, run_hyp, overrides, train, flops_per_run, __file__)


if __name__ == '__main__':
    entry(main)
