"""airbench.lib_airbench96: the public names of the original package's lib_airbench96.py (airbench 0.1.8),
for code that imports them (`from airbench.lib_airbench96 import hyp, make_net96, ConvGroup`) and for whole
models the original pickled (torch.save(net)), whose classes are found here by name.

hyp: airbench96_paper's hyperparameters (the paper's airbench96), in the original's form. Conv, BatchNorm, ConvGroup and Mul are airbench96_paper's
(the shared blocks are the same code in every script); Flatten is airbench96_paper's, the original's module,
which the other scripts' nets replace by nn.Flatten (the same operation).
"""
import airbench96_paper

from . import CifarLoader, make_net96, train96  # noqa: F401 (re-exported)
from .utils import original_hyp, train  # noqa: F401 (re-exported)

hyp = original_hyp(airbench96_paper.hyp)

Conv = airbench96_paper.Conv            # (in_channels, out_channels, kernel_size=3, padding='same', bias=False)
BatchNorm = airbench96_paper.BatchNorm  # (num_features, momentum, eps=1e-12, weight=False, bias=True)
ConvGroup = airbench96_paper.ConvGroup  # (channels_in, channels_out, batchnorm_momentum)
Mul = airbench96_paper.Mul              # (scale)
Flatten = airbench96_paper.Flatten
