"""Code written for the original airbench package (0.1.8 on PyPI) runs unchanged on the package, or
is refused in one sentence (issue 28). One test or more per item of the issue; each expectation is
what 0.1.8 did in our user programs, run on a CPU copy of 0.1.8 on this synthetic data (how that copy
was made and every observation: the issue's notes). No expectation is a trained accuracy: they are
shapes, names, signatures, hyperparameters, which images an epoch mirrors or shifts, which parameters
an optimizer group holds, and the learning rate of each step."""
import importlib
import inspect
import io
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

import synthetic
from conftest import REPO

sys.path.insert(0, str(REPO))  # the package, also where the project is not installed (pip install -e .)
import airbench  # noqa: E402

TINY = {'block1': 16, 'block2': 32, 'block3': 32}


def tiny94():
    return airbench.make_net94(widths=dict(TINY))


def tiny96():
    return airbench.make_net96(widths=dict(TINY))


def one_sentence(info, *fragments):
    message = str(info.value)
    assert '\n' not in message and all(f in message for f in fragments), message


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny nets run fastest on one thread, and a busy machine's cores are not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def loader200(cifar_dir):
    """A training loader of 200 images in batches of 100 (2 steps per epoch)."""
    loader = airbench.CifarLoader(cifar_dir, train=True, batch_size=100)
    loader.images, loader.labels = loader.images[:200], loader.labels[:200]
    return loader


class SGDSpy(torch.optim.SGD):
    """torch.optim.SGD that records its param groups and, at every step, each group's lr."""
    made = []

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.lrs = []
        SGDSpy.made.append(self)

    def step(self, *args, **kwargs):
        self.lrs.append([float(g['lr']) for g in self.param_groups])  # float(): a tensor lr is updated in place
        return super().step(*args, **kwargs)


@pytest.fixture
def sgd_spy(monkeypatch):
    SGDSpy.made = []
    monkeypatch.setattr(torch.optim, 'SGD', SGDSpy)
    return SGDSpy.made


# ---------------------------------------------------------------- 1. the data folder 0.1.8 wrote


def write_like_0_1_8(folder, n_train=300, n_test=100):
    """train.pt/test.pt as 0.1.8 writes them: torch.tensor(torchvision's CIFAR10.data), which is the
    official rows reshaped to NCHW and transposed to NHWC; torch.tensor keeps those strides, so the
    saved images are NOT contiguous. No official files beside them (a user may have deleted them)."""
    folder.mkdir()
    splits = {}
    for name, n, seed in (('train', n_train, 11), ('test', n_test, 12)):
        images, labels = synthetic.make_split(n, seed)
        rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n, 3072)  # the official layout
        data = rows.reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # torchvision's "convert to HWC"
        split = {'images': torch.tensor(data), 'labels': torch.tensor(labels), 'classes': list(synthetic.CLASSES)}
        assert not split['images'].is_contiguous() and split['labels'].dtype == torch.int64
        torch.save(split, folder / f'{name}.pt')
        splits[name] = split
    return splits


def test_item01_a_data_folder_written_by_0_1_8_is_read(tmp_path):
    # 0.1.8 reads its own files; the project refused them ("expected a dense uint8 tensor").
    folder = tmp_path / 'cifar10'
    splits = write_like_0_1_8(folder)
    for train, split in ((True, splits['train']), (False, splits['test'])):
        loader = airbench.CifarLoader(str(folder), train=train, batch_size=100)
        expected = split['images'].permute(0, 3, 1, 2).float() / 255
        assert loader.images.shape == expected.shape
        assert torch.allclose(loader.images.float().cpu(), expected, atol=1e-3)
        assert torch.equal(loader.labels.cpu(), split['labels']) and loader.classes == synthetic.CLASSES
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith('.')) == ['test.pt', 'train.pt']


# ---------------------------------------------------------------- 2. train96 / make_net96 are 0.1.8's

ORDER = ['train_loader', 'epochs', 'label_smoothing', 'learning_rate', 'bias_scaler', 'momentum', 'weight_decay',
         'whiten_bias_epochs', 'tta_level', 'make_net', 'run', 'verbose']


