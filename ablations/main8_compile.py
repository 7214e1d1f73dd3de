"""ablations/main8_compile.py: ablation rung 8, the network compiled with torch.compile.

Published (the original ablation ladder's, on an A100; not ours): 94.02% mean TTA accuracy in
n=700 runs, 3.5 s per run, 350 TFLOPs per run.
Ours: 90.54% in one CPU run on the JPEG copy (logs/main8_compile-20261126-160105-5b0bd7a4).
Parent: ablations/main7_mirror.py. Facts: ablations/README.md. Changes (speed, not the method):
- the net is built and compiled once per invocation, re-initialised per run (docs/method.md §2.1)
- the warmup run pays the compilation (with --no-warmup, the first timed run pays it)
This rung is airbench94_compiled.py in method and in text below this docstring.

    python ablations/main8_compile.py                           # warmup (compiles) + 25 runs
    python ablations/main8_compile.py --runs 1                  # warmup + one run
    python ablations/main8_compile.py --set opt.train_epochs=2  # any hyperparameter (--help)

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
        'train_epochs': 9.9,       # epochs; fractional epochs end mid-epoch (9.9 x 48 -> 476 steps)
        'batch_size': 1024,        # examples per step
        'lr': 11.5,                # learning rate per 1024 examples
        'momentum': 0.85,          # Nesterov momentum
        'weight_decay': 0.0153,    # weight decay per 1024 examples, decoupled from the lr
        'bias_scaler': 64.0,       # lr multiplier (not wd) for BatchNorm biases
        'label_smoothing': 0.2,
        'whiten_bias_epochs': 3,   # epochs the whitening-conv bias trains before it is frozen
        'lr_start': 0.2,           # lr multiplier at step 0 ...
        'lr_peak_at': 0.23,        # ... rising linearly to 1.0 at this fraction of the steps ...
        'lr_end': 0.07,            # ... then falling linearly to this at the last step
        'lookahead_every': 5,      # steps between lookahead syncs
        'lookahead_decay': 0.95,   # sync decay = lookahead_decay**lookahead_every * (step / total)**3
    },
    'aug': {
        'flip': 'alternating',     # 'alternating' (paper §3.6), 'random' (p=0.5 per image per epoch), 'none'
        'translate': 2,            # pixels of reflect-padded random translation
        'cutout': 0,               # side of the zeroed square, 0 = off
    },
    'net': {
        'widths': {'block1': 64, 'block2': 256, 'block3': 256},  # output channels of the 3 ConvGroups
        'batchnorm_momentum': 0.6, # weight on the old running stats (PyTorch momentum 0.4)
        'scaling_factor': 1 / 9,   # multiplies the logits
        'whiten_images': 5000,     # training images whose 2x2 patches initialise the whitening conv
        'whiten_eps': 5e-4,        # added to the patch-covariance eigenvalues
        'tta_level': 2,            # test-time augmentation: 0 none, 1 mirror, 2 mirror + 2 translations
    },
}

#############################################
#                   Setup                   #
#############################################

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


# Per device: the format of weights and data, and of the autocast forward pass (docs/devices.md).
PRECISION = {'cuda': (torch.float16, None), 'cpu': (torch.float32, torch.bfloat16),
             'mps': (torch.float32, torch.float16)}


class Device:
    """The accelerator, its number formats (PRECISION; BatchNorm stays fp32) and memory layout."""

    def __init__(self, name='auto', index=0):
        count = {'cuda': torch.cuda.device_count(), 'mps': int(torch.backends.mps.is_available()),
                 'cpu': 1}
        name = next(n for n in count if count[n]) if name == 'auto' else name
        if (index if name == 'cuda' else 0) >= count[name]:
            raise UserError(f'--device {name}: process {index} of this node needs {name} {index}, '
                            f'but this machine and torch build have {count[name]}; use auto or cpu')
        self.type, self.note = name, ''
        self.torch_device = torch.device(name, index) if name == 'cuda' else torch.device(name)
        self.model_dtype, self.autocast_dtype = PRECISION[name]
        self.data_dtype = self.model_dtype
        self.memory_format = torch.contiguous_format if name == 'mps' else torch.channels_last
        if name == 'cuda':
            torch.cuda.set_device(self.torch_device)
            torch.backends.cudnn.benchmark = True
        mkldnn = torch.backends.mkldnn.is_available()
        if name == 'cpu' and not (mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            self.autocast_dtype = None
            self.note = 'this CPU has no fast bf16, so it trains in fp32 (slower)'

    def prepare(self, net):
        """A freshly built net on the device in its training formats, BatchNorm kept in fp32."""
        net = net.to(self.torch_device).to(self.model_dtype).to(memory_format=self.memory_format)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.float()
        return net

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.type, dtype=self.autocast_dtype)
#=== end shared: setup

#############################################
#       Data loading and augmentation       #
#############################################

#=== shared: loader
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def batch_flip_lr(inputs, generator=None):
    """Mirrors a random half of the images."""
    flip = torch.rand(len(inputs), device=inputs.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), inputs.flip(-1), inputs)


def batch_crop(images, crop_size, generator=None):
    """A random crop_size x crop_size crop of each (padded) image: an independent shift in [-r, r]
    per axis per image, r = (side - crop_size) // 2, drawn as one (N, 2) randint (rows, columns);
    all crops are one gather."""
    n, c, r = len(images), images.size(1), (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(n, 2), device=images.device, generator=generator)
    offsets = torch.arange(crop_size, device=images.device)
    rows = (r + shifts[:, 0]).view(n, 1, 1, 1) + offsets.view(1, 1, crop_size, 1)
    cols = (r + shifts[:, 1]).view(n, 1, 1, 1) + offsets.view(1, 1, 1, crop_size)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    return images[batch, torch.arange(c, device=images.device).view(1, c, 1, 1), rows, cols]


def make_random_square_masks(inputs, size, generator=None):
    """(N, 1, H, W) bool masks, each one size x size square, its top-left corner uniform over the
    positions that keep it inside the image (drawn for the rows, then for the columns)."""
    n, _, h, w = inputs.shape
    top = torch.randint(0, h - size + 1, size=(n, 1, 1, 1), device=inputs.device, generator=generator)
    left = torch.randint(0, w - size + 1, size=(n, 1, 1, 1), device=inputs.device, generator=generator)
    ys = torch.arange(h, device=inputs.device).view(1, 1, h, 1)
    xs = torch.arange(w, device=inputs.device).view(1, 1, 1, w)
    return (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)


def batch_cutout(inputs, size, generator=None):
    """Zeroes one random size x size square per image, in every channel."""
    return inputs.masked_fill(make_random_square_masks(inputs, size, generator), 0)


class Normalize:
    """x -> (x - mean) / std per channel, for batches (N, C, H, W) and single images (C, H, W);
    mean and std are (C,) tensors, as in the original package's loader.normalize."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std

    @classmethod
    def cifar(cls, device=None, dtype=None):
        """CIFAR-10's mean and std, as tensors of this device and dtype (default: CPU, fp32)."""
        return cls(torch.tensor(CIFAR_MEAN, device=device, dtype=dtype),
                   torch.tensor(CIFAR_STD, device=device, dtype=dtype))

    def __call__(self, images):
        return (images - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)


