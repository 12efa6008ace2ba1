"""Flow layers. Each maps data to latent in ``forward`` and back in ``inverse``, returning ``(output, log_det)``."""

from .actnorm import ActNorm
from .batchnorm import BatchNormFlow
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
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
from .elementwise import ElementwiseAffine, Logit, PiecewiseLinear, Sigmoid
from .linear import Linear, LULinear, Permutation, Reverse
from .multiscale import MultiScale
from .planar import Planar
from .reshape import Squeeze, Unsqueeze, squeeze, unsqueeze

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "BatchNormFlow",
    "ConvAdditiveCoupling",
    "ConvAffineCoupling",
    "ElementwiseAffine",
    "Linear",
    "Logit",
    "LULinear",
    "MultiScale",
    "Permutation",
    "PiecewiseLinear",
    "Planar",
    "Reverse",
    "Scaling",
    "Sigmoid",
    "Squeeze",
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
