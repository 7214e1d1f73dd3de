"""Where the data comes from: the archive, the official folder, the cache, AIRBENCH_DATA, and a
cache write that fails half-way. In-process through airbench94's data-files block (every script
carries it verbatim)."""
import errno
import os
import shutil

import pytest
import torch

import synthetic
from conftest import TINY, log_dir_of, read_log, run_script


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
    assert source == 'official pickles' and (data / 'train.pt').is_file() and (data / 'test.pt').is_file()
    images, labels = synthetic.make_split(2000, 0)
    assert torch.equal(first['train']['images'], torch.from_numpy(images))  # NHWC, as written
    assert first['train']['labels'].tolist() == labels and first['train']['classes'] == synthetic.CLASSES
    second, source = ab94.load_cifar10(str(data))
    assert source == 'cache'
    same_splits(first, second)
    assert first['train']['images'].dtype == torch.uint8 and first['train']['labels'].dtype == torch.int64


def test_the_archive_is_extracted_and_cached(ab94, official_dir, tmp_path):
    data = tmp_path / 'data'
    synthetic.write_archive(str(data))
    splits, source = ab94.load_cifar10(str(data))
    assert source == 'official archive'
    assert sorted(p.name for p in data.iterdir()) == ['cifar-10-batches-py', 'cifar-10-python.tar.gz',
                                                       'test.pt', 'train.pt']
    reference, _ = ab94.load_cifar10(str(shutil.copytree(official_dir, tmp_path / 'reference')))
    same_splits(splits, reference)
    assert ab94.load_cifar10(str(data))[1] == 'cache'


def test_airbench_data_is_the_default_data_dir(cifar_dir, tmp_path):
    proc = run_script('airbench94', '--log-dir', str(tmp_path), '--runs', '1', '--no-warmup', *TINY,
                      '--set', 'opt.train_epochs=1', env={'AIRBENCH_DATA': cifar_dir}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert read_log(log_dir_of(proc.stdout))['data']['dir'] == os.path.abspath(cifar_dir)
    # --data-dir wins over the variable
    proc = run_script('airbench94', '--data-dir', cifar_dir, '--log-dir', str(tmp_path), '--runs', '1', '--no-warmup',
                      *TINY, '--set', 'opt.train_epochs=1', env={'AIRBENCH_DATA': str(tmp_path / 'nothing')})
    assert proc.returncode == 0, proc.stderr
    assert read_log(log_dir_of(proc.stdout))['data']['dir'] == os.path.abspath(cifar_dir)


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


@pytest.mark.parametrize('fail_on_call', [1, 2], ids=['writing train.pt', 'writing test.pt'])
def test_a_full_disk_while_caching_leaves_no_cache_and_no_temp_file(ab94, official_dir, tmp_path, monkeypatch,
                                                                     capsys, fail_on_call):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    before = files_in(data)
    monkeypatch.setattr(torch, 'save', failing_save(fail_on_call, OSError(errno.ENOSPC, 'No space left on device')))
    splits, source = ab94.load_cifar10(str(data))
    assert source == 'official pickles' and len(splits['train']['labels']) == 2000  # the run goes on
    assert 'could not write the cache' in capsys.readouterr().out
    assert files_in(data) == before  # neither train.pt nor test.pt nor a temporary file


def test_ctrl_c_while_caching_leaves_no_cache_and_no_temp_file(ab94, official_dir, tmp_path, monkeypatch):
    data = tmp_path / 'data'
    shutil.copytree(official_dir, data)
    before = files_in(data)
    monkeypatch.setattr(torch, 'save', failing_save(2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ab94.load_cifar10(str(data))
    assert files_in(data) == before
    monkeypatch.undo()
    assert ab94.load_cifar10(str(data))[1] == 'official pickles'  # and the next start rebuilds it
    assert ab94.load_cifar10(str(data))[1] == 'cache'
