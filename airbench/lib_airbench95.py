"""airbench.lib_airbench95: the public names of the original package's lib_airbench95.py (airbench 0.1.8),
for code that imports them (`from airbench.lib_airbench95 import hyp, make_net95, ConvGroup`) and for whole
models pickled with 0.1.8 (torch.save(net)), whose classes are found here by name.

hyp: airbench95's, in the original's form. The blocks are airbench95's.
"""
import airbench95

from . import CifarLoader, make_net95, train95  # noqa: F401 (re-exported)
from .utils import original_hyp, train  # noqa: F401 (re-exported)

hyp = original_hyp(airbench95.hyp)

# DRAFT: the original's Conv(in_channels, out_channels, kernel_size=3, padding='same', bias=False) and
# BatchNorm(num_features, momentum, eps=1e-12, weight=False, bias=True) take keywords the scripts' shared
# blocks do not take yet; the original's Flatten (no attributes, x.view(len(x), -1)) has no script class yet.
Conv = airbench95.Conv
BatchNorm = airbench95.BatchNorm
ConvGroup = airbench95.ConvGroup
Mul = airbench95.Mul
