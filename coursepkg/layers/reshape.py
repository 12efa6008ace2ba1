r"""Squeezing: trade spatial resolution for channels, ``(B, C, H, W) -> (B, C f^2, H / f, W / f)``.

Each ``f x f`` block of pixels of each channel becomes ``f^2`` channels of one pixel, in this
order (the one of RealNVP's ``squeeze_2x2``):

.. math:: \mathrm{out}[b,\; c f^2 + i f + j,\; h,\; w] = x[b,\; c,\; f h + i,\; f w + j],
          \qquad 0 \le i, j < f.

So for ``f = 2`` the channels ``4c .. 4c + 3`` hold the top-left, top-right, bottom-left and
bottom-right pixels of each block of channel ``c``, and a :func:`~coursepkg.layers.channel_mask`
of a squeezed single-channel image splits every block into its top row and its bottom row.
A squeeze only relabels coordinates (a permutation), so ``log_det = 0``.
"""

from __future__ import annotations

import torch

from ..core import Flow

__all__ = ["squeeze", "unsqueeze", "Squeeze", "Unsqueeze"]


def _check_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    return int(factor)


def squeeze(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """``(B, C, H, W) -> (B, C f^2, H / f, W / f)`` in the order documented in this module."""
    f = _check_factor(factor)
    if x.dim() != 4 or x.shape[2] % f or x.shape[3] % f:
        raise ValueError(
            f"squeeze by {f} expects images (B, C, H, W) with H and W divisible by {f}, got {tuple(x.shape)}"
        )
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // f, f, w // f, f)  # (B, C, H', i, W', j)
    x = x.permute(0, 1, 3, 5, 2, 4)  # (B, C, i, j, H', W')
    return x.reshape(b, c * f * f, h // f, w // f)


def unsqueeze(z: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """The inverse of :func:`squeeze`: ``(B, C f^2, H, W) -> (B, C, H f, W f)``."""
    f = _check_factor(factor)
    if z.dim() != 4 or z.shape[1] % (f * f):
        raise ValueError(
            f"unsqueeze by {f} expects images (B, C, H, W) with C divisible by {f * f}, got {tuple(z.shape)}"
        )
    b, c, h, w = z.shape
    z = z.reshape(b, c // (f * f), f, f, h, w)  # (B, C, i, j, H, W)
    z = z.permute(0, 1, 4, 2, 5, 3)  # (B, C, H, i, W, j)
    return z.reshape(b, c // (f * f), h * f, w * f)


class Squeeze(Flow):
    """Space to channels, ``(B, C, H, W) -> (B, 4C, H/2, W/2)`` for ``factor=2``; ``log_det = 0``.

    Coupling layers with channel masks can then mix values that were neighbours in space; a
    multi-scale flow squeezes before it factors out half of the channels
    (:class:`~coursepkg.layers.MultiScale`). The channel order is given in :mod:`this module
    <coursepkg.layers.reshape>`.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = _check_factor(factor)

    def forward(self, x):
        return squeeze(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, z):
        return unsqueeze(z, self.factor), z.new_zeros(z.shape[0])

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class Unsqueeze(Flow):
    """Channels to space, the inverse of :class:`Squeeze`: ``(B, 4C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = _check_factor(factor)

    def forward(self, x):
        return unsqueeze(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, z):
        return squeeze(z, self.factor), z.new_zeros(z.shape[0])

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
