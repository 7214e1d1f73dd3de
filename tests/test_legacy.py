"""The prior records in legacy/: cifar10-fast (Page 2019) and hlb-CIFAR10 v0.7.0 (2023).

End to end on the synthetic data, and the method facts that set each record apart, pinned against
expectations written out here from legacy/README.md's fact sheets (not computed by the scripts'
own helpers): ghost BatchNorm in training and in eval, the layer order, CELU, the schedule knots,
the original's Nesterov update, the EMA's decay and its cadence restarting every epoch, the 3x3
whitening (cifar10-fast); the chunked whitening statistics from a fresh permutation every run, the
crop quirk (corners 0-3), the layer order, CutMix's label mixing by area and its epochs, the conv
init, the lookahead's start (hlb-CIFAR10)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import load_script, log_dir_of, no_traceback, read_log, run_script, train_on


@pytest.fixture(scope='module')
def fast():
    return load_script('legacy/cifar10_fast')


@pytest.fixture(scope='module')
def hlb():
    return load_script('legacy/hlb_cifar10')


# Tiny settings on the 2,000 synthetic images. Both records' lr is per batch-mean loss, so small
# batches take it down (the same lr would be 10-16x larger per example than at the records' batch
# sizes). cifar10-fast's EMA over 186 steps gets a shorter memory (rho 0.9^5 rather than 0.99^5),
# else the initial weights still weigh in at the end.
FAST_TINY = {'opt.batch_size': 32, 'opt.train_epochs': 3.0, 'opt.lr': 0.3, 'opt.lr_peak_epoch': 0.6,
             'opt.lr_end_epoch': 2.4, 'opt.ema_momentum': 0.9, 'net.ghost_splits': 4, 'net.widths.prep': 8, 'net.widths.layer1': 16,
             'net.widths.layer2': 16, 'net.widths.layer3': 16, 'net.whiten_images': 500}
HLB_TINY = {'opt.batch_size': 100, 'opt.train_epochs': 4.0, 'opt.lr': 0.15, 'opt.lookahead_epochs': 3,
            'aug.cutmix_epochs': 2.0, 'net.widths.block1': 16, 'net.widths.block2': 32, 'net.widths.block3': 32,
            'net.whiten_images': 1000, 'net.whiten_chunk': 500}


def as_flags(settings):
    return [arg for key, value in settings.items() for arg in ('--set', f'{key}={value}')]


def tiny(m, settings, **more):
    hyp, _ = m.apply_overrides(m.hyp, [f'{k}={v}' for k, v in {**settings, **more}.items()])
    m.check_hyp(hyp)
    return hyp


# ================================================================ both, end to end


@pytest.mark.parametrize('script, settings, steps', [('legacy/cifar10_fast', FAST_TINY, 3 * 62),
                                                     ('legacy/hlb_cifar10', HLB_TINY, 4 * 20)])
def test_end_to_end(script, settings, steps, cifar_dir, tmp_path):
    proc = run_script(script, '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1', '--seed', '0',
                      '--no-warmup', *as_flags(settings))  # the warmup is the shared harness's (test_airbench94_e2e)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith('|')]
    epochs = int(float(settings['opt.train_epochs']))
    assert len(rows) == 1 + epochs + 1  # head, then run 1: epochs + eval
    log = read_log(log_dir_of(proc.stdout))
    assert log['script'] == script.split('/')[1] and log['status'] == 'complete'
    assert log['runs'][0]['steps'] == steps and log['runs'][0]['tta_val_acc'] > 0.6, log['runs'][0]
    assert sum(line.startswith('Mean:') for line in proc.stdout.splitlines()) == 1


@pytest.mark.parametrize('script, flag, words', [
    ('legacy/cifar10_fast', 'net.ghost_splits=5', 'must divide opt.batch_size (512)'),
    ('legacy/hlb_cifar10', 'aug.crop_positions=6', 'must be at most 2 x aug.translate + 1 = 5')])
def test_bad_input_is_one_sentence_and_status_2(script, flag, words, tmp_path):
    proc = run_script(script, '--data-dir', str(tmp_path), '--log-dir', str(tmp_path), '--set', flag)
    no_traceback(proc)
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def nan_at(k, monkeypatch, m):
    """Makes the k-th summed training loss NaN."""
    real, calls = F.cross_entropy, [0]

    def cross_entropy(input, *args, **kwargs):
        out = real(input, *args, **kwargs)
        if input.device.type != 'meta' and kwargs.get('reduction') == 'sum':
            calls[0] += 1
            if calls[0] == k:
                return out * float('nan')
        return out
    monkeypatch.setattr(m.F, 'cross_entropy', cross_entropy)


@pytest.mark.parametrize('name, settings', [('fast', FAST_TINY), ('hlb', HLB_TINY)])
def test_a_nan_loss_names_its_step(name, settings, request, data, monkeypatch):
    m = request.getfixturevalue(name)
    hyp = tiny(m, settings, **{'opt.train_epochs': 1.0})
    total = m.train_steps(hyp['opt'], 2000)
    nan_at(total - 3, monkeypatch, m)
    with pytest.raises(m.TrainingDiverged, match=f'NaN or infinite at step {total - 3} of {total} '):
        train_on(m, hyp, m.Device('cpu'), data, seed=0)


def test_step_counts_and_flops_match_the_published_figures(fast, hlb):
    assert fast.train_steps(fast.hyp['opt'], 50000) == 970  # 10 epochs x floor(50000 / 512) = 97
    assert hlb.train_steps(hlb.hyp['opt'], 50000) == 581  # ceil(12.1 x 48)
    assert fast.flops_per_run(fast.hyp, 50000, 10000) == pytest.approx(1.144e15, rel=0.10)
    assert hlb.flops_per_run(hlb.hyp, 50000, 10000) == pytest.approx(0.572e15, rel=0.10)


def test_hyperparameters_are_the_fact_sheets(fast, hlb):
    o, a, n = fast.hyp['opt'], fast.hyp['aug'], fast.hyp['net']
    assert (o['batch_size'], o['train_epochs'], o['momentum'], o['lr'], o['weight_decay'], o['bias_scaler'],
            o['label_smoothing']) == (512, 10, 0.9, 1.0, 5e-4, 64, 0.2)
    assert (o['lr_peak_epoch'], o['lr_end_epoch'], o['lr_end'], o['ema_every'], o['ema_momentum']) == (2, 8, 0.1, 5, 0.99)
    assert a == {'flip': 'random', 'translate': 4}
    assert (n['whiten_images'], n['whiten_eps'], n['tta_level']) == (10000, 1e-2, 1)
    assert n['widths'] == {'prep': 64, 'layer1': 128, 'layer2': 256, 'layer3': 512}
    o, a, n = hlb.hyp['opt'], hlb.hyp['aug'], hlb.hyp['net']
    assert (o['batch_size'], o['train_epochs'], o['momentum'], o['lr'], o['bias_scaler'], o['label_smoothing'],
            o['lookahead_every'], o['lookahead_decay']) == (1024, 12.1, 0.85, 1.525, 64, 0.2, 5, 0.95)
    assert 2 * o['weight_decay'] == pytest.approx(1.34e-3, rel=0.01)  # per batch-mean loss at batch 1024
    assert (o['lr_start'], o['lr_peak_at'], o['lr_end'], o['lookahead_epochs']) == (1e-16, 0.23, 0.07, 10)
    assert (a['flip'], a['translate'], a['crop_positions'], a['cutmix'], a['cutmix_epochs']) == ('random', 2, 4, 3, 6)
    assert (n['whiten_images'], n['whiten_chunk'], n['whiten_eps'], n['tta_level']) == (50000, 5000, 1e-2, 1)
    assert n['widths'] == {'block1': 64, 'block2': 256, 'block3': 512}


def test_default_run_counts(fast, hlb, monkeypatch):
    for m in (fast, hlb):
        monkeypatch.setattr(m, 'benchmark', lambda args, *rest: args)
        assert m.main([]).runs == 10 and m.main(['--runs', '5']).runs == 5


# ================================================================ cifar10-fast


def test_ghost_batchnorm_statistics_in_training_and_eval(fast):
    torch.manual_seed(0)
    splits, c = 4, 3
    bn = fast.GhostBatchNorm(c, splits, momentum=0.1, eps=1e-5)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    # four runs of 8 images with their own offsets and scales, so split and batch statistics differ
    x = torch.randn(32, c, 5, 5) * torch.arange(1, 5).repeat_interleave(8).view(-1, 1, 1, 1) \
        + torch.arange(4.0).repeat_interleave(8).view(-1, 1, 1, 1) * 3
    x = x.contiguous(memory_format=torch.channels_last)
    y = bn(x)
    expected_mean, expected_var = torch.zeros(splits, c), torch.ones(splits, c)
    for k in range(splits):
        part = x[8 * k:8 * (k + 1)]
        mean, var = part.mean((0, 2, 3)), part.var((0, 2, 3), unbiased=False)
        want = (part - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) + bn.bias.view(1, -1, 1, 1)
        assert torch.allclose(y[8 * k:8 * (k + 1)], want, atol=1e-5), k  # normalised by its own split only
        expected_mean[k] = 0.9 * 0 + 0.1 * mean
        expected_var[k] = 0.9 * 1 + 0.1 * part.var((0, 2, 3), unbiased=True)
    whole = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-5)
    assert not torch.allclose(y, whole + bn.bias.view(1, -1, 1, 1), atol=0.1)  # not whole-batch BatchNorm
    assert torch.allclose(bn.running_mean.reshape(splits, c), expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var.reshape(splits, c), expected_var, atol=1e-4)
    # eval, as the original's: leaving training mode replaces every split's statistics by their mean ...
    bn.eval()
    assert torch.allclose(bn.running_mean, expected_mean.mean(0).expand(splits, c), atol=1e-6)
    assert torch.allclose(bn.running_var, expected_var.mean(0).expand(splits, c), atol=1e-6)

    def normalised_with(mean, var):
        return (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5) + bn.bias.view(1, -1, 1, 1)
    assert torch.allclose(bn(x), normalised_with(expected_mean.mean(0), expected_var.mean(0)), atol=1e-5)
    # ... and eval normalises with split 0's alone: an EMA moves each split's statistics its own way
    with torch.no_grad():
        bn.running_mean += torch.arange(splits * c, dtype=torch.float32).view(splits, c)
        bn.running_var *= torch.linspace(1, 3, splits).view(splits, 1)
    before = bn.running_mean.clone()
    bn.eval()  # already in eval mode: nothing is averaged again
    assert torch.equal(bn.running_mean, before)
    assert torch.allclose(bn(x), normalised_with(bn.running_mean[0], bn.running_var[0]), atol=1e-5)
    assert not torch.allclose(bn(x), normalised_with(bn.running_mean.mean(0), bn.running_var.mean(0)), atol=1e-2)
    # the scale is frozen at 1, the bias learns
    assert not bn.weight.requires_grad and torch.equal(bn.weight, torch.ones(c)) and bn.bias.requires_grad


def test_network_ghost_batchnorm_and_celu(fast):
    net = fast.make_net(fast.hyp)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 8  # prep, layer1 + its 2 residual convs, layer2, layer3 + its 2
    for bn in norms:
        assert isinstance(bn, fast.GhostBatchNorm) and bn.splits == 16
        assert bn.momentum == pytest.approx(0.1) and bn.eps == 1e-5 and not bn.weight.requires_grad
    activations = [m for m in net.modules() if isinstance(m, (nn.CELU, nn.ELU, nn.ReLU, nn.GELU, nn.SiLU))]
    assert len(activations) == 8 and all(isinstance(a, nn.CELU) and a.alpha == 0.3 for a in activations)
    z = torch.linspace(-3, 3, 13)
    assert torch.allclose(activations[0](z), torch.where(z > 0, z, 0.3 * (torch.exp(z / 0.3) - 1)))
    # shapes: whitening 27 @ 32, prep 64 @ 32, layer1 128 @ 16, layer2 256 @ 8, layer3 512 @ 4, then 1
    x, sizes = torch.randn(32, 3, 32, 32), []
    for layer in net:
        x = layer(x)
        if x.dim() == 4:
            sizes.append((x.size(1), x.size(-1)))
    assert sizes == [(27, 32), (64, 32), (64, 32), (64, 32), (128, 16), (128, 16), (256, 8), (512, 4), (512, 4),
                     (512, 1)]
    assert x.shape == (32, 10)
    assert net[0].kernel_size == (3, 3) and net[0].padding == (1, 1) and net[0].bias is None
    assert not net[0].weight.requires_grad and net[1].kernel_size == (1, 1)
    assert net[-2].bias is None and net[-1].scale == pytest.approx(1 / 16)
    # the residual: layer1's output x goes on as x + res2(res1(x))
    res = net[5]
    with torch.no_grad():
        h = torch.randn(32, 128, 16, 16)
        assert torch.allclose(res(h), h + res.res2(res.res1(h)))


def called_in_order(module, x):
    """The submodules of `module` in the order its forward calls them, with each one's input size."""
    order, handles = [], []
    for name, child in module.named_children():
        handles.append(child.register_forward_pre_hook(
            lambda m, args, name=name: order.append((name, tuple(args[0].shape[-2:])))))
    module(x)
    for h in handles:
        h.remove()
    return order


