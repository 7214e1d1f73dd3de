"""airbench.lib_airbench96: the public names of the original package's lib_airbench96.py (airbench 0.1.8),
for code that imports them (`from airbench.lib_airbench96 import hyp, make_net96, ConvGroup`) and for whole
models pickled with 0.1.8 (torch.save(net)), whose classes are found here by name.

DRAFT. 0.1.8's airbench96 is the paper's (40 epochs, widths 128/512/512, weight decay 0.0153, BatchNorm
momentum 0.6, the residual added after the last GELU), which becomes a script of its own; until it exists,
hyp holds 0.1.8's values as published, make_net96/train96 are still airbench96.py's later recipe, and
ConvGroup (the paper's, with conv3/norm3) is missing. scratch/pkg018/AIRBENCH96_PAPER.md has the facts.
"""
import airbench96

from . import CifarLoader, make_net96, train96  # noqa: F401 (re-exported)
from .utils import train  # noqa: F401 (re-exported)

hyp = {  # 0.1.8's lib_airbench96.hyp; to be original_hyp(<the paper's airbench96 script>.hyp)
    'opt': {'train_epochs': 40.0, 'batch_size': 1024, 'lr': 9.0, 'momentum': 0.85, 'weight_decay': 0.0153,
            'bias_scaler': 64.0, 'label_smoothing': 0.2, 'whiten_bias_epochs': 3},
    'aug': {'flip': True, 'translate': 4, 'cutout': 12},
    'net': {'widths': {'block1': 128, 'block2': 512, 'block3': 512}, 'batchnorm_momentum': 0.6,
            'scaling_factor': 1 / 9, 'tta_level': 2},
}

# DRAFT: as lib_airbench94's (keywords of Conv and BatchNorm, Flatten); ConvGroup: the paper script's.
Conv = airbench96.Conv
BatchNorm = airbench96.BatchNorm
Mul = airbench96.Mul
