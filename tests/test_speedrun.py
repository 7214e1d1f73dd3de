"""airbench94_speedrun.py (hiverge's cifar10-speedrun, docs/method.md §5) and the loader features it
brought: the vectorised crop of every script (the same draws and images as the loop it replaced), and
the brightness/contrast jitter, which only the speedrun's own loader carries (off unless asked for)."""
import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, load_script, log_dir_of, no_traceback, random_split, read_log, run_script


# ================================================================ the loaders


@pytest.fixture(scope='module')
def sr():
    return load_script('airbench94_speedrun')


def crop_by_loop(images, size, generator=None):
    """The loader's crop before it was vectorised (up to 2026-12-01): one masked copy per shift,
    rows first, then columns."""
    r = (images.size(-1) - size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2), device=images.device, generator=generator)
    rows = torch.empty((len(images), images.size(1), size, images.size(-1)), device=images.device, dtype=images.dtype)
    for s in range(-r, r + 1):
        mask = shifts[:, 0] == s
        rows[mask] = images[mask, :, r + s:r + s + size, :]
    out = torch.empty((len(images), images.size(1), size, size), device=images.device, dtype=images.dtype)
    for s in range(-r, r + 1):
        mask = shifts[:, 1] == s
        out[mask] = rows[mask, :, :, r + s:r + s + size]
    return out


@pytest.mark.parametrize('r', [1, 2, 4])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_the_vectorised_crop_draws_and_returns_what_the_loop_did(ab94, sr, r, dtype):
    """Every script's runs stay what they were: the same random numbers from the same generator
    (or the global one), the same crops; the family's loader block and the speedrun's own loader alike."""
    images = F.pad(torch.randn(600, 3, 32, 32), (r,) * 4, 'reflect').to(dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    for m in (ab94, sr):
        for seed in (0, 1):
            old_g, new_g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
            assert torch.equal(m.batch_crop(images, 32, new_g), crop_by_loop(images, 32, old_g))
            assert torch.equal(new_g.get_state(), old_g.get_state())  # the same draws, nothing more
        torch.manual_seed(3)
        old = crop_by_loop(images, 32)
        old_next = torch.rand(1)
        torch.manual_seed(3)
        assert torch.equal(m.batch_crop(images, 32), old) and torch.equal(torch.rand(1), old_next)


def jitter_loaders(m, cpu, n=2000, seed=7, **jitter):
    """Two loaders of script m (the speedrun) of the same images and generator seed, without and with the
    jitter."""
    split, aug = random_split(n), {'flip': 'alternating', 'translate': 2}
    return [m.CifarLoader(split, cpu, 100, train=True, aug={**aug, **extra},
                          generator=torch.Generator().manual_seed(seed)) for extra in ({}, jitter)]


def test_the_jitter_is_off_by_default_and_draws_nothing(sr, ab94, cpu):
    plain, zeros = jitter_loaders(sr, cpu, n=200, brightness=0, contrast=0)
    family = jitter_loaders(ab94, cpu, n=200)[0]  # the family's loader, which has no jitter
    for _ in range(2):
        a, b, c = plain.next_epoch(), zeros.next_epoch(), family.next_epoch()
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))
    g = torch.Generator().manual_seed(7)
    for epoch in range(2):  # what the loader draws without the jitter: flip (epoch 0), crop, shuffle
        torch.rand(200, generator=g) if epoch == 0 else None
        torch.randint(-2, 3, (200, 2), generator=g)
        torch.randperm(200, generator=g)
    for loader in (plain, zeros, family):
        assert torch.equal(loader.generator.get_state(), g.get_state())
    _, on = jitter_loaders(sr, cpu, n=200, brightness=0.1, contrast=0)
    on.next_epoch()
    assert not torch.equal(plain.generator.get_state(), on.generator.get_state())
    with pytest.raises(ValueError, match='brightness, contrast'):
        sr.CifarLoader(random_split(10), cpu, 5, aug={'hue': 0.1})
    for name in ('airbench94', 'airbench94_muon', 'airbench95', 'airbench96', 'airbench96_faster'):
        m = load_script(name)
        aug = m.hyp['aug']  # the family never asks for it, and its loader refuses it
        assert aug.get('brightness', 0) == aug.get('contrast', 0) == 0, name
        for key in ('brightness', 'contrast'):
            with pytest.raises(m.UserError, match=rf"^loader\.aug\['{key}'\]=0\.1: use flip .*, translate .*, "
                                                   r'cutout \(0 to 32\)$'):
                m.CifarLoader(random_split(10), cpu, 5, aug={key: 0.1})


