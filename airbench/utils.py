"""airbench.utils: the public names of the original package's utils.py (airbench 0.1.8), with its call
signatures, for code that imports them (`from airbench.utils import LookaheadState, init_whitening_conv`).

Each name is a script's own (airbench94's shared blocks: the same code in every script) or a thin function
that only adapts the original's arguments to one. The printing functions print the original's table
format; the train functions of the package print the scripts' table. docs/package.md lists what differs.
"""
import airbench94

from . import UserError, CifarLoader, evaluate, infer, run_training, _SGD_NO_SCHEDULE  # noqa: F401 (re-exported)

CIFAR_MEAN = airbench94.CIFAR_MEAN  # DRAFT: 0.1.8's are tensors; the scripts' are tuples (see the notes)
CIFAR_STD = airbench94.CIFAR_STD

LookaheadState = airbench94.LookaheadState  # LookaheadState(net), .update(net, decay), .net_ema


def batch_flip_lr(inputs):
    """Mirrors a random half of the images (airbench94.batch_flip_lr)."""
    return airbench94.batch_flip_lr(inputs)


def batch_crop(images, crop_size):
    """A random crop_size x crop_size crop of each padded image (airbench94.batch_crop)."""
    return airbench94.batch_crop(images, crop_size)


def batch_cutout(inputs, size):
    """Zeroes one random size x size square per image, in every channel (airbench94.batch_cutout)."""
    return airbench94.batch_cutout(inputs, size)


def make_random_square_masks(inputs, size):
    """(N, 1, H, W) boolean masks, each one random size x size square inside the image: the squares
    airbench94.batch_cutout zeroes (the same two draws, in the same order as the original's)."""
    n, _, h, w = inputs.shape
    return airbench94.batch_cutout(inputs.new_ones((n, 1, h, w)), size) == 0


def get_patches(x, patch_shape):
    """Every h x w patch of the images x (N, C, H, W) as a float (P, C, h, w) tensor, in the original's
    order (image, then column, then row)."""
    h, w = patch_shape
    return x.unfold(2, h, 1).unfold(3, w, 1).permute(0, 3, 2, 1, 4, 5).flatten(0, 2).float()


def get_whitening_parameters(patches):
    """(eigenvalues (K, 1, 1, 1), eigenvectors (K, C, h, w)) of the patches' uncentred covariance, the
    largest first: read off airbench94.whitening_filters, whose filters are the eigenvectors divided by
    sqrt(eigenvalue + eps) (here eps = 1, so that no eigenvalue rounded below zero gives a NaN)."""
    if patches.dim() != 4 or patches.size(-1) != patches.size(-2):
        raise UserError(f'get_whitening_parameters: patches of shape {tuple(patches.shape)}: expected square '
                        'patches (P, C, k, k), as get_patches(x, (k, k)) gives')
    filters = airbench94.whitening_filters(patches, patches.size(-1), eps=1.0)[:patches[0].numel()]
    scale = filters.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # 1 / sqrt(eigenvalue + 1)
    return scale.pow(-2) - 1, filters / scale


def init_whitening_conv(layer, train_set, eps=5e-4):
    """Sets the whitening conv's filters from the images train_set (airbench94.init_whitening_conv)."""
    airbench94.init_whitening_conv(layer, train_set, eps)


logging_columns_list = ['run   ', 'epoch', 'train_loss', 'train_acc', 'val_acc', 'tta_val_acc', 'total_time_seconds']


def print_columns(columns_list, is_head=False, is_final_entry=False, print_cols=True):
    """One row of the original's table ('|  cell  |...|'): a rule above it for a head, below it for a head
    or the final entry; with print_cols=False only the rule above."""
    line = ''.join(f'|  {cell}  ' for cell in columns_list) + '|'
    rule = '-' * len(line)
    lines = [rule] * bool(is_head) + ([line] + [rule] * bool(is_head or is_final_entry) if print_cols else [])
    if lines:
        airbench94.say('\n'.join(lines))


def format_cell(value, width, column):
    """A cell as the original formats it: int and str as they are, float with 4 decimals, None empty."""
    if value is not None and type(value) not in (int, str, float):
        raise UserError(f'print_training_details: {column}={value!r} is not an int, str, float or None')
    return ('' if value is None else f'{value:0.4f}' if type(value) is float else str(value)).rjust(width)


def print_training_details(variables, is_final_entry):
    """The row of logging_columns_list's values found in the dict variables (missing ones empty)."""
    print_columns([format_cell(variables.get(c.strip()), len(c), c.strip()) for c in logging_columns_list],
                  is_final_entry=is_final_entry)


def train(train_loader, epochs, label_smoothing, learning_rate, bias_scaler, momentum, weight_decay,
          whiten_bias_epochs, tta_level, make_net, run, verbose):
    """The original's training function behind train93 ... train96: airbench94.train with these
    hyperparameters, the loader's batch size and the net make_net() builds; returns the trained net."""
    args = dict(locals(), seed=None, device=None, test_loader=None, callback=None)
    return run_training(airbench94, airbench94.hyp, 'train', _SGD_NO_SCHEDULE, args)


def original_hyp(hyp):
    """A script's hyperparameters in the form of the original's lib_airbench*.hyp."""
    o, a, n = hyp['opt'], hyp['aug'], hyp['net']
    aug = {'flip': a['flip'] != 'none', 'translate': a['translate'], **({'cutout': a['cutout']} if a['cutout'] else {})}
    return {'opt': {k: o[k] for k in ('train_epochs', 'batch_size', 'lr', 'momentum', 'weight_decay', 'bias_scaler',
                                      'label_smoothing', 'whiten_bias_epochs')},
            'aug': aug,
            'net': {'widths': dict(n['widths']), 'batchnorm_momentum': n['batchnorm_momentum'],
                    'scaling_factor': n['scaling_factor'], 'tta_level': n['tta_level']}}