def test_fast_layer_order_conv_pool_norm_celu(fast):
    """cifar10-fast's conv_bn with a pool: conv -> MaxPool 2 -> BatchNorm -> CELU, so BatchNorm
    sees the pooled map; the residual branches the same without the pool."""
    net = fast.make_net(fast.hyp)
    assert called_in_order(net[4], torch.randn(32, 64, 32, 32)) == [
        ('conv', (32, 32)), ('pool', (32, 32)), ('norm', (16, 16)), ('activ', (16, 16))]
    assert [name for name, _ in called_in_order(net[5].res1, torch.randn(32, 128, 16, 16))] == ['conv', 'pool', 'norm', 'activ']
    assert isinstance(net[5].res1.pool, nn.Identity) and isinstance(net[4].pool, nn.MaxPool2d)
    assert [type(m).__name__ for m in net[:4]] == ['Conv2d', 'Conv2d', 'GhostBatchNorm', 'CELU']  # whiten, prep


def test_whitening_from_uncentred_3x3_patch_moments(fast):
    torch.manual_seed(0)
    images = torch.randn(6, 3, 6, 6) + torch.tensor([0.8, -0.5, 0.3]).view(1, 3, 1, 1)
    images = images + 0.6 * images.roll(1, dims=-1)  # 6 x 16 = 96 patches: dividing by 96 or 95 shows
    eps = 1e-2
    w = fast.whitening_filters(images, eps, chunk=4)
    assert w.shape == (27, 3, 3, 3)
    patches = images.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 27)
    moments = patches.T @ patches / (len(patches) - 1)  # uncentred, over n - 1
    values, vectors = torch.linalg.eigh(moments, UPLO='U')  # the upper triangle, as the original
    values, vectors = values.flip(0), vectors.flip(1)  # largest first
    expected = vectors.T / torch.sqrt(values + eps).view(-1, 1)
    assert torch.allclose(w.reshape(27, 27), expected, atol=2e-4)
    whitened = w.reshape(27, 27) @ moments @ w.reshape(27, 27).T
    assert torch.allclose(whitened, torch.diag(values / (values + eps)), atol=1e-3)


