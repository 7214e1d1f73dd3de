"""airbench.lib_airbench93: the public names of the original package's lib_airbench93.py (airbench 0.1.8),
for code that imports them (`from airbench.lib_airbench93 import hyp, make_net93, ConvGroup`) and for whole
models pickled with 0.1.8 (torch.save(net)), whose classes are found here by name.

hyp: airbench94's with train93's 11 epochs and widths 64/128/128 (the package's HYP93), in the
original's form. The blocks are airbench94's (its shared blocks: the same code in every script).
"""
import airbench94

from . import HYP93, CifarLoader, make_net93, train93  # noqa: F401 (re-exported)
from .utils import original_hyp, train  # noqa: F401 (re-exported)

hyp = original_hyp(HYP93)

# DRAFT: the original's Conv(in_channels, out_channels, kernel_size=3, padding='same', bias=False) and
# BatchNorm(num_features, momentum, eps=1e-12, weight=False, bias=True) take keywords the scripts' shared
# blocks do not take yet; the original's Flatten (no attributes, x.view(len(x), -1)) has no script class yet.
Conv = airbench94.Conv
BatchNorm = airbench94.BatchNorm
ConvGroup = airbench94.ConvGroup
Mul = airbench94.Mul
