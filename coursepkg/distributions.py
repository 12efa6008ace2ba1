"""Base distributions of the flows, as modules so that ``.to(device)`` moves them.

Each has ``log_prob(z)`` returning one log-density per sample, shape ``(B,)`` (summed over the
event dimensions), and ``sample(n)`` returning ``(n, *event_shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["StandardNormal", "StandardLogistic"]

_LOG_2PI = math.log(2 * math.pi)


def _event_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"event shape must be a positive int or a tuple of them, got {shape}")
    return shape


class _Base(nn.Module):
    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = _event_shape(shape)
        # An empty buffer tells sample() which device and dtype the module lives on.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def _check(self, z: torch.Tensor) -> None:
        if tuple(z.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{type(self).__name__} expects inputs of shape (B, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(z.shape)}"
            )

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"


class StandardNormal(_Base):
    r"""Independent standard normal: :math:`\log p(z) = -\tfrac12 \sum_i (z_i^2 + \log 2\pi)`."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return -0.5 * (z.square() + _LOG_2PI).flatten(1).sum(1)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` samples; ``temperature`` scales the standard deviation (Glow's reduced temperature)."""
        a = self._anchor
        return temperature * torch.randn((n, *self.event_shape), device=a.device, dtype=a.dtype)


class StandardLogistic(_Base):
    r"""Independent standard logistic (NICE's prior): :math:`\log p(z) = -\sum_i (\mathrm{softplus}(z_i) + \mathrm{softplus}(-z_i))`.

    Its heavier tails give larger gradients to points far from the origin than a Gaussian does.
    """

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        return -(F.softplus(z) + F.softplus(-z)).flatten(1).sum(1)

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        a = self._anchor
        u = torch.rand((n, *self.event_shape), device=a.device, dtype=a.dtype)
        tiny = torch.finfo(u.dtype).tiny
        u = u.clamp(tiny, 1 - torch.finfo(u.dtype).eps)
        return temperature * (torch.log(u) - torch.log1p(-u))
