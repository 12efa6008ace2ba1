"""Small networks used inside flow layers (conditioners): ``MLP``, ``ConvNet``, ``GlowNet`` and the masked ``MADE``."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "MLP",
    "ConvNet",
    "GlowNet",
    "MADE",
    "conv3x3_pixels",
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


# GlowNet computes in the pixel-major layout on a CPU up to this many pixels (16 x 16), with
# nn.Conv2d above it and on every GPU.
_PIXEL_MAJOR_MAX_PIXELS = 256


@functools.lru_cache(maxsize=64)
def _neighbours(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Index tensors for a 3x3 convolution on pixel-major images of ``P = H W`` pixels.

    ``neighbours[p, k]`` (shape ``(P, 9)``) is the pixel at offset ``k = 3 (di + 1) + (dj + 1)``
    (``di, dj`` in ``-1, 0, 1``, the order of a 3x3 kernel) from pixel ``p``, or ``P`` (an
    appended zero pixel: the padding) outside the image; ``flat = 9 neighbours + k`` flattened
    (shape ``(9 P,)``) addresses a ``(P + 1, 9)`` grid of values per offset.
    """
    with torch.inference_mode(False):  # cached: must be usable outside inference mode too
        i = torch.arange(height, device=device).view(height, 1, 1, 1)
        j = torch.arange(width, device=device).view(1, width, 1, 1)
        offset = torch.arange(-1, 2, device=device)
        ni, nj = i + offset.view(1, 1, 3, 1), j + offset.view(1, 1, 1, 3)
        inside = (ni >= 0) & (ni < height) & (nj >= 0) & (nj < width)
        neighbours = torch.where(inside, ni * width + nj, height * width).reshape(height * width, 9)
        flat = (9 * neighbours + torch.arange(9, device=device)).reshape(-1)
    return neighbours, flat


def conv3x3_pixels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, height: int, width: int):
    """``F.conv2d(x, weight, bias, padding=1)`` on pixel-major images, ``(B, H W, C_in) -> (B, H W, C_out)``.

    Computed as a gather of the neighbours and one matrix product, on the side with fewer
    channels: with ``C_in <= C_out`` each pixel's 9 neighbours are gathered (``9 C_in`` values)
    and multiplied by the ``(C_out, 9 C_in)`` kernel; otherwise the pixels are multiplied by the
    kernels of all 9 offsets at once (``9 C_out`` values per pixel) and each output pixel sums the
    values of its neighbours. A conditioner's convolutions have few channels on one side (the
    image's) and many on the other (the hidden ones), so both cost one matrix product and a
    small gather.

    Args:
        x: ``(B, H W, C_in)``, pixels in row-major order.
        weight: ``(C_out, C_in, 3, 3)``, as in ``nn.Conv2d``; bias: ``(C_out,)`` or ``None``.
        height, width: ``H`` and ``W``.
    """
    b, pixels, c_in = x.shape
    c_out = weight.shape[0]
    neighbours, flat = _neighbours(height, width, x.device)
    if c_in <= c_out:
        padded = F.pad(x, (0, 0, 0, 1))  # (B, P + 1, C_in): the last pixel is the zero padding
        patches = padded.index_select(1, neighbours.reshape(-1)).view(b, pixels, 9 * c_in)
        return F.linear(patches, weight.permute(0, 2, 3, 1).reshape(c_out, 9 * c_in), bias)
    per_offset = F.linear(x, weight.permute(2, 3, 0, 1).reshape(9 * c_out, c_in))  # (B, P, 9 C_out)
    padded = F.pad(per_offset, (0, 0, 0, 1)).view(b, 9 * (pixels + 1), c_out)
    out = padded.index_select(1, flat).view(b, pixels, 9, c_out).sum(2)  # (B, P, C_out)
    return out if bias is None else out + bias


class GlowNet(nn.Module):
    """Glow's coupling conditioner, ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.

    ``conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3``: the 3x3 convolutions (padded by one pixel)
    see the neighbourhood, the 1x1 in the middle mixes the ``hidden`` channels at each pixel.
    Glow's version also puts an ActNorm after each hidden convolution; this one does without
    (no data-dependent initialisation inside a conditioner). In a Glow coupling it reads only
    the kept half of the channels.

    The weights are those of three ``nn.Conv2d`` (``first``, ``middle``, ``last``), and
    :meth:`conv_forward` applies them as such. :meth:`forward` computes the same function in a
    pixel-major layout ``(B, H W, C)``, where the 1x1 convolution is one matrix product and each
    3x3 convolution a gather plus one matrix product (:func:`conv3x3_pixels`): on the small
    images of the course (8 x 8 digits squeezed to 4 x 4 and 2 x 2) a training step of the
    network costs about half as much as with ``nn.Conv2d``, whose set-up dominates there. On a
    GPU, and for images of more than 16 x 16 pixels, :meth:`forward` uses :meth:`conv_forward`.

    Args:
        in_channels, out_channels: input and output channels.
        hidden: channels of the two hidden layers.
        zero_last: start the last convolution at zero, so a coupling layer built on this network
            starts as the identity map (Glow's ``Conv2dZeros``).
        dropout: the probability of zeroing each hidden channel after the middle layer, in
            training mode only: a channel dropped for an image is zero at all of its pixels, as
            ``nn.Dropout2d`` does (Flow++ regularises its couplings' networks with dropout). On
            the digits, dropping whole channels scored as well as dropping single activations,
            with one random number per image and channel instead of one per pixel as well (the
            random numbers were most of dropout's cost on a CPU). A coupling with dropout is a
            different function at every training step, so its inverse only undoes its forward
            pass in eval mode, where dropout is off.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        zero_last: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.first = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.middle = nn.Conv2d(hidden, hidden, 1)
        self.last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        if zero_last:
            nn.init.zeros_(self.last.weight)
            nn.init.zeros_(self.last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        if x.device.type != "cpu" or height * width > _PIXEL_MAJOR_MAX_PIXELS:
            # On a GPU, and on larger images, cuDNN's / oneDNN's convolutions win: the gather
            # only pays where the set-up of a convolution dominates (tiny images on a CPU).
            return self.conv_forward(x)
        h = x.permute(0, 2, 3, 1).reshape(b, height * width, c)  # (B, P, C_in), pixel-major
        h = torch.relu(conv3x3_pixels(h, self.first.weight, self.first.bias, height, width))
        h = torch.relu(F.linear(h, self.middle.weight.flatten(1), self.middle.bias))  # (B, P, hidden)
        if self.training and self.dropout > 0:  # one draw per image and channel, shared by its pixels
            keep = torch.empty(b, 1, h.shape[-1], dtype=h.dtype, device=h.device).bernoulli_(1 - self.dropout)
            h = h * keep.div_(1 - self.dropout)
        h = conv3x3_pixels(h, self.last.weight, self.last.bias, height, width)  # (B, P, C_out)
        return h.transpose(1, 2).reshape(b, self.last.out_channels, height, width)

    def conv_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The same function with the ``nn.Conv2d`` layers, in the ``(B, C, H, W)`` layout."""
        h = torch.relu(self.first(x))
        h = F.dropout2d(torch.relu(self.middle(h)), self.dropout, self.training)
        return self.last(h)


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
