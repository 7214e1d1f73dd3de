"""The current records: airbench94_muon.py (Muon) and airbench96_faster.py (proxy-selected batches)."""
import copy
import math

import pytest
import torch
from torch import nn

from conftest import TINY, log_dir_of, no_traceback, read_log, run_script, train_on


def tiny(hyp, **opt):
    hyp = copy.deepcopy(hyp)
    hyp['net']['widths'] = {'block1': 16, 'block2': 32, 'block3': 32}
    hyp['opt'].update(opt)
    return hyp


# ================================================================ Muon


def singular_values(x):
    return torch.linalg.svdvals(x.double())


@pytest.mark.parametrize('shape', [(64, 576), (576, 64), (256, 2304), (96, 48)])
def test_newton_schulz_spectrum_random(mu, shape):
    """Gaussian matrices of the conv-filter shapes (out x in*9). Square ones are left out: their
    smallest singular value is near 0, which no 3-step iteration lifts to 0.5."""
    torch.manual_seed(0)
    g = torch.randn(shape)
    out = mu.newton_schulz(g, steps=3)
    assert out.shape == g.shape and out.dtype == torch.bfloat16
    s = singular_values(out)
    assert s.min() > 0.5 and s.max() < 1.5, (s.min(), s.max())


@pytest.mark.parametrize('tall', [False, True])
def test_newton_schulz_spectrum_ill_conditioned(mu, tall):
    """Singular values spread over a factor of 20. (Three iterations can raise a singular value
    by at most a^3 = 41x, so one below ~1% of ||G||_F stays below 0.5: the iteration is tuned
    for speed, not for arbitrarily ill-conditioned inputs.)"""
    torch.manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(64, 64))
    v, _ = torch.linalg.qr(torch.randn(288, 64))
    g = u @ torch.diag(torch.logspace(0, math.log10(20), 64)) @ v.T  # 64 x 288
    g = g.T if tall else g
    s = singular_values(mu.newton_schulz(g, steps=3))
    assert s.min() > 0.5 and s.max() < 1.5, (s.min(), s.max())
    # in fp32 too, and the orientation does not matter
    s32 = singular_values(mu.newton_schulz(g, steps=3, dtype=torch.float32))
    assert torch.allclose(s32, singular_values(mu.newton_schulz(g.T, steps=3, dtype=torch.float32)), atol=1e-4)


def reference_newton_schulz(g, steps):
    """Newton-Schulz written out in float64 from docs/method.md §3, independently of the script."""
    x = g.double() / (g.double().norm() + 1e-7)
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    for _ in range(steps):
        a_ = x @ x.T
        x = 3.4445 * x + (-4.7750 * a_ + 2.0315 * a_ @ a_) @ x
    return x.T if transpose else x


def test_one_muon_step_matches_a_hand_computed_reference(mu):
    torch.manual_seed(2)
    w0 = torch.randn(4, 2, 3, 3)
    grads = [torch.randn_like(w0), torch.randn_like(w0)]
    p = nn.Parameter(w0.clone())
    opt = mu.Muon([p], lr=0.1, momentum=0.6, nesterov=True, ns_steps=3, ns_dtype=torch.float32)
    w, buf = w0.double(), torch.zeros_like(w0, dtype=torch.float64)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        g = g.double()
        buf = 0.6 * buf + g                  # momentum buffer
        u = g + 0.6 * buf                    # Nesterov
        w = w * math.sqrt(4) / w.norm()      # renormalise to norm sqrt(out_channels)
        w = w - 0.1 * reference_newton_schulz(u.reshape(4, -1), 3).reshape(w.shape)
        assert torch.allclose(p.detach().double(), w, atol=1e-5)


def test_muon_renormalises_weights(mu):
    torch.manual_seed(3)
    convs = [nn.Parameter(torch.randn(c_out, c_in, 3, 3) * 7) for c_out, c_in in ((8, 4), (16, 8), (5, 16))]
    for p in convs:
        p.grad = torch.randn_like(p)
    mu.Muon(convs, lr=0.0, momentum=0.6, ns_dtype=torch.float32).step()
    for p in convs:  # with lr 0 the step only renormalises
        assert p.norm().item() == pytest.approx(math.sqrt(len(p)), rel=1e-5)
    for p in convs:
        p.grad = torch.randn_like(p)
    mu.Muon(convs, lr=0.24, momentum=0.6).step()
    for p in convs:  # the update is ~orthogonal, so it moves the norm by about lr * sqrt(min(shape))
        assert abs(p.norm().item() - math.sqrt(len(p))) < 0.24 * 1.5 * math.sqrt(min(p.shape[0], p[0].numel()))