def test_the_jitter_shifts_then_scales_each_image_after_crop_and_flip(sr, cpu):
    """Epoch 0 of a loader with the jitter is the same loader's epoch without it (normalised,
    flipped, cropped), each image x mapped to (x + b) * g with its own two scalars, drawn after the
    crop's shifts (brightness first) from the loader's generator; then the shuffle."""
    brightness, contrast = 0.1399, 0.1308
    plain, jittered = jitter_loaders(sr, cpu, brightness=brightness, contrast=contrast)
    x, (y, _, order) = plain.next_epoch()[0], jittered.next_epoch()
    g = torch.Generator().manual_seed(7)
    torch.rand(len(x), generator=g)  # the epoch-0 flip
    torch.randint(-2, 3, (len(x), 2), generator=g)  # the crop
    shift = (torch.rand(len(x), 1, 1, 1, generator=g) * 2 - 1) * brightness
    scale = (torch.rand(len(x), 1, 1, 1, generator=g) * 2 - 1) * contrast + 1
    assert torch.equal(y, (x + shift) * scale)
    assert torch.equal(order, torch.randperm(len(x), generator=g))  # then the shuffle


def per_image_affine(x, y):
    """(slope, intercept, largest residual) of y = slope x + intercept fitted per image, one pair of
    scalars for all its channels and pixels."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    slope = (xc * yc).sum(1) / (xc * xc).sum(1)
    intercept = y.mean(1) - slope * x.mean(1)
    residual = (y - slope[:, None] * x - intercept[:, None]).abs().max()
    return slope, intercept, residual


def test_the_jitters_distribution_per_image_and_redrawn_every_epoch(sr, cpu):
    """Without crop and flip every epoch's images are the normalised ones, jittered."""
    brightness, contrast = 0.1399, 0.1308
    loader = sr.CifarLoader(random_split(4000), cpu, 100, aug={'brightness': brightness, 'contrast': contrast})
    shifts = []
    for epoch in range(2):
        slope, intercept, residual = per_image_affine(loader.normalize(loader.images), loader.next_epoch()[0])
        assert residual < 1e-4  # one brightness and one contrast per image, shared by channels and pixels
        shift = intercept / slope  # (x + b) g = g x + g b
        for values, centre, half in ((shift, 0.0, brightness), (slope, 1.0, contrast)):
            assert (values - centre).abs().max() <= half + 1e-5 and (values - centre).abs().max() > 0.98 * half
            assert abs(values.mean() - centre) < 0.05 * half
            assert values.std() == pytest.approx(half / 3**0.5, rel=0.05)  # uniform on [centre - half, centre + half]
            assert ((values - centre).abs() < half / 2).double().mean() == pytest.approx(0.5, abs=0.03)
        shifts.append(shift)
    assert abs(torch.corrcoef(torch.stack(shifts))[0, 1]) < 0.1  # redrawn every epoch


# ================================================================ airbench94_speedrun


def tiny(hyp, **opt):
    hyp = copy.deepcopy(hyp)
    hyp['net']['widths'] = {'block1': 16, 'block2': 32, 'block3': 32}
    hyp['opt'].update(opt)
    return hyp