class CifarLoader:
    """The whole split resident on the device; batches are index gathers, no workers.

    split: uint8 NHWC `images`, int64 `labels` and `classes` (load_cifar10() reads them from a data
    folder). `images` (NCHW, in [0, 1], not yet normalised) and `labels` may be replaced, by a
    subset say, until the first epoch begins; len() is the number of batches per epoch.
    aug, read at the start of every epoch (so a change takes effect at the next one): flip
    ('alternating': epoch 0 mirrors a random half, every later epoch mirrors every image relative to
    the epoch before; 'random': each image mirrored with p=0.5, drawn anew every epoch; 'none'; the
    original package's True means 'alternating' if loader.altflip else 'random', False 'none'),
    translate r (reflect-pad r once, then a random crop per image per epoch), cutout s (one zeroed
    s x s square per image per epoch, after cropping and flipping, in normalised space). Training
    loaders (train=True) draw every epoch's order and drop the last partial batch, unless shuffle or
    drop_last say otherwise; sampling 'reshuffle' (a permutation: each image once per epoch) or
    'replacement' (len(images) draws with replacement, the textbook SGD of paper Table 1; an image
    drawn twice in an epoch has one crop and flip). Random draws come from `generator` (a
    torch.Generator on the device), else torch's global RNG.
    """

    def __init__(self, split, dev, batch_size=500, train=True, aug=None, drop_last=None, shuffle=None,
                 generator=None, sampling='reshuffle'):
        self.dev, self.generator, self.epoch = dev, generator, 0
        # uint8 moves to the device 4x faster than fp32 would, and converts there
        self.images = split['images'].to(dev.torch_device).permute(0, 3, 1, 2)
        self.images = (self.images.to(dev.data_dtype) / 255).contiguous(memory_format=dev.memory_format)
        self.labels = split['labels'].to(dev.torch_device)
        self.classes = split['classes']
        self.aug, self.altflip, self.sampling = dict(aug or {}), False, sampling
        self.augmentation()  # refuses a bad aug now, as well as at every epoch
        self.batch_size = batch_size
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.normalize = Normalize.cifar(dev.torch_device, dev.data_dtype)

    def __setattr__(self, name, value):
        if name in ('images', 'labels') and getattr(self, 'epoch', 0) > 0:  # epoch 0 prepared them
            raise ValueError(f'the loader\'s {name} can be replaced only before its first epoch begins')
        if name == 'aug' and not isinstance(value, dict):
            raise UserError(f'loader.aug={value!r} is not a dict such as {{"flip": "alternating"}}')
        super().__setattr__(name, value)

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.drop_last else ceil(n / self.batch_size)

    def augmentation(self):
        """(flip, translate, cutout) as self.aug and self.altflip say now; UserError if they are bad."""
        flip = self.aug.get('flip', 'none')
        if isinstance(flip, bool):  # the original package's form
            flip = ('alternating' if self.altflip else 'random') if flip else 'none'
        for key, value in self.aug.items():
            if key == 'flip':
                ok = flip in ('alternating', 'random', 'none')
            else:
                ok = key in ('translate', 'cutout') and type(value) is int and 0 <= value <= 32 // (
                    4 if key == 'translate' else 1)
            if not ok:
                raise UserError(f'loader.aug[{key!r}]={value!r}: use flip (alternating, random, none, '
                                'True, False), translate (0 to 8 pixels), cutout (0 to 32)')
        if self.sampling not in ('reshuffle', 'replacement'):
            raise UserError(f"loader.sampling={self.sampling!r}: use 'reshuffle' or 'replacement'")
        return flip, self.aug.get('translate', 0), self.aug.get('cutout', 0)

    def prepare(self, preflip, pad):
        """Normalises the images once, mirrors a random half of them for alternating flip and
        reflect-pads them, so that each epoch only crops and flips; again whenever aug changes what
        this did (the centre of the padded images is the unpadded images, exactly)."""
        side = self.images.size(-1)
        was_preflipped, old_pad = self.prepared if self.epoch > 0 else (False, 0)
        if self.epoch == 0 or was_preflipped and not preflip:
            base = self.normalize(self.images)
        else:
            base = self.base[..., old_pad:old_pad + side, old_pad:old_pad + side]
        if preflip and not (self.epoch > 0 and was_preflipped):
            base = batch_flip_lr(base, self.generator)
        self.base = F.pad(base, (pad,) * 4, 'reflect') if pad > 0 else base
        self.prepared = (preflip, pad)

    def next_epoch(self):
        """Augments every image for the coming epoch; returns (images, labels, order)."""
        flip, pad, cutout = self.augmentation()
        if self.epoch == 0 or self.prepared != (flip == 'alternating', pad):
            self.prepare(flip == 'alternating', pad)
        images = batch_crop(self.base, self.images.size(-1), self.generator) if pad > 0 else self.base
        # Alternating flip mirrors every image every other epoch, so any two consecutive epochs show
        # both orientations of each image: more diversity than independent random flips (paper §3.6).
        if flip == 'alternating' and self.epoch % 2 == 1:
            images = images.flip(-1)
        elif flip == 'random':
            images = batch_flip_lr(images, self.generator)
        if cutout > 0:
            images = batch_cutout(images, cutout, self.generator)
        images = images.contiguous(memory_format=self.dev.memory_format)
        self.epoch += 1
        n = len(images)
        if not self.shuffle:
            order = torch.arange(n, device=images.device)
        elif self.sampling == 'replacement':
            order = torch.randint(n, (n,), device=images.device, generator=self.generator)
        else:
            order = torch.randperm(n, device=images.device, generator=self.generator)
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
    """BatchNorm whose scale is fixed at 1; only the bias learns (weight=, bias= say which train)."""

    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        # airbench's momentum weighs the old running stats; PyTorch's weighs the new batch.
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias
#=== end shared: batchnorm