def test_item02_train96_signature_and_defaults_are_0_1_8s():
    params = inspect.signature(airbench.train96).parameters
    positional = [p.name for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ORDER  # 0.1.8's train96 has no lr_peak/lr_end: it raises TypeError on them
    assert 'lr_peak' not in params and 'lr_end' not in params
    assert {k: params[k].default for k in ORDER if k not in ('train_loader', 'make_net')} == dict(
        epochs=40.0, label_smoothing=0.2, learning_rate=9.0, bias_scaler=64.0, momentum=0.85, weight_decay=0.0153,
        whiten_bias_epochs=3, tta_level=2, run=0, verbose=True)
    assert params['make_net'].default is airbench.make_net96
    defaults = inspect.signature(airbench.make_net96).parameters
    assert defaults['widths'].default == {'block1': 128, 'block2': 512, 'block3': 512}
    assert defaults['batchnorm_momentum'].default == 0.6


def test_item02_make_net96_is_the_papers_net():
    net = airbench.make_net96(device='cpu')
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [24] + [128] * 3 + [512] * 6
    assert {round(b.momentum, 6) for b in norms} == {0.4} and len(norms) == 9  # airbench's 0.6 = PyTorch's 0.4
    assert sum(p.numel() for p in net.parameters()) == 12721208  # 0.1.8's make_net96(), counted
    group_keys = [k for k in net.state_dict() if k.startswith('2.')]
    assert group_keys == ['2.conv1.weight', '2.norm1.weight', '2.norm1.bias', '2.norm1.running_mean',
                          '2.norm1.running_var', '2.norm1.num_batches_tracked', '2.conv2.weight', '2.norm2.weight',
                          '2.norm2.bias', '2.norm2.running_mean', '2.norm2.running_var',
                          '2.norm2.num_batches_tracked', '2.conv3.weight', '2.norm3.weight', '2.norm3.bias',
                          '2.norm3.running_mean', '2.norm3.running_var', '2.norm3.num_batches_tracked']


def test_item02_make_net96_adds_the_residual_after_the_last_gelu():
    torch.manual_seed(0)
    group = airbench.make_net96(widths=dict(TINY), device='cpu')[3].float().eval()  # block2: 16 -> 32 channels
    x = torch.randn(4, 16, 16, 16)
    with torch.no_grad():
        x0 = group.activ(group.norm1(group.pool(group.conv1(x))))
        inner = group.activ(group.norm2(group.conv2(x0)))
        expected = group.activ(group.norm3(group.conv3(inner))) + x0  # 0.1.8: x = activ(norm3(conv3(x))); x += x0
        assert torch.allclose(group(x), expected, atol=1e-5)
        assert group(x).min() < -0.2  # below GELU's minimum (-0.17): nothing is applied after the sum


def test_item02_train96_trains_with_0_1_8s_schedule_and_decay(cifar_dir, sgd_spy):
    # 0.1.8: lr = 9.0 / kilostep with kilostep = 1024 * (1 + 1 / (1 - 0.85)); the multiplier rises linearly
    # from 0.2 to 1 at step int(0.23 * T), then falls linearly to 0.07 at step T; T = ceil(epochs * len).
    loader = airbench.CifarLoader(cifar_dir, train=True, batch_size=20)
    loader.images, loader.labels = loader.images[:40], loader.labels[:40]  # 2 steps per epoch
    torch.manual_seed(0)
    airbench.train96(loader, epochs=10, make_net=tiny96, verbose=False)
    [opt] = sgd_spy
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    assert len(opt.lrs) == 20
    peak = int(0.23 * 20)
    multiplier = [0.2 + 0.8 * k / peak if k < peak else 1 + (0.07 - 1) * (k - peak) / (20 - peak) for k in range(20)]
    biases, others = zip(*opt.lrs)
    assert np.allclose(others, [9.0 / kilostep * m for m in multiplier], rtol=1e-5)
    assert np.allclose(biases, [64 * 9.0 / kilostep * m for m in multiplier], rtol=1e-5)
    decays = sorted(g['weight_decay'] for g in opt.param_groups)  # wd / lr per group, as 0.1.8's param_configs
    assert np.allclose(decays, [0.0153 * 20 / (9.0 * 64), 0.0153 * 20 / 9.0], rtol=1e-6)  # wd x batch / lr


# ---------------------------------------------------------------- 3. airbench.utils, airbench.lib_airbench93..96

UTILS_SIGNATURES = {  # 0.1.8's parameters and defaults, in order (more may follow, with defaults)
    'init_whitening_conv': [('layer', None), ('train_set', None), ('eps', 5e-4)],
    'batch_flip_lr': [('inputs', None)],
    'batch_crop': [('images', None), ('crop_size', None)],
    'batch_cutout': [('inputs', None), ('size', None)],
    'make_random_square_masks': [('inputs', None), ('size', None)],
    'get_patches': [('x', None), ('patch_shape', None)],
    'get_whitening_parameters': [('patches', None)],
    'print_columns': [('columns_list', None), ('is_head', False), ('is_final_entry', False), ('print_cols', True)],
    'print_training_details': [('variables', None), ('is_final_entry', None)],
    'train': [(name, None) for name in ['train_loader'] + ORDER[1:]],
    'infer': [('model', None), ('loader', None), ('tta_level', 0)],
    'evaluate': [('model', None), ('loader', None), ('tta_level', 0)],
}


def test_item03_utils_has_0_1_8s_names_and_signatures():
    from airbench import utils
    for name, expected in UTILS_SIGNATURES.items():
        params = [p for p in inspect.signature(getattr(utils, name)).parameters.values()
                  if p.kind is p.POSITIONAL_OR_KEYWORD]
        got = [(p.name, None if p.default is p.empty else p.default) for p in params]
        assert got[:len(expected)] == expected and all(p.default is not p.empty for p in params[len(expected):]), name
    assert utils.CifarLoader is airbench.CifarLoader and utils.infer is airbench.infer
    for value, expected in ((utils.CIFAR_MEAN, [0.4914, 0.4822, 0.4465]), (utils.CIFAR_STD, [0.2470, 0.2435, 0.2616])):
        assert isinstance(value, torch.Tensor) and value.tolist() == pytest.approx(expected)  # 0.1.8: (3,) tensors
    assert [c.strip() for c in utils.logging_columns_list][1:6] == ['epoch', 'train_loss', 'train_acc', 'val_acc',
                                                                    'tta_val_acc']
    lookahead = utils.LookaheadState(tiny94())
    assert callable(lookahead.update) and isinstance(lookahead.net_ema, dict)


def test_item03_utils_augmentations_behave_as_0_1_8s():
    from airbench.utils import batch_crop, batch_cutout, batch_flip_lr, make_random_square_masks
    torch.manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    flipped = batch_flip_lr(x)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert ((flipped == x).flatten(1).all(1) | mirrored).all() and 0.2 < mirrored.float().mean() < 0.8
    padded = nn.functional.pad(x, (2,) * 4, 'reflect')
    for crops in (batch_crop(padded, 32), batch_crop(padded, crop_size=32)):
        assert crops.shape == (64, 3, 32, 32)
        assert all(any(torch.equal(crops[i], padded[i, :, dy:dy + 32, dx:dx + 32]) for dy in range(5) for dx in range(5))
                   for i in range(0, 64, 8))
    masks = make_random_square_masks(x, 8)
    assert masks.shape == (64, 1, 32, 32) and masks.dtype == torch.bool
    rows, cols = masks.any(-1).squeeze(1), masks.any(-2).squeeze(1)  # a single 8 x 8 square inside each image
    assert (masks.flatten(1).sum(1) == 64).all() and (rows.sum(1) == 8).all() and (cols.sum(1) == 8).all()
    cut = batch_cutout(x, 8)
    assert cut.shape == x.shape and ((cut == 0).flatten(1).sum(1) == 3 * 64).all()


def patch_covariance(images):
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    return patches.T @ patches / len(patches)


def test_item03_utils_whitening_behaves_as_0_1_8s(cifar_dir):
    from airbench.utils import get_patches, get_whitening_parameters, init_whitening_conv
    loader = airbench.CifarLoader(cifar_dir, train=True, device='cpu')
    x = loader.normalize(loader.images[:100]).float()
    patches = get_patches(x, patch_shape=(2, 2))
    assert patches.shape == (100 * 31 * 31, 3, 2, 2) and patches.dtype == torch.float32
    assert torch.equal(patches[(7 * 31 + 5) * 31 + 3], x[7, :, 3:5, 5:7])  # 0.1.8's order: image, column, row
    eigenvalues, eigenvectors = get_whitening_parameters(patches)
    assert eigenvalues.shape == (12, 1, 1, 1) and eigenvectors.shape == (12, 3, 2, 2)
    values, vectors = eigenvalues.flatten().double(), eigenvectors.reshape(12, 12).double()
    covariance = patch_covariance(x)
    assert (values[:-1] >= values[1:]).all()  # largest first
    assert torch.allclose(vectors @ covariance @ vectors.T, torch.diag(values), atol=1e-3)
    conv = nn.Conv2d(3, 24, kernel_size=2, bias=True)
    init_whitening_conv(conv, x)  # eps defaults to 5e-4
    w = conv.weight.detach().reshape(24, 12).double()
    assert torch.equal(w[:12], -w[12:])
    whitened = w[:12] @ covariance @ w[:12].T  # the covariance of the whitened patches: lambda / (lambda + eps)
    assert torch.allclose(whitened, torch.diag(values / (values + 5e-4)), atol=2e-3)


def test_item03_utils_lookahead_and_printing_behave_as_0_1_8s(capsys):
    from airbench.utils import LookaheadState, logging_columns_list, print_columns, print_training_details
    net = tiny94().float()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lookahead = LookaheadState(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    lookahead.update(net, decay=0.75)  # ema = lerp(ema, net, 0.25), then net = ema
    after = net.state_dict()
    assert torch.allclose(after['2.conv1.weight'], before['2.conv1.weight'] + 0.25)
    assert torch.allclose(after['2.norm1.bias'], before['2.norm1.bias'] + 0.25)
    capsys.readouterr()
    print_columns(logging_columns_list, is_head=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and set(lines[0]) == {'-'} and set(lines[2]) == {'-'}
    assert all(c.strip() in lines[1] for c in logging_columns_list)
    print_columns(logging_columns_list, is_head=True, print_cols=False)  # 0.1.8's warmup: the rule only
    assert [set(line) for line in capsys.readouterr().out.splitlines()] == [{'-'}]
    print_training_details({'run': 0, 'epoch': 1, 'train_loss': 1.5, 'train_acc': 0.5, 'val_acc': 0.25},
                           is_final_entry=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(v in lines[0] for v in ('1.5000', '0.5000', '0.2500')) and set(lines[1]) == {'-'}


def test_item03_utils_train_takes_0_1_8s_twelve_arguments(loader200):
    from airbench.utils import train
    torch.manual_seed(0)
    net = train(loader200, 1, 0.2, 11.5, 64.0, 0.85, 0.0153, 3, 2, tiny94, 0, False)
    assert isinstance(net, nn.Module)
    assert airbench.infer(net, loader200).shape == (200, 10)


LIB_HYP = {  # 0.1.8's lib_airbench93.py ... lib_airbench96.py, as published
    '93': (11.0, 11.5, {'flip': True, 'translate': 2}, {'block1': 64, 'block2': 128, 'block3': 128}),
    '94': (9.9, 11.5, {'flip': True, 'translate': 2}, {'block1': 64, 'block2': 256, 'block3': 256}),
    '95': (15.0, 10.0, {'flip': True, 'translate': 2}, {'block1': 128, 'block2': 384, 'block3': 384}),
    '96': (40.0, 9.0, {'flip': True, 'translate': 4, 'cutout': 12}, {'block1': 128, 'block2': 512, 'block3': 512}),
}


@pytest.mark.parametrize('v', ['93', '94', '95', '96'])
def test_item03_lib_modules_have_0_1_8s_hyp_and_blocks(v):
    lib = importlib.import_module(f'airbench.lib_airbench{v}')
    epochs, lr, aug, widths = LIB_HYP[v]
    assert lib.hyp == {
        'opt': {'train_epochs': epochs, 'batch_size': 1024, 'lr': lr, 'momentum': 0.85, 'weight_decay': 0.0153,
                'bias_scaler': 64.0, 'label_smoothing': 0.2, 'whiten_bias_epochs': 3},
        'aug': aug,
        'net': {'widths': widths, 'batchnorm_momentum': 0.6, 'scaling_factor': 1 / 9, 'tta_level': 2}}
    assert getattr(lib, f'make_net{v}') is getattr(airbench, f'make_net{v}')
    assert getattr(lib, f'train{v}') is getattr(airbench, f'train{v}')
    assert lib.CifarLoader is airbench.CifarLoader and callable(lib.train)
    bn = lib.BatchNorm(16, 0.6, weight=True, bias=False)
    assert (bn.weight.requires_grad, bn.bias.requires_grad, bn.momentum, bn.eps) == (True, False, pytest.approx(0.4), 1e-12)
    assert (lib.BatchNorm(16, 0.6).weight.requires_grad, lib.BatchNorm(16, 0.6).bias.requires_grad) == (False, True)
    whiten = lib.Conv(3, 24, 2, padding=0, bias=True)
    assert whiten.weight.shape == (24, 3, 2, 2) and torch.equal(whiten.bias.detach(), torch.zeros(24))
    conv = lib.Conv(16, 32)
    assert conv.weight.shape == (32, 16, 3, 3) and conv.bias is None and conv.padding == 'same'
    assert torch.equal(conv.weight.detach()[:16, :, 1, 1], torch.eye(16))  # the first filters start as the identity
    names = [n for n, _ in lib.ConvGroup(24, 16, 0.6).named_children()]
    assert names == (['conv1', 'pool', 'norm1', 'conv2', 'norm2', 'conv3', 'norm3', 'activ'] if v == '96'
                     else ['conv1', 'pool', 'norm1', 'conv2', 'norm2', 'activ'])
    assert lib.Flatten()(torch.zeros(2, 3, 1, 1)).shape == (2, 3) and lib.Mul(0.5).scale == 0.5


def original_blocks(module_name, residual):
    """Classes with 0.1.8's names, module and attributes (written for this test), so that a net built from
    them pickles exactly as a net built by 0.1.8's make_net94/make_net96 does."""
    class Flatten(nn.Module):
        def forward(self, x):
            return x.view(x.size(0), -1)

    class Mul(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    class BatchNorm(nn.BatchNorm2d):
        def __init__(self, num_features, momentum):
            super().__init__(num_features, eps=1e-12, momentum=1 - momentum)
            self.weight.requires_grad = False

    class Conv(nn.Conv2d):
        def __init__(self, cin, cout, kernel_size=3, padding='same', bias=False):
            super().__init__(cin, cout, kernel_size=kernel_size, padding=padding, bias=bias)

    class ConvGroup(nn.Module):
        def __init__(self, cin, cout, momentum):
            super().__init__()
            self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout, momentum)
            self.conv2, self.norm2 = Conv(cout, cout), BatchNorm(cout, momentum)
            if residual:
                self.conv3, self.norm3 = Conv(cout, cout), BatchNorm(cout, momentum)
            self.activ = nn.GELU()

        def forward(self, x):
            x = self.activ(self.norm1(self.pool(self.conv1(x))))
            x0 = x
            x = self.activ(self.norm2(self.conv2(x)))
            if residual:
                x = self.activ(self.norm3(self.conv3(x))) + x0
            return x

    blocks = dict(Flatten=Flatten, Mul=Mul, BatchNorm=BatchNorm, Conv=Conv, ConvGroup=ConvGroup)
    for name, cls in blocks.items():
        cls.__module__, cls.__qualname__ = module_name, name
    return blocks


@pytest.mark.parametrize('v', ['94', '96'])
def test_item03_a_whole_model_pickled_by_0_1_8_loads_back(v, monkeypatch):
    name = f'airbench.lib_airbench{v}'
    b = original_blocks(name, residual=v == '96')
    torch.manual_seed(0)
    net = nn.Sequential(b['Conv'](3, 24, 2, padding=0, bias=True), nn.GELU(), b['ConvGroup'](24, 16, 0.6),
                        b['ConvGroup'](16, 32, 0.6), b['ConvGroup'](32, 32, 0.6), nn.MaxPool2d(3), b['Flatten'](),
                        nn.Linear(32, 10, bias=False), b['Mul'](1 / 9))
    with torch.no_grad():  # trained-looking BatchNorm state, so that the test sees it used
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval()(x)
    buffer = io.BytesIO()
    with monkeypatch.context() as m:  # the classes where 0.1.8 has them, only while pickling
        m.setitem(sys.modules, name, types.SimpleNamespace(**b))
        torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)  # the whole model, as torch.load(path) of 0.1.8's file
    # every class found by its name in airbench.lib_airbench94/96: there the scripts' own (whose __module__ is
    # the script's, not 0.1.8's: the package defines no network class of its own; docs/package.md)
    lib = importlib.import_module(name)
    found = [type(m) for m in loaded.modules() if type(m).__name__ in b]
    assert len(found) == (24 if v == '96' else 18) and all(c is getattr(lib, c.__name__) for c in found)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(x), expected, atol=1e-5)


# ---------------------------------------------------------------- 4. augmentation changed after creation


def epoch(loader):
    return torch.cat([x for x, _ in loader]).float()


def mirrored_exactly(loader, images):
    """Per image: True mirrored, False as is (no translation or cutout in the epoch)."""
    base = loader.normalize(loader.images).float()
    mirrored = (images == base.flip(-1)).flatten(1).all(1)
    assert ((images == base).flatten(1).all(1) | mirrored).all(), 'an image is neither as is nor mirrored'
    return mirrored & ~(images == base).flatten(1).all(1)


def mirrored_roughly(loader, images):
    """Per image, also under translation: is it closer to the mirror of its image than to the image?"""
    base = loader.normalize(loader.images).float()
    return (images * base.flip(-1)).flatten(1).sum(1) > (images * base).flatten(1).sum(1)


def takes_effect_or_one_sentence(change, next_epoch):
    """The issue's rule: a change takes effect at the next epoch, or it is refused in one sentence (at the
    change or at the next epoch). Returns the next epoch's result, or None when refused."""
    try:
        change()
        return next_epoch()
    except ValueError as e:
        assert '\n' not in str(e), str(e)
        return None


def plain_loader(cifar_dir, **aug):
    return airbench.CifarLoader(cifar_dir, train=True, batch_size=500, shuffle=False, aug=aug or None)


def test_item04_aug_assigned_before_the_first_epoch_takes_effect(cifar_dir):
    # 0.1.8: loader.aug = dict(flip=True) mirrored 50.4% of the images in the first epoch (here: 0%)
    for change in (lambda loader: setattr(loader, 'aug', dict(flip=True)),
                   lambda loader: loader.aug.__setitem__('flip', True)):
        torch.manual_seed(0)
        loader = plain_loader(cifar_dir)
        result = takes_effect_or_one_sentence(lambda: change(loader), lambda: mirrored_exactly(loader, epoch(loader)))
        assert result is None or 0.3 < result.float().mean() < 0.7


def test_item04_altflip_is_an_attribute_read_every_epoch(cifar_dir):
    torch.manual_seed(0)
    loader = plain_loader(cifar_dir, flip=True)
    assert loader.altflip is False  # 0.1.8's default (here: AttributeError)
    first = takes_effect_or_one_sentence(lambda: setattr(loader, 'altflip', True),
                                         lambda: mirrored_exactly(loader, epoch(loader)))
    if first is not None:  # 0.1.8: every later epoch mirrors every image relative to the epoch before
        second, third = (mirrored_exactly(loader, epoch(loader)) for _ in range(2))
        assert (first ^ second).all() and torch.equal(first, third)


def test_item04_translate_turned_on_after_the_first_epoch(cifar_dir):
    # 0.1.8 raised KeyError: 'pad' here; the project's epochs stayed untranslated without a word
    torch.manual_seed(0)
    loader = plain_loader(cifar_dir, flip=True)
    epoch(loader)
    images = takes_effect_or_one_sentence(lambda: loader.aug.__setitem__('translate', 2), lambda: epoch(loader))
    if images is not None:
        base = loader.normalize(loader.images).float()
        untranslated = ((images == base) | (images == base.flip(-1))).flatten(1).all(1)
        assert images.shape == (2000, 3, 32, 32) and untranslated.float().mean() < 0.1  # 1/25 of the shifts are 0


def test_item04_translate_turned_off_after_the_first_epoch(cifar_dir):
    # 0.1.8: the next epoch gives the untranslated images (here: the padded 36 x 36 images)
    torch.manual_seed(0)
    loader = plain_loader(cifar_dir, translate=2)
    epoch(loader)
    images = takes_effect_or_one_sentence(lambda: loader.aug.__setitem__('translate', 0), lambda: epoch(loader))
    if images is not None:
        assert images.shape == (2000, 3, 32, 32)
        assert torch.equal(images, loader.normalize(loader.images).float())


def test_item04_flip_turned_on_after_the_first_epoch(cifar_dir):
    # 0.1.8 (with translate on): about half the images mirrored in the next epoch (49.5%; here 1.6%, i.e. none)
    torch.manual_seed(0)
    loader = plain_loader(cifar_dir, translate=2)
    epoch(loader)
    mirrored = takes_effect_or_one_sentence(lambda: loader.aug.__setitem__('flip', True),
                                            lambda: mirrored_roughly(loader, epoch(loader)))
    assert mirrored is None or 0.3 < mirrored.float().mean() < 0.7


# ---------------------------------------------------------------- 5. a user's own net keeps the BatchNorm-bias lr


class UsersBatchNorm(nn.BatchNorm2d):
    def __init__(self, channels):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad = False


class UsersGroup(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.pool, self.norm1 = nn.Conv2d(cin, cout, 3, padding='same', bias=False), nn.MaxPool2d(2), \
            UsersBatchNorm(cout)
        self.conv2, self.norm2, self.activ = nn.Conv2d(cout, cout, 3, padding='same', bias=False), UsersBatchNorm(cout), \
            nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def users_net():
    """The usual way to modify the architecture: one's own copy of it."""
    net = nn.Sequential(nn.Conv2d(3, 24, 2, bias=True), nn.GELU(), UsersGroup(24, 16), UsersGroup(16, 32),
                        UsersGroup(32, 32), nn.MaxPool2d(3), nn.Flatten(), nn.Linear(32, 10, bias=False))
    net[0].weight.requires_grad = False
    return net


def test_item05_a_users_own_net_trains_its_norm_biases_at_the_bias_lr(loader200, sgd_spy):
    # 0.1.8 puts every trainable parameter whose name contains 'norm' in the 64x group: here the 6 biases
    torch.manual_seed(0)
    net = airbench.train94(loader200, epochs=1, make_net=users_net, verbose=False)
    [opt] = sgd_spy
    groups = sorted(opt.param_groups, key=lambda g: -g['lr'])
    assert groups[0]['lr'] == pytest.approx(64 * groups[1]['lr'])
    norm_biases = {id(p) for k, p in net.named_parameters() if 'norm' in k and p.requires_grad}
    assert len(norm_biases) == 6 and {id(p) for p in groups[0]['params']} == norm_biases


# ---------------------------------------------------------------- 6. CifarLoader is a class


def test_item06_cifarloader_is_a_class_users_can_subclass(cifar_dir):
    loader = airbench.CifarLoader(cifar_dir, train=False)
    assert isinstance(airbench.CifarLoader, type) and isinstance(loader, airbench.CifarLoader)

    class CountingLoader(airbench.CifarLoader):  # a user's loader that adds to each epoch
        epochs_begun = 0

        def __iter__(self):
            type(self).epochs_begun += 1
            yield from super().__iter__()

    mine = CountingLoader(cifar_dir, train=True, batch_size=100)
    assert isinstance(mine, airbench.CifarLoader) and len(mine) == 20
    mine.images, mine.labels = mine.images[:200], mine.labels[:200]
    torch.manual_seed(0)
    airbench.train94(mine, epochs=2, make_net=tiny94, verbose=False)
    assert CountingLoader.epochs_begun == 2


# ---------------------------------------------------------------- 7. gpu=


def test_item07_gpu_keyword_is_accepted(cifar_dir):
    loader = airbench.CifarLoader(cifar_dir, train=False, gpu='cpu')  # 0.1.8: torch.device(gpu)
    assert loader.images.device.type == 'cpu'
    if torch.cuda.is_available():
        assert airbench.CifarLoader(cifar_dir, train=False, gpu=0).images.device == torch.device('cuda', 0)
    else:
        with pytest.raises(ValueError) as info:  # not TypeError: unexpected keyword argument 'gpu'
            airbench.CifarLoader(cifar_dir, train=False, gpu=0)
        one_sentence(info, 'gpu=0')


# ---------------------------------------------------------------- 8. infer / evaluate


def test_item08_infer_and_evaluate_take_any_object_with_images_labels_normalize(cifar_dir):
    torch.manual_seed(0)
    net = tiny94()
    test = airbench.CifarLoader(cifar_dir, train=False)
    mine = types.SimpleNamespace(images=test.images[:300], labels=test.labels[:300], normalize=test.normalize)
    assert torch.allclose(airbench.infer(net, mine), airbench.infer(net, test)[:300], atol=1e-3)
    accuracy = airbench.evaluate(net, mine, tta_level=2)
    assert isinstance(accuracy, float) and 0 <= accuracy <= 1
    own = types.SimpleNamespace(images=test.images[:100], labels=test.labels[:100], normalize=lambda x: (x - 0.5) / 0.25)
    assert airbench.infer(net, own, tta_level=1).shape == (100, 10)


def test_item08_a_bad_tta_level_is_one_sentence(cifar_dir):
    # 0.1.8: IndexError (3), TypeError (1.5); the project silently used level 2
    net = tiny94()
    test = airbench.CifarLoader(cifar_dir, train=False)
    test.images, test.labels = test.images[:50], test.labels[:50]
    for level in (3, 1.5):
        for fn in (airbench.infer, airbench.evaluate):
            with pytest.raises(ValueError) as info:
                fn(net, test, tta_level=level)
            one_sentence(info, f'tta_level={level!r}')


# ---------------------------------------------------------------- 9. more than 10 classes


def test_item09_a_100_class_head_trains(loader200):
    loader200.labels = torch.randint(0, 100, loader200.labels.shape, generator=torch.Generator().manual_seed(0)).to(
        loader200.labels.device)

    def make_net100():
        net = tiny94()
        net[-2] = nn.Linear(32, 100, bias=False).to(next(net.parameters()).device)
        return net
    torch.manual_seed(0)
    net = airbench.train94(loader200, epochs=1, make_net=make_net100, verbose=False)
    assert airbench.infer(net, loader200).shape == (200, 100)


# ---------------------------------------------------------------- 10. normalize, an empty loader


def test_item10_normalize_keeps_one_image_chw_and_has_mean_and_std(cifar_dir):
    test = airbench.CifarLoader(cifar_dir, train=False)
    one = test.normalize(test.images[0])
    assert one.shape == (3, 32, 32) and torch.equal(one, test.normalize(test.images[:1])[0])
    assert [float(v) for v in torch.as_tensor(test.normalize.mean).flatten()] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert [float(v) for v in torch.as_tensor(test.normalize.std).flatten()] == pytest.approx([0.2470, 0.2435, 0.2616])


def test_item10_an_empty_loader_is_refused_not_nan(cifar_dir):
    # 0.1.8 raised (RuntimeError: cannot reshape tensor of 0 elements ..., from its Flatten); the project gave nan
    net = tiny94()
    test = airbench.CifarLoader(cifar_dir, train=False)
    test.images, test.labels = test.images[:0], test.labels[:0]
    assert len(test) == 0 and list(test) == []
    with pytest.raises(ValueError) as info:
        airbench.evaluate(net, test)
    one_sentence(info)
