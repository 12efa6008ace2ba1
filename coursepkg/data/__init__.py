"""Data of the course: toy distributions with exact densities, and image data sets as integer levels.

:mod:`coursepkg.data.toys` holds the 1D and 2D targets (``toy("checkerboard")``) and
:func:`kl_divergence` to score a model against them; :mod:`coursepkg.data.images` loads the
sklearn digits, MNIST and CIFAR-10 as ``uint8`` tensors ``(N, C, H, W)`` and dequantizes them.
"""

from .images import (
    CIFAR10_LEVELS,
    DIGITS_LEVELS,
    MNIST_LEVELS,
    Dequantize,
    dequantize,
    image_shape,
    load_cifar10,
    load_digits,
    load_mnist,
    quantize,
)
from .toys import (
    TOY_NAMES,
    Banana,
    Checkerboard,
    EightGaussians,
    GaussianMixture,
    Rings,
    Spirals,
    ToyDistribution,
    TwoMoons,
    kl_divergence,
    toy,
)

__all__ = [
    "Banana",
    "CIFAR10_LEVELS",
    "Checkerboard",
    "DIGITS_LEVELS",
    "Dequantize",
    "EightGaussians",
    "GaussianMixture",
    "MNIST_LEVELS",
    "Rings",
    "Spirals",
    "TOY_NAMES",
    "ToyDistribution",
    "TwoMoons",
    "dequantize",
    "image_shape",
    "kl_divergence",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "quantize",
    "toy",
]