#=== shared: conv
class Conv(nn.Conv2d):
    """3x3 'same' conv without bias (by default); the first C_in filters start as the identity ("dirac")."""

    def __init__(self, in_channels, out_channels, kernel_size=3, padding='same', bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])  # the net starts close to passing its input through (paper §3.3)
#=== end shared: conv


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


def make_net(hyp, num_classes=NUM_CLASSES):
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
        nn.Linear(widths['block3'], num_classes, bias=False),
        Mul(hyp['net']['scaling_factor']),
    )
    net[0].weight.requires_grad = False  # set by init_whitening_conv() and never trained
    net[0].bias.data.zero_()
    return net

#############################################
#       Whitening conv initialization       #
#############################################

#=== shared: whitening
def get_patches(x, patch_shape):
    """Every h x w patch (stride 1) of the images x (N, C, H, W), as fp32 (P, C, h, w)."""
    c, (h, w) = x.size(1), patch_shape
    return x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()


def get_whitening_parameters(patches):
    """Eigenvalues (K, 1, 1, 1) and eigenvectors (K, C, h, w) of the patches' uncentred
    covariance, largest eigenvalue first."""
    n, c, h, w = patches.shape
    flat = patches.view(n, -1)  # rows in (C, h, w) order
    covariance = flat.T @ flat / n
    # The upper triangle, as the originals: LAPACK's reduction of the lower one returns some
    # eigenvectors with the opposite sign (8 of 12 on CIFAR-10), swapping filters and negations.
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO='U')
    return eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)


def whitening_filters(images, kernel_size, eps):
    """Eigenvectors of the (uncentred) covariance of all kernel_size^2 patches of the images,
    each divided by sqrt(eigenvalue + eps), largest eigenvalue first, then their negations
    (so the GELU after the conv loses nothing). In fp32 outside autocast: a bf16/fp16
    covariance gives negative eigenvalues and NaN filters."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        patches = get_patches(images.float(), (kernel_size, kernel_size))
        eigenvalues, eigenvectors = get_whitening_parameters(patches)
        filters = eigenvectors / torch.sqrt(eigenvalues + eps)
        return torch.cat((filters, -filters))


def init_whitening_conv(conv, images, eps):
    conv.weight.data.copy_(whitening_filters(images, conv.kernel_size[0], eps))
#=== end shared: whitening

#############################################
#                 Lookahead                 #
#############################################

#=== shared: lookahead
class LookaheadState:
    """Lookahead over every float tensor of the state dict (params and BatchNorm running stats):
    ema = lerp(ema, current, 1 - decay), then current = ema."""

    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, net, decay):
        for k, v in net.state_dict().items():
            if k in self.net_ema:
                self.net_ema[k].lerp_(v, 1 - decay)
                v.copy_(self.net_ema[k])
#=== end shared: lookahead

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
    """Logits for every image of the loader, in order, without augmentation other than TTA. Any loader
    with `images` (NCHW, in [0, 1]) and `normalize` will do, as in the original package; its `dev`,
    if it has one, gives the autocast."""
    if tta_level not in (0, 1, 2):
        raise UserError(f'tta_level={tta_level!r}: use 0 (none), 1 (mirror) or 2 (mirror and translations)')
    if len(loader.images) == 0:
        raise UserError('the loader holds no images to evaluate')
    model.eval()
    images = loader.normalize(loader.images)
    autocast = loader.dev.autocast() if hasattr(loader, 'dev') else contextlib.nullcontext()
    with torch.no_grad(), autocast:
        return torch.cat([tta_logits(model, x, tta_level) for x in images.split(eval_batch_size)])


def evaluate(model, loader, tta_level=0):
    logits = infer(model, loader, tta_level)
    return (logits.argmax(1) == loader.labels).float().mean().item()
#=== end shared: tta

#############################################
#                  Logging                  #
#############################################

#=== shared: logging
def say(text):
    """print(), except that once stdout fails (closed by `| head`, or on a full disk) the rest goes to
    /dev/null and the runs go on: the log keeps them."""
    try:
        print(text, flush=True)
    except OSError as e:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        with contextlib.suppress(OSError):
            print(f'note: stdout failed ({e.strerror}); the runs go on, and the log keeps them', file=sys.stderr)


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
#=== end shared: logging

#############################################
#                  Training                 #
#############################################

#=== shared: timer
class Timer:
    """Sums the seconds spent inside `with timer:` blocks; everything else is untimed. On CUDA it reads
    CUDA events, as the paper times; elsewhere perf_counter, once the device's queued work is done."""

    def __init__(self, dev):
        self.dev, self.seconds = dev, 0.0

    def now(self):
        if self.dev.type == 'cuda':
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        if self.dev.type == 'mps':
            torch.mps.synchronize()
        return time.perf_counter()

    def __enter__(self):
        self.start = self.now()
        return self

    def __exit__(self, *exc):
        end = self.now()
        if self.dev.type == 'cuda':
            torch.cuda.synchronize()
            self.seconds += 1e-3 * self.start.elapsed_time(end)
        else:
            self.seconds += end - self.start
