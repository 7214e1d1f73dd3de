"""The precision policy of every device, checked on a CPU with CUDA and MPS faked: which device
`auto` picks, weight / BatchNorm / data dtypes, memory format and autocast (the shared device block,
through airbench94)."""
import contextlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture
def fake(monkeypatch):
    """fake(cuda=..., mps=...) makes torch report those backends as available."""
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)  # restored after the test

    def set_available(cuda=False, mps=False):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4 if cuda else 0)
        monkeypatch.setattr(torch.cuda, 'set_device', lambda device: selected.append(device))
        monkeypatch.setattr(torch.backends.mps, 'is_available', lambda: mps)
    selected = []
    set_available.selected = selected
    return set_available


@pytest.mark.parametrize('cuda, mps, expected', [(True, True, 'cuda'), (True, False, 'cuda'),
                                                 (False, True, 'mps'), (False, False, 'cpu')])
def test_auto_prefers_cuda_then_mps_then_cpu(ab94, fake, cuda, mps, expected):
    fake(cuda=cuda, mps=mps)
    assert ab94.Device('auto').type == expected


def prepared_on_cpu(ab94, dev):
    """dev.prepare() applied to airbench94's net, with the device move itself redirected to the CPU."""
    dev.torch_device = torch.device('cpu')
    return dev.prepare(ab94.make_net(ab94.hyp))


def dtypes(net):
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    norm_tensors = {id(t) for m in norms for t in list(m.parameters()) + list(m.buffers())}
    other = {p.dtype for p in net.parameters() if id(p) not in norm_tensors}
    norm = {t.dtype for m in norms for t in list(m.parameters()) + list(m.buffers()) if t.is_floating_point()}
    return other, norm


def test_cuda_is_fp16_with_fp32_batchnorm_channels_last_and_no_autocast(ab94, fake):
    fake(cuda=True)
    dev = ab94.Device('cuda')
    assert (dev.model_dtype, dev.data_dtype, dev.autocast_dtype) == (torch.float16, torch.float16, None)
    assert dev.memory_format == torch.channels_last and torch.backends.cudnn.benchmark
    assert isinstance(dev.autocast(), contextlib.nullcontext)
    net = prepared_on_cpu(ab94, dev)
    assert dtypes(net) == ({torch.float16}, {torch.float32})
    assert net[2].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_mps_is_fp32_with_fp16_autocast_and_contiguous_layout(ab94, fake):
    fake(mps=True)
    dev = ab94.Device('mps')
    assert (dev.model_dtype, dev.data_dtype, dev.autocast_dtype) == (torch.float32, torch.float32, torch.float16)
    assert dev.memory_format == torch.contiguous_format and not torch.backends.cudnn.benchmark
    net = prepared_on_cpu(ab94, dev)
    assert dtypes(net) == ({torch.float32}, {torch.float32})
    w = net[2].conv1.weight
    assert w.is_contiguous() and not w.is_contiguous(memory_format=torch.channels_last)


def test_cpu_is_fp32_with_bf16_autocast_where_supported(ab94, fake, monkeypatch):
    fake()
    dev = ab94.Device('cpu')
    assert (dev.model_dtype, dev.data_dtype) == (torch.float32, torch.float32)
    assert dev.memory_format == torch.channels_last
    net = dev.prepare(ab94.make_net(ab94.hyp))
    assert dtypes(net) == ({torch.float32}, {torch.float32})
    assert net[2].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert dev.autocast_dtype == torch.bfloat16 and dev.note == ''
        with dev.autocast():
            assert torch.get_autocast_dtype('cpu') == torch.bfloat16 and torch.is_autocast_enabled('cpu')
    # a CPU without fast bf16 trains in fp32, and says so
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: False)
    slow = ab94.Device('cpu')
    assert slow.autocast_dtype is None and 'fp32' in slow.note
    assert isinstance(slow.autocast(), contextlib.nullcontext)


def test_a_cpu_without_fast_bf16_says_so_in_the_log_and_the_output(ab94, fake, monkeypatch, cifar_dir, tmp_path,
                                                                    capsys):
    fake()
    monkeypatch.setattr(torch.backends.mkldnn, 'is_available', lambda: False)
    args, hyp, overrides = ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 25, [
        '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1', '--no-warmup', '--device', 'cpu'])

    def train_fn(hyp, dev, train_loader, test_loader, seed, run):  # the run itself is not what is tested
        return None, {'run': run, 'seed': seed, 'tta_val_acc': 0.5, 'val_acc': 0.5, 'time_seconds': 1.0}
    folder = ab94.benchmark(args, hyp, overrides, train_fn, lambda *a: 0, ab94.__file__)
    summary = json.loads((Path(folder) / 'log.json').read_text())['environment']['summary']
    assert summary.startswith('cpu (') and 'float32 weights)' in summary
    assert summary.endswith('; note: this CPU has no fast bf16, so it trains in fp32 (slower)')
    assert f'airbench94: {summary}, torch ' in capsys.readouterr().out


def test_each_torchrun_process_takes_the_gpu_of_its_local_rank(ab94, fake):
    fake(cuda=True)
    dev = ab94.Device('cuda', index=3)
    assert dev.torch_device == torch.device('cuda', 3) and fake.selected == [torch.device('cuda', 3)]
    assert ab94.Device('auto').torch_device == torch.device('cuda', 0)
    with pytest.raises(ab94.UserError, match='process 4 of this node needs cuda 4, but this machine and torch build '
                                             'have 4'):
        ab94.Device('cuda', index=4)


@pytest.mark.parametrize('name', ['cuda', 'mps'])
def test_asking_for_a_missing_device_is_a_user_error(ab94, fake, name):
    fake()
    with pytest.raises(ab94.UserError, match=f'--device {name}'):
        ab94.Device(name)


def test_the_loader_stores_the_data_in_the_device_formats(ab94, fake):
    fake(cuda=True)
    dev = ab94.Device('cuda')
    dev.torch_device = torch.device('cpu')
    split = {'images': torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8),
             'labels': torch.arange(8), 'classes': list('abcdefghij')}
    loader = ab94.CifarLoader(split, dev, 4, train=False)
    assert loader.images.dtype == torch.float16 and loader.images.is_contiguous(memory_format=torch.channels_last)
    assert loader.normalize.mean.dtype == loader.normalize.std.dtype == torch.float16