def test_muon_falls_back_to_fp32_without_bf16_matmul(mu, monkeypatch, capsys):
    assert mu.bf16_matmul_supported(torch.device('cpu'))  # this CPU has it: simulate one without
    monkeypatch.setattr(mu, 'bf16_matmul_supported', lambda device: False)
    p = nn.Parameter(torch.randn(4, 3, 3, 3))
    p.grad = torch.randn_like(p)
    opt = mu.Muon([p], lr=0.1, momentum=0.6)
    opt.step()
    assert opt.ns_dtype == torch.float32 and torch.isfinite(p).all()
    assert 'no bf16 matmul on cpu' in capsys.readouterr().out


def test_muon_network_head_and_groups(mu):
    net = mu.make_net(mu.hyp)
    bias, bound = net[0].bias.detach(), 1 / math.sqrt(3 * 2 * 2)  # nn.Conv2d's default init, not zero
    assert bias.abs().min() > 0 and bias.abs().max() <= bound and bias.std() > bound / 4
    head = net[-2].weight
    assert head.shape == (10, 256) and head.std().item() == pytest.approx(1.0, rel=1e-5)
    assert net[-1].scale == pytest.approx(1 / 256)
    dev = mu.Device('cpu')
    sgd, muon = mu.make_optimizers(net, mu.hyp['opt'], dev)
    assert [len(g['params']) for g in sgd.param_groups] == [1, 6, 1]
    assert sgd.param_groups[0]['params'][0] is net[0].bias and sgd.param_groups[2]['params'][0] is head
    assert [g['lr'] for g in sgd.param_groups] == [0.053, 0.053, 0.67]
    for g in sgd.param_groups:
        assert g['weight_decay'] * g['lr'] == pytest.approx(2e-6 * 2000)
    assert sgd.defaults['momentum'] == 0.85 and sgd.defaults['nesterov']
    assert sgd.defaults.get('fused') == mu.sgd_fused_supported(dev)
    filters = muon.param_groups[0]['params']
    assert len(filters) == 6 and all(p.ndim == 4 and p.shape[-1] == 3 for p in filters)  # not the whitening conv
    assert muon.param_groups[0]['lr'] == 0.24 and muon.param_groups[0]['momentum'] == 0.6
    assert mu.train_steps(mu.hyp['opt'], 50000) == 200


def test_muon_lr_schedules_of_every_group_in_training(mu, data, monkeypatch):
    """Batch 80 on 2,000 images = 25 steps per epoch, 8 epochs = 200 steps: the real schedule's shape."""
    hyp = tiny(mu.hyp, batch_size=80)
    seen = []
    make = mu.make_optimizers

    def recording(*args, **kwargs):
        sgd, muon = make(*args, **kwargs)
        step = sgd.step

        def recorded_step(*a, **k):
            seen.append([g['lr'] for g in sgd.param_groups] + [muon.param_groups[0]['lr']])
            return step(*a, **k)
        sgd.step = recorded_step
        return sgd, muon
    monkeypatch.setattr(mu, 'make_optimizers', recording)
    dev = mu.Device('cpu')
    model = dev.prepare(mu.make_net(hyp))
    result = train_on(mu, hyp, dev, data, seed=0, net=(model, model))
    assert result['steps'] == len(seen) == 200
    initial = [0.053, 0.053, 0.67, 0.24]
    for step, (bias_factor, factor) in {0: (1, 1), 75: (0, 0.625), 199: (0, 0.005)}.items():
        assert seen[step] == pytest.approx([initial[0] * bias_factor] + [lr * factor for lr in initial[1:]])
    assert seen[74][0] == pytest.approx(0.053 / 75)
    assert not model[0].bias.requires_grad  # frozen after step 75


# airbench94_muon end to end: tests/test_runs.py's run-independence test runs it twice from the command line.


# ================================================================ airbench96_faster


def faster_tiny(fa, **opt):
    """Batches of 300 from 2,000 images: every third batch or so straddles two epochs."""
    hyp = tiny(fa.hyp, batch_size=300, batch_size_masked=150, train_epochs=2.5, whiten_bias_epochs=1, **opt)
    hyp['proxy']['widths'] = {'block1': 8, 'block2': 16, 'block3': 16}
    return hyp


def test_faster_streams_are_identical_for_proxy_and_main(fa, data):
    hyp = faster_tiny(fa)
    dev = fa.Device('cpu')
    nets = fa.compile_nets(hyp, dev)
    seen = []
    result = train_on(fa, hyp, dev, data, seed=11, nets=nets,
                      trace=lambda step, x, mask, main_x: seen.append((x.clone(), mask.clone(), main_x.clone())))
    total = fa.train_steps(hyp['opt'], 2000)
    assert total == 15 and len(seen) == result['steps'] == total
    for x, mask, main_x in seen:
        assert x.shape[0] == 300 and int(mask.sum()) == 150
        assert torch.equal(main_x, x[mask])  # the main net trains on the proxy's batch, the selected part
    # the stream is the run's seeded loader, epoch after epoch, straddling epoch boundaries
    loader = fa.CifarLoader(data['train'], dev, 300, train=True, aug=hyp['aug'],
                            generator=torch.Generator().manual_seed(11))
    stream = fa.batch_stream(loader, 300)
    for x, _, _ in seen:
        assert torch.equal(next(stream)[0], x)
    assert loader.epoch == 3  # 15 x 300 images = 2.25 epochs