#=== end shared: timer


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
    if any(isinstance(m, BatchNorm) for m in model.modules()):  # the script's own net: by class
        norm_biases = [p for m in model.modules() if isinstance(m, BatchNorm) for p in m.parameters()
                       if p.requires_grad]
    else:  # another net, e.g. a user's copy of this one: by name, as the original package ('norm' in it)
        norm_biases = [p for name, p in model.named_parameters() if 'norm' in name and p.requires_grad]
    ids = {id(p) for p in norm_biases}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [dict(params=norm_biases, lr=h['lr_biases'], weight_decay=h['weight_decay_biases']),
              dict(params=others, lr=h['lr'], weight_decay=h['weight_decay'])]
    return torch.optim.SGD(groups, momentum=opt['momentum'], nesterov=True)
#=== end shared: optimizer


def compile_net(hyp, dev):
    """The invocation's one net and its compiled wrapper. Static shapes: each batch shape
    compiles once; toggling the whitening bias's requires_grad selects between two cached graphs."""
    model = dev.prepare(make_net(hyp))
    if dev.type == 'mps':
        say('note: torch.compile does not support MPS; this invocation trains eagerly')
        return model, model
    return model, torch.compile(model, mode='max-autotune' if dev.type == 'cuda' else None, dynamic=False)


#=== shared: reinit
@torch.no_grad()
def reinit_net(model, fresh):
    """Makes the persistent (compiled) model a copy of the freshly built net `fresh`: its values
    (the same random draws as a per-run net) and which parameters train, since the previous run
    left the whitening bias frozen. Copying in place keeps the compiled graphs valid."""
    for v, w in zip(model.state_dict().values(), fresh.state_dict().values()):
        v.copy_(w)
    for p, q in zip(model.parameters(), fresh.parameters()):
        p.requires_grad_(q.requires_grad)
#=== end shared: reinit


def graphs_compiled():
    """Graphs compiled by torch.compile so far in this process (None if torch does not say)."""
    try:
        return torch._dynamo.utils.counters['stats']['unique_graphs']
    except (AttributeError, KeyError):
        return None


def make_loaders(hyp, dev, data):
    """Fresh loaders for one run: the training split augmented as hyp['aug'] says, the test split plain."""
    return (CifarLoader(data['train'], dev, hyp['opt']['batch_size'], train=True, aug=hyp['aug']),
            CifarLoader(data['test'], dev, 2000, train=False))


def train(hyp, dev, train_loader, test_loader=None, seed=None, run=0, verbose=True, callback=None, net=None):
    """One training run on the loaders' data; returns (the trained model, the run's record).

    seed, if given, seeds torch's generator first; net, if given, is compile_net()'s (model, compiled)
    pair to train again, re-initialised (the scripts compile once per invocation), else one is made.
    The record holds the final TTA accuracy and the plain one (None without a test loader), the timed
    seconds, the steps, the per-epoch history and the graphs compiled so far; verbose prints
    the per-epoch table; callback(model, epoch record), if given, runs after every epoch, untimed.
    Raises TrainingDiverged when the loss becomes NaN or infinite."""
    model, compiled = net or compile_net(hyp, dev)  # before seeding: the run's init is the reinit below
    if seed is not None:
        torch.manual_seed(seed)
    o = hyp['opt']
    total_steps = train_steps(o, len(train_loader.images))
    train_loader.epoch = 0  # a loader may be trained on again: its epoch 0 prepares the images afresh

    reinit_net(model, make_net(hyp))
    optimizer = make_optimizer(model, o)
    schedule = lr_schedule(total_steps, o['lr_start'], o['lr_peak_at'], o['lr_end'])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule[step])
    lookahead = LookaheadState(model)
    timer = Timer(dev)

    with timer:  # timing starts when the training data is first touched (paper §2)
        whiten_images = train_loader.normalize(train_loader.images[:hyp['net']['whiten_images']])
        init_whitening_conv(model[0], whiten_images, hyp['net']['whiten_eps'])

    step, history, val_acc, tta_val_acc = 0, [], None, None
    for epoch in range(ceil(o['train_epochs'])):
        model[0].bias.requires_grad = epoch < o['whiten_bias_epochs']
        finite = []
        with timer:
            model.train()
            for inputs, labels in train_loader:
                with dev.autocast():
                    outputs = compiled(inputs)
                loss = F.cross_entropy(outputs.float(), labels, label_smoothing=o['label_smoothing'], reduction='sum')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                finite.append(torch.isfinite(loss))  # checked once per epoch: a check per step would sync
                step += 1
                if step % o['lookahead_every'] == 0:
                    decay = o['lookahead_decay']**o['lookahead_every'] * (step / total_steps)**3
                    lookahead.update(model, decay)
                if step >= total_steps:
                    lookahead.update(model, decay=1.0)  # the final weights are the lookahead average
                    break
        if not torch.stack(finite).all():
            bad = step - len(finite) + 1 + int(torch.stack(finite).logical_not().nonzero()[0])
            raise TrainingDiverged(f'the training loss became NaN or infinite at step {bad} of {total_steps} '
                                   f'(run {run}, epoch {epoch + 1})')
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        train_loss = loss.item() / len(labels)
        if test_loader is not None:
            val_acc = evaluate(compiled, test_loader, tta_level=0)  # untimed, for the table only
        history.append({'epoch': epoch + 1, 'train_loss': train_loss, 'train_acc': train_acc, 'val_acc': val_acc})
        if verbose:
            print_row({'run': run if epoch == 0 else None, **history[-1], 'time_seconds': timer.seconds})
        if callback is not None:
            callback(model, history[-1])

    if test_loader is not None:
        with timer:
            tta_val_acc = evaluate(compiled, test_loader, tta_level=hyp['net']['tta_level'])
    if verbose:
        print_row({'epoch': 'eval', 'tta_val_acc': tta_val_acc, 'time_seconds': timer.seconds}, rule_after=True)
    return model, {'run': run, 'seed': seed, 'tta_val_acc': tta_val_acc, 'val_acc': val_acc,
                   'time_seconds': timer.seconds, 'steps': step, 'epochs': history,
                   'graphs_compiled': graphs_compiled()}


