"""The method facts of airbench94 (docs/method.md §1-2), pinned one by one."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import random_split


@pytest.fixture(scope='module')
def ab(ab94):
    return ab94


# ---------------------------------------------------------------- augmentation


def test_alternating_flip_covers_both_orientations_in_consecutive_epochs(ab, cpu):
    torch.manual_seed(0)
    loader = ab.CifarLoader(random_split(400), cpu, 100, train=True, aug={'flip': 'alternating'})
    plain = loader.normalize(loader.images)
    epochs = [loader.next_epoch()[0] for _ in range(4)]  # images in dataset order
    mirrored = [(e == plain.flip(-1)).flatten(1).all(1) & ~(e == plain).flatten(1).all(1) for e in epochs]
    unchanged = [(e == plain).flatten(1).all(1) for e in epochs]
    assert all((m | u).all() for m, u in zip(mirrored, unchanged))
    assert 0.35 < mirrored[0].float().mean() < 0.65  # epoch 0: a random half
    for a, b in zip(mirrored, mirrored[1:]):
        assert (a != b).all()  # every image changes orientation from one epoch to the next
    assert (mirrored[0] == mirrored[2]).all() and (mirrored[1] == mirrored[3]).all()


def test_random_flip_draws_every_image_anew_every_epoch(ab, cpu):
    torch.manual_seed(0)
    loader = ab.CifarLoader(random_split(2000), cpu, 100, train=True, aug={'flip': 'random'})
    plain = loader.normalize(loader.images)
    mirrored = []
    for _ in range(3):
        images = loader.next_epoch()[0]
        m = (images == plain.flip(-1)).flatten(1).all(1)
        assert (m | (images == plain).flatten(1).all(1)).all()
        mirrored.append(m)
        assert 0.45 < m.float().mean() < 0.55
    for a, b in zip(mirrored, mirrored[1:]):  # independent draws: about half keep their orientation
        assert 0.4 < (a == b).float().mean() < 0.6
    with pytest.raises(ValueError, match='flip'):
        ab.CifarLoader(random_split(10), cpu, 5, train=True, aug={'flip': 'sometimes'})
    # the original package's form: flip True is random flip (alternating with loader.altflip), False none
    for given, meant in ((True, 'random'), (False, 'none')):
        a, b = (ab.CifarLoader(random_split(10), cpu, 5, train=True, aug={'flip': flip},
                               generator=torch.Generator().manual_seed(1)) for flip in (given, meant))
        assert all(torch.equal(x, y) for _ in range(2) for x, y in zip(a.next_epoch(), b.next_epoch()))


def test_overrides_parse_booleans_ints_floats_and_strings(ab):
    hyp = {'a': {'flag': False, 'n': 1, 'x': 1.0, 's': 'alternating'}}
    new, overrides = ab.apply_overrides(hyp, ['a.flag=True', 'a.n=3', 'a.x=2', 'a.s=random'])
    assert new == {'a': {'flag': True, 'n': 3, 'x': 2.0, 's': 'random'}} and type(new['a']['x']) is float
    assert overrides == {'a.flag': True, 'a.n': 3, 'a.x': 2.0, 'a.s': 'random'}
    assert hyp['a'] == {'flag': False, 'n': 1, 'x': 1.0, 's': 'alternating'}  # the defaults are left alone
    for pair in ('a.flag=maybe', 'a.n=2.5', 'a.x=inf', 'a.x=Infinity', 'a.x=NaN', 'a.s=3', 'a.n=true'):
        with pytest.raises(ab.UserError, match='expected'):
            ab.apply_overrides(hyp, [pair])


def test_random_half_flip_mirrors_about_half(ab):
    x = torch.randn(2000, 3, 8, 8)
    out = ab.batch_flip_lr(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) | flipped).all()
    assert 0.45 < flipped.float().mean() < 0.55


def test_crop_equals_pad_and_crop(ab):
    torch.manual_seed(0)
    r = 2
    images = torch.randn(1000, 3, 32, 32)
    padded = F.pad(images, (r,) * 4, 'reflect')
    out = ab.batch_crop(padded, 32)
    assert out.shape == images.shape
    seen = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(2 * r + 1) for dx in range(2 * r + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == (2 * r + 1)**2  # every shift in [-r, r] x [-r, r] occurs


def test_translate_pads_once_with_reflection(ab, cpu):
    torch.manual_seed(0)
    loader = ab.CifarLoader(random_split(50), cpu, 10, train=True, aug={'translate': 2})
    loader.next_epoch()
    assert torch.equal(loader.base, F.pad(loader.normalize(loader.images), (2,) * 4, 'reflect'))


def test_cutout_one_square_of_the_exact_size_fully_inside(ab):
    torch.manual_seed(0)
    images = torch.randn(500, 3, 32, 32) + 10  # no pixel is 0 before cutout
    for size in (1, 12, 32):
        out = ab.batch_cutout(images, size)
        zero = (out == 0).all(1)  # all channels zeroed
        assert torch.equal((out == 0), zero.unsqueeze(1).expand_as(out))
        for z in zero:
            ys, xs = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
            assert len(ys) == size and len(xs) == size  # one contiguous square, inside the image
            assert ys[-1] - ys[0] == size - 1 and xs[-1] - xs[0] == size - 1
            assert z.sum() == size * size
    corners = set()
    out = ab.batch_cutout(images, 12)
    for z in (out == 0).all(1):
        corners.add((int(z.any(1).nonzero()[0]), int(z.any(0).nonzero()[0])))
    assert {c for pair in corners for c in pair} == set(range(21))  # every corner position in [0, 32 - 12]


def test_cutout_is_applied_after_normalisation(ab, cpu):
    torch.manual_seed(0)
    loader = ab.CifarLoader(random_split(20), cpu, 10, train=True, aug={'cutout': 8})
    images = loader.next_epoch()[0]
    assert ((images == 0).all(1).flatten(1).sum(1) == 64).all()  # zero in normalised space, 8 x 8 per image


def test_loader_order_and_batches(ab, cpu):
    torch.manual_seed(0)
    train = ab.CifarLoader(random_split(1050), cpu, 100, train=True)
    assert len(train) == 10  # the last partial batch is dropped
    batches = list(train)
    assert [len(x) for x, _ in batches] == [100] * 10
    orders = [train.next_epoch()[2] for _ in range(2)]
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation every epoch
    assert sorted(orders[0].tolist()) == list(range(1050))
    test = ab.CifarLoader(random_split(1050), cpu, 100, train=False)
    assert len(test) == 11 and torch.equal(test.next_epoch()[2], torch.arange(1050))


def test_loader_normalises_with_the_cifar_statistics(ab, cpu):
    split = random_split(10)
    loader = ab.CifarLoader(split, cpu, 5, train=False)
    x = split['images'].permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(ab.CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(ab.CIFAR_STD).view(1, 3, 1, 1)
    assert torch.allclose(loader.normalize(loader.images), (x - mean) / std, atol=1e-6)
    assert loader.images.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- network


def test_network_shapes_widths_and_parameter_count(ab):
    net = ab.make_net(ab.hyp)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.97e6, rel=0.005)  # paper: 1.97M
    x, sizes = torch.randn(2, 3, 32, 32), []
    for layer in net:
        x = layer(x)
        if isinstance(layer, ab.ConvGroup) or isinstance(layer, nn.Conv2d):
            sizes.append((x.size(1), x.size(-1)))
    assert sizes == [(24, 31), (64, 15), (256, 7), (256, 3)]
    assert x.shape == (2, 10)
    assert net[0].kernel_size == (2, 2) and net[0].padding == (0, 0) and net[0].bias is not None
    assert not net[0].weight.requires_grad and torch.equal(net[0].bias, torch.zeros(24))
    assert net[-1].scale == pytest.approx(1 / 9) and net[-2].bias is None


def test_batchnorm_and_conv_init(ab):
    net = ab.make_net(ab.hyp)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    for bn in norms:
        assert bn.eps == 1e-12 and bn.momentum == pytest.approx(0.4)
        assert not bn.weight.requires_grad and bn.bias.requires_grad and torch.equal(bn.weight, torch.ones_like(bn.weight))
    convs = [m for m in net.modules() if isinstance(m, ab.Conv)]
    assert len(convs) == 6
    for conv in convs:
        w = conv.weight.detach()
        c_in = w.size(1)
        identity = torch.zeros(c_in, c_in, 3, 3)
        identity[range(c_in), range(c_in), 1, 1] = 1
        assert torch.equal(w[:c_in], identity) and conv.bias is None and conv.padding == 'same'
        if w.size(0) > c_in:
            assert w[c_in:].abs().sum() > 0  # the rest keeps the default init


def test_device_prepare_keeps_batchnorm_fp32_and_channels_last(ab, cpu):
    net = cpu.prepare(ab.make_net(ab.hyp))
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net[2].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert cpu.autocast_dtype in (torch.bfloat16, None) and cpu.model_dtype == torch.float32


# ---------------------------------------------------------------- whitening


def test_whitening_makes_patch_covariance_identity(ab):
    torch.manual_seed(0)
    mix = torch.randn(3, 3) + 2 * torch.eye(3)
    images = torch.einsum('ij,njhw->nihw', mix, torch.randn(200, 3, 32, 32))
    images = images + 0.5 * images.roll(1, dims=-1)  # correlate neighbouring pixels
    images = images + torch.tensor([1.5, -1.0, 0.7]).view(1, 3, 1, 1)  # and a non-zero mean, as real images
    eps = 5e-4
    w = ab.whitening_filters(images, 2, eps)
    assert w.shape == (24, 3, 2, 2) and torch.equal(w[12:], -w[:12])
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
    cov = patches.T @ patches / len(patches)
    eigenvalues = torch.linalg.eigvalsh(cov).flip(0)
    whitened = w[:12].reshape(12, 12) @ cov @ w[:12].reshape(12, 12).T
    assert torch.allclose(whitened, torch.diag(eigenvalues / (eigenvalues + eps)), atol=1e-4)
    assert torch.allclose(whitened, torch.eye(12), atol=0.01)  # ~identity: eps is small against these eigenvalues
    # the covariance is uncentred (the originals'): centring first would give other filters here
    centred = patches - patches.mean(0)
    centred_cov = centred.T @ centred / len(centred)
    assert not torch.allclose(cov, centred_cov, atol=0.1)
    assert not torch.allclose(w[:12].reshape(12, 12) @ centred_cov @ w[:12].reshape(12, 12).T, torch.eye(12), atol=0.1)
    # the conv applies exactly these filters
    out = F.conv2d(images, w[:12])
    z = out.permute(0, 2, 3, 1).reshape(-1, 12)
    assert torch.allclose(z.T @ z / len(z), whitened, atol=1e-3)


def test_whitening_eigenvectors_follow_the_originals_sign_convention(ab):
    """The originals call eigh on the upper triangle; the lower one returns some eigenvectors negated
    (a swap of those filters with their negations), which changes a seeded run."""
    torch.manual_seed(0)
    images = torch.randn(100, 3, 32, 32) + torch.tensor([0.5, 0.2, -0.4]).view(1, 3, 1, 1)
    images = images + 0.7 * images.roll(1, dims=-2)
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12)
    cov = patches.T @ patches / len(patches)
    values, upper = torch.linalg.eigh(cov, UPLO='U')
    lower = torch.linalg.eigh(cov, UPLO='L').eigenvectors
    assert ((upper * lower).sum(0) < 0).any()  # the two conventions differ on this data
    expected = (upper.T / torch.sqrt(values + 5e-4).view(-1, 1)).flip(0).view(12, 3, 2, 2)
    assert torch.allclose(ab.whitening_filters(images, 2, 5e-4)[:12], expected, atol=1e-5)


def test_whitening_is_fp32_even_under_autocast(ab):
    torch.manual_seed(0)
    images = torch.randn(50, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        w = ab.whitening_filters(images, 2, 5e-4)
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    assert torch.allclose(w, ab.whitening_filters(images, 2, 5e-4))


# ---------------------------------------------------------------- TTA


def test_tta_is_the_six_view_weighting(ab):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    x = torch.randn(5, 3, 32, 32)
    p = F.pad(x, (1,) * 4, 'reflect')
    up_left, down_right = p[:, :, :32, :32], p[:, :, 2:, 2:]
    views = [(x, 0.25), (x.flip(-1), 0.25), (up_left, 0.125), (up_left.flip(-1), 0.125),
             (down_right, 0.125), (down_right.flip(-1), 0.125)]
    with torch.no_grad():
        expected = sum(w * model(v) for v, w in views)
        assert torch.allclose(ab.tta_logits(model, x, 2), expected, atol=1e-5)
        assert torch.allclose(ab.tta_logits(model, x, 1), 0.5 * model(x) + 0.5 * model(x.flip(-1)), atol=1e-6)
        assert torch.allclose(ab.tta_logits(model, x, 0), model(x))
    assert sum(w for _, w in views) == 1


def test_infer_keeps_order_over_eval_batches(ab, cpu):
    split = random_split(4500)
    loader = ab.CifarLoader(split, cpu, 500, train=False)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    logits = ab.infer(model, loader, tta_level=0)
    with torch.no_grad(), cpu.autocast():
        expected = model(loader.normalize(loader.images)).float()
    assert logits.shape == (4500, 10) and torch.allclose(logits, expected, atol=0.05)


# ---------------------------------------------------------------- optimisation


def test_step_count(ab):
    assert ab.train_steps(ab.hyp['opt'], 50000) == 476  # 9.9 epochs of floor(50000 / 1024) = 48 steps


def test_lr_schedule_knots(ab):
    s = ab.lr_schedule(476, 0.2, 0.23, 0.07)
    assert len(s) == 477
    peak = int(0.23 * 476)
    assert peak == 109
    assert s[0] == pytest.approx(0.2) and s[peak] == pytest.approx(1.0) and s[476] == pytest.approx(0.07)
    assert s[peak // 2] == pytest.approx(0.2 + 0.8 * (peak // 2) / peak)
    assert s[300] == pytest.approx(1 - 0.93 * (300 - peak) / (476 - peak))
    assert max(s) == s[peak]


def test_decoupled_hyperparameters(ab):
    h = ab.decoupled_hyperparameters(ab.hyp['opt'])
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    lr, wd = 11.5 / kilostep, 0.0153 * 1024 / kilostep
    assert h['lr'] == pytest.approx(lr) and h['lr_biases'] == pytest.approx(64 * lr)
    assert h['weight_decay'] == pytest.approx(wd / lr)
    assert h['weight_decay_biases'] == pytest.approx(wd / (64 * lr))
    # what PyTorch applies per step (lr x weight_decay) is the same for both groups: wd
    assert h['lr_biases'] * h['weight_decay_biases'] == pytest.approx(h['lr'] * h['weight_decay'])


def test_optimizer_groups(ab):
    net = ab.make_net(ab.hyp)
    opt = ab.make_optimizer(net, ab.hyp['opt'])
    h = ab.decoupled_hyperparameters(ab.hyp['opt'])
    biases, others = opt.param_groups
    bn_biases = {id(m.bias) for m in net.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in biases['params']} == bn_biases and biases['lr'] == h['lr_biases']
    assert others['lr'] == h['lr'] and id(net[0].bias) in {id(p) for p in others['params']}
    grouped = {id(p) for g in opt.param_groups for p in g['params']}
    assert id(net[0].weight) not in grouped  # the whitening filters never train
    assert all(id(m.weight) not in grouped for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert opt.defaults['nesterov'] and opt.defaults['momentum'] == 0.85


def test_lookahead_update(ab):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    la = ab.LookaheadState(net)
    old = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.add_(2.0)
        net[1].num_batches_tracked.add_(5)
    current = {k: v.clone() for k, v in net.state_dict().items()}
    decay = 0.3
    la.update(net, decay)
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, decay * old[k] + (1 - decay) * current[k])
            assert torch.equal(la.net_ema[k], v)
        else:
            assert torch.equal(v, current[k])  # integer buffers are left alone
    la.update(net, 1.0)  # decay 1: the net is reset to the average
    assert all(torch.equal(v, la.net_ema[k]) for k, v in net.state_dict().items() if k in la.net_ema)
