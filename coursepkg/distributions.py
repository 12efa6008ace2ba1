"""Base distributions of the flows, as modules so that ``.to(device)`` moves them.

Each has ``log_prob(z)`` returning one log-density per sample, shape ``(B,)`` (summed over the
event dimensions), and ``sample(n)`` returning ``(n, *event_shape)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["StandardNormal", "StandardLogistic"]

_LOG_2PI = math.log(2 * math.pi)


def _event_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"event shape must be a positive int or a tuple of them, got {shape!r}")
    shape = tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0 for s in shape):
        raise ValueError(f"event shape must be a positive int or a tuple of them, got {shape!r}")
    return tuple(int(s) for s in shape)


def _check_num_samples(n) -> int:
    """``n`` as an int; a ``TypeError`` or ``ValueError`` that says why for anything but an int >= 0."""
    if isinstance(n, bool) or isinstance(n, torch.Tensor) or not isinstance(n, numbers.Integral):
        hint = " (a tensor: pass int(n))" if isinstance(n, torch.Tensor) else ""
        raise TypeError(f"the number of samples n must be an int, got {type(n).__name__} {n!r}{hint}")
    if n < 0:
        raise ValueError(f"the number of samples n must be at least 0, got {n}")
    return int(n)


def _check_temperature(temperature) -> float:
    """``temperature`` as a float; an error that says why unless it is a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        hint = " (a tensor: pass float(temperature))" if isinstance(temperature, torch.Tensor) else ""
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}{hint}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"temperature must be a finite number > 0 (1 samples the model, < 1 concentrates the samples "
            f"near the mode), got {temperature}"
        )
    return float(temperature)


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
        n, temperature = _check_num_samples(n), _check_temperature(temperature)
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
        """``n`` samples; ``temperature`` scales them."""
        n, temperature = _check_num_samples(n), _check_temperature(temperature)
        a = self._anchor
        u = torch.rand((n, *self.event_shape), device=a.device, dtype=a.dtype)
        tiny = torch.finfo(u.dtype).tiny
        u = u.clamp(tiny, 1 - torch.finfo(u.dtype).eps)
        return temperature * (torch.log(u) - torch.log1p(-u))