#=== shared: flops
def count_flops(fn):
    """FLOPs of fn() as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode  # it imports sympy: only when counting
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
#=== end shared: flops


def flops_per_run(hyp, n_train, n_test):
    """FLOPs of one run: every training step (with and without the whitening-bias gradient)
    plus the final TTA pass. Counted on the meta device, so nothing is computed and the timed
    runs are not slowed. Left out: the whitening init (~1 GFLOP) and the untimed per-epoch eval."""
    o = hyp['opt']
    total_steps = train_steps(o, n_train)
    bias_steps = min(total_steps, o['whiten_bias_epochs'] * (n_train // o['batch_size']))
    with torch.device('meta'):
        model = make_net(hyp)
        inputs, labels = torch.empty(o['batch_size'], 3, 32, 32), torch.zeros(o['batch_size'], dtype=torch.long)
        test_inputs = torch.empty(n_test, 3, 32, 32)

        def step():
            F.cross_entropy(model(inputs), labels, reduction='sum').backward()
        flops = []
        for trainable in (True, False):
            model[0].bias.requires_grad = trainable
            flops.append(count_flops(step))
        with torch.no_grad():
            tta = count_flops(lambda: tta_logits(model.eval(), test_inputs, hyp['net']['tta_level']))
    return bias_steps * flops[0] + (total_steps - bias_steps) * flops[1] + tta

#############################################
#      Harness: the same in every script    #
#############################################

#=== shared: harness
import argparse
import hashlib
import io
import json
import pathlib
import pickle
import platform
import secrets
import signal
import subprocess
import tarfile
import threading
import warnings
import zipfile
import zlib

import torch.distributed as dist

CIFAR_FILES = ['batches.meta', *(f'data_batch_{i}' for i in range(1, 6)), 'test_batch']
URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz'
MD5 = 'c58f30108f718f92721af3b95e74349a'  # of that archive, as released
LIMIT = 2**28  # bytes a data file, or the archive unpacked, may hold (CIFAR-10's largest: 178 MB)


def inert(text):
    """Text from a file or an error, safe to print: control characters and escapes shown escaped."""
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(text)[:500])


def atomic_write(path, write):
    """write(tmp), then tmp renamed over path: never a half-written file; a failed write keeps
    the old one. Temp files that killed processes of this host left beside path go first."""
    folder, prefix = os.path.split(f'{os.path.abspath(path)}.tmp-{platform.node()}-')
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            with contextlib.suppress(OverflowError, PermissionError):  # PermissionError: it runs
                try:
                    os.kill(int(name[len(prefix):]), 0)
                except ProcessLookupError:  # no process has that pid any more
                    os.remove(os.path.join(folder, name))
    tmp = os.path.join(folder, prefix + str(os.getpid()))
    try:
        write(tmp)
        os.replace(tmp, path)
    except RuntimeError:  # how torch.save reports a failed write, in its internals' words
        raise OSError('the write failed; is the disk full?') from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def read_bytes(path):
    """The bytes of a regular file of at most LIMIT bytes (a FIFO or a device might never end)."""
    if not os.path.isfile(path) or os.path.getsize(path) > LIMIT:
        raise UserError(f'{path} is ' + ('missing' if not os.path.lexists(path) else
                                         'no CIFAR-10 file: not a regular file of at most 256 MiB'))
    with open(path, 'rb') as f:
        return f.read(LIMIT)


class Pickled:
    """A numpy array or dtype of an official file as it was pickled: no numpy code runs, and nothing
    is allocated beyond the file's own bytes (numpy.ndarray(shape) could ask for gigabytes)."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class OfficialUnpickler(pickle.Unpickler):
    """A pickle may call any function it names: this one allows numpy's array names, as Pickled."""

    def find_class(self, module, name):
        if module.split('.')[0] != 'numpy' or name not in ('ndarray', 'dtype', '_reconstruct'):
            raise pickle.UnpicklingError(f'it calls {inert(module)}.{inert(name)}, unlike CIFAR-10')
        return Pickled


def check_split(split, where, fix):
    """split, made dense (the original airbench's images are a transposed view), if its images,
    labels and class names are CIFAR-10's kind; else a UserError naming what is wrong."""
    get = split.get if isinstance(split, dict) else {}.get
    images, labels, classes = get('images'), get('labels'), get('classes')
    dense = lambda t: type(t) is torch.Tensor and t.is_cpu and t.layout == torch.strided
    if not (dense(images) and images.dtype == torch.uint8 and images.shape[1:] == (32, 32, 3)
            and 0 < len(images) <= 50000):
        wrong = 'images: not 1 to 50,000 uint8 images (N, 32, 32, 3)'
    elif not (dense(labels) and labels.dtype == torch.int64 and labels.shape == (len(images),)
              and 0 <= labels.min() and labels.max() < NUM_CLASSES):
        wrong = 'labels: not N int64 labels in 0..9'
    elif not (isinstance(classes, list) and len(classes) == NUM_CLASSES):
        wrong = 'classes: not 10 class names'
    else:
        return {**split, 'images': images.contiguous(), 'labels': labels.contiguous()}
    raise UserError(f'{where} is not CIFAR-10 data ({wrong}): {fix}')


def read_official(files, folder, fix):
    """{'train': split, 'test': split} from the official files ({name: bytes}), each checked."""
    parts = {}
    for name in CIFAR_FILES:
        try:
            content = OfficialUnpickler(io.BytesIO(files[name]), encoding='bytes').load()
            if name == 'batches.meta':
                classes = [c.decode() for c in content[b'label_names']]
                continue
            _, shape, dtype, _, raw = content[b'data'].state  # as numpy pickles an array
            labels = content[b'labels']
            if tuple(shape)[1:] != (3072,) or dtype.args[:1] not in (('u1',), (b'u1',)) or not all(
                    type(v) is int and 0 <= v < NUM_CLASSES for v in labels):
                raise ValueError('it does not hold rows of 3,072 uint8 values with labels in 0..9')
            images = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 3, 32, 32)
            images, labels = images.permute(0, 2, 3, 1), torch.tensor(labels, dtype=torch.int64)
        except Exception as e:
            raise UserError(f'{os.path.join(folder, name)} is not an official CIFAR-10 file '
                            f'({type(e).__name__}: {inert(e)}): {fix}') from None
        split = {'images': images, 'labels': labels, 'classes': classes}
        parts[name] = check_split(split, os.path.join(folder, name), fix)
    return {split: {'images': torch.cat([parts[n]['images'] for n in names]), 'classes': classes,
                    'labels': torch.cat([parts[n]['labels'] for n in names])}
            for split, names in (('train', CIFAR_FILES[1:6]), ('test', CIFAR_FILES[6:]))}


