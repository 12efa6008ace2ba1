"""Small networks used inside flow layers (conditioners): ``MLP``, ``ConvNet`` and the masked ``MADE``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MLP",
    "ConvNet",
    "MADE",
    "MaskedLinear",
    "as_hidden",
    "autoregressive_order",
    "degree_mask",
]


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


# ----------------------------------------------------------------------------------------------
# MADE: a masked MLP whose outputs are autoregressive in its inputs
# ----------------------------------------------------------------------------------------------


def autoregressive_order(
    features: int,
    order: str | Sequence[int] | torch.Tensor = "natural",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The order in which the ``features`` dimensions are generated, a ``(D,)`` long permutation.

    ``order[0]`` depends on nothing, ``order[1]`` on ``order[0]``, and so on. ``order`` is
    ``"natural"`` (``0, 1, ..., D-1``), ``"reversed"`` (``D-1, ..., 0``), ``"random"`` (drawn with
    ``generator``, torch's global generator if ``None``) or an explicit permutation of
    ``range(D)``.
    """
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"features must be a positive int, got {features!r}")
    if isinstance(order, str):
        if order == "natural":
            return torch.arange(features)
        if order == "reversed":
            return torch.arange(features - 1, -1, -1)
        if order == "random":
            return torch.randperm(features, generator=generator)
        raise ValueError(
            f"order must be 'natural', 'reversed', 'random' or a permutation of range({features}), got {order!r}"
        )
    permutation = torch.as_tensor(order).reshape(-1).cpu()
    if (
        permutation.dtype.is_floating_point
        or permutation.dtype == torch.bool
        or not torch.equal(permutation.sort().values, torch.arange(features))
    ):
        raise ValueError(f"order must be a permutation of range({features}), got {permutation.tolist()}")
    return permutation.long()


def degree_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor, strict: bool) -> torch.Tensor:
    r"""MADE's connectivity rule, an ``(out, in)`` bool mask: unit ``o`` may see unit ``i`` when
    ``in_degrees[i] <= out_degrees[o]`` (hidden layers) or ``<`` when ``strict`` (the output layer).

    A hidden unit of degree :math:`d` thus depends only on the inputs of degree :math:`\le d`, and
    an output of degree :math:`d` only on inputs of degree :math:`< d`: strictly before it.
    """
    if strict:
        return in_degrees.unsqueeze(0) < out_degrees.unsqueeze(1)
    return in_degrees.unsqueeze(0) <= out_degrees.unsqueeze(1)


class MaskedLinear(nn.Linear):
    """``y = x (W * M)^T + b``: a linear layer whose weight is multiplied by a fixed 0/1 mask.

    The mask is a float buffer of shape ``(out_features, in_features)`` (it follows ``.to(dtype)``
    and survives ``state_dict``). Masked weights still exist and receive zero gradients; the mask is
    applied once per call, an elementwise product far cheaper than the matrix product it feeds.
    """

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, connections={int(self.mask.sum())}"


class MADE(nn.Module):
    r"""MADE (Germain et al., 2015): an MLP whose outputs for dimension ``i`` see only the inputs before ``i``.

    Each input dimension gets a degree, its position in ``order``: :math:`m(x_{\mathrm{order}[k]})
    = k`. Hidden units get degrees in :math:`0..D-2`, assigned cyclically (every degree is present
    when a layer has at least ``D - 1`` units). A weight connects a unit of degree :math:`d` to a
    hidden unit of degree :math:`d'` only if :math:`d \le d'`, and to an output of dimension
    :math:`i` only if :math:`d < m(x_i)` (:func:`degree_mask`). Every path from :math:`x_j` to the
    outputs of dimension :math:`i` then climbs degrees from :math:`m(x_j)` and stays below
    :math:`m(x_i)`, so the Jacobian :math:`\partial\,\mathrm{out}_{k, i} / \partial x_j` vanishes
    unless :math:`x_j` comes strictly before :math:`x_i` in ``order``: one pass of the network gives
    the conditional parameters of every dimension at once. The first dimension in ``order`` sees
    nothing: its parameters are the biases of the last layer.

    Args:
        features: ``D``, the input dimension.
        hidden: hidden sizes, an int (two layers of that size) or a tuple.
        num_params: ``K``, the parameters computed for each dimension.
        order: ``"natural"``, ``"reversed"``, ``"random"`` or a permutation of ``range(D)``
            (see :func:`autoregressive_order`); kept in the ``order`` buffer, the inputs' degrees
            in ``degrees``, so a random order survives ``state_dict``.
        generator: draws the ``"random"`` order.
        activation: module class used between layers.
        zero_last: start the last layer at zero, so that a flow built on this network starts as the
            identity map (for an affine transformer).

    Shapes: ``(B, D) -> (B, K, D)``. The last layer computes ``K D`` outputs as ``K`` contiguous
    blocks of ``D`` (parameter ``k`` of every dimension, then parameter ``k + 1``), viewed as
    ``(B, K, D)`` without a copy, so that ``out[:, k]`` is a ``(B, D)`` slice with unit stride along
    ``D``; never the interleaved layout, whose per-parameter slices are strided and slow.
    """

    def __init__(
        self,
        features: int,
        hidden: int | Sequence[int] = 64,
        num_params: int = 2,
        order: str | Sequence[int] | torch.Tensor = "natural",
        generator: torch.Generator | None = None,
        activation: type[nn.Module] = nn.ReLU,
        zero_last: bool = True,
    ):
        super().__init__()
        if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 1:
            raise ValueError(f"num_params must be a positive int, got {num_params!r}")
        order = autoregressive_order(features, order, generator)
        degrees = torch.empty(features, dtype=torch.long)
        degrees[order] = torch.arange(features)  # (D,): the position of each input in the order
        self.features = features
        self.num_params = num_params
        self.register_buffer("order", order)
        self.register_buffer("degrees", degrees)

        layers: list[nn.Module] = []
        in_degrees = degrees
        for size in as_hidden(hidden):
            # Cyclic degrees 0..D-2: no hidden unit of degree D-1, which no output could use.
            out_degrees = torch.arange(size) % max(features - 1, 1)
            layers += [MaskedLinear(degree_mask(in_degrees, out_degrees, strict=False)), activation()]
            in_degrees = out_degrees
        # Output block k holds parameter k of dimensions 0..D-1: the degrees repeat K times.
        last = MaskedLinear(degree_mask(in_degrees, degrees.repeat(num_params), strict=True))
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(
                f"MADE(features={self.features}) expects (B, {self.features}), got {tuple(x.shape)}"
            )
        return self.net(x).unflatten(1, (self.num_params, self.features))  # (B, K, D), a view

    def extra_repr(self) -> str:
        order = self.order.tolist()
        shown = order if len(order) <= 8 else [*order[:4], "...", *order[-2:]]
        return f"features={self.features}, num_params={self.num_params}, order={shown}"
