"""Flow layers. Each maps data to latent in ``forward`` and back in ``inverse``, returning ``(output, log_det)``."""

from .actnorm import ActNorm
from .autoregressive import AffineTransformer, MaskedAutoregressive
from .batchnorm import BatchNormFlow
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    ChannelAffineCoupling,
    ConvAdditiveCoupling,
    ConvAffineCoupling,
    Scaling,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    halves_mask,
    random_mask,
    soft_clamp,
)
from .elementwise import ElementwiseAffine, HistogramCDF, Logit, PiecewiseLinear, Sigmoid
from .linear import Conv1x1, Linear, LUConv1x1, LULinear, Permutation, Reverse
from .multiscale import MultiScale, SplitPrior
from .planar import Planar
from .reshape import Squeeze, Unsqueeze, squeeze, unsqueeze
from .residual import InvertibleResidual, LipSwish, SpectralLinear
from .transformers import RationalQuadraticSpline, Transformer

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "AffineTransformer",
    "BatchNormFlow",
    "ChannelAffineCoupling",
    "Conv1x1",
    "ConvAdditiveCoupling",
    "ConvAffineCoupling",
    "ElementwiseAffine",
    "HistogramCDF",
    "Linear",
    "Logit",
    "InvertibleResidual",
    "LipSwish",
    "LUConv1x1",
    "LULinear",
    "MaskedAutoregressive",
    "MultiScale",
    "Permutation",
    "PiecewiseLinear",
    "Planar",
    "RationalQuadraticSpline",
    "Reverse",
    "Scaling",
    "SpectralLinear",
    "Sigmoid",
    "SplitPrior",
    "Squeeze",
    "Transformer",
    "Unsqueeze",
    "alternating_mask",
    "channel_mask",
    "checkerboard_mask",
    "halves_mask",
    "random_mask",
    "soft_clamp",
    "squeeze",
    "unsqueeze",
]
