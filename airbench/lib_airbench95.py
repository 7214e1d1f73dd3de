"""airbench.lib_airbench95: the public names of the original package's lib_airbench95.py (airbench 0.1.8),
for code that imports them (`from airbench.lib_airbench95 import hyp, make_net95, ConvGroup`) and for whole
models the original pickled (torch.save(net)), whose classes are found here by name.

hyp: airbench95's hyperparameters, in the original's form. Conv, BatchNorm, ConvGroup and Mul are airbench95's
(the shared blocks are the same code in every script); Flatten is airbench96_paper's, the original's module,
which the other scripts' nets replace by nn.Flatten (the same operation).
"""
import airbench95
import airbench96_paper

from . import CifarLoader, make_net95, train95  # noqa: F401 (re-exported)
from .utils import original_hyp, train  # noqa: F401 (re-exported)

hyp = original_hyp(airbench95.hyp)

Conv = airbench95.Conv            # (in_channels, out_channels, kernel_size=3, padding='same', bias=False)
BatchNorm = airbench95.BatchNorm  # (num_features, momentum, eps=1e-12, weight=False, bias=True)
ConvGroup = airbench95.ConvGroup  # (channels_in, channels_out, batchnorm_momentum)
Mul = airbench95.Mul              # (scale)
Flatten = airbench96_paper.Flatten
