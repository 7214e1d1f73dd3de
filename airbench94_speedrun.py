"""airbench94_speedrun.py: hiverge's cifar10-speedrun, CIFAR-10 to 94% in 243 steps.

Published (hiverge/cifar10-speedrun at 5cd49b1; not ours): 94.01% mean TTA accuracy in n=2000 runs
(std 0.13; 93.17% without TTA), 2.015 s per run on an A100, torch 2.4.0: the current 94% record.
Ours: 90.73% (n=4, std 0.13), CPU runs on the JPEG copy (the 4 logs/airbench94_speedrun-20261201-*).
Parent: airbench94_muon.py. The method: docs/method.md §3, §5; in this project: §5.1, §5.2. Changes:
- batch 1536, 7.59 epochs (243 steps); SiLU in the ConvGroups; BatchNorm momentum 0.5566
- the whitening filters from the SVD of 960 images' patch covariance
- Muon: one batched Newton-Schulz for the six filters; weight renormalisation on 37 of 243 steps
- decoupled weight decay; other lrs, momenta, Newton-Schulz settings and label smoothing (0.09)
- a brightness/contrast jitter every epoch; selective TTA (6 views for the 25% least confident)
- the whole net in fp16 on CUDA, BatchNorm included; one timed interval

    python airbench94_speedrun.py                       # warmup + 200 timed runs on the best device
    python airbench94_speedrun.py --runs 1 --no-warmup  # one run
    python airbench94_speedrun.py --set aug.brightness=0 --set aug.contrast=0   # no jitter (--help)

Needs torch (numpy to read the official CIFAR-10 files, torchvision only to download them). Data and
logs: docs/data.md and docs/logs.md.
"""

#############################################
#              Hyperparameters              #
#############################################
# Every value is the original's (hiverge/cifar10-speedrun), which hard-codes them.

