"""Small networks used inside flow layers (conditioners)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP", "ConvNet", "as_hidden"]


def as_hidden(hidden: int | Sequence[int], default_depth: int = 2) -> tuple[int, ...]:
    """Normalize the ``hidden`` option of the builders: ``64 -> (64, 64)``, ``(128, 64)`` kept."""
    if isinstance(hidden, int):
        hidden = (hidden,) * default_depth
    hidden = tuple(int(h) for h in hidden)
    if not hidden or any(h <= 0 for h in hidden):
        raise ValueError(f"hidden must be a positive int or a non-empty tuple of them, got {hidden}")
    return hidden


class MLP(nn.Sequential):
    """``Linear -> activation -> ... -> Linear``, shape ``(B, in_features) -> (B, out_features)``.

    Args:
        in_features, out_features: input and output sizes.
        hidden: hidden sizes, an int (two layers of that size) or a tuple.
        activation: module class used between layers.
        zero_last: start the last layer at zero, so a coupling layer built on this network
            starts as the identity map (stable first steps of training).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int | Sequence[int] = 64,
        activation: type[nn.Module] = nn.ReLU,
        zero_last: bool = True,
    ):
        sizes = (in_features, *as_hidden(hidden), out_features)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)


class ConvNet(nn.Module):
    """A small residual convolutional network, ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    ``conv3x3 -> num_blocks x [x + conv3x3(relu(conv3x3(relu(x))))] -> relu -> conv3x3``; every
    convolution pads by one pixel, so the spatial size is kept and each block widens the
    receptive field by four pixels. The conditioners of image coupling layers are built on it.

    Args:
        in_channels, out_channels: input and output channels.
        hidden: channels inside the network.
        num_blocks: residual blocks (0 gives two convolutions with a ReLU between them).
        zero_last: start the last convolution at zero, so a coupling layer built on this network
            starts as the identity map.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        num_blocks: int = 2,
        zero_last: bool = True,
    ):
        super().__init__()
        if hidden < 1 or num_blocks < 0:
            raise ValueError(f"hidden must be >= 1 and num_blocks >= 0, got {hidden} and {num_blocks}")
        self.first = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1),
            )
            for _ in range(num_blocks)
        )
        self.last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        if zero_last:
            nn.init.zeros_(self.last.weight)
            nn.init.zeros_(self.last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)  # (B, hidden, H, W)
        for block in self.blocks:
            h = h + block(h)
        return self.last(torch.relu(h))  # (B, out_channels, H, W)
