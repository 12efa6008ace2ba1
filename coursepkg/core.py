r"""The flow interface shared by every chapter.

Direction: ``forward`` maps **data to latent**, the direction in which a density is evaluated,

.. math:: \log p_X(x) = \log p_Z(f(x)) + \log \left| \det \frac{\partial f(x)}{\partial x} \right|,

and ``inverse`` maps latent to data, the direction in which samples are drawn. Both return the
pair ``(output, log_det)`` where ``log_det`` is :math:`\log|\det \partial\,\mathrm{output} /
\partial\,\mathrm{input}|` for each sample: shape ``(B,)``, on the input's device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["Flow", "Compose", "Inverse", "NormalizingFlow", "nats_to_bits_per_dim"]


class Flow(nn.Module):
    """A bijective layer: ``forward(x) -> (z, log_det)`` and ``inverse(z) -> (x, log_det)``.

    Subclasses implement both directions. ``log_det`` has shape ``(B,)``: one value per sample,
    already summed over every non-batch dimension.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x) -> (z, log_det)")

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement inverse(z) -> (x, log_det)")


class Compose(Flow):
    """Layers applied one after the other; itself a flow, whose ``log_det`` is the sum of theirs.

    ``Compose(f1, f2, f3)`` computes ``f3(f2(f1(x)))`` in ``forward`` and undoes it in reverse
    order in ``inverse``. Index it, iterate it or take ``len`` like a list.
    """

    def __init__(self, *layers: Flow | Iterable[Flow]):
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], nn.Module):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not (hasattr(layer, "forward") and hasattr(layer, "inverse")):
                raise TypeError(
                    f"layer {i} ({type(layer).__name__}) is not a flow: it needs forward(x) and "
                    "inverse(z), each returning (output, log_det)"
                )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z, log_det

    def trajectory(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, f1(x), f2(f1(x)), ...]``: the input after each layer (for layer-by-layer plots)."""
        states = [x]
        for layer in self.layers:
            x, _ = layer(x)
            states.append(x)
        return states

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Compose(*self.layers[index])
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)


class Inverse(Flow):
    """The inverse of a flow: its ``forward`` is the wrapped flow's ``inverse`` and vice versa.

    This is how one layer serves both directions, e.g. an IAF is an inverted MAF.
    """

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow.inverse(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(z)


class NormalizingFlow(nn.Module):
    """A density model ``p(x) = p_base(f(x)) |det df/dx|`` made of a flow ``f`` and a base.

    Args:
        transform: a :class:`Flow` mapping data to latent.
        base: a distribution module with ``log_prob(z) -> (B,)`` and ``sample(n)``, such as
            :class:`coursepkg.distributions.StandardNormal`.

    ``log_prob(x)`` has shape ``(B,)``; ``sample(n)`` draws ``n`` data points by pushing base
    samples through ``transform.inverse``. For images, ``bits_per_dim`` converts the density of
    dequantized pixels in ``[0, 1]`` to bits per dimension of the discrete image.
    """

    def __init__(self, transform: Flow, base: nn.Module):
        super().__init__()
        self.transform = transform
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` for each sample, shape ``(B,)``."""
        z, log_det = self.transform(x)
        return self.base.log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` samples from the model, shape ``(n, *event_shape)``; no gradients are tracked.

        Use :meth:`rsample` for samples that carry gradients (e.g. variational inference).
        """
        return self.rsample(n, temperature)

    def rsample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Like :meth:`sample`, but differentiable with respect to the parameters."""
        z = self.base.sample(n, temperature)
        x, _ = self.transform.inverse(z)
        return x

    def sample_with_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their log-density in one pass through the inverse (the IAF's fast path)."""
        z = self.base.sample(n)
        x, log_det_inverse = self.transform.inverse(z)
        # log|det dx/dz| = -log|det dz/dx| at the same point.
        return x, self.base.log_prob(z) - log_det_inverse

    def bits_per_dim(self, x: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
        """Bits per dimension of images whose pixels take ``num_levels`` values, shape ``(B,)``.

        ``x`` holds dequantized pixels scaled to ``[0, 1]``: ``x = (k + u) / num_levels`` for the
        integer level ``k`` and uniform noise ``u``. A bin of width ``1 / num_levels`` per
        dimension turns the density into a probability, so
        ``bpd = (-log p(x) + D log num_levels) / (D log 2)``.
        """
        if num_levels < 2:
            raise ValueError(f"num_levels must be at least 2, got {num_levels}")
        return nats_to_bits_per_dim(-self.log_prob(x), x[0].numel(), num_levels)


def nats_to_bits_per_dim(nats, dims: int, num_levels: int | None = None):
    r"""A negative log-likelihood in nats per example, as bits per dimension.

    ``nats / (dims log 2)``; with ``num_levels``, for images whose ``num_levels`` pixel values were
    dequantized and scaled to ``[0, 1]``, plus ``log2(num_levels)``: the bits per dimension of the
    discrete images, as :meth:`NormalizingFlow.bits_per_dim` reports them. Works on numbers,
    arrays and tensors alike, e.g. on the losses of a :class:`~coursepkg.training.History`.

    Args:
        nats: mean :math:`-\log p(x)` per example (a training or validation loss).
        dims: the dimensions of one example (64 for the 8 x 8 digits).
        num_levels: the pixel levels of the images (17 for the digits, 256 for 8-bit images), or
            ``None`` for continuous data.
    """
    if dims <= 0:
        raise ValueError(f"dims must be the number of dimensions of one example, got {dims}")
    return nats / (dims * math.log(2)) + (math.log2(num_levels) if num_levels else 0.0)