# the steps (1-based) at which the original renormalises: 2 + floor(15 x step / 243) since the last time
RENORM_STEPS = [2, 4, 6, 8, 10, 12, 14, 16, 19, 22, 25, 28, 31, 35, 39, 43, 47, 52, 57, 62, 68, 74, 80, 87, 94,
                102, 110, 119, 128, 138, 149, 160, 172, 185, 199, 214, 230]
COEFFICIENTS = (3.4576, -4.7391, 2.0843)


def test_the_hyperparameters_and_243_steps(sr):
    o, a, n = sr.hyp['opt'], sr.hyp['aug'], sr.hyp['net']
    assert (o['batch_size'], o['train_epochs'], o['whiten_bias_epochs']) == (1536, 7.59, 0.19)
    assert sr.train_steps(o, 50000) == 243 and 50000 // 1536 == 32 and math.ceil(0.19 * 32) == 7
    assert math.ceil(o['train_epochs']) == 8  # 7 full epochs and 19 steps of the 8th
    assert (o['filter_lr'], o['filter_momentum'], o['bias_lr'], o['head_lr'], o['momentum']) == \
        (0.205, 0.655, 0.0573, 0.5415, 0.825)
    assert (o['weight_decay'], o['label_smoothing'], o['ns_steps']) == (1.0418e-6, 0.09, 3)
    assert tuple(o['ns_coefficients']) == COEFFICIENTS and o['ns_eps'] == 1e-5
    assert o['ns_magnitude'] == [0.5012, 0.0786] and (o['renorm_every'], o['renorm_every_growth']) == (2, 15)
    assert a == {'flip': 'alternating', 'translate': 2, 'brightness': 0.1399, 'contrast': 0.1308, 'cutout': 0}
    assert (n['whiten_images'], n['whiten_eps'], n['tta_fraction'], n['batchnorm_momentum']) == (960, 5e-4, 0.25, 0.5566)

    net = sr.make_net(sr.hyp)
    assert isinstance(net[1], torch.nn.GELU) and net[-1].scale == 1 / 256
    groups = [m for m in net if isinstance(m, sr.ConvGroup)]
    assert len(groups) == 3 and all(isinstance(g.activ, torch.nn.SiLU) for g in groups)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(m.momentum == pytest.approx(0.4434) and m.eps == 1e-12 for m in norms)
    assert net[-2].weight.std().item() == pytest.approx(1.0, rel=1e-5) and not net[0].weight.requires_grad

    sgd, muon = sr.make_optimizers(net, o, sr.Device('cpu'), 243)
    wd = 1.0418e-6 * 1536
    assert [g['lr'] for g in sgd.param_groups] == [0.0573, 0.0573, 0.5415]
    assert [len(g['params']) for g in sgd.param_groups] == [1, 6, 1]
    assert all(g['weight_decay'] * g['lr'] == pytest.approx(wd) for g in sgd.param_groups)
    assert sgd.defaults['momentum'] == 0.825 and sgd.defaults['nesterov']
    m = muon.param_groups[0]
    assert (m['lr'], m['momentum'], m['weight_decay'], len(m['params'])) == (0.205, 0.655, pytest.approx(wd), 6)


def test_the_cuda_precision_is_the_originals_and_elsewhere_the_familys(sr):
    """On CUDA every module is fp16, BatchNorm too, and Newton-Schulz runs in fp16; a CPU keeps fp32
    weights and BatchNorm. (A stand-in for a CUDA device: the same calls, on the CPU.)"""
    cuda = types.SimpleNamespace(type='cuda', torch_device=torch.device('cpu'), autocast_dtype=None)
    net = sr.prepare_net(sr.make_net(tiny(sr.hyp)), cuda)
    assert {t.dtype for t in [*net.parameters(), *net.buffers()] if t.is_floating_point()} == {torch.float16}
    assert net[2].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert sr.make_optimizers(net, sr.hyp['opt'], cuda, 243)[1].ns[-1] == torch.float16
    dev = sr.Device('cpu')
    net = sr.prepare_net(sr.make_net(tiny(sr.hyp)), dev)
    assert {t.dtype for t in [*net.parameters(), *net.buffers()] if t.is_floating_point()} == {torch.float32}
    assert sr.make_optimizers(net, sr.hyp['opt'], dev, 243)[1].ns[-1] == (dev.autocast_dtype or torch.float32)