def test_loader_normalises_with_pages_constants(fast, data):
    loader = fast.PageLoader(data['test'], fast.Device('cpu'), 100, train=False)
    x = data['test']['images'][:5].permute(0, 3, 1, 2).float()
    mean = torch.tensor([125.31, 122.95, 113.87]).view(1, 3, 1, 1)
    std = torch.tensor([62.99, 62.09, 66.70]).view(1, 3, 1, 1)
    assert torch.allclose(loader.normalize(loader.images[:5]), (x - mean) / std, atol=1e-5)


def expected_fast_multiplier(k, steps_per_epoch, opt):
    """Piecewise linear in epochs through (0, 0), (lr_peak_epoch, 1), (lr_end_epoch, lr_end), then
    lr_end (the fact sheet's (0, 2, 8) -> (0, 1, 0.1), pinned above); step k = 1, 2, ... is at
    k / steps_per_epoch epochs."""
    e, peak, end_epoch, end = k / steps_per_epoch, opt['lr_peak_epoch'], opt['lr_end_epoch'], opt['lr_end']
    return e / peak if e <= peak else 1 - (1 - end) * (e - peak) / (end_epoch - peak) if e <= end_epoch else end


def test_fast_schedule_knots_and_groups_per_step_and_the_ema_cadence(fast, data, monkeypatch):
    """A 10-epoch run of 6 steps per epoch (batches of 320) with the script's schedule, lr, weight
    decay and EMA: the lr of each step from the knots, the two groups' lr and weight decay, and the
    EMA: its count restarts every epoch, as the original's, so it updates after steps 1 and 6 of
    each epoch (at the real 97 steps per epoch: 1, 6, ..., 96), with rho = 0.99^5, the live net
    untouched, the average what gets evaluated."""
    settings = {k: v for k, v in FAST_TINY.items() if k.startswith('net.')}
    hyp = tiny(fast, settings, **{'opt.batch_size': 320, 'net.ghost_splits': 16})
    seen, updates, evaluated, averages, optimizers = [], [], [], [], []
    make_optimizer = fast.make_optimizer

    def recording_optimizer(model, opt):
        optimizer = make_optimizer(model, opt)
        optimizer.register_step_pre_hook(lambda o, args, kwargs: seen.append(
            [(g['lr'], g['weight_decay']) for g in o.param_groups]))
        optimizers.append(optimizer)
        return optimizer

    class RecordingEMA(fast.EMA):
        def __init__(self, net):
            super().__init__(net)
            averages.append(self)

        def update(self, net, rho):
            before = {k: v.clone() for k, v in self.net.state_dict().items()}
            live = {k: v.clone() for k, v in net.state_dict().items()}
            super().update(net, rho)
            for k, v in self.net.state_dict().items():
                if v.is_floating_point():
                    assert torch.allclose(v, rho * before[k] + (1 - rho) * live[k], atol=1e-6)
            assert all(torch.equal(v, live[k]) for k, v in net.state_dict().items())  # not lookahead
            updates.append((len(seen), rho))

    def recording_evaluate(model, loader, tta_level):
        evaluated.append((model, tta_level))
        return 0.5

    monkeypatch.setattr(fast, 'make_optimizer', recording_optimizer)
    monkeypatch.setattr(fast, 'EMA', RecordingEMA)
    monkeypatch.setattr(fast, 'evaluate', recording_evaluate)
    result = train_on(fast, hyp, fast.Device('cpu'), data, seed=0)
    assert result['steps'] == len(seen) == 60
    assert optimizers[0].defaults['momentum'] == 0.9
    o = hyp['opt']
    lr, wd = o['lr'] / 320, o['weight_decay'] * 320  # the values for the summed loss
    bias_lr, bias_wd = lr * o['bias_scaler'], wd / o['bias_scaler']
    for k, groups in enumerate(seen, start=1):
        f = expected_fast_multiplier(k, 6, o)
        assert groups[0] == pytest.approx((bias_lr * f, bias_wd), rel=1e-9) and groups[1] == pytest.approx((lr * f, wd))
    assert seen[11][1][0] == pytest.approx(lr) and seen[-1][1][0] == pytest.approx(0.1 * lr)  # knots at steps 12, 48
    rho = o['ema_momentum']**o['ema_every']
    assert updates == [(6 * epoch + s, pytest.approx(rho)) for epoch in range(10) for s in (1, 6)]
    assert len(averages) == 1 and [level for _, level in evaluated] == [0] * 10 + [1]  # mirror TTA at the end
    assert all(model is averages[0].net for model, _ in evaluated)


