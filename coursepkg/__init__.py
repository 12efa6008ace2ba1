"""coursepkg: the layers, models, data, training loop and plots of the normalizing-flows course.

Every flow maps data to latent in ``forward(x) -> (z, log_det)`` and back in
``inverse(z) -> (x, log_det)``; see :mod:`coursepkg.core`.
"""

from . import distributions, jacobian, layers, models, nets
from .core import Compose, Flow, Inverse, NormalizingFlow, nats_to_bits_per_dim
from .distributions import StandardLogistic, StandardNormal
from .jacobian import jacobian as brute_force_jacobian
from .jacobian import log_abs_det_jacobian
from .runtime import by_mode, device, mode

__version__ = "0.1.0"

__all__ = [
    "Compose",
    "Flow",
    "Inverse",
    "NormalizingFlow",
    "StandardLogistic",
    "StandardNormal",
    "brute_force_jacobian",
    "by_mode",
    "device",
    "distributions",
    "jacobian",
    "layers",
    "log_abs_det_jacobian",
    "mode",
    "models",
    "nats_to_bits_per_dim",
    "nets",
]

_LAZY = ("data", "training", "plotting", "testing", "widgets")


def __getattr__(name: str):
    # matplotlib, scikit-learn and tqdm load only when a chapter first uses them.
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'coursepkg' has no attribute {name!r}")