def newton_schulz_alone(g, t, eps=1e-5):
    """Newton-Schulz of one matrix, in float64, as the facts describe it (independently of the script)."""
    x = g.double() * (t / (g.double().norm() + eps))
    x = x / (x.norm() + eps)
    a, b, c = COEFFICIENTS
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    for _ in range(3):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


def test_the_padded_stack_equals_newton_schulz_per_matrix(sr):
    """The six filter shapes of the net (out x in*9 up to 256 x 2304) plus a tall one, zero-padded
    into one stack: each slice comes out as its matrix alone would."""
    torch.manual_seed(0)
    shapes = [(64, 24), (64, 64), (256, 64), (256, 256), (256, 256), (256, 256), (300, 2)]
    updates = [torch.randn(o, i, 3, 3, dtype=torch.float64) * (1 + k) for k, (o, i) in enumerate(shapes)]
    step, total = 100, 243
    t = 0.5012 * (1 - step / total) + 0.0786 * step / total
    out = sr.newton_schulz_stack(updates, step, total, 3, COEFFICIENTS, 1e-5, (0.5012, 0.0786), 16, torch.float64)
    for u, o in zip(updates, out):
        assert o.shape == u.shape and o.dtype == torch.float64
        expected = newton_schulz_alone(u.reshape(len(u), -1), t).reshape(u.shape)
        assert torch.allclose(o, expected, rtol=0, atol=1e-10), (u.shape, (o - expected).abs().max())


def test_one_muon_step_by_hand(sr):
    """Momentum, Nesterov, the renormalisation (norms before the update), the update and the decoupled
    weight decay after it, over the first three steps (the second renormalises)."""
    torch.manual_seed(1)
    w0 = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    grads = [torch.randn_like(w0) for _ in range(3)]
    p = torch.nn.Parameter(w0.clone())
    opt = sr.Muon([p], lr=0.1, momentum=0.655, weight_decay=0.3, total_steps=243, renorm_every=2,
                  renorm_every_growth=15, renorm_eps=1e-7, ns_steps=3, ns_coefficients=COEFFICIENTS, ns_eps=1e-5,
                  ns_magnitude=(0.5012, 0.0786), ns_pad_multiple=16, ns_dtype=torch.float64)
    w, buf = w0.clone(), torch.zeros_like(w0)
    for step, g in enumerate(grads, 1):
        p.grad = g.clone()
        opt.step()
        buf = 0.655 * buf + g
        u = g + 0.655 * buf
        if step == 2:
            w = w * math.sqrt(8) / (w.norm() + 1e-7)
        t = 0.5012 * (1 - step / 243) + 0.0786 * step / 243
        w = w - 0.1 * newton_schulz_alone(u.reshape(8, -1), t).reshape(w.shape)
        w = w * (1 - 0.1 * 0.3)
        assert torch.allclose(p.detach(), w, rtol=0, atol=1e-10), step
    assert opt.renorm_steps == [2]


def test_the_renormalisation_schedule_37_of_243_steps(sr):
    """With lr 0 a step only renormalises: double the weight before every step and see when it comes back."""
    p = torch.nn.Parameter(torch.randn(4, 2, 3, 3))
    opt = sr.make_muon([p], tiny(sr.hyp, filter_lr=0.0)['opt'], 243, torch.float32)
    seen = []
    for step in range(1, 244):
        with torch.no_grad():
            p.mul_(2)
        p.grad = torch.randn_like(p)
        opt.step()
        if p.norm().item() == pytest.approx(2.0, rel=1e-5):  # sqrt(out_channels) = 2
            seen.append(step)
    assert seen == opt.renorm_steps == RENORM_STEPS and len(seen) == 37


