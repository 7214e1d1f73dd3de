"""Readers for the other datasets of the paper's Table 5 (App. B), each read offline from a folder the
user points to, in the form the scripts' loaders take: {'train': split, 'test': split}, a split being
{'images': uint8 N x 32 x 32 x 3, 'labels': int64 N, 'classes': [names], 'origin': where from}.

- CIFAR-100 (`cifar100`): the official python archive cifar-100-python.tar.gz, or its extracted
  folder cifar-100-python/ (train, test, meta pickles), in the folder given; the 100 fine labels.
- SVHN (`svhn`): the official train_32x32.mat and test_32x32.mat (MATLAB v5 files, read by the small
  reader below: no scipy at run time); label 10 means the digit 0. The 531,131 "extra" images are not
  used: training is on train_32x32.mat's 73,257.
- CINIC-10 (`cinic10`): the folders train/, valid/, test/, each with one folder of PNG images per
  class. Training is on train/ (90,000 images); valid/ is not read; testing is on test/ (90,000).
  Decoding PNG needs Pillow (`pip install pillow`, or the `datasets` extra). The images are ordered
  class by class in turn (the first image of every class, then the second, ...), so any prefix of a
  split is class-balanced, as the grids' train_subset and test_subset take prefixes.
- CIFAR-10 (`cifar10`): the scripts' own reader, airbench94.load_cifar10.

Every file is untrusted input, under the scripts' rules (airbench94.py's harness, reused, not copied):
regular files only, of a bounded size (read_bytes); pickles through the restricted OfficialUnpickler,
whose Pickled stands in for numpy's arrays, so no code from a data file runs and nothing is allocated
beyond the file's bytes; decompression bounded (the archive, a compressed .mat element: at most
airbench94.LIMIT bytes); a bad file is one sentence naming it (airbench94.UserError).
"""
import io
import os
import struct
import sys
import tarfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import airbench94  # noqa: E402

UserError = airbench94.UserError
LIMIT = airbench94.LIMIT  # bytes a file, or the archive or a .mat element unpacked, may hold
PNG_LIMIT = 1 << 20  # bytes a CINIC-10 image may hold (a 32 x 32 PNG is a few KB)
MAX_IMAGES = 300_000  # images a folder split may hold (CINIC-10: 90,000 a split)
SIDE = 32


def read(path, what):
    """The bytes of a regular file of at most LIMIT bytes, else one sentence naming it."""
    try:
        return airbench94.read_bytes(str(path))
    except UserError:
        state = 'missing' if not os.path.lexists(path) else 'not a regular file of at most 256 MiB'
        raise UserError(f'{airbench94.inert(path)} is {state}: {what}') from None


def check(split, where, num_classes):
    """The split if its images, labels and classes are of the scripts' kind, else one sentence."""
    images, labels, classes = split['images'], split['labels'], split['classes']
    if not (images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1:] == (SIDE, SIDE, 3)
            and len(images) > 0):
        wrong = 'its images are not N >= 1 uint8 images of 32 x 32 x 3'
    elif not (labels.dtype == torch.int64 and labels.shape == (len(images),)
              and 0 <= int(labels.min()) and int(labels.max()) < num_classes):
        wrong = f'its labels are not one per image in 0..{num_classes - 1}'
    elif not (isinstance(classes, list) and len(classes) == num_classes and all(isinstance(c, str) for c in classes)):
        wrong = f'it does not name {num_classes} classes'
    else:
        return {**split, 'images': images.contiguous(), 'labels': labels.contiguous()}
    raise UserError(f'{airbench94.inert(where)} is not usable: {wrong}')


# ---------------------------------------------------------------- CIFAR-100

CIFAR100_FILES = ('meta', 'train', 'test')


def unpickle(raw, path, fix):
    """A pickle of the official python format, through the restricted unpickler; one sentence if bad."""
    try:
        return airbench94.OfficialUnpickler(io.BytesIO(raw), encoding='bytes').load()
    except Exception as e:
        raise UserError(f'{airbench94.inert(path)} is not an official pickle ({type(e).__name__}: '
                        f'{airbench94.inert(e)}): {fix}') from None


def cifar100_split(content, path, classes, fix):
    """One split of CIFAR-100 from its unpickled dict: rows of 3,072 uint8 values (CHW) and fine labels."""
    try:
        _, shape, dtype, _, raw = content[b'data'].state  # as numpy pickles an array
        labels = content[b'fine_labels']
        if (len(shape) != 2 or shape[1] != 3 * SIDE * SIDE or dtype.args[:1] not in (('u1',), (b'u1',))
                or not isinstance(raw, bytes) or len(raw) != shape[0] * shape[1] or len(labels) != shape[0]
                or not all(type(v) is int and 0 <= v < len(classes) for v in labels)):
            raise ValueError('it does not hold rows of 3,072 uint8 values with a fine label in 0..99 each')
    except Exception as e:
        raise UserError(f'{airbench94.inert(path)} is not an official CIFAR-100 file ({type(e).__name__}: '
                        f'{airbench94.inert(e)}): {fix}') from None
    images = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 3, SIDE, SIDE).permute(0, 2, 3, 1)
    return check({'images': images, 'labels': torch.tensor(labels, dtype=torch.int64), 'classes': classes},
                 path, len(classes))


