"""Flow layers. Each maps data to latent in ``forward`` and back in ``inverse``, returning ``(output, log_det)``."""

from .actnorm import ActNorm
from .elementwise import ElementwiseAffine, Logit, PiecewiseLinear, Sigmoid
from .linear import Linear, LULinear, Permutation, Reverse
from .planar import Planar

__all__ = [
    "ActNorm",
    "ElementwiseAffine",
    "Linear",
    "Logit",
    "LULinear",
    "Permutation",
    "PiecewiseLinear",
    "Planar",
    "Reverse",
    "Sigmoid",
]