def test_training_243_steps_with_the_originals_schedules(sr, data, monkeypatch):
    """Batches of 62 from 2,000 images: 32 steps per epoch, the real run's step counts. Every group's lr
    at every step, the whitening bias frozen after 7 steps, Muon renormalising at the original's 37 steps."""
    hyp = tiny(sr.hyp, batch_size=62)
    hyp['net']['widths'] = {'block1': 8, 'block2': 16, 'block3': 16}
    seen, make = [], sr.make_optimizers

    def recording(*args, **kwargs):
        sgd, muon = make(*args, **kwargs)
        step = sgd.step

        def recorded_step(*a, **k):
            seen.append(([g['lr'] for g in sgd.param_groups] + [muon.param_groups[0]['lr']],
                         sgd.param_groups[0]['params'][0].grad is not None))
            return step(*a, **k)
        sgd.step = recorded_step
        return sgd, muon
    monkeypatch.setattr(sr, 'make_optimizers', recording)
    dev = sr.Device('cpu')
    train_loader, test_loader = sr.make_loaders(hyp, dev, data)
    model, record = sr.train(hyp, dev, train_loader, test_loader, seed=0, verbose=False)
    assert record['steps'] == len(seen) == 243 and len(record['epochs']) == 8
    assert record['renorm_steps'] == RENORM_STEPS
    initial = [0.0573, 0.0573, 0.5415, 0.205]
    for step, (lrs, _) in enumerate(seen):
        bias, rest = max(0.0, 1 - step / 7), 1 - step / 243
        assert lrs == pytest.approx([initial[0] * bias] + [lr * rest for lr in initial[1:]]), step
    assert [has_grad for _, has_grad in seen] == [True] * 7 + [False] * 236
    assert not model[0].bias.requires_grad and train_loader.epoch == 8


def test_svd_whitening_is_eigh_whitening_up_to_order_and_sign(sr):
    mu = load_script('airbench94_muon')
    torch.manual_seed(2)
    # noise mixed across channels and neighbours by a random filter: a patch covariance with distinct
    # eigenvalues, 1e-3 to 4e-3, so that the eps of 5e-4 matters
    images = 0.01 * (F.conv2d(torch.randn(300, 3, 34, 34), torch.randn(3, 3, 3, 3)) + 0.3)
    svd = sr.whitening_filters(images, 2, 5e-4).flatten(1).double()
    eigh = mu.whitening_filters(images, 2, 5e-4).flatten(1).double()
    assert svd.shape == eigh.shape == (24, 12)
    distance = torch.cdist(svd, eigh) / svd.norm(dim=1, keepdim=True)
    match = distance.argmin(1)
    assert sorted(match.tolist()) == list(range(24)) and distance.min(1).values.max() < 1e-3
    norms = svd[:12].norm(dim=1)  # 1 / sqrt(singular value + eps): largest singular value first
    assert (norms[1:] >= norms[:-1]).all()


def test_selective_tta_gives_the_least_confident_quarter_6_equal_views(sr):
    fp32 = sr.Device('cpu')
    fp32.autocast_dtype = None  # so that the reference below computes the same numbers
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    loader = sr.CifarLoader(random_split(40, seed=4), fp32, 8, train=False)
    plain, logits = sr.selective_tta(model, loader, tta_fraction=0.25, eval_batch_size=7)
    x = loader.normalize(loader.images)
    with torch.no_grad():
        assert torch.allclose(plain, model(x), atol=1e-5)
        padded = F.pad(x, (1,) * 4, 'reflect')
        views = [x, padded[..., 0:32, 0:32], padded[..., 2:34, 2:34]]
        views += [v.flip(-1) for v in views]
        six = sum(model(v) for v in views) / 6
    changed = (logits != plain).any(1)
    assert int(changed.sum()) == 10  # int(0.25 x 40)
    confidence = plain.softmax(1).amax(1)
    assert confidence[changed].max() < confidence[~changed].min()  # exactly the least confident
    assert torch.allclose(logits[changed], six[changed], atol=1e-5)
    assert torch.equal(logits[~changed], plain[~changed])
    assert torch.allclose(sr.infer(model, loader, tta_fraction=0.25), logits, atol=1e-5)
    assert torch.allclose(sr.infer(model, loader), plain, atol=1e-5)  # tta_fraction 0: the plain pass
    everything = sr.infer(model, loader, tta_fraction=1.0)
    assert torch.allclose(everything, six, atol=1e-5)


