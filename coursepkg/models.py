"""One builder per model family, each returning a :class:`~coursepkg.NormalizingFlow`.

Conventions shared by every builder:

- the first argument is the data dimension (an ``int``) for vectors, or the image shape
  ``(C, H, W)`` for images;
- keyword options ``num_layers`` (how many flow steps) and ``hidden`` (an ``int`` or a tuple of
  hidden sizes for the conditioner networks) mean the same everywhere;
- the base is a standard normal over the data's shape, and the result's ``transform`` maps data
  to latent; image models expect dequantized pixels in ``[0, 1]``;
- defaults are good enough to train on the book's data without tuning.

The families arrive with their chapters: ``nice`` and ``realnvp`` (chapters 3-4), ``maf`` and
``iaf`` (5), ``glow`` (6), ``iresnet`` (7).
"""

from __future__ import annotations

from collections.abc import Sequence

from .distributions import StandardNormal

__all__ = ["data_shape", "standard_normal_base"]

_PLANNED = {
    "nice": "chapter 3 (NICE)",
    "realnvp": "chapter 4 (RealNVP)",
    "maf": "chapter 5 (MAF and IAF)",
    "iaf": "chapter 5 (MAF and IAF)",
    "glow": "chapter 6 (Glow)",
    "iresnet": "chapter 7 (i-ResNet)",
}


def data_shape(dim_or_shape: int | Sequence[int]) -> tuple[int, ...]:
    """Normalize a builder's first argument: ``2 -> (2,)``, ``(1, 8, 8)`` kept; checks it."""
    if isinstance(dim_or_shape, int):
        shape = (dim_or_shape,)
    else:
        shape = tuple(int(s) for s in dim_or_shape)
    if len(shape) not in (1, 3) or any(s <= 0 for s in shape):
        raise ValueError(f"expected a data dimension (int) or an image shape (C, H, W), got {dim_or_shape!r}")
    return shape


def standard_normal_base(dim_or_shape: int | Sequence[int]) -> StandardNormal:
    """The default base of every builder."""
    return StandardNormal(data_shape(dim_or_shape))


def __getattr__(name: str):
    if name in _PLANNED:
        raise NotImplementedError(
            f"coursepkg.models.{name} is not written yet: it arrives with {_PLANNED[name]}."
        )
    raise AttributeError(f"module 'coursepkg.models' has no attribute {name!r}")
