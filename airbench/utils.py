"""airbench.utils: the public names of the original package's utils.py (airbench 0.1.8), with its call
signatures, for code that imports them (`from airbench.utils import LookaheadState, init_whitening_conv`).

Each name is a script's own (airbench94's shared blocks: the same code in every script) or a thin function
that only adapts the original's arguments to one. The printing functions print the original's table
format; the package's train functions print the scripts' table. docs/package.md lists what differs.
"""
import airbench94

from . import CifarLoader, UserError, evaluate, infer, run_training, _SGD_NO_SCHEDULE  # noqa: F401 (re-exported)

_cifar = airbench94.Normalize.cifar()  # the loaders' normalisation, on the CPU in fp32, as the original's constants
CIFAR_MEAN, CIFAR_STD = _cifar.mean, _cifar.std  # (3,) tensors

batch_flip_lr = airbench94.batch_flip_lr                        # (inputs)
batch_crop = airbench94.batch_crop                              # (images, crop_size)
make_random_square_masks = airbench94.make_random_square_masks  # (inputs, size)
batch_cutout = airbench94.batch_cutout                          # (inputs, size)
get_patches = airbench94.get_patches                            # (x, patch_shape)
get_whitening_parameters = airbench94.get_whitening_parameters  # (patches)
LookaheadState = airbench94.LookaheadState                      # (net), .update(net, decay), .net_ema


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