def test_train_returns_the_model_its_evaluation_callbacks_and_a_seed(sr, data):
    hyp, dev = tiny(sr.hyp, batch_size=200, train_epochs=2.0), sr.Device('cpu')
    train_loader, test_loader = sr.make_loaders(hyp, dev, data)
    seen = []
    model, record = sr.train(hyp, dev, train_loader, test_loader, seed=3, verbose=False,
                             callback=lambda model, epoch: seen.append(epoch))
    assert record['steps'] == 20 and record['seed'] == 3 and seen == record['epochs'] and len(seen) == 2
    assert record['tta_val_acc'] > 0.3 and all(e['val_acc'] is None for e in seen)
    assert sr.evaluate(model, test_loader, hyp['net']['tta_fraction']) == pytest.approx(record['tta_val_acc'], abs=0.004)
    assert sr.evaluate(model, test_loader) == pytest.approx(record['val_acc'], abs=0.004)
    again = sr.train(hyp, dev, train_loader, test_loader, seed=3, verbose=False)[1]  # no callback: one interval
    assert again['epochs'] == record['epochs'] and again['tta_val_acc'] == record['tta_val_acc']


def test_the_warmup_trains_on_noise(sr, data, cpu):
    torch.manual_seed(0)
    train_loader, test_loader = sr.make_loaders(sr.hyp, cpu, data)
    sr.noise_loaders(train_loader, test_loader)
    for images in (train_loader.images, test_loader.images):
        assert abs(images.mean()) < 0.01 and images.std() == pytest.approx(1, abs=0.01)
    assert (test_loader.labels.bincount(minlength=10) > 20).all()
    assert (test_loader.labels != data['test']['labels']).float().mean() > 0.8


def test_a_nan_loss_is_named_after_the_run(sr, data, monkeypatch):
    real, calls = F.cross_entropy, [0]

    def cross_entropy(*args, **kwargs):
        calls[0] += 1
        out = real(*args, **kwargs)
        return out * float('nan') if calls[0] == 13 else out
    monkeypatch.setattr(F, 'cross_entropy', cross_entropy)
    hyp, dev = tiny(sr.hyp, batch_size=200, train_epochs=3.0), sr.Device('cpu')
    with pytest.raises(sr.TrainingDiverged, match=r'NaN or infinite at step 13 of 30 \(run 2, epoch 2\)'):
        sr.train(hyp, dev, *sr.make_loaders(hyp, dev, data), run=2, verbose=False)


def test_default_run_count(sr, monkeypatch):
    monkeypatch.setattr(sr, 'benchmark', lambda args, *rest: args)
    assert sr.main([]).runs == 200


def test_end_to_end_with_its_warmup(cifar_dir, tmp_path):
    proc = run_script('airbench94_speedrun', '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1',
                      '--seed', '0', *TINY)
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith('|')]
    assert len(rows) == 1 + 2 * 4  # head, then warmup and run 1: 3 epochs + eval
    log = read_log(log_dir_of(proc.stdout))
    run = log['runs'][0]
    assert log['status'] == 'complete' and run['tta_val_acc'] > 0.5 and run['steps'] == 30
    assert run['renorm_steps'] == [3, 9, 21] and log['summary']['n'] == 1  # 2 + floor(15 x step / 30) apart
