"""airbench.lib_airbench93: the public names of the original package's lib_airbench93.py (airbench 0.1.8),
for code that imports them (`from airbench.lib_airbench93 import hyp, make_net93, ConvGroup`) and for whole
models the original pickled (torch.save(net)), whose classes are found here by name.

hyp: train93's hyperparameters (airbench94's with 11 epochs and widths 64/128/128, the
package's HYP93), in the original's form. Conv, BatchNorm, ConvGroup and Mul are airbench94's
(the shared blocks are the same code in every script); Flatten is airbench96_paper's, the original's module,
which the other scripts' nets replace by nn.Flatten (the same operation).
"""
import airbench94
import airbench96_paper

from . import HYP93, CifarLoader, make_net93, train93  # noqa: F401 (re-exported)
from .utils import original_hyp, train  # noqa: F401 (re-exported)

hyp = original_hyp(HYP93)

Conv = airbench94.Conv            # (in_channels, out_channels, kernel_size=3, padding='same', bias=False)
BatchNorm = airbench94.BatchNorm  # (num_features, momentum, eps=1e-12, weight=False, bias=True)
ConvGroup = airbench94.ConvGroup  # (channels_in, channels_out, batchnorm_momentum)
Mul = airbench94.Mul              # (scale)
Flatten = airbench96_paper.Flatten