def test_fast_optimizer_is_the_originals_nesterov_with_the_lr_inside_the_momentum(fast):
    """cifar10-fast's nesterov_update, written out: d = g + wd w; v = m v - lr d; w = w - lr d + m v,
    with each step's lr. Four steps at changing lrs (as in the warmup) on both groups; PyTorch's SGD,
    which keeps the lr outside its buffer, takes other steps there."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), fast.GhostBatchNorm(4, 2, momentum=0.1, eps=1e-5))
    opt = dict(fast.hyp['opt'], batch_size=8)
    optimizer = fast.make_optimizer(model, opt)
    params = [p for g in optimizer.param_groups for p in g['params']]
    assert len(params) == 2  # the BatchNorm bias, the conv weight
    reference = [(p.detach().clone(), torch.zeros_like(p)) for p in params]
    pytorch = torch.optim.SGD([dict(params=[p.detach().clone().requires_grad_()], lr=g['lr'], weight_decay=g['weight_decay'])
                               for g in optimizer.param_groups for p in g['params']], momentum=0.9, nesterov=True)
    base = [g['lr'] for g in optimizer.param_groups]
    for multiplier in (0.05, 0.1, 0.2, 0.15):
        grads = [torch.randn_like(p) for p in params]
        for g, b in zip(optimizer.param_groups, base):
            g['lr'] = b * multiplier
        for g, b in zip(pytorch.param_groups, base):
            g['lr'] = b * multiplier
        for p, grad, q in zip(params, grads, [q for g in pytorch.param_groups for q in g['params']]):
            p.grad, q.grad = grad.clone(), grad.clone()
        optimizer.step()
        pytorch.step()
        for i, (grad, g) in enumerate(zip(grads, [g for g in optimizer.param_groups for _ in g['params']])):
            w, v = reference[i]
            d = grad + g['weight_decay'] * w
            v = 0.9 * v - g['lr'] * d
            reference[i] = (w - g['lr'] * d + 0.9 * v, v)
    for p, (w, _) in zip(params, reference):
        assert torch.allclose(p.detach(), w, rtol=1e-5, atol=1e-7)
    assert not all(torch.allclose(p.detach(), q.detach(), rtol=1e-3)
                   for p, q in zip(params, [q for g in pytorch.param_groups for q in g['params']]))


def test_fast_ema_copy_averages_its_splits_once_then_evaluates_with_split_0(fast, data, monkeypatch):
    """In training, the EMA copy's ghost BatchNorms average each split's running statistics; at its
    first evaluation it leaves training mode, which replaces every split's by their mean, and it
    stays in eval mode, so later evaluations see split statistics that have drifted apart again and
    normalise with split 0's."""
    settings = {k: v for k, v in FAST_TINY.items() if k.startswith('net.')}
    hyp = tiny(fast, settings, **{'opt.batch_size': 200, 'opt.train_epochs': 3.0})
    real_evaluate, calls = fast.evaluate, []

    def evaluate(model, loader, tta_level):
        norm = model[2]
        before = (norm.training, torch.allclose(norm.running_mean, norm.running_mean[:1].expand_as(norm.running_mean)))
        acc = real_evaluate(model, loader, tta_level)
        after = torch.allclose(norm.running_mean, norm.running_mean[:1].expand_as(norm.running_mean))
        calls.append((*before, norm.training, after))
        return acc

    monkeypatch.setattr(fast, 'evaluate', evaluate)
    train_on(fast, hyp, fast.Device('cpu'), data, seed=0)
    # (in training before, splits equal before, in training after, splits equal after)
    assert calls == [(True, False, False, True), (False, False, False, False), (False, False, False, False),
                     (False, False, False, False)]