def read_cifar100(data_dir):
    """CIFAR-100 from data_dir/cifar-100-python/ (or data_dir itself holding train, test and meta), else
    from data_dir/cifar-100-python.tar.gz, read in memory (never extracted)."""
    folder = os.path.join(data_dir, 'cifar-100-python')
    archive = os.path.join(data_dir, 'cifar-100-python.tar.gz')
    if not os.path.isdir(folder) and os.path.exists(os.path.join(data_dir, 'meta')):
        folder = data_dir
    if os.path.isdir(folder):
        fix = f'replace {folder} with a good copy of the official files'
        files = {name: read(os.path.join(folder, name), fix) for name in CIFAR100_FILES}
        where, origin = folder, folder
    elif os.path.exists(archive):
        fix = f'{archive} is not the official archive: fetch it again'
        files, where, origin = unpack_archive(read(archive, fix), archive, 'cifar-100-python/'), folder, archive
        missing = [name for name in CIFAR100_FILES if name not in files]
        if missing:
            raise UserError(f'{archive} holds no cifar-100-python/{missing[0]}: {fix}')
    else:
        raise UserError(f'--cifar100-dir {data_dir} holds neither cifar-100-python/ nor cifar-100-python.tar.gz')
    meta = unpickle(files['meta'], os.path.join(where, 'meta'), fix)
    try:
        classes = [c.decode() for c in meta[b'fine_label_names']]
        if len(classes) != 100:
            raise ValueError(f'it names {len(classes)} fine classes, not 100')
    except Exception as e:
        raise UserError(f"{os.path.join(where, 'meta')} is not CIFAR-100's meta ({type(e).__name__}: "
                        f'{airbench94.inert(e)}): {fix}') from None
    return {name: {**cifar100_split(unpickle(files[name], os.path.join(where, name), fix), os.path.join(where, name),
                                    classes, fix), 'origin': origin} for name in ('train', 'test')}