hyp = {
    'opt': {
        'train_epochs': 7.59,      # epochs (ceil(7.59 x 32) = 243 steps)
        'batch_size': 1536,        # examples per step (32 steps per epoch)
        'filter_lr': 0.205,        # Muon lr of the 3x3 conv filters (their updates are orthogonalised)
        'filter_momentum': 0.655,  # Muon's Nesterov momentum
        'bias_lr': 0.0573,         # SGD lr of the whitening bias and of the BatchNorm biases
        'head_lr': 0.5415,         # SGD lr of the linear head
        'momentum': 0.825,         # SGD's Nesterov momentum
        'weight_decay': 1.0418e-6, # per example; wd = this x batch_size (0.0016002): each SGD group's weight_decay
                                   # is wd / its lr, and Muon multiplies the filters by 1 - lr x wd after every step
        'label_smoothing': 0.09,
        'whiten_bias_epochs': 0.19, # the whitening bias trains for ceil(0.19 x 32) = 7 steps, its lr falling to 0 there
        'ns_steps': 3,             # Newton-Schulz iterations per Muon update
        'ns_coefficients': [3.4576, -4.7391, 2.0843],  # (a, b, c) of X <- aX + (bA + cA^2)X, A = XX^T
        'ns_eps': 1e-5,            # added to the Frobenius norm in Newton-Schulz's two normalisations
        'ns_magnitude': [0.5012, 0.0786],  # target norm of the first normalisation, linear from the first
                                   # value to the second over the run (the second normalisation cancels it)
        'ns_pad_multiple': 16,     # the stack's columns are rounded up to a multiple of this (2304 already is)
        'renorm_every': 2,         # Muon renormalises the weights when this many steps ...
        'renorm_every_growth': 15, # ... + floor(this x step / total steps) have passed since it last did (37 of 243)
        'renorm_eps': 1e-7,        # W <- W x sqrt(out_channels) / (||W||_F + this)
    },
    'aug': {
        'flip': 'alternating',     # 'alternating' (paper §3.6), 'random' (p=0.5 per image per epoch), 'none'
        'translate': 2,            # pixels of reflect-padded random translation
        'brightness': 0.1399,      # per-image shift b, uniform in +-this, in normalised units (channel stds)
        'contrast': 0.1308,        # per-image factor g, uniform in 1 +- this: x -> (x + b) g; both 0: no jitter
        'cutout': 0,               # side of the zeroed square, 0 = off
    },
    'net': {
        'widths': {'block1': 64, 'block2': 256, 'block3': 256},  # output channels of the 3 ConvGroups
        'batchnorm_momentum': 0.5566,  # weight on the old running stats (PyTorch momentum 0.4434)
        'whiten_images': 960,      # training images whose 2x2 patches initialise the whitening conv
        'whiten_eps': 5e-4,        # added to the patch covariance's singular values
        'tta_fraction': 0.25,      # the least confident fraction of the test images (by max softmax) get the
                                   # 6 views; 0: one plain pass, 1: 6 views for every image
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
        self.activ = nn.SiLU()

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
    """The network in fp32 on the current default device; prepare_net() moves it."""
    widths, momentum = hyp['net']['widths'], hyp['net']['batchnorm_momentum']
    whiten_kernel_size = 2
    whiten_width = 2 * 3 * whiten_kernel_size**2  # 12 whitening filters and their negations
    net = nn.Sequential(
        nn.Conv2d(3, whiten_width, kernel_size=whiten_kernel_size, padding=0, bias=True),
        nn.GELU(),  # still GELU here: only the ConvGroups use SiLU
        ConvGroup(whiten_width, widths['block1'], momentum),
        ConvGroup(widths['block1'], widths['block2'], momentum),
        ConvGroup(widths['block2'], widths['block3'], momentum),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(widths['block3'], num_classes, bias=False),
        Mul(1 / widths['block3']),  # the logits divided by the head's input width
    )
    net[0].weight.requires_grad = False  # set by init_whitening_conv() and never trained
    # the whitening bias keeps nn.Conv2d's default init (uniform in +-1/sqrt(12)), as in the original
    head = net[-2].weight.data
    head.mul_(1 / head.std())  # the head starts at unit std
    return net


def prepare_net(net, dev):
    """Moves a freshly built net to the device in its training formats: on CUDA every module in
    fp16, BatchNorm included, channels_last, as the original; elsewhere the family's (Device.prepare)."""
    if dev.type != 'cuda':
        return dev.prepare(net)
    return net.to(dev.torch_device, torch.float16).to(memory_format=torch.channels_last)

#############################################
#       Whitening conv initialization       #
#############################################

def whitening_filters(images, kernel_size, eps):
    """Singular vectors of the (uncentred) covariance of all kernel_size^2 patches of the images,
    each times 1/sqrt(singular value + eps), largest first, then their negations. For this symmetric
    positive semi-definite matrix the SVD gives the eigenvectors and eigenvalues (airbench94's eigh
    whitening up to their order and signs, which the negated copies make irrelevant).
    Computed in fp32 outside autocast."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = images.float()
        c = x.size(1)
        patches = x.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # N, C, H', W', k, k
        patches = patches.transpose(1, 3).reshape(-1, c * kernel_size**2)  # rows in (C, k, k) order
        covariance = patches.T @ patches / len(patches)
        u, s, _ = torch.linalg.svd(covariance)
        filters = (u * torch.rsqrt(s + eps)).T.reshape(-1, c, kernel_size, kernel_size)
        return torch.cat((filters, -filters))


def init_whitening_conv(conv, images, eps):
    conv.weight.data.copy_(whitening_filters(images, conv.kernel_size[0], eps))

#############################################
#                    Muon                   #
#############################################

def newton_schulz_stack(updates, step, total_steps, steps, coefficients, eps, magnitude, pad_multiple, dtype):
    """Orthogonalises all updates at once. Each is reshaped to out_channels x rest, zero-padded on the
    bottom and right to the largest row count x the largest column count (rounded up to pad_multiple),
    and the stack goes through one batched iteration; each slice is cropped back. Zero padding is
    exact: padded rows and columns stay zero, so a slice comes out as its matrix alone would.
    Per slice X: X <- X t / (||X||_F + eps) with t linear from magnitude[0] to magnitude[1] as step
    goes to total_steps; X <- X / (||X||_F + eps); then `steps` times X <- aX + (bA + cA^2)X with
    A = XX^T, on the wide orientation of the stack, in `dtype`."""
    a, b, c = coefficients
    matrices = [u.reshape(len(u), -1) for u in updates]
    rows = max(len(m) for m in matrices)
    cols = -(-max(m.size(1) for m in matrices) // pad_multiple) * pad_multiple
    x = torch.stack([F.pad(m.to(dtype), (0, cols - m.size(1), 0, rows - len(m))) for m in matrices])
    progress = step / total_steps
    target = magnitude[0] * (1 - progress) + magnitude[1] * progress
    x = x * (target / (x.norm(dim=(1, 2), keepdim=True) + eps))
    x = x / (x.norm(dim=(1, 2), keepdim=True) + eps)
    tall = rows > cols
    if tall:
        x = x.mT
    for _ in range(steps):
        A = x @ x.mT
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    if tall:
        x = x.mT
    return [x[i, :len(m), :m.size(1)].reshape(u.shape) for i, (m, u) in enumerate(zip(matrices, updates))]


class Muon(torch.optim.Optimizer):
    """Muon for weights of 2 or more dimensions, all updated together (one param group).

    Per step (step_count = 1, 2, ..., total_steps), with g the gradients:
        buf = momentum * buf + g;  u = g + momentum * buf (Nesterov)
        if step_count - last renormalisation >= renorm_every + floor(renorm_every_growth * step_count / total_steps):
            w = w * sqrt(out_channels) / (||w||_F + renorm_eps)   (norms taken before this step's update)
        w = w - lr * newton_schulz_stack(u)
        w = w * (1 - lr * weight_decay)                          (decoupled weight decay)
    The steps that renormalised are listed in renorm_steps. compile=True compiles the iteration
    (fullgraph; used on CUDA)."""

    def __init__(self, params, lr, momentum, weight_decay, total_steps, renorm_every, renorm_every_growth,
                 renorm_eps, ns_steps, ns_coefficients, ns_eps, ns_magnitude, ns_pad_multiple, ns_dtype,
                 nesterov=True, compile=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        self.total_steps, self.step_count, self.renorm_steps = total_steps, 0, []
        self.renorm = (renorm_every, renorm_every_growth, renorm_eps)
        self.ns = (ns_steps, tuple(ns_coefficients), ns_eps, tuple(ns_magnitude), ns_pad_multiple, ns_dtype)
        self.orthogonalise = torch.compile(newton_schulz_stack, fullgraph=True) if compile else newton_schulz_stack

    @torch.no_grad()
    def step(self):
        group = self.param_groups[0]
        self.step_count += 1
        params = [p for p in group['params'] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        for p, g in zip(params, grads):
            if 'momentum_buffer' not in self.state[p]:
                self.state[p]['momentum_buffer'] = torch.zeros_like(g)
        buffers = [self.state[p]['momentum_buffer'] for p in params]
        torch._foreach_mul_(buffers, group['momentum'])
        torch._foreach_add_(buffers, grads)
        updates = torch._foreach_add(grads, buffers, alpha=group['momentum']) if group['nesterov'] else buffers
        every, growth, eps = self.renorm
        last = self.renorm_steps[-1] if self.renorm_steps else 0
        renorm = self.step_count - last >= every + int(growth * (self.step_count / self.total_steps))
        if renorm:
            self.renorm_steps.append(self.step_count)
            scales = [(len(p)**0.5 / (norm + eps)).to(p.dtype) for p, norm in zip(params, torch._foreach_norm(params))]
        orthogonal = self.orthogonalise(updates, self.step_count, self.total_steps, *self.ns)
        if renorm:
            torch._foreach_mul_(params, scales)
        torch._foreach_add_(params, [u.to(p.dtype) for p, u in zip(params, orthogonal)], alpha=-group['lr'])
        decay = 1 - group['lr'] * group['weight_decay']
        if decay != 1:
            torch._foreach_mul_(params, decay)

#############################################
#             Evaluation and TTA            #
#############################################

def tta_views(images):
    """The 6 views of selective TTA: the images, their 1-pixel diagonal translations (the crops at
    (0, 0) and (2, 2) of a reflect-pad-1 copy: content moved down-right and up-left), and the
    mirrors of these three."""
    side = images.size(-1)
    padded = F.pad(images, (1,) * 4, 'reflect')
    views = [images, padded[:, :, :side, :side], padded[:, :, 2:side + 2, 2:side + 2]]
    return views + [v.flip(-1) for v in views]


def selective_tta(model, loader, tta_fraction, eval_batch_size=2000):
    """(plain logits, TTA logits) of every image of the loader, in order, fp32. One plain pass; then
    the int(tta_fraction x N) images of lowest max softmax probability get the mean of their 6
    views' logits, equally weighted; the others keep their plain logits."""
    model.eval()
    images, memory_format = loader.normalize(loader.images), loader.dev.memory_format
    with torch.no_grad(), loader.dev.autocast():
        plain = torch.cat([model(x.contiguous(memory_format=memory_format)).float()
                           for x in images.split(eval_batch_size)])
        k = int(tta_fraction * len(images))
        logits = plain.clone()
        if k > 0:
            uncertain = plain.softmax(1).amax(1).topk(k, largest=False, sorted=False).indices
            logits[uncertain] = torch.cat([
                torch.stack([model(v.contiguous(memory_format=memory_format)).float()
                             for v in tta_views(images[idx])]).mean(0)
                for idx in uncertain.split(eval_batch_size)])
    return plain, logits


def infer(model, loader, tta_fraction=0.0, eval_batch_size=2000):
    """Logits for every image of the loader, in order, under selective TTA (0: the plain pass)."""
    return selective_tta(model, loader, tta_fraction, eval_batch_size)[1]


def evaluate(model, loader, tta_fraction=0.0):
    logits = infer(model, loader, tta_fraction)
    return (logits.argmax(1) == loader.labels).float().mean().item()

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


def lr_factors(step, total_steps, bias_steps):
    """lr multipliers at a step: (the whitening bias's group, every other group). Both fall
    linearly from 1: the first to 0 at bias_steps (when the bias freezes), the second at total_steps."""
    return max(0.0, 1 - step / bias_steps) if bias_steps else 0.0, 1 - step / total_steps


def sgd_fused_supported(dev):
    try:
        torch.optim.SGD([torch.zeros(1, device=dev.torch_device, requires_grad=True)], lr=0.1, fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def make_muon(filters, opt, total_steps, ns_dtype, compile=False):
    """Muon with the hyperparameters of opt; its decoupled weight decay is wd = weight_decay x batch_size."""
    return Muon(filters, lr=opt['filter_lr'], momentum=opt['filter_momentum'],
                weight_decay=opt['weight_decay'] * opt['batch_size'], total_steps=total_steps,
                renorm_every=opt['renorm_every'], renorm_every_growth=opt['renorm_every_growth'],
                renorm_eps=opt['renorm_eps'], ns_steps=opt['ns_steps'], ns_coefficients=opt['ns_coefficients'],
                ns_eps=opt['ns_eps'], ns_magnitude=opt['ns_magnitude'], ns_pad_multiple=opt['ns_pad_multiple'],
                ns_dtype=ns_dtype, compile=compile)


def make_optimizers(model, opt, dev, total_steps):
    """SGD for the whitening bias, BatchNorm biases and head; Muon for the trainable conv filters,
    its Newton-Schulz in fp16 on CUDA (the original's), else in the device's autocast dtype."""
    wd = opt['weight_decay'] * opt['batch_size']
    norm_biases = [m.bias for m in model.modules() if isinstance(m, BatchNorm)]
    groups = [dict(params=[model[0].bias], lr=opt['bias_lr'], weight_decay=wd / opt['bias_lr']),
              dict(params=norm_biases, lr=opt['bias_lr'], weight_decay=wd / opt['bias_lr']),
              dict(params=[model[-2].weight], lr=opt['head_lr'], weight_decay=wd / opt['head_lr'])]
    sgd = torch.optim.SGD(groups, momentum=opt['momentum'], nesterov=True,
                          **({'fused': True} if sgd_fused_supported(dev) else {}))
    filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    ns_dtype = torch.float16 if dev.type == 'cuda' else dev.autocast_dtype or torch.float32
    muon = make_muon(filters, opt, total_steps, ns_dtype, compile=dev.type == 'cuda')
    for optimizer in (sgd, muon):
        for group in optimizer.param_groups:
            group['initial_lr'] = group['lr']
    return sgd, muon


def make_training_step(model, dev):
    """training_step(inputs, labels, label_smoothing) -> (summed loss, logits): the forward pass
    (under the device's autocast) and the label-smoothed cross-entropy, in the weights' dtype (fp16
    on CUDA, as the original; fp32 elsewhere)."""
    def training_step(inputs, labels, label_smoothing):
        inputs = inputs.contiguous(memory_format=dev.memory_format)
        if dev.autocast_dtype is None:
            outputs = model(inputs)
        else:
            with torch.autocast(device_type=dev.type, dtype=dev.autocast_dtype):
                outputs = model(inputs)
        loss = F.cross_entropy(outputs.to(dev.model_dtype), labels, label_smoothing=label_smoothing, reduction='sum')
        return loss, outputs
    return training_step


def compile_net(hyp, dev):
    """The invocation's one net, the module that evaluates it and its training step: on CUDA the net
    compiled with max-autotune and the step with max-autotune and fullgraph, as in the original;
    eager elsewhere (on a CPU compiling made airbench94's net slower: README.md, "Devices and precision")."""
    model = prepare_net(make_net(hyp), dev)
    step = make_training_step(model, dev)
    if dev.type != 'cuda':
        return model, model, step
    return (model, torch.compile(model, mode='max-autotune', dynamic=False),
            torch.compile(step, mode='max-autotune', fullgraph=True, dynamic=False))


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


def make_loaders(hyp, dev, data):
    """Fresh loaders for one run: the training split augmented as hyp['aug'] says, the test split plain."""
    return (CifarLoader(data['train'], dev, hyp['opt']['batch_size'], train=True, aug=hyp['aug']),
            CifarLoader(data['test'], dev, 2000, train=False))


def noise_loaders(train_loader, test_loader):
    """The original's warmup data: standard-normal noise for every image, training and test, and
    random test labels (the harness draws the warmup's random training labels)."""
    train_loader.images = torch.randn_like(train_loader.images)
    test_loader.images = torch.randn_like(test_loader.images)
    test_loader.labels = torch.randint_like(test_loader.labels, NUM_CLASSES)


def between_runs(dev):
    """The original's pause before each timed run, on CUDA only (elsewhere there is nothing to do):
    torch.cuda.empty_cache(), torch.cuda.synchronize(), then torch.cuda._sleep(6e9), a kernel that
    spins the GPU for 6e9 clock cycles (4.3 s at an A100's 1.41 GHz boost clock). The original gives
    no reason. It does this in its __main__ loop before every call of main() but the warmup's, so
    before main() loads the data, builds the optimizers and starts its clock. Here main()'s wrapper
    calls it before train() for every timed run, once the harness has made the run's loaders; the
    clock starts later, inside train(). The sleep is queued ahead of the run's first timing event,
    so the events never count it, and the host waits for it at train()'s first host-to-device copy
    (the net's re-initialisation), as the original's host does at its data load."""
    if dev.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda._sleep(6_000_000_000)


def diverged_at(finite, steps_per_epoch, total_steps, run):
    """TrainingDiverged naming the first step whose loss was not finite, or None."""
    bad = torch.stack(finite).logical_not().nonzero()
    if not len(bad):
        return None
    step = int(bad[0]) + 1
    return TrainingDiverged(f'the training loss became NaN or infinite at step {step} of {total_steps} '
                            f'(run {run}, epoch {(step - 1) // steps_per_epoch + 1})')


def train(hyp, dev, train_loader, test_loader=None, seed=None, run=0, verbose=True, callback=None, net=None):
    """One training run on the loaders' data; returns (the trained model, the run's record).

    net: the (model, evaluated module, training step) triple of compile_net() to train again,
    re-initialised as a fresh net (the script builds it once per invocation); None builds a new one.
    seed, if given, seeds torch's generator first. The record holds the final TTA accuracy and the
    plain one (the TTA's base pass; None without a test loader), the seconds of the one timed
    interval, the steps, the steps at which Muon renormalised and the per-epoch history (the last
    batch's loss and accuracy; no per-epoch evaluation, as in the original); verbose prints the
    per-epoch table once the clock has stopped; callback(model, epoch record), if given, runs after
    every epoch with the clock stopped. Raises TrainingDiverged when the loss became NaN or infinite."""
    model, compiled, training_step = net or compile_net(hyp, dev)  # before seeding: the run's init is the reinit
    if seed is not None:
        torch.manual_seed(seed)
    o, n = hyp['opt'], hyp['net']
    total_steps = train_steps(o, len(train_loader.images))
    train_loader.epoch = 0  # a loader may be trained on again: its epoch 0 prepares the images afresh
    bias_steps = min(total_steps, ceil(o['whiten_bias_epochs'] * len(train_loader)))

    reinit_net(model, make_net(hyp))
    sgd, muon = make_optimizers(model, o, dev, total_steps)
    timer, step, finite, ends, history = Timer(dev), 0, [], [], []

    def epoch_record(i):
        loss, outputs, labels = ends[i]
        return {'epoch': i + 1, 'train_loss': loss.item() / len(labels),
                'train_acc': (outputs.argmax(1) == labels).float().mean().item(), 'val_acc': None}

    timer.__enter__()  # one interval, from the whitening init to the end of the TTA: no host sync inside
    whiten_images = train_loader.normalize(train_loader.images[:n['whiten_images']])
    init_whitening_conv(model[0], whiten_images, n['whiten_eps'])
    for epoch in range(ceil(o['train_epochs'])):
        model.train()
        for inputs, labels in train_loader:
            model[0].bias.requires_grad = step < bias_steps
            loss, outputs = training_step(inputs, labels, o['label_smoothing'])
            loss.backward()
            bias_factor, factor = lr_factors(step, total_steps, bias_steps)
            sgd.param_groups[0]['lr'] = sgd.param_groups[0]['initial_lr'] * bias_factor
            for group in sgd.param_groups[1:] + muon.param_groups:
                group['lr'] = group['initial_lr'] * factor
            sgd.step()
            sgd.zero_grad(set_to_none=True)
            muon.step()
            muon.zero_grad(set_to_none=True)
            finite.append(torch.isfinite(loss))  # checked once per epoch: a check per step would sync
            step += 1
            if step >= total_steps:
                break
        ends.append((loss.detach(), outputs.detach(), labels))
        if callback is not None:  # the caller's code is not timed: the clock stops around it
            timer.__exit__()
            if (error := diverged_at(finite, len(train_loader), total_steps, run)) is not None:
                raise error
            history.append(epoch_record(epoch))
            callback(model, history[-1])
            timer.__enter__()
    val_acc = tta_val_acc = None
    if test_loader is not None:
        plain, logits = selective_tta(compiled, test_loader, n['tta_fraction'])
        hits = torch.stack([(x.argmax(1) == test_loader.labels).float().mean() for x in (plain, logits)])
    timer.__exit__()

    if (error := diverged_at(finite, len(train_loader), total_steps, run)) is not None:
        raise error
    history += [epoch_record(i) for i in range(len(history), len(ends))]
    if test_loader is not None:
        val_acc, tta_val_acc = hits.tolist()
    if verbose:
        for e in history:
            print_row({'run': run if e['epoch'] == 1 else None, **e})
        print_row({'epoch': 'eval', 'val_acc': val_acc, 'tta_val_acc': tta_val_acc, 'time_seconds': timer.seconds},
                  rule_after=True)
    return model, {'run': run, 'seed': seed, 'tta_val_acc': tta_val_acc, 'val_acc': val_acc,
                   'time_seconds': timer.seconds, 'steps': step, 'renorm_steps': muon.renorm_steps,
                   'epochs': history}


#=== shared: flops
def count_flops(fn):
    """FLOPs of fn() as torch.utils.flop_counter counts them (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode  # it imports sympy: only when counting
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
#=== end shared: flops


def flops_per_run(hyp, n_train, n_test):
    """FLOPs of one run: every training step (forward, backward with and without the whitening-bias
    gradient, and the Newton-Schulz matmuls of the padded stack) plus the selective TTA (a plain pass
    over the test set, 6 views of its tta_fraction). Counted on the meta device, so nothing is
    computed. Left out: the whitening init (~0.2 GFLOP)."""
    o = hyp['opt']
    total_steps = train_steps(o, n_train)
    bias_steps = min(total_steps, ceil(o['whiten_bias_epochs'] * (n_train // o['batch_size'])))
    uncertain = int(hyp['net']['tta_fraction'] * n_test)
    with torch.device('meta'):
        model = make_net(hyp)
        inputs, labels = torch.empty(o['batch_size'], 3, 32, 32), torch.zeros(o['batch_size'], dtype=torch.long)
        muon = make_muon([p for p in model.parameters() if p.ndim == 4 and p.requires_grad], o, total_steps,
                         torch.float32)

        def step():
            F.cross_entropy(model(inputs), labels, reduction='sum').backward()
            muon.step()
        flops = []
        for trainable in (True, False):
            model[0].bias.requires_grad = trainable
            flops.append(count_flops(step))
        model.eval()
        with torch.no_grad():
            tta = count_flops(lambda: model(torch.empty(n_test, 3, 32, 32)))
            tta += 6 * count_flops(lambda: model(torch.empty(uncertain, 3, 32, 32))) if uncertain else 0
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
        'opt.train_epochs': (1e-3, 1000), 'opt.batch_size': (1, 50000), 'opt.momentum': (0, 0.999),
        'opt.weight_decay': (0, math.inf), 'opt.label_smoothing': (0, 1),
        'aug.flip': ('alternating', 'random', 'none'), 'aug.translate': (0, 8),
        'aug.cutout': (0, 32), 'net.batchnorm_momentum': (0, 1),
        **{f'net.widths.{block}': (1, 4096) for block in hyp['net']['widths']},
        'net.whiten_images': (1, 50000), 'net.whiten_eps': (1e-12, math.inf),
        'opt.whiten_bias_epochs': (0, 1000),
        'opt.filter_lr': (1e-9, math.inf), 'opt.filter_momentum': (0, 0.999),
        'opt.bias_lr': (1e-9, math.inf), 'opt.head_lr': (1e-9, math.inf), 'opt.ns_steps': (1, 100),
        'opt.ns_eps': (1e-30, 1), 'opt.ns_pad_multiple': (1, 4096), 'opt.renorm_every': (1, 10**6),
        'opt.renorm_every_growth': (0, 10**6), 'opt.renorm_eps': (0, 1), 'aug.brightness': (0, 1),
        'aug.contrast': (0, 0.999), 'net.tta_fraction': (0, 1),
    })
    for key, length in (('ns_coefficients', 3), ('ns_magnitude', 2)):
        value = hyp['opt'][key]
        if not (len(value) == length and all(type(v) in (int, float) and abs(v) < 1e6 for v in value)):
            raise UserError(f'--set opt.{key}={value!r}: expected a list of {length} numbers below 1e6')
    if min(hyp['opt']['ns_magnitude']) <= 0:
        raise UserError('--set opt.ns_magnitude must hold positive numbers')


def main(argv=None):
    args, run_hyp, overrides = parse_command_line(__doc__, hyp, check_hyp, 200, argv)
    net = []

    def train_speedrun(hyp, dev, train_loader, test_loader, **run):
        if not net:  # built once per invocation (and compiled on CUDA: the warmup pays for it)
            net.extend(compile_net(hyp, dev))
        if run['run'] == 'warmup':  # as the original's: noise images, random labels
            noise_loaders(train_loader, test_loader)
        else:  # as the original's: no sleep before the warmup, one before every timed run, untimed
            between_runs(dev)
        return train(hyp, dev, train_loader, test_loader, net=net, **run)
    return benchmark(args, run_hyp, overrides, train_speedrun, flops_per_run, __file__)


if __name__ == '__main__':
    entry(main)