# ================================================================ hlb-CIFAR10


def test_chunked_whitening_averages_each_chunks_eigen_decomposition(hlb, monkeypatch):
    """Each chunk's centred patch covariance goes to eigh (upper triangle); the filters come from the
    mean of the chunks' eigenvalues and the mean of their eigenvectors. The decompositions are
    recorded rather than recomputed here: eigh's eigenvector signs can flip under a rounding-level
    change of its input, and which signs get averaged is part of the method."""
    torch.manual_seed(0)

    def field(n):  # stationary, with distinct patch-covariance eigenvalues; each chunk its own
        return F.conv2d(torch.randn(n, 3, 12, 12), torch.randn(3, 3, 3, 3)) + torch.randn(3).view(1, 3, 1, 1)
    images = torch.cat([field(30), field(30)])
    calls, eigh = [], torch.linalg.eigh

    def recording_eigh(matrix, UPLO='L'):
        out = eigh(matrix, UPLO=UPLO)
        calls.append((matrix.clone(), UPLO, out.eigenvalues.clone(), out.eigenvectors.clone()))
        return out
    monkeypatch.setattr(torch.linalg, 'eigh', recording_eigh)
    w = hlb.whitening_filters(images, 2, 1e-2, chunk=30)
    assert w.shape == (24, 3, 2, 2) and torch.equal(w[12:], -w[:12])
    assert len(calls) == 2 and all(uplo == 'U' for _, uplo, _, _ in calls)
    for chunk, (matrix, _, _, _) in zip((images[:30], images[30:]), calls):
        p = chunk.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
        centred = p - p.mean(0)
        assert torch.allclose(matrix, centred.T @ centred / (len(p) - 1), atol=1e-4)  # centred, over n - 1
    values = torch.stack([lam.flip(0) for _, _, lam, _ in calls]).mean(0)  # largest first
    vectors = torch.stack([v.flip(1).T for _, _, _, v in calls]).mean(0)
    assert torch.allclose(w[:12].reshape(12, 12), vectors / torch.sqrt(values + 1e-2).view(-1, 1), atol=1e-6)
    # not the decomposition of all the patches at once
    assert not torch.allclose(hlb.whitening_filters(images, 2, 1e-2, chunk=60), w, atol=0.05)


def test_crop_keeps_the_originals_offsets(hlb, data):
    """The original draws the crop's centre with random_(15, 19) on the 36 x 36 padded image: its
    corner is at 0, 1, 2 or 3 per axis, uniformly, and never at 4."""
    torch.manual_seed(0)
    padded = torch.randn(1600, 3, 36, 36)
    corners = []
    out = hlb.crop_corner(padded, 32, positions=hlb.hyp['aug']['crop_positions'])
    for i in range(len(out)):
        match = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert len(match) == 1
        corners.append(match[0])
    assert set(corners) == {(dy, dx) for dy in range(4) for dx in range(4)}
    for axis in range(2):  # uniform over the 4: 400 expected each
        counts = [sum(c[axis] == k for c in corners) for k in range(4)]
        assert all(320 < n < 480 for n in counts), counts
    full = hlb.crop_corner(padded, 32, positions=5)
    reached = {next((dy, dx) for dy in range(5) for dx in range(5)
                    if torch.equal(full[i], padded[i, :, dy:dy + 32, dx:dx + 32])) for i in range(len(full))}
    assert len(reached) == 25  # positions=5: every shift in [-2, 2]^2
    # the loader: reflect-pad 2, normalised with the training set's mean and (unbiased) std
    loader = hlb.HlbLoader(data['train'], hlb.Device('cpu'), 100, train=True, aug=hlb.hyp['aug'])
    x = data['train']['images'].permute(0, 3, 1, 2).float() / 255
    mean, std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    loader.set_statistics(*hlb.channel_statistics(loader.images))
    normalised = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(loader.normalize(loader.images), normalised, atol=1e-4)
    padded = F.pad(normalised, (2,) * 4, 'reflect')
    corners = set()
    for _ in range(2):
        images, _, _ = loader.next_epoch()
        mirrored = []
        for i in range(0, 2000, 20):
            as_is = [(dy, dx) for dy in range(5) for dx in range(5)
                     if torch.allclose(images[i], padded[i, :, dy:dy + 32, dx:dx + 32], atol=1e-4)]
            flipped = [(dy, dx) for dy in range(5) for dx in range(5)
                       if torch.allclose(images[i].flip(-1), padded[i, :, dy:dy + 32, dx:dx + 32], atol=1e-4)]
            assert len(as_is + flipped) == 1
            corners.update(as_is + flipped)
            mirrored.append(bool(flipped))
        assert 0.3 < sum(mirrored) / len(mirrored) < 0.7  # a random flip, drawn every epoch
    assert corners == {(dy, dx) for dy in range(4) for dx in range(4)}  # the loader's default: the original's


