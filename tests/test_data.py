"""Where the data comes from: the cache (train.pt/test.pt, ours or the original airbench's), the
official folder, the official archive read in memory, AIRBENCH_DATA, and a cache write that fails
half-way. In-process through airbench94's harness block (every script carries it verbatim)."""
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import synthetic
from conftest import REPO, TINY, log_dir_of, read_log, run_script


def same_splits(a, b):
    for split in ('train', 'test'):
        assert torch.equal(a[split]['images'], b[split]['images'])
        assert torch.equal(a[split]['labels'], b[split]['labels'])
        assert a[split]['classes'] == b[split]['classes']


def files_in(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file())


def test_the_official_folder_then_the_cache_give_identical_tensors(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    first, source = ab94.load_cifar10(str(data))
    assert source == 'pickles' and (data / 'train.pt').is_file() and (data / 'test.pt').is_file()
    images, labels = synthetic.make_split(2000, 0)
    assert torch.equal(first['train']['images'], torch.from_numpy(images))  # NHWC, as written
    assert first['train']['labels'].tolist() == labels and first['train']['classes'] == synthetic.CLASSES
    second, source = ab94.load_cifar10(str(data))
    assert source == 'cache'
    same_splits(first, second)
    assert second['train']['origin'] == first['train']['origin'] == str(data / 'cifar-10-batches-py')
    assert first['train']['images'].dtype == torch.uint8 and first['train']['labels'].dtype == torch.int64


def test_the_archive_is_read_in_memory_never_extracted(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    splits, source = ab94.load_cifar10(str(data))
    assert source == 'archive'
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz', 'test.pt', 'train.pt']
    reference, _ = ab94.load_cifar10(str(shutil.copytree(official_dir, tmp_path / 'reference')))
    same_splits(splits, reference)
    assert ab94.load_cifar10(str(data))[1] == 'cache'


def original_airbench_cache(folder, n=60, seed=0):
    """train.pt/test.pt as the original airbench writes them: torchvision's data array (N, 32, 32, 3)
    is a transposed view of the CHW rows of the pickles, so the saved images tensor is not contiguous."""
    folder.mkdir()
    written = {}
    for split, offset in (('train', 0), ('test', 1)):
        images, labels = synthetic.make_split(n, seed + offset)
        rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # the pickles' CHW bytes
        view = torch.from_numpy(rows.transpose(0, 2, 3, 1))          # what torch.tensor(dset.data) keeps
        assert not view.is_contiguous()
        split_dict = {'images': view, 'labels': torch.tensor(labels), 'classes': synthetic.CLASSES}
        torch.save(split_dict, folder / f'{split}.pt')
        written[split] = split_dict
    return written


def test_a_cache_written_by_the_original_airbench_is_read(ab94, tmp_path):
    written = original_airbench_cache(tmp_path / 'data')
    splits, source = ab94.load_cifar10(str(tmp_path / 'data'))
    assert source == 'cache'
    for split in ('train', 'test'):
        assert splits[split]['images'].is_contiguous()
        assert torch.equal(splits[split]['images'], written[split]['images'])
        assert torch.equal(splits[split]['labels'], written[split]['labels'])
    assert 'original airbench' in splits['train']['origin']


def test_airbench_data_is_the_default_data_dir_and_an_empty_one_is_unset(ab94, cifar_dir, tmp_path,
                                                                          monkeypatch):
    proc = run_script('airbench94', '--log-dir', str(tmp_path), '--runs', '1', '--no-warmup', *TINY,
                      '--set', 'opt.train_epochs=1', env={'AIRBENCH_DATA': cifar_dir}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_log(log_dir_of(proc.stdout))['data']['dir'] == os.path.abspath(cifar_dir)
    for value, expected in (('', 'cifar10'), (cifar_dir, cifar_dir)):  # empty: not the current folder
        monkeypatch.setenv('AIRBENCH_DATA', value)
        assert ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 1, [])[0].data_dir == expected
    # --data-dir wins over the variable
    args = ab94.parse_command_line('', ab94.hyp, ab94.check_hyp, 1, ['--data-dir', str(tmp_path)])[0]
    assert args.data_dir == str(tmp_path)


def failing_save(fail_on_call, error):
    """A torch.save that writes part of a file and then raises `error` on call number fail_on_call."""
    calls, real_save = [0], torch.save

    def save(obj, path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_on_call:
            with open(path, 'wb') as f:
                f.write(b'PK\x03\x04 half a file')
            raise error
        return real_save(obj, path, *args, **kwargs)
    return save


TORCH_FULL_DISK = RuntimeError('[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n'
                               'PytorchStreamWriter failed writing file data/0: file write failed')


@pytest.mark.parametrize('fail_on_call, error', [
    (1, OSError(errno.ENOSPC, 'No space left on device')),
    (1, TORCH_FULL_DISK),  # how torch.save reports a full disk: its internals' words must not be shown
], ids=['OSError', 'torch RuntimeError'])
def test_a_full_disk_while_caching_leaves_no_half_cache_and_no_temp_file(ab94, official_dir, tmp_path,
                                                                         monkeypatch, capsys, fail_on_call, error):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    before = files_in(data)
    monkeypatch.setattr(torch, 'save', failing_save(fail_on_call, error))
    splits, source = ab94.load_cifar10(str(data))
    assert source == 'pickles' and len(splits['train']['labels']) == 2000  # the run goes on
    note = capsys.readouterr().out
    assert 'cannot write the cache' in note and 'enforce fail' not in note and 'inline_container' not in note
    assert files_in(data) == before  # neither train.pt nor test.pt nor a temporary file


def test_a_cache_half_written_when_the_disk_filled_is_rebuilt(ab94, official_dir, tmp_path, monkeypatch):
    """train.pt written, test.pt not: the next start does not see a cache and rebuilds both."""
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    monkeypatch.setattr(torch, 'save', failing_save(2, OSError(errno.ENOSPC, 'No space left on device')))
    ab94.load_cifar10(str(data))
    monkeypatch.undo()
    assert (data / 'train.pt').exists() and not (data / 'test.pt').exists()
    assert ab94.load_cifar10(str(data))[1] == 'pickles'
    assert ab94.load_cifar10(str(data))[1] == 'cache'


def test_ctrl_c_while_caching_leaves_no_temp_file(ab94, official_dir, tmp_path, monkeypatch):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    before = files_in(data)
    monkeypatch.setattr(torch, 'save', failing_save(1, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ab94.load_cifar10(str(data))
    assert files_in(data) == before
    monkeypatch.undo()
    assert ab94.load_cifar10(str(data))[1] == 'pickles'  # and the next start builds the cache
    assert ab94.load_cifar10(str(data))[1] == 'cache'


def test_three_invocations_reading_one_fresh_archive_at_once_all_succeed(tmp_path):
    """Nothing is extracted, and each writes the cache by its own temp file and a rename."""
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    code = (f'import runpy; m = runpy.run_path({str(REPO / "airbench94.py")!r}); '
            f'print(m["load_cifar10"]({str(data)!r})[1])')
    procs = [subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and 'Traceback' not in err, err
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-python.tar.gz', 'test.pt', 'train.pt']
