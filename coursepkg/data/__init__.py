"""Data of the course: toy distributions with exact densities, and image data sets as integer levels.

:mod:`coursepkg.data.toys` holds the 1D and 2D targets (``toy("checkerboard")``) and
:func:`kl_divergence` to score a model against them; :mod:`coursepkg.data.images` loads the
sklearn digits, MNIST and CIFAR-10 as ``uint8`` tensors ``(N, C, H, W)`` and dequantizes them;
:mod:`coursepkg.data.tabular` loads scikit-learn's tables (:func:`load_tabular`) as standardised
float tensors ``(N, D)`` with a seeded train/validation/test split.
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
from .tabular import TABULAR_NAMES, TabularData, load_tabular
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
    "TABULAR_NAMES",
    "TOY_NAMES",
    "TabularData",
    "ToyDistribution",
    "TwoMoons",
    "dequantize",
    "image_shape",
    "kl_divergence",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "load_tabular",
    "quantize",
    "toy",
]
