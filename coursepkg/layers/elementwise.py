r"""Element-wise bijections: each output coordinate depends on one input coordinate only.

Their Jacobian is diagonal, so :math:`\log|\det J| = \sum_i \log|f'(x_i)|`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core import Flow, _check_float_tensor, _check_pixel_scale
from ._utils import sum_except_batch

__all__ = ["ElementwiseAffine", "Logit", "Sigmoid", "PiecewiseLinear"]


class ElementwiseAffine(Flow):
    r"""``z = x * exp(log_scale) + shift`` with one learnable scale and shift per coordinate.

    Args:
        shape: the shape of one sample, e.g. ``2`` or ``(1, 8, 8)``.
        shift: whether to learn a shift (NICE's scaling layer has none).

    ``log_det = sum(log_scale)``, the same for every sample.
    """

    def __init__(self, shape: int | tuple[int, ...], shift: bool = True):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.shift = nn.Parameter(torch.zeros(shape)) if shift else None

    def forward(self, x):
        z = x * self.log_scale.exp()
        if self.shift is not None:
            z = z + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z):
        if self.shift is not None:
            z = z - self.shift
        return z * torch.exp(-self.log_scale), -self.log_scale.sum().expand(z.shape[0])


class Logit(Flow):
    r"""Maps pixels in ``[0, 1]`` to the real line: ``z = logit(alpha + (1 - 2 alpha) x)``.

    The small ``alpha`` (RealNVP uses 0.05) keeps the logit away from the infinite values at 0
    and 1. Image flows put this layer first so that their couplings work on unbounded values;
    its log-determinant is part of the model's density, so bits per dimension stay exact.

    Its domain, the support of any model that starts with it, is the open interval where
    ``0 < alpha + (1 - 2 alpha) x < 1``, which contains ``[0, 1]``: ``forward`` gives
    ``log_det = -inf`` to a sample with a value outside it (its density is 0; its latent is a
    finite placeholder, so later layers stay finite). It raises a ``TypeError`` for an integer
    dtype and a ``ValueError`` for NaN, infinity, or a batch that looks like unscaled pixel
    levels: non-negative integers, some above 1 (the digits' 0..16, bytes 0..255).
    """

    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha}")
        self.alpha = alpha

    def forward(self, x):
        _check_float_tensor(x, "Logit")
        _check_pixel_scale(x, "Logit")
        y = self.alpha + (1 - 2 * self.alpha) * x
        # torch.where, not a Python branch: no device sync, and the gradient stays finite.
        inside = (y > 0) & (y < 1)
        y = torch.where(inside, y, 0.5)
        log_y, log_one_minus_y = torch.log(y), torch.log1p(-y)
        z = log_y - log_one_minus_y
        # d/dx logit(y) = (1 - 2 alpha) / (y (1 - y))
        log_det = torch.where(inside, math.log(1 - 2 * self.alpha) - log_y - log_one_minus_y, -math.inf)
        return z, sum_except_batch(log_det)

    def inverse(self, z):
        y = torch.sigmoid(z)
        x = (y - self.alpha) / (1 - 2 * self.alpha)
        # log sigmoid'(z) = -softplus(-z) - softplus(z)
        log_det = -F.softplus(-z) - F.softplus(z) - math.log(1 - 2 * self.alpha)
        return x, sum_except_batch(log_det)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Sigmoid(Flow):
    """``z = sigmoid(x)``, from the real line to ``(0, 1)``; its inverse is the logit."""

    def forward(self, x):
        log_det = -F.softplus(-x) - F.softplus(x)
        return torch.sigmoid(x), sum_except_batch(log_det)

    def inverse(self, z):
        eps = torch.finfo(z.dtype).eps
        z = z.clamp(eps, 1 - eps)
        x = torch.log(z) - torch.log1p(-z)
        return x, sum_except_batch(-torch.log(z) - torch.log1p(-z))


class PiecewiseLinear(Flow):
    r"""A learnable monotone piecewise-linear map per coordinate, identity outside ``[-bound, bound]``.

    The interval ``[-bound, bound]`` is cut into ``num_bins`` bins of equal width; bin ``k`` is
    mapped linearly onto an output bin whose width is ``2 * bound * softmax(heights)[k]``. The
    map is continuous, strictly increasing, maps the interval onto itself, and its derivative in
    bin ``k`` is ``num_bins * softmax(heights)[k]``.

    Args:
        dim: number of coordinates (each has its own map).
        num_bins: number of linear pieces.
        bound: half-width of the interval where the map is not the identity.
    """

    def __init__(self, dim: int = 1, num_bins: int = 16, bound: float = 4.0):
        super().__init__()
        if num_bins < 1 or bound <= 0:
            raise ValueError("num_bins must be >= 1 and bound > 0")
        self.num_bins = num_bins
        self.bound = bound
        self.heights = nn.Parameter(torch.zeros(dim, num_bins))  # (D, K); zeros = identity

    def _knots(self, dtype, device):
        widths = torch.softmax(self.heights.to(dtype), dim=-1)  # (D, K), each row sums to 1
        cum = F.pad(torch.cumsum(widths, dim=-1), (1, 0))  # (D, K + 1) from 0 to 1
        cum = (2 * cum - 1) * self.bound
        return widths, cum.to(device)

    def forward(self, x):
        self._check(x)
        widths, y_knots = self._knots(x.dtype, x.device)
        K, B = self.num_bins, self.bound
        u = (x + B) / (2 * B) * K  # position measured in bins, (N, D)
        inside = (u >= 0) & (u < K)
        k = u.floor().clamp(0, K - 1).long()
        frac = u - k
        slope = K * widths  # (D, K)
        slope_k = torch.gather(slope.expand(x.shape[0], -1, -1), 2, k.unsqueeze(-1)).squeeze(-1)
        left = torch.gather(y_knots.expand(x.shape[0], -1, -1), 2, k.unsqueeze(-1)).squeeze(-1)
        z_inside = left + frac * (2 * B / K) * slope_k
        z = torch.where(inside, z_inside, x)
        log_det = torch.where(inside, torch.log(slope_k), torch.zeros_like(x))
        return z, log_det.sum(1)

    def inverse(self, z):
        self._check(z)
        widths, y_knots = self._knots(z.dtype, z.device)
        K, B = self.num_bins, self.bound
        inside = (z >= -B) & (z < B)
        knots = y_knots.expand(z.shape[0], -1, -1)  # (N, D, K + 1)
        # The bin of z is the number of inner knots at or below it (K is small).
        k = (z.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1).clamp(0, K - 1)
        slope = K * widths
        slope_k = torch.gather(slope.expand(z.shape[0], -1, -1), 2, k.unsqueeze(-1)).squeeze(-1)
        left = torch.gather(knots, 2, k.unsqueeze(-1)).squeeze(-1)
        x_inside = -B + (k + (z - left) / slope_k / (2 * B / K)) * (2 * B / K)
        x = torch.where(inside, x_inside, z)
        log_det = torch.where(inside, -torch.log(slope_k), torch.zeros_like(z))
        return x, log_det.sum(1)

    def _check(self, t):
        if t.dim() != 2 or t.shape[1] != self.heights.shape[0]:
            raise ValueError(
                f"PiecewiseLinear(dim={self.heights.shape[0]}) expects inputs of shape "
                f"(B, {self.heights.shape[0]}), got {tuple(t.shape)}"
            )

    def extra_repr(self):
        return f"dim={self.heights.shape[0]}, num_bins={self.num_bins}, bound={self.bound}"