def unpack_archive(packed, path, prefix):
    """{file name: bytes} of the regular files under prefix in a .tar.gz held in memory, its gzip stream
    inflated whole (so that its CRC is checked) and to at most LIMIT bytes."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(inflate.decompress(packed, LIMIT)))
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError('it ends early, or unpacks to more than 256 MiB')
        return {m.name[len(prefix):]: tar.extractfile(m).read() for m in tar
                if m.isfile() and m.name.startswith(prefix) and '/' not in m.name[len(prefix):]}
    except (ValueError, EOFError, zlib.error, tarfile.TarError) as e:
        raise UserError(f'{airbench94.inert(path)} is damaged ({airbench94.inert(e)}): fetch it again') from None


# ---------------------------------------------------------------- SVHN: MATLAB v5 files

# MATLAB v5 data types (the tag's first word): (struct format, bytes per value) of the numeric ones
MI_NUMERIC = {1: ('b', 1), 2: ('B', 1), 3: ('h', 2), 4: ('H', 2), 5: ('i', 4), 6: ('I', 4), 7: ('f', 4),
              9: ('d', 8), 12: ('q', 8), 13: ('Q', 8)}
MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MX_NUMERIC = range(6, 16)  # double, single, int8, uint8, int16, uint16, int32, uint32, int64, uint64
MX_UINT8 = 9
MAX_DIMS = 8


class MatError(ValueError):
    """A .mat file that this reader refuses; the message says why."""


def mat_elements(raw, order, start=0, end=None):
    """[(type, data as a memoryview)] of the data elements in raw[start:end], each checked to fit."""
    view, end = memoryview(raw), len(raw) if end is None else end
    out, at = [], start
    while at < end:
        if end - at < 8:
            raise MatError('a data element is cut short')
        first, second = struct.unpack_from(order + 'II', raw, at)
        if first >> 16:  # the small format: size and type packed in one word, the data in the next 4 bytes
            kind, size = first & 0xFFFF, first >> 16
            if size > 4:
                raise MatError('a small data element claims more than 4 bytes')
            out.append((kind, view[at + 4:at + 4 + size]))
            at += 8
            continue
        kind, size = first, second
        if size > end - at - 8:
            raise MatError('a data element is longer than the file')
        out.append((kind, view[at + 8:at + 8 + size]))
        # compressed elements are not padded; every other one is to a multiple of 8 bytes
        at += 8 + (size if kind == MI_COMPRESSED else -(-size // 8) * 8)
    return out


def mat_numbers(kind, data, order, what):
    """The values of a numeric data element, as a list of numbers."""
    if kind not in MI_NUMERIC or len(data) % MI_NUMERIC[kind][1]:
        raise MatError(f'{what} is not stored as numbers')
    code, size = MI_NUMERIC[kind]
    return list(struct.unpack(f'{order}{len(data) // size}{code}', data))


def mat_array(data, order):
    """(name, class, dims, (real part's type, its bytes)) of a miMATRIX element's content."""
    parts = mat_elements(data, order)
    if len(parts) < 4:
        raise MatError('an array lacks its flags, dimensions, name or values')
    (flags_kind, flags), (dims_kind, dims), (name_kind, name), (real_kind, real) = parts[:4]
    if flags_kind != MI_UINT32 or len(flags) != 8 or dims_kind != MI_INT32 or name_kind != MI_INT8:
        raise MatError('an array header is not as MATLAB writes it')
    word = struct.unpack_from(order + 'I', flags)[0]
    mx_class, complex_ = word & 0xFF, bool(word & 0x800)
    dims = mat_numbers(dims_kind, dims, order, 'an array size')
    if not 2 <= len(dims) <= MAX_DIMS or any(d < 0 for d in dims):
        raise MatError('an array has an impossible size')
    return bytes(name).decode('ascii', 'replace'), mx_class, complex_, dims, (real_kind, real)


def read_mat(raw, wanted):
    """({name: (class, dims, (type, bytes))} of the numeric arrays named in wanted, the byte order as a
    struct prefix), from a MATLAB v5 file's bytes; other variables are passed over. Compressed elements
    (zlib) are inflated to at most LIMIT bytes in all. MatError for what is not such a file (HDF5-based v7.3 files included)."""
    if raw[:8] == b'\x89HDF\r\n\x1a\n' or raw[512:520] == b'\x89HDF\r\n\x1a\n':
        raise MatError('it is a MATLAB v7.3 (HDF5) file; save it as v7 (or use the official file)')
    if len(raw) < 128 or raw[126:128] not in (b'IM', b'MI') or not raw[:6] == b'MATLAB':
        raise MatError('it has no MATLAB 5.0 MAT-file header')
    order = '<' if raw[126:128] == b'IM' else '>'
    if struct.unpack_from(order + 'H', raw, 124)[0] != 0x0100:
        raise MatError('its MAT-file version is not 5')
    found, budget = {}, LIMIT
    for kind, data in mat_elements(raw, order, 128):
        if kind == MI_COMPRESSED:
            inflate = zlib.decompressobj()
            try:
                inner = inflate.decompress(data, budget)
            except zlib.error as e:
                raise MatError(f'a compressed element is damaged ({e})') from None
            if inflate.unconsumed_tail or not inflate.eof:
                raise MatError('a compressed element ends early, or unpacks to more than 256 MiB')
            budget -= len(inner)
            elements = mat_elements(inner, order)
            if len(elements) != 1:
                raise MatError('a compressed element holds other than one array')
            kind, data = elements[0]
        if kind != MI_MATRIX:
            raise MatError(f'it holds a data element of type {kind}, not an array')
        if not len(data):  # an empty array: nothing to read
            continue
        name, mx_class, complex_, dims, real = mat_array(data, order)
        if name in wanted:
            if mx_class not in MX_NUMERIC or complex_:
                raise MatError(f'its variable {name} is not a real numeric array')
            found[name] = (mx_class, dims, real)
    return found, order


def svhn_split(path):
    """One SVHN split from its official .mat file: X uint8 32 x 32 x 3 x N (column-major), y N labels 1..10."""
    fix = 'use the official train_32x32.mat and test_32x32.mat'
    try:
        arrays, order = read_mat(read(path, fix), ('X', 'y'))
        if set(arrays) != {'X', 'y'}:
            raise MatError(f"it lacks the variable {'X' if 'X' not in arrays else 'y'}")
        (x_class, dims, (x_kind, x_data)), (_, y_dims, (y_kind, y_data)) = arrays['X'], arrays['y']
        if len(dims) != 4 or dims[:3] != [SIDE, SIDE, 3] or not 1 <= dims[3] <= MAX_IMAGES:
            raise MatError(f'its X is {"x".join(map(str, dims))}, not 32x32x3xN')
        n = dims[3]
        if x_class != MX_UINT8 or x_kind != 2 or len(x_data) != n * 3 * SIDE * SIDE:
            raise MatError('its X is not stored as N images of uint8 values')
        if sorted(y_dims) != [1, n]:
            raise MatError(f'its y has {"x".join(map(str, y_dims))} values, not one per image ({n})')
        values = mat_numbers(y_kind, y_data, order, 'its y')
        if not all(v == int(v) and 1 <= v <= 10 for v in values):
            raise MatError('its labels are not the digits 1..10 (10 meaning 0)')
    except MatError as e:
        raise UserError(f'{airbench94.inert(path)} is not an official SVHN file ({e}): {fix}') from None
    # column-major X(row, col, channel, n) is, read in C order, [n][channel][col][row]
    images = torch.frombuffer(bytearray(x_data), dtype=torch.uint8).view(n, 3, SIDE, SIDE).permute(0, 3, 2, 1)
    labels = torch.tensor([int(v) % 10 for v in values], dtype=torch.int64)
    return check({'images': images, 'labels': labels, 'classes': [str(d) for d in range(10)], 'origin': str(path)},
                 path, 10)


def read_svhn(data_dir):
    """SVHN's train and test splits from data_dir/train_32x32.mat and data_dir/test_32x32.mat."""
    if not os.path.isdir(data_dir):
        raise UserError(f'--svhn-dir {data_dir} is not a folder')
    return {split: svhn_split(os.path.join(data_dir, f'{split}_32x32.mat')) for split in ('train', 'test')}


# ---------------------------------------------------------------- CINIC-10: folders of PNG images

def png_image(raw, path, Image):
    """One 32 x 32 image from PNG bytes, as uint8 32 x 32 x 3 (grey and palette images made RGB)."""
    try:
        with Image.open(io.BytesIO(raw), formats=['PNG']) as image:
            if image.size != (SIDE, SIDE):
                raise ValueError(f'it is {image.size[0]} x {image.size[1]} pixels, not 32 x 32')
            pixels = image.convert('RGB').tobytes()
    except Exception as e:
        raise UserError(f'{airbench94.inert(path)} is not a 32 x 32 PNG image ({type(e).__name__}: '
                        f'{airbench94.inert(e)}): replace it with a good copy of CINIC-10') from None
    return torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(SIDE, SIDE, 3)


def cinic_split(folder, classes, Image):
    """A split from folder/<class>/*.png, the images of the classes taken in turn (class-balanced prefixes)."""
    per_class = []
    for name in classes:
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            raise UserError(f'{airbench94.inert(sub)} is missing: every split of CINIC-10 has a folder per class')
        files = sorted(f for f in os.listdir(sub) if f.lower().endswith('.png'))
        per_class.append([os.path.join(sub, f) for f in files])
    total = sum(map(len, per_class))
    if not 0 < total <= MAX_IMAGES:
        raise UserError(f'{airbench94.inert(folder)} holds {total} PNG images: expected 1 to {MAX_IMAGES:,}')
    order = [(c, files[i]) for i in range(max(map(len, per_class))) for c, files in enumerate(per_class)
             if i < len(files)]
    images = torch.empty(total, SIDE, SIDE, 3, dtype=torch.uint8)
    for i, (_, path) in enumerate(order):
        if not os.path.isfile(path) or os.path.getsize(path) > PNG_LIMIT:
            raise UserError(f'{airbench94.inert(path)} is not a regular file of at most 1 MiB: replace it '
                            'with a good copy of CINIC-10')
        images[i] = png_image(read(path, 'replace it with a good copy of CINIC-10'), path, Image)
    labels = torch.tensor([c for c, _ in order], dtype=torch.int64)
    return check({'images': images, 'labels': labels, 'classes': list(classes), 'origin': folder}, folder,
                 len(classes))


def read_cinic10(data_dir):
    """CINIC-10's train/ (for training) and test/ splits; the classes are the sub-folders of train/."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError('reading CINIC-10 needs Pillow to decode its PNG images, which is not installed: '
                        'pip install pillow') from None
    train = os.path.join(data_dir, 'train')
    if not os.path.isdir(train) or not os.path.isdir(os.path.join(data_dir, 'test')):
        raise UserError(f'--cinic10-dir {data_dir} does not hold the folders train/ and test/ of CINIC-10')
    classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
    if not 2 <= len(classes) <= 255:
        raise UserError(f'{train} holds {len(classes)} class folders: expected CINIC-10\'s 10')
    return {split: cinic_split(os.path.join(data_dir, split), classes, Image) for split in ('train', 'test')}


READERS = {'cifar100': read_cifar100, 'svhn': read_svhn, 'cinic10': read_cinic10}


def load(name, data_dir):
    """{'train': split, 'test': split} of the dataset called name, from the folder data_dir."""
    if name == 'cifar10':
        return airbench94.load_cifar10(data_dir)[0]
    if name not in READERS:
        raise UserError(f'unknown dataset {name!r}: use one of cifar10, ' + ', '.join(READERS))
    if not os.path.isdir(data_dir):
        raise UserError(f'--{name}-dir {data_dir} is not a folder')
    return READERS[name](str(data_dir))
