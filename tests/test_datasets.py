"""experiments/datasets.py: the CIFAR-100, SVHN and CINIC-10 readers, on small synthetic files written in
each dataset's official format (none of the datasets can be downloaded here), and on bad files: each
refused in one sentence naming the file, no code from data, bounded decompression.

The write_* helpers are also used by tests/test_experiments.py (Table 5 at smoke)."""
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import datasets  # noqa: E402

UserError = datasets.UserError


def images_of(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def write_cifar100(root, n_train=120, n_test=40, archive=False, seed=0):
    """root/cifar-100-python/{train,test,meta} as the official archive holds them (or the archive itself);
    returns {'train': (images NHWC, fine labels), 'test': ...}."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / 'cifar-100-python'
    folder.mkdir(parents=True, exist_ok=True)
    out, files = {}, {}
    for split, n in (('train', n_train), ('test', n_test)):
        images, fine = images_of(n, seed + len(split)), rng.integers(0, 100, n).tolist()
        files[split] = {b'filenames': [f'{i}.png'.encode() for i in range(n)], b'batch_label': split.encode(),
                        b'fine_labels': fine, b'coarse_labels': [f // 5 for f in fine],
                        b'data': np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(n, -1))}
        out[split] = (images, np.array(fine))
    files['meta'] = {b'fine_label_names': [f'fine{i}'.encode() for i in range(100)],
                     b'coarse_label_names': [f'coarse{i}'.encode() for i in range(20)]}
    for name, content in files.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=4))
    if archive:
        with tarfile.open(Path(root) / 'cifar-100-python.tar.gz', 'w:gz') as tar:
            tar.add(folder, arcname='cifar-100-python')
        for name in files:
            (folder / name).unlink()
        folder.rmdir()
    return out


def write_svhn(root, n_train=60, n_test=30, compress=True, seed=0):
    """root/train_32x32.mat and test_32x32.mat as SVHN ships them: X uint8 32x32x3xN, y double Nx1 in 1..10."""
    import scipy.io
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (('train', n_train), ('test', n_test)):
        images = images_of(n, seed + len(split))
        y = rng.integers(1, 11, (n, 1)).astype(np.float64)
        y[0, 0] = 10  # the digit 0 appears
        scipy.io.savemat(Path(root) / f'{split}_32x32.mat', {'X': images.transpose(1, 2, 3, 0), 'y': y},
                         do_compression=compress)
        out[split] = (images, y[:, 0].astype(np.int64) % 10)
    return out


CINIC_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def write_cinic(root, per_class=(3, 2), seed=0):
    """root/{train,valid,test}/<class>/*.png; one grey image per split; returns {'train': [(image, class)], ...}
    in the order of the files' names within each class."""
    from PIL import Image
    out = {}
    for split, n in (('train', per_class[0]), ('valid', 1), ('test', per_class[1])):
        out[split] = []
        for c, name in enumerate(CINIC_CLASSES):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images_of(n, seed + 100 * c + len(split))):
                if c == 1 and i == 0:  # CINIC-10 holds grey images too: stored as L, read as RGB
                    grey = Image.fromarray(image[..., 0], 'L')
                    grey.save(folder / f'{split}_{i:05d}.png')
                    image = np.repeat(image[..., :1], 3, axis=2)
                else:
                    Image.fromarray(image, 'RGB').save(folder / f'{split}_{i:05d}.png')
                out[split].append((image, c))
    return out


# ---------------------------------------------------------------- good files


@pytest.mark.parametrize('archive', [False, True], ids=['folder', 'archive'])
def test_cifar100_reads_the_official_layout(tmp_path, archive):
    truth = write_cifar100(tmp_path, archive=archive)
    data = datasets.load('cifar100', tmp_path)
    same(data, truth)
    assert data['test']['classes'] == [f'fine{i}' for i in range(100)]


def same(data, truth):
    """The splits read hold truth's images (uint8 NHWC, pixel for pixel) and labels (int64)."""
    for split in ('train', 'test'):
        images, labels = truth[split]
        assert data[split]['images'].dtype == torch.uint8 and data[split]['labels'].dtype == torch.int64
        assert (data[split]['images'].numpy() == images).all()
        assert (data[split]['labels'].numpy() == labels).all()


def test_cifar100_extracted_folder_given_directly(tmp_path):
    truth = write_cifar100(tmp_path)
    data = datasets.load('cifar100', tmp_path / 'cifar-100-python')
    assert (data['test']['images'].numpy() == truth['test'][0]).all()


@pytest.mark.parametrize('compress', [True, False], ids=['compressed', 'plain'])
def test_svhn_reads_the_official_mat_files(tmp_path, compress):
    truth = write_svhn(tmp_path, compress=compress)
    data = datasets.load('svhn', tmp_path)
    same(data, truth)  # column-major X read pixel for pixel; 10 means the digit 0
    assert 0 in truth['train'][1] and data['train']['classes'] == [str(d) for d in range(10)]


def test_svhn_labels_stored_in_a_smaller_type(tmp_path):
    """MATLAB stores a double array whose values fit as uint8: the reader takes any numeric storage."""
    import scipy.io
    write_svhn(tmp_path)
    x = images_of(5, 3).transpose(1, 2, 3, 0)
    scipy.io.savemat(tmp_path / 'test_32x32.mat', {'X': x, 'y': np.array([[1], [10], [3], [4], [5]], np.uint8)})
    assert datasets.load('svhn', tmp_path)['test']['labels'].tolist() == [1, 0, 3, 4, 5]


def test_cinic10_reads_train_and_test_folders_classes_in_turn(tmp_path):
    truth = write_cinic(tmp_path)
    (tmp_path / 'valid' / 'cat' / 'broken.png').write_bytes(b'not read: valid/ is not used')
    data = datasets.load('cinic10', tmp_path)
    assert data['train']['classes'] == CINIC_CLASSES
    for split, n in (('train', 3), ('test', 2)):
        labels = data[split]['labels'].tolist()
        assert labels[:10] == list(range(10)) and len(labels) == 10 * n  # any prefix is class-balanced
        expected = {}
        for image, c in truth[split]:
            expected.setdefault(c, []).append(image)
        got = data[split]['images'].numpy()
        for i, label in enumerate(labels):
            assert (got[i] == expected[label][i // 10]).all()


# ---------------------------------------------------------------- bad files


def refused(call, *names):
    """The UserError of call(), checked to be one sentence naming each of names."""
    with pytest.raises(UserError) as e:
        call()
    message = str(e.value)
    assert '\n' not in message and 'Traceback' not in message
    for name in names:
        assert str(name) in message, message
    return message


class Boom:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


def test_cifar100_pickle_with_code_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    write_cifar100(tmp_path)
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / 'cifar-100-python' / 'train'
    bad.write_bytes(pickle.dumps({b'data': Boom(), b'fine_labels': [1]}))
    message = refused(lambda: datasets.load('cifar100', tmp_path), bad)
    assert 'system' in message and not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('damage', ['truncated', 'labels', 'shape', 'meta'])
def test_cifar100_damaged_files_are_one_sentence(tmp_path, damage):
    write_cifar100(tmp_path)
    folder = tmp_path / 'cifar-100-python'
    name = 'meta' if damage == 'meta' else 'test'
    content = pickle.loads((folder / name).read_bytes())
    if damage == 'truncated':
        (folder / name).write_bytes((folder / name).read_bytes()[:500])
    else:
        if damage == 'labels':
            content[b'fine_labels'][3] = 100
        elif damage == 'shape':
            content[b'data'] = content[b'data'][:, :3000].copy()
        else:
            content[b'fine_label_names'] = content[b'fine_label_names'][:10]
        (folder / name).write_bytes(pickle.dumps(content, protocol=4))
    refused(lambda: datasets.load('cifar100', tmp_path), folder / name)


def test_cifar100_archive_bomb_is_bounded(tmp_path, monkeypatch):
    write_cifar100(tmp_path, archive=True)
    monkeypatch.setattr(datasets, 'LIMIT', 50_000)  # the archive unpacks to about 500 KB
    message = refused(lambda: datasets.load('cifar100', tmp_path), tmp_path / 'cifar-100-python.tar.gz')
    assert 'more than' in message


def test_a_fifo_is_not_read(tmp_path):
    write_cifar100(tmp_path)
    fifo = tmp_path / 'cifar-100-python' / 'test'
    fifo.unlink()
    os.mkfifo(fifo)
    refused(lambda: datasets.load('cifar100', tmp_path), fifo)  # would hang if it were opened


@pytest.mark.parametrize('damage', ['not_mat', 'hdf5', 'truncated', 'label_11', 'dims', 'no_y', 'x_double'])
def test_svhn_bad_mat_files_are_one_sentence(tmp_path, damage):
    import scipy.io
    write_svhn(tmp_path, compress=False)
    path = tmp_path / 'test_32x32.mat'
    x, y = images_of(4, 1).transpose(1, 2, 3, 0), np.array([[1.0], [2.0], [3.0], [4.0]])
    if damage == 'not_mat':
        path.write_bytes(b'hello' * 100)
    elif damage == 'hdf5':
        path.write_bytes(b'MATLAB 7.3 MAT-file'.ljust(512, b' ') + b'\x89HDF\r\n\x1a\n' + bytes(100))
    elif damage == 'truncated':
        path.write_bytes(path.read_bytes()[:5000])
    else:
        variables = {'label_11': {'X': x, 'y': y + 7}, 'dims': {'X': x[:16], 'y': y},
                     'no_y': {'X': x}, 'x_double': {'X': x.astype(np.float64), 'y': y}}[damage]
        scipy.io.savemat(path, variables)
    message = refused(lambda: datasets.load('svhn', tmp_path), path)
    if damage == 'hdf5':
        assert 'v7.3' in message


def test_svhn_compressed_bomb_is_bounded(tmp_path, monkeypatch):
    write_svhn(tmp_path, n_train=200, compress=True)
    monkeypatch.setattr(datasets, 'LIMIT', 100_000)  # X alone inflates to 614 KB
    message = refused(lambda: datasets.load('svhn', tmp_path), tmp_path / 'train_32x32.mat')
    assert 'more than' in message


@pytest.mark.parametrize('damage', ['garbage', 'size', 'jpeg', 'missing_class'])
def test_cinic10_bad_images_are_one_sentence(tmp_path, damage):
    from PIL import Image
    write_cinic(tmp_path, per_class=(1, 1))
    path = tmp_path / 'test' / 'dog' / 'test_00000.png'
    if damage == 'garbage':
        path.write_bytes(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40)
    elif damage == 'size':
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path, format='PNG')
    elif damage == 'jpeg':  # another format under a .png name: only the PNG decoder is used
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path, format='JPEG')
    else:
        path.unlink()
        path.parent.rmdir()
        path = path.parent
    refused(lambda: datasets.load('cinic10', tmp_path), path)


def test_cinic10_without_pillow_is_one_sentence(tmp_path, monkeypatch):
    write_cinic(tmp_path, per_class=(1, 1))
    monkeypatch.setitem(sys.modules, 'PIL', None)  # import PIL now fails as if it were not installed
    assert 'Pillow' in refused(lambda: datasets.load('cinic10', tmp_path))


def test_missing_folders_and_names(tmp_path):
    refused(lambda: datasets.load('cifar100', tmp_path), tmp_path)
    refused(lambda: datasets.load('svhn', tmp_path), tmp_path / 'train_32x32.mat')
    refused(lambda: datasets.load('cinic10', tmp_path), tmp_path)
    refused(lambda: datasets.load('svhn', tmp_path / 'nowhere'), tmp_path / 'nowhere')
    refused(lambda: datasets.load('mnist', tmp_path), 'mnist')