def read_torch(path, fix):
    """torch.load(weights_only=True) of a torch.save file, checked first so that its work is
    bounded: at most LIMIT bytes, members stored as torch.save stores them, no codec (punycode's
    time is quadratic)."""
    raw = read_bytes(path)
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            if any(i.compress_type or b'_codecs' in z.read(i) for i in z.infolist()):
                raise ValueError('it holds more than tensors and plain data')
        with warnings.catch_warnings():  # torch's warnings on a garbled file would bury ours
            warnings.simplefilter('ignore')
            return torch.load(io.BytesIO(raw), map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'{path} cannot be read ({type(e).__name__}: {inert(e)}): {fix}') from None


def load_cifar10(data_dir):
    """({'train': split, 'test': split}, source), a split of uint8 NHWC `images`, int64 `labels`,
    `classes` and their `origin`: from train.pt and test.pt (our cache, or the original airbench's),
    else cifar-10-batches-py/, else cifar-10-python.tar.gz read in memory, else a download."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f'--data-dir {data_dir} is a file, not the folder that holds CIFAR-10')
    cache = {split: os.path.join(data_dir, f'{split}.pt') for split in ('train', 'test')}
    if all(os.path.exists(path) for path in cache.values()):
        fix = 'delete train.pt and test.pt, and they are rebuilt from the official files'
        splits = {s: check_split(read_torch(path, fix), path, fix) for s, path in cache.items()}
        return {split: {**part, 'origin': inert(part.get('origin', 'the original airbench'))}
                for split, part in splits.items()}, 'cache'
    folder = os.path.join(data_dir, 'cifar-10-batches-py')
    archive = os.path.join(data_dir, 'cifar-10-python.tar.gz')
    if os.path.isdir(folder):
        files = {name: read_bytes(os.path.join(folder, name)) for name in CIFAR_FILES}
        source, origin, fix = 'pickles', folder, f'replace {folder} with a good copy'
    else:
        source, fix = 'archive', f'{archive} is not CIFAR-10: delete it and download it again'
        if not os.path.exists(archive):
            source = 'download'
            try:
                from torchvision.datasets.utils import download_url  # torchvision: only for this
                say(f'downloading CIFAR-10 into {data_dir} ...')
                atomic_write(archive, lambda tmp: download_url(URL, *os.path.split(tmp)))
            except Exception as e:  # no torchvision, no network, no room
                raise UserError(f'no CIFAR-10 in {data_dir}, and its download failed ('
                                f'{type(e).__name__}: {inert(e)}): put the archive there') from None
        packed, inflate = read_bytes(archive), zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:  # in memory, never extracted: all of the gzip stream first, so that its CRC is checked
            tar = tarfile.open(fileobj=io.BytesIO(inflate.decompress(packed, LIMIT)))
            if inflate.unconsumed_tail or not inflate.eof:
                raise ValueError('it ends early, or unpacks to more than CIFAR-10 holds')
            files = {m.name.rpartition('/')[2]: tar.extractfile(m).read() for m in tar
                     if m.isfile() and m.name.startswith('cifar-10-batches-py/')}
        except (ValueError, zlib.error, tarfile.TarError) as e:
            raise UserError(f'{archive} is damaged ({inert(e)}): download it again') from None
        md5 = hashlib.md5(packed).hexdigest()
        origin = f'{archive}, MD5 {md5} ' + ('(as released)' if md5 == MD5 else '(not as released)')
    splits = read_official(files, folder, fix)
    splits = {s: {**split, 'origin': origin} for s, split in splits.items()}
    try:
        for split, path in cache.items():
            atomic_write(path, lambda tmp: torch.save(splits[split], tmp))
    except OSError as e:
        say(f'note: cannot write the cache in {data_dir} ({e.strerror or e}); rereading next time')
    return splits, source


def write_log(folder, record, final=False):
    """log.json (log-rank<r>.json in process r > 0 under torchrun), rewritten whole after every run,
    and at the end (final) the original's log.pt with `code` and `accs`; by temp file and rename."""
    accs = [r['tta_val_acc'] for r in record['runs']]
    mean = sum(accs) / len(accs) if accs else None  # mean, std and n, as the original reports them
    std = math.sqrt(sum((a - mean)**2 for a in accs) / (len(accs) - 1)) if len(accs) > 1 else None
    record['summary'] = {'n': len(accs), 'mean': mean, 'std': std}
    name = os.path.join(folder, f"log-rank{record['rank']}" if record['rank'] else 'log')
    try:
        os.makedirs(folder, exist_ok=True)
        atomic_write(name + '.json', lambda tmp: pathlib.Path(tmp).write_text(json.dumps(record)))
        if final:
            accs = torch.tensor(accs, dtype=torch.float64)
            atomic_write(name + '.pt', lambda tmp: torch.save({**record, 'accs': accs}, tmp))
    except OSError as e:
        raise UserError(f'cannot write the log in {folder} ({e.strerror or e}): free some space or '
                        'use another --log-dir; its log.json keeps the runs it recorded') from None


def leaves(tree, prefix=''):
    """{'a.b': (the dict holding b, 'b')} for every leaf of a nested dict."""
    out = {}
    for k, v in tree.items():
        out.update(leaves(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: (tree, k)})
    return out


def check_ranges(hyp, ranges):
    """A UserError for the first hyperparameter outside its range: {key: (low, high) or choices}."""
    for key, allowed in ranges.items():
        tree, leaf = leaves(hyp)[key]
        choices = isinstance(allowed[0], str)
        if not (tree[leaf] in allowed if choices else allowed[0] <= tree[leaf] <= allowed[1]):
            rule = ' or '.join(map(repr, allowed)) if choices else 'in [{}, {}]'.format(*allowed)
            raise UserError(f'--set {key}={tree[leaf]!r} is out of range: it must be {rule}')


