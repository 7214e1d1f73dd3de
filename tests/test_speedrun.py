"""The loader features of the speedrun (hiverge's cifar10-speedrun), in every script's loader: the
vectorised crop (the same draws and images as the loop it replaced) and the brightness/contrast
jitter (off unless asked for)."""
import pytest
import torch
import torch.nn.functional as F

from conftest import load_script


@pytest.fixture(scope='module')
def cpu(ab94):
    return ab94.Device('cpu')


def random_split(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {'images': torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g),
            'labels': torch.randint(0, 10, (n,), generator=g), 'classes': [str(i) for i in range(10)]}


# ================================================================ the loader (a shared block)


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
def test_the_vectorised_crop_draws_and_returns_what_the_loop_did(ab94, r, dtype):
    """Every script's runs stay what they were: the same random numbers from the same generator
    (or the global one), the same crops."""
    images = F.pad(torch.randn(600, 3, 32, 32), (r,) * 4, 'reflect').to(dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    for seed in (0, 1):
        old_g, new_g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(ab94.batch_crop(images, 32, new_g), crop_by_loop(images, 32, old_g))
        assert torch.equal(new_g.get_state(), old_g.get_state())  # the same draws, nothing more
    torch.manual_seed(3)
    old = crop_by_loop(images, 32)
    old_next = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(ab94.batch_crop(images, 32), old) and torch.equal(torch.rand(1), old_next)


def jitter_loaders(ab94, cpu, n=2000, seed=7, **jitter):
    """Two loaders of the same images and generator seed, without and with the jitter."""
    split, aug = random_split(n), {'flip': 'alternating', 'translate': 2}
    return [ab94.CifarLoader(split, cpu, 100, train=True, aug={**aug, **extra},
                             generator=torch.Generator().manual_seed(seed)) for extra in ({}, jitter)]


def test_the_jitter_is_off_by_default_and_draws_nothing(ab94, cpu):
    plain, zeros = jitter_loaders(ab94, cpu, n=200, brightness=0, contrast=0)
    for _ in range(2):
        a, b = plain.next_epoch(), zeros.next_epoch()
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    g = torch.Generator().manual_seed(7)
    for epoch in range(2):  # what the loader draws without the jitter: flip (epoch 0), crop, shuffle
        torch.rand(200, generator=g) if epoch == 0 else None
        torch.randint(-2, 3, (200, 2), generator=g)
        torch.randperm(200, generator=g)
    assert torch.equal(plain.generator.get_state(), g.get_state())
    assert torch.equal(zeros.generator.get_state(), g.get_state())
    _, on = jitter_loaders(ab94, cpu, n=200, brightness=0.1, contrast=0)
    on.next_epoch()
    assert not torch.equal(plain.generator.get_state(), on.generator.get_state())
    for name in ('airbench94', 'airbench94_muon', 'airbench95', 'airbench96', 'airbench96_faster'):
        aug = load_script(name).hyp['aug']  # the family never asks for it
        assert aug.get('brightness', 0) == aug.get('contrast', 0) == 0, name
    with pytest.raises(ValueError, match='brightness, contrast'):
        ab94.CifarLoader(random_split(10), cpu, 5, aug={'hue': 0.1})


def test_the_jitter_shifts_then_scales_each_image_after_crop_and_flip(ab94, cpu):
    """Epoch 0 of a loader with the jitter is the same loader's epoch without it (normalised,
    flipped, cropped), each image x mapped to (x + b) * g with its own two scalars, drawn after the
    crop's shifts (brightness first) from the loader's generator; then the shuffle."""
    brightness, contrast = 0.1399, 0.1308
    plain, jittered = jitter_loaders(ab94, cpu, brightness=brightness, contrast=contrast)
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


def test_the_jitters_distribution_per_image_and_redrawn_every_epoch(ab94, cpu):
    """Without crop and flip every epoch's images are the normalised ones, jittered."""
    brightness, contrast = 0.1399, 0.1308
    loader = ab94.CifarLoader(random_split(4000), cpu, 100, aug={'brightness': brightness, 'contrast': contrast})
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