def test_hlb_layer_order_conv_pool_norm_gelu(hlb):
    """hlb-CIFAR10's ConvGroup: conv -> MaxPool 2 -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU,
    so the first BatchNorm sees the pooled map."""
    group = hlb.ConvGroup(24, 32, 0.6)
    assert called_in_order(group, torch.randn(2, 24, 31, 31)) == [
        ('conv1', (31, 31)), ('pool', (31, 31)), ('norm1', (15, 15)), ('activ', (15, 15)), ('conv2', (15, 15)),
        ('norm2', (15, 15)), ('activ', (15, 15))]


def test_cutmix_pastes_one_square_and_mixes_labels_by_area(hlb):
    torch.manual_seed(0)
    n = 400
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone() + 1000
    targets = F.one_hot(torch.arange(n) % 10, 10).float()
    mixed, mixed_targets = hlb.batch_cutmix(images, targets, 3)
    area = 9 / 1024
    for i in range(n):
        changed = (mixed[i] != images[i]).all(0)
        assert (mixed[i] != images[i]).any(0).equal(changed)  # all channels together
        ys, xs = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        partner = int(mixed[i, 0][changed][0]) - 1000 if changed.any() else i
        if partner == i:  # its own partner: nothing visible changes, the target is its own
            assert torch.allclose(mixed_targets[i], targets[i])
            continue
        assert changed.sum() == 9 and len(ys) == 3 and len(xs) == 3  # one 3x3 square inside the image
        assert (mixed[i, :, changed] == partner + 1000).all()  # from one partner image
        assert torch.allclose(mixed_targets[i], (1 - area) * targets[i] + area * targets[partner])
    assert torch.allclose(mixed_targets.sum(1), torch.ones(n))


def test_conv_init_mixes_in_the_identity_then_the_identity(hlb):
    torch.manual_seed(3)
    group = hlb.ConvGroup(24, 64, 0.6)
    torch.manual_seed(3)
    default = nn.Conv2d(24, 64, 3, padding='same', bias=False).weight.detach()  # the same draw, default init
    identity = torch.zeros(64, 24, 3, 3)
    identity[range(24), range(24), 1, 1] = 1
    mixed = default + identity
    expected = (mixed - mixed.mean()) / mixed.std() * default.std() + default.mean()
    w1, w2 = group.conv1.weight.detach(), group.conv2.weight.detach()
    assert torch.allclose(w1, expected, atol=1e-6)
    assert w1.mean() == pytest.approx(default.mean().item(), abs=1e-6) and w1.std() == pytest.approx(default.std().item())
    square = torch.zeros(64, 64, 3, 3)
    square[range(64), range(64), 1, 1] = 1
    assert torch.equal(w2, square) and group.conv1.bias is None and group.conv2.bias is None