def apply_overrides(hyp, pairs):
    """(a copy of hyp with the --set KEY=VALUE pairs applied, {key: value}); a value is JSON (true
    or false in any case), else text, and must have the type of the default."""
    new, overrides = json.loads(json.dumps(hyp)), {}
    for pair in pairs:
        key, sep, text = (s.strip() for s in pair.partition('='))
        if not sep or key not in leaves(hyp):
            raise UserError(f'--set {inert(pair)!r} is not KEY=VALUE with a KEY of: '
                            + ', '.join(leaves(hyp)))
        tree, leaf = leaves(new)[key]
        default = leaves(hyp)[key][0][leaf]
        with contextlib.suppress(ValueError, RecursionError):
            text = json.loads(text.lower() if type(default) is bool else text)
        with contextlib.suppress(OverflowError):  # an int beyond a float's range is refused below
            text = float(text) if type(default) is float and type(text) is int else text
        if type(text) is not type(default) or type(text) is float and not math.isfinite(text):
            raise UserError(f'--set {key}={inert(text)!r}: expected a finite '
                            f'{type(default).__name__}, like the default {default!r}')
        tree[leaf] = overrides[key] = text
    return new, overrides


def parse_command_line(description, hyp, check_hyp, default_runs, argv=None):
    """The flags of every script: (args, hyp with the --set overrides applied and checked, them)."""
    p = argparse.ArgumentParser(description=description, epilog='Exit status: 0 done, 1 diverged, '
                                '2 bad input, 130 interrupted, 143 terminated.',
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runs', type=int, default=default_runs, metavar='N',
                   help=f'timed runs, 1 to 10^6 (default {default_runs}), reported as mean, std, n')
    p.add_argument('--data-dir', default=os.environ.get('AIRBENCH_DATA') or 'cifar10',
                   metavar='DIR', help='the CIFAR-10 folder (default: $AIRBENCH_DATA or ./cifar10)')
    p.add_argument('--device', choices=['auto', 'cuda', 'cpu', 'mps'], default='auto')
    p.add_argument('--seed', type=int, metavar='S',
                   help='run k uses seed S + k, the warmup S; S in 0..2^53 (default: random)')
    p.add_argument('--log-dir', default='logs', metavar='DIR', help='the logs\' folder (./logs)')
    p.add_argument('--no-warmup', action='store_true', help='no untimed warmup on random labels')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE', dest='overrides',
                   help='a hyperparameter, e.g. opt.train_epochs=2 (repeatable, type-checked, '
                        'logged); keys: ' + ', '.join(leaves(hyp)))
    args = p.parse_args(argv)
    if not 1 <= args.runs <= 10**6:
        p.error(f'argument --runs: must be in 1..10^6, got {args.runs}')
    if args.seed is not None and not 0 <= args.seed <= 2**53:  # JSON's float64 holds it exactly
        p.error(f'argument --seed: must be in 0..2^53, got {args.seed}')
    run_hyp, overrides = apply_overrides(hyp, args.overrides)
    check_hyp(run_hyp)
    return args, run_hyp, overrides


def join_torchrun():
    """(rank, world size, local rank, local world size) from torchrun's variables, checked. With
    more than one process they join in a thread: torch's wait for the others ignores signals."""
    names, failed = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'), []
    try:
        rank, world, local = (int(os.environ.get(name) or d) for name, d in zip(names, '010'))
        local_world = int(os.environ.get(names[3]) or world)
    except ValueError:
        rank = world = -1
    if not (0 <= rank < world <= 2**16 and 0 <= local < local_world <= world):
        found = ', '.join(f'{n}={inert(os.environ[n])!r}' for n in names if n in os.environ)
        raise UserError(f'the torchrun variables {found} disagree: use torchrun, or unset them')

    def join():
        try:
            dist.init_process_group('gloo')
        except Exception as e:  # MASTER_ADDR or MASTER_PORT unset or wrong, no peers in 30 min, ...
            failed.append(f'{type(e).__name__}: {inert(e)}')
    if world > 1:
        joining = threading.Thread(target=join, daemon=True)
        joining.start()
        while joining.is_alive():
            joining.join(0.2)
    if failed:
        raise UserError(f'the {world} processes did not join ({failed[0]}): use torchrun')
    return rank, world, local, local_world