def test_faster_stream_straddles_epochs_without_losing_images(fa):
    dev = fa.Device('cpu')
    split = {'images': torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 32, 32, 3).contiguous(),
             'labels': torch.arange(10), 'classes': list('abcdefghij')}
    torch.manual_seed(0)
    stream = fa.batch_stream(fa.CifarLoader(split, dev, 4, train=True), 4)
    labels = torch.cat([next(stream)[1] for _ in range(5)])  # 20 examples = 2 epochs
    assert sorted(labels[:10].tolist()) == list(range(10)) and sorted(labels[10:].tolist()) == list(range(10))


def test_faster_selects_exactly_the_top_losses(fa):
    torch.manual_seed(0)
    losses = torch.rand(1024)
    mask = fa.select_hardest(losses, 512)
    assert int(mask.sum()) == 512
    assert losses[mask].min() > losses[~mask].max()
    assert torch.equal(mask.nonzero().flatten(), losses.argsort()[-512:].sort().values)


def test_faster_proxy_steps_on_one_batch_in_four_and_the_freeze_fires_on_time(fa, data, monkeypatch):
    hyp = faster_tiny(fa)
    dev = fa.Device('cpu')
    nets = fa.compile_nets(hyp, dev)
    steps_seen, proxy_step_at, requires_grad = [], [], []
    make = fa.make_optimizer

    def recording(model, opt):
        optimizer = make(model, opt)
        if model is nets['proxy'][0]:
            step = optimizer.step
            optimizer.step = lambda *a, **k: (proxy_step_at.append(len(steps_seen)), step(*a, **k))[1]
        return optimizer
    monkeypatch.setattr(fa, 'make_optimizer', recording)

    def trace(step, x, mask, main_x):
        steps_seen.append(step)
        requires_grad.append(nets['net'][0][0].bias.requires_grad)
    result = train_on(fa, hyp, dev, data, nets=nets, trace=trace)
    assert proxy_step_at == list(range(0, 15, 4)) and result['proxy_steps'] == 4
    freeze = math.ceil(1 * 2000 / 300)  # one epoch of the stream
    assert result['whiten_bias_frozen_at_step'] == freeze == 7
    assert requires_grad == [True] * freeze + [False] * (15 - freeze)
    assert not nets['proxy'][0][0].bias.requires_grad  # the proxy's bias never trains
    assert fa.train_steps(fa.hyp['opt'], 50000) == 2160  # (50000 // 1024) x 45, as the original counts
    assert math.ceil(3 * 50000 / 1024) == 147


def test_faster_timer_includes_the_proxy(fa, data, monkeypatch):
    """A fake clock that advances one second per proxy forward and never otherwise: the run's
    time is then exactly the number of proxy forwards inside the timed regions."""
    clock = [0.0]
    monkeypatch.setattr(fa.Timer, 'now', lambda self: clock[0])
    hyp = faster_tiny(fa)
    dev = fa.Device('cpu')
    nets = fa.compile_nets(hyp, dev)
    nets['proxy'][0].register_forward_pre_hook(lambda module, args: clock.__setitem__(0, clock[0] + 1.0))
    result = train_on(fa, hyp, dev, data, nets=nets)
    assert result['time_seconds'] == result['steps'] == 15  # every proxy forward (one per batch) was timed


def test_faster_networks(fa):
    proxy, main = fa.make_net(fa.hyp, 'proxy'), fa.make_net(fa.hyp, 'net')
    assert [g.conv1.out_channels for g in proxy if isinstance(g, fa.ConvGroup)] == [32, 64, 64]
    assert [g.conv1.out_channels for g in main if isinstance(g, fa.ConvGroup)] == [128, 384, 512]
    assert all(g.depth == 2 for g in proxy if isinstance(g, fa.ConvGroup))
    assert all(g.depth == 3 and hasattr(g, 'conv3') for g in main if isinstance(g, fa.ConvGroup))
    assert not proxy[0].bias.requires_grad and main[0].bias.requires_grad
    assert proxy[-1].scale == main[-1].scale == pytest.approx(1 / 9)
    for net in (proxy, main):  # PyTorch's default BatchNorm momentum, as airbench96 (docs/method.md §4)
        norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(m.momentum == pytest.approx(0.1) for m in norms)


def test_faster_end_to_end(cifar_dir, tmp_path):
    proc = run_script('airbench96_faster', '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1',
                      '--seed', '0', '--no-warmup', *TINY, '--set', 'opt.batch_size_masked=100',
                      '--set', 'proxy.widths.block1=8')
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    log = read_log(log_dir_of(proc.stdout))
    run = log['runs'][0]
    assert log['status'] == 'complete' and run['tta_val_acc'] > 0.3 and run['steps'] == 30
    assert run['proxy_steps'] == 8 and [e['epoch'] for e in run['epochs']] == [1, 2, 3]