def test_network_batchnorm_and_precision(hlb):
    net = hlb.make_net(hlb.hyp)
    x, sizes = torch.randn(2, 3, 32, 32), []
    for layer in net:
        x = layer(x)
        if x.dim() == 4:
            sizes.append((x.size(1), x.size(-1)))
    assert sizes == [(24, 31), (24, 31), (64, 15), (256, 7), (512, 3)] and x.shape == (2, 10)
    assert net[0].kernel_size == (2, 2) and net[0].bias is None and not net[0].weight.requires_grad
    assert net[-2].bias is None and net[-1].scale == pytest.approx(1 / 9)
    h = torch.randn(2, 512, 3, 3)
    assert torch.equal(net[5](h), h.amax(dim=(2, 3)))  # a global max
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    for bn in norms:
        assert bn.momentum == pytest.approx(0.4) and bn.eps == 1e-12 and not bn.weight.requires_grad
    # on CUDA the original keeps BatchNorm in fp16 with the rest: emulated with an fp16 Device on the CPU
    dev = hlb.Device('cpu')
    dev.model_dtype = torch.float16
    prepared = hlb.prepare(dev, hlb.make_net(hlb.hyp), fp16_batchnorm=True)
    assert all(p.dtype == torch.float16 for p in prepared.parameters())
    assert all(b.dtype == torch.float16 for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)
               for b in (m.running_mean, m.running_var))
    # the default keeps BatchNorm in fp32, as airbench does (legacy/README.md says why)
    assert hlb.hyp['net']['fp16_batchnorm'] is False
    prepared = hlb.prepare(dev, hlb.make_net(hlb.hyp), fp16_batchnorm=False)
    norms = [m for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(t.dtype == torch.float32 for m in norms for t in (m.weight, m.bias, m.running_mean, m.running_var))
    assert prepared[0].weight.dtype == torch.float16


def test_hlb_schedule_is_pytorchs_one_cycle(hlb):
    """The script's own schedule settings and step count, against the original's OneCycleLR
    (pct_start 0.23, linear, from 1e-16 of the peak to 0.07 of it), written out here."""
    o = hlb.hyp['opt']
    total = hlb.train_steps(o, 50000)
    assert total == 581
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(probe, max_lr=1.0, total_steps=total, pct_start=0.23,
                                                    anneal_strategy='linear', div_factor=1e16,
                                                    final_div_factor=1 / (1e16 * 0.07))
    expected = []
    for step in range(total):
        expected.append(probe.param_groups[0]['lr'])
        probe.step()
        if step < total - 1:  # stepping past the last step is an error
            one_cycle.step()
    got = hlb.lr_schedule(total, o['lr_start'], o['lr_peak_at'], o['lr_end'])
    assert got[:total] == pytest.approx(expected, abs=1e-9)
    assert got[0] == pytest.approx(0, abs=1e-12) and got[total - 1] == pytest.approx(0.07)
    peak = 0.23 * total - 1  # 132.63: steps 132 and 133 straddle it
    assert max(got[:total]) == got[133] and got[132] == pytest.approx(132 / peak)


def test_hlb_groups_lookahead_start_and_cutmix_epochs_per_step(hlb, data, monkeypatch):
    """The default 12.1 epochs, in batches of 500 (4 steps per epoch, ceil(48.4) = 49 steps), with
    the default lr, schedule, lookahead and CutMix: lookahead over the last 10 whole epochs, i.e. from
    epoch index 2 (steps 9-12): the snapshot at step 10, syncs at 15, 20, ..., 45 with decay
    0.95^5 (step / 49)^3, then decay 1 at the last step; CutMix 3x3 in epoch indices >= 12.1 - 6,
    i.e. 7 .. 12; the groups' lr and weight decay at every step."""
    settings = {k: v for k, v in HLB_TINY.items() if k.startswith('net.widths')}
    hyp = tiny(hlb, settings, **{'opt.batch_size': 500})
    seen, events, cutmix = [], [], []
    make_optimizer, real_cutmix = hlb.make_optimizer, hlb.batch_cutmix

    def recording_optimizer(model, opt):
        optimizer = make_optimizer(model, opt)
        optimizer.register_step_pre_hook(lambda o, args, kwargs: seen.append(
            [(g['lr'], g['weight_decay']) for g in o.param_groups]))
        assert optimizer.defaults['nesterov'] and optimizer.defaults['momentum'] == 0.85
        return optimizer

    class RecordingLookahead(hlb.LookaheadState):
        def __init__(self, net):
            events.append((len(seen), 'snapshot'))
            super().__init__(net)

        def update(self, net, decay):
            events.append((len(seen), decay))
            return super().update(net, decay)

    def recording_cutmix(images, targets, size, generator=None):
        cutmix.append((len(seen), size))
        return real_cutmix(images, targets, size, generator)

    monkeypatch.setattr(hlb, 'make_optimizer', recording_optimizer)
    monkeypatch.setattr(hlb, 'LookaheadState', RecordingLookahead)
    monkeypatch.setattr(hlb, 'batch_cutmix', recording_cutmix)
    assert train_on(hlb, hyp, hlb.Device('cpu'), data, seed=0)['steps'] == 49
    decay = lambda step: 0.95**5 * (step / 49)**3
    assert events == [(10, 'snapshot')] + [(s, pytest.approx(decay(s))) for s in range(15, 46, 5)] + [(49, 1.0)]
    assert cutmix == [(4 * epoch, 3) for epoch in range(7, 13)]
    peak = 0.23 * 49 - 1
    # the original's PyTorch values: lr 1.525 / 512 on the loss summed and scaled by 512 / 500, weight
    # decay 6.687e-4 x 500: per summed-loss gradient 1.525 / 500, per step lr x decay as below
    grad_lr, decay_per_step = 1.525 / 500, 1.525 / 512 * 6.687e-4 * 500
    for i, groups in enumerate(seen):
        f = 1e-16 + (1 - 1e-16) * i / peak if i <= peak else 1 - 0.93 * (i - peak) / (48 - peak)
        (blr, bwd), (lr, wd) = groups
        assert lr == pytest.approx(grad_lr * f) and blr == pytest.approx(64 * grad_lr * f)
        assert lr * wd == pytest.approx(decay_per_step * f) and blr * bwd == pytest.approx(decay_per_step * f)


def test_hlb_evaluates_the_lookahead_average(hlb, data, monkeypatch):
    """The final net is the average as of the last sync, not the live weights after it."""
    hyp = tiny(hlb, HLB_TINY, **{'opt.batch_size': 200, 'opt.train_epochs': 3.7, 'opt.lookahead_epochs': 2})
    state = {}

    class Keeping(hlb.LookaheadState):
        def update(self, net, decay):
            super().update(net, decay)
            state['ema'] = {k: v.clone() for k, v in self.net_ema.items()}

    def final_evaluate(model, loader, tta_level):
        state['evaluated'] = {k: v.clone() for k, v in model.state_dict().items()}
        return 0.5

    monkeypatch.setattr(hlb, 'LookaheadState', Keeping)
    monkeypatch.setattr(hlb, 'evaluate', final_evaluate)
    assert train_on(hlb, hyp, hlb.Device('cpu'), data, seed=0)['steps'] == 37  # last sync at 35
    assert all(torch.equal(state['evaluated'][k], v) for k, v in state['ema'].items())


def test_hlb_stops_when_a_running_statistic_becomes_nan(hlb, data, monkeypatch):
    """The loss uses batch statistics, so a NaN in a BatchNorm running statistic (seen on CUDA with
    fp16 BatchNorm) would only show as 10% accuracy: the run stops with exit status 1 instead."""
    hyp = tiny(hlb, HLB_TINY, **{'opt.batch_size': 200, 'opt.train_epochs': 3.0, 'opt.lookahead_epochs': 2})

    class Breaking(hlb.LookaheadState):
        def update(self, net, decay):
            super().update(net, decay)
            net[3].norm1.running_var[0] = float('nan')

    monkeypatch.setattr(hlb, 'LookaheadState', Breaking)
    with pytest.raises(hlb.TrainingDiverged, match=r'state became NaN or infinite by the end of epoch 2 of run 1 '
                                                   r'\(step 20 of 30: 3\.norm1\.running_var\)'):
        train_on(hlb, hyp, hlb.Device('cpu'), data, seed=0)


@pytest.mark.parametrize('name, settings', [('fast', FAST_TINY), ('hlb', HLB_TINY)])
def test_the_loss_is_summed_with_label_smoothing_0_2(name, settings, request, data, monkeypatch):
    """Both records: cross-entropy with label smoothing 0.2, summed over the batch, on fp32 logits."""
    m = request.getfixturevalue(name)
    hyp = tiny(m, settings, **{'opt.train_epochs': 0.5})
    assert m.hyp['opt']['label_smoothing'] == 0.2  # the fact sheets' value; tiny() keeps it
    real, seen = F.cross_entropy, []

    def cross_entropy(input, target, **kwargs):
        seen.append((input.dtype, kwargs.get('label_smoothing'), kwargs.get('reduction')))
        return real(input, target, **kwargs)
    monkeypatch.setattr(m.F, 'cross_entropy', cross_entropy)
    result = train_on(m, hyp, m.Device('cpu'), data, seed=0)
    assert len(seen) == result['steps'] > 0
    assert set(seen) == {(torch.float32, 0.2, 'sum')}


def test_hlb_activations_are_gelu(hlb):
    net = hlb.make_net(hlb.hyp)
    assert isinstance(net[1], nn.GELU)  # right after the whitening conv
    groups = [g for g in net if isinstance(g, hlb.ConvGroup)]
    assert len(groups) == 3 and all(isinstance(g.activ, nn.GELU) for g in groups)
    assert not any(isinstance(x, (nn.ReLU, nn.CELU)) for x in net.modules())


def whitened_images(m, hyp, data, monkeypatch, seed=0):
    """The images train() whitens from, and (cifar10-fast) the whitening filters and the EMA's."""
    seen = {}
    real_init, real_ema = m.init_whitening_conv, getattr(m, 'EMA', None)

    def init_whitening_conv(conv, images, *args):
        seen['images'] = images.clone()
        real_init(conv, images, *args)
        seen['filters'] = conv.weight.detach().clone()
    monkeypatch.setattr(m, 'init_whitening_conv', init_whitening_conv)
    if real_ema:
        class Seeing(real_ema):
            def __init__(self, net):
                super().__init__(net)
                seen['ema_filters'] = self.net[0].weight.detach().clone()
        monkeypatch.setattr(m, 'EMA', Seeing)
    train_on(m, hyp, m.Device('cpu'), data, seed=seed)
    monkeypatch.undo()
    return seen


def test_fast_whitening_reads_the_first_training_images_normalised(fast, data, monkeypatch):
    """cifar10-fast whitens from the first net.whiten_images training images, normalised with
    Page's constants, and its EMA starts from the whitened net."""
    hyp = tiny(fast, FAST_TINY, **{'opt.train_epochs': 0.5})
    n = hyp['net']['whiten_images']
    seen = whitened_images(fast, hyp, data, monkeypatch)
    x = data['train']['images'].permute(0, 3, 1, 2).double()
    mean = torch.tensor([125.31, 122.95, 113.87], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([62.99, 62.09, 66.70], dtype=torch.float64).view(1, 3, 1, 1)
    expected = ((x[:n] - mean) / std).float()
    assert seen['images'].shape == expected.shape
    assert torch.allclose(seen['images'].float(), expected, atol=1e-4)
    assert torch.equal(seen['ema_filters'], seen['filters'])


def test_hlb_whitening_reads_the_training_images_in_a_fresh_random_order(hlb, data, monkeypatch):
    """hlb-CIFAR10 whitens from net.whiten_images training images taken in a random permutation of
    the training set drawn anew every run (the chunks, whose decompositions are averaged, differ
    from run to run), normalised with the training set's own mean and unbiased std."""
    hyp = tiny(hlb, HLB_TINY, **{'opt.train_epochs': 0.5})
    n = hyp['net']['whiten_images']
    x = data['train']['images'].permute(0, 3, 1, 2).double()
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)  # unbiased
    normalised = ((x - mean) / std).float()
    torch.manual_seed(0)
    projection = torch.randn(3 * 32 * 32, 8)
    keys = normalised.flatten(1) @ projection
    orders = []
    for seed in (0, 1):
        seen = whitened_images(hlb, hyp, data, monkeypatch, seed=seed)['images'].float()
        assert seen.shape == (n, 3, 32, 32)
        index = torch.cdist(seen.flatten(1) @ projection, keys).argmin(1)
        assert torch.allclose(seen, normalised[index], atol=1e-4)  # training images, normalised
        assert len(set(index.tolist())) == n  # each at most once
        orders.append(index.tolist())
    assert orders[0] != list(range(n)) and orders[1] != list(range(n))  # not the file order
    assert orders[0] != orders[1]  # drawn anew every run