def benchmark(args, hyp, overrides, train_fn, flops_fn, script_path):
    """The invocation. Under torchrun, run k goes to process (k - 1) mod world size, with seed S + k
    as in one process; each logs its runs in one folder (tools/summarize_logs.py merges them)."""
    script = os.path.basename(script_path)[:-3]
    rank, world, local, local_world = join_torchrun()
    dev = Device(args.device, index=local)
    if world > 1 and dev.type == 'cpu':  # the node's cores, divided between its processes
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if rank:  # rank 0 speaks for all
        sys.stdout = open(os.devnull, 'w')
    data, source = load_cifar10(args.data_dir)
    n_train, n_test = len(data['train']['labels']), len(data['test']['labels'])
    if hyp['opt']['batch_size'] > n_train:
        raise UserError(f"opt.batch_size={hyp['opt']['batch_size']} exceeds the {n_train} images")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    box = [f"{script}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}", seed]
    if world > 1:  # rank 0's folder and seed, for every process
        dist.broadcast_object_list(box, src=0)
    folder, seed = os.path.join(args.log_dir, box[0]), box[1]
    gpu = torch.cuda.get_device_name(dev.torch_device) if dev.type == 'cuda' else None
    smi, formats = None, f'{dev.model_dtype} weights'.replace('torch.', '')
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # nvidia-smi's report, if any
        smi = gpu and subprocess.run('nvidia-smi', capture_output=True, text=True, timeout=9).stdout
    if dev.autocast_dtype:
        formats += f', {dev.autocast_dtype} autocast'.replace('torch.', '')
    env = {'device': dev.type, 'gpu': gpu, 'nvidia_smi': smi, 'torch': str(torch.__version__),
           'cuda': torch.version.cuda, 'python': platform.python_version(),
           'cpu': platform.machine(), 'threads': torch.get_num_threads(),
           'summary': f'{dev.type} ({gpu or platform.machine()}; {formats})'
                      + (f'; note: {dev.note}' if dev.note else '')}
    record = {'script': script, 'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'argv': sys.argv,
              'hyp': hyp, 'overrides': overrides, 'seed': seed, 'warmup': not args.no_warmup,
              'warmup_seconds': None, 'world_size': world, 'rank': rank, 'environment': env,
              'flops_per_run': flops_fn(hyp, n_train, n_test), 'status': 'running', 'runs': [],
              'data': {'dir': os.path.abspath(args.data_dir), 'source': source,
                       'origin': data['train']['origin'], 'train': n_train, 'test': n_test},
              'code': pathlib.Path(script_path).read_text()}
    write_log(folder, record)
    say(f"{script}: {env['summary']}, torch {torch.__version__}")
    if world > 1:
        say(f'{world} processes (torchrun): run k on process (k - 1) mod {world}')
    say(f"data: {n_train} train / {n_test} test images from {args.data_dir} ({source}; "
        f"{inert(data['train']['origin'])}); {record['flops_per_run'] / 1e15:.3g} PFLOPs per run; "
        f"seed {seed}; overrides {overrides or 'none'}\nlog: {folder}")
    print_row({c: c for c in COLUMNS}, rule_before=True, rule_after=True)
    try:
        for run in ['warmup'] * record['warmup'] + list(range(1 + rank, args.runs + 1, world)):
            run_seed = seed if run == 'warmup' else seed + run
            torch.manual_seed(run_seed)
            train_loader, test_loader = make_loaders(hyp, dev, data)  # fresh for every run
            if run == 'warmup':  # it warms the device up (and compiles): its labels may be noise
                train_loader.labels = torch.randint_like(train_loader.labels, NUM_CLASSES)
            start = time.perf_counter()
            _, result = train_fn(hyp, dev, train_loader, test_loader, seed=run_seed, run=run)
            if run == 'warmup':
                record['warmup_seconds'] = time.perf_counter() - start
            else:
                record['runs'].append({**result, 'rank': rank, 'device': str(dev.torch_device)})
                write_log(folder, record)
        record['status'] = 'complete'
    except BaseException as e:
        record['status'] = {KeyboardInterrupt: 'interrupted', TrainingDiverged: 'diverged'}.get(
            type(e), 'failed')
        record['message'] = inert(e.args[0] if record['status'] == 'interrupted' and e.args else
                                  f'{type(e).__name__}: {e}')
        raise
    finally:  # what finished, however the runs ended
        record['finished'] = time.strftime('%Y-%m-%d %H:%M:%S')
        try:
            write_log(folder, record, final=True)
        except UserError:
            if record['status'] == 'complete':
                raise
        n, mean, std = record['summary'].values()
        if n:
            say(f"Mean: {mean:.4f}    Std: {'n/a' if std is None else format(std, '.4f')}    n: {n}"
                f"    time per run: {sum(r['time_seconds'] for r in record['runs']) / n:.2f} s"
                + (' (process 0)' if world > 1 else ''))
        ended = '' if record['status'] == 'complete' else f" ({record['status']} after {n} runs)"
        say(f'log{ended}: {os.path.abspath(folder)}'
            + (f'; tools/summarize_logs.py merges its {world} processes' if world > 1 else ''))
    return folder


def entry(main):
    """main() as a command: a failure that a user can cause or meet is one sentence and a status."""
    def terminated(signum, frame):  # SIGTERM (torchrun's too, stopping the others) acts as Ctrl-C
        raise KeyboardInterrupt('terminated (SIGTERM)', 128 + signum)
    signal.signal(signal.SIGTERM, terminated)
    try:
        return main()
    except UserError as e:
        status, message = 2, f'error: {e}'
    except TrainingDiverged as e:
        status, message = 1, f'{e}; stopped. Finished runs are in the log.'
    except KeyboardInterrupt as e:
        status = e.args[1] if len(e.args) > 1 else 130
        message = f"{e.args[0] if e.args else 'interrupted'}; the log keeps every finished run"
    with contextlib.suppress(OSError):
        rank = f" (rank {inert(os.environ['RANK'])})" if 'RANK' in os.environ else ''
        print(f'{os.path.basename(sys.argv[0])}{rank}: {message}', file=sys.stderr)
    sys.exit(status)
#=== end shared: harness


def check_hyp(hyp):
    """Refuses in one sentence what the method cannot run with (--set has checked the types); upper
    bounds keep a slip such as opt.train_epochs=1e12 from exhausting memory."""
    check_ranges(hyp, {
        'opt.train_epochs': (1e-3, 1000), 'opt.batch_size': (1, 50000), 'opt.lr': (1e-9, math.inf),
        'opt.momentum': (0, 0.999), 'opt.weight_decay': (0, math.inf),
        'opt.bias_scaler': (1e-9, math.inf), 'opt.label_smoothing': (0, 1),
        'opt.lr_start': (0, math.inf), 'opt.lr_peak_at': (1e-6, 0.999), 'opt.lr_end': (0, math.inf),
        'aug.flip': ('alternating', 'random', 'none'), 'aug.translate': (0, 8),
        'aug.cutout': (0, 32), 'net.batchnorm_momentum': (0, 1), 'net.tta_level': (0, 2),
        **{f'net.widths.{block}': (1, 4096) for block in hyp['net']['widths']},
        'net.whiten_images': (1, 50000), 'net.whiten_eps': (1e-12, math.inf),
        'opt.whiten_bias_epochs': (0, 1000),
        'opt.lookahead_every': (1, 10**6), 'opt.lookahead_decay': (0, 1),
    })


def main(argv=None):
    args, run_hyp, overrides = parse_command_line(__doc__, hyp, check_hyp, 25, argv)
    net = []

    def train_compiled(hyp, dev, *loaders, **run):
        if not net:  # built and compiled once: the first run to call (the warmup) pays for it
            net.extend(compile_net(hyp, dev))
        return train(hyp, dev, *loaders, net=net, **run)
    return benchmark(args, run_hyp, overrides, train_compiled, flops_per_run, __file__)


if __name__ == '__main__':
    entry(main)
