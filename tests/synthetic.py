"""A small learnable stand-in for CIFAR-10, written in the official python layout.

Each class has its own mean colour and its own low-frequency pattern; every image adds
pixel noise and a random brightness shift, so a small net learns the classes in a few
epochs but not perfectly, and both survive flips, translations and cutout.
"""
import os
import pickle
import tarfile

import numpy as np

CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


def make_split(n, seed):
    """(images uint8 N x 32 x 32 x 3, labels list of int), classes balanced and shuffled."""
    rng = np.random.default_rng(seed)
    style = np.random.default_rng(1234)  # the classes are the same in every split
    colours = style.uniform(60, 200, size=(10, 3))
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    patterns = np.stack([np.sin(2 * np.pi * (fy * yy + fx * xx))
                         for fy, fx in style.uniform(0.5, 2.5, size=(10, 2))])  # 10 x 32 x 32
    labels = rng.permutation(np.arange(n) % 10)
    images = colours[labels][:, None, None, :] + 40 * patterns[labels][..., None]
    images = images + rng.normal(0, 45, size=images.shape) + rng.normal(0, 20, size=(n, 1, 1, 1))
    return np.clip(images, 0, 255).astype(np.uint8), [int(label) for label in labels]


def write_official(root, n_train=2000, n_test=500, seed=0):
    """Writes root/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta); returns root."""
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    train_images, train_labels = make_split(n_train, seed)
    test_images, test_labels = make_split(n_test, seed + 1)
    files = {}
    for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
        files[f'data_batch_{i + 1}'] = to_batch(train_images[part], [train_labels[j] for j in part])
    files['test_batch'] = to_batch(test_images, test_labels)
    files['batches.meta'] = {b'label_names': [c.encode() for c in CLASSES], b'num_cases_per_batch': n_train // 5}
    for name, obj in files.items():
        with open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(obj, f, protocol=4)
    return root


def to_batch(images, labels):
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # rows of CHW bytes, as the official files
    return {b'data': np.ascontiguousarray(data), b'labels': list(labels)}


def write_archive(root, **kwargs):
    """Writes root/cifar-10-python.tar.gz holding cifar-10-batches-py/ (and nothing else in root)."""
    staging = os.path.join(root, '.staging')
    write_official(staging, **kwargs)
    with tarfile.open(os.path.join(root, 'cifar-10-python.tar.gz'), 'w:gz') as tar:
        tar.add(os.path.join(staging, 'cifar-10-batches-py'), arcname='cifar-10-batches-py')
    for name in os.listdir(os.path.join(staging, 'cifar-10-batches-py')):
        os.remove(os.path.join(staging, 'cifar-10-batches-py', name))
    os.rmdir(os.path.join(staging, 'cifar-10-batches-py'))
    os.rmdir(staging)
    return root
