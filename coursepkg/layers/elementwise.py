r"""Element-wise bijections: each output coordinate depends on one input coordinate only.

Their Jacobian is diagonal, so :math:`\log|\det J| = \sum_i \log|f'(x_i)|`.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..core import Flow, _check_float_tensor, _check_pixel_scale
from ._utils import _check_count, sum_except_batch

__all__ = ["ElementwiseAffine", "HistogramCDF", "Logit", "Sigmoid", "PiecewiseLinear"]


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


class HistogramCDF(Flow):
    r"""Each pixel through the CDF of its own learned histogram: ``[0, 1] -> [0, 1]``, per coordinate.

    ``[0, 1]`` is cut into ``K = num_bins`` bins of width ``1/K``. Each coordinate ``i`` of a
    sample (each pixel of each channel) has its own bin probabilities ``p_{i1}, ..., p_{iK}``,
    and a value ``x`` in bin ``k`` (``k = floor(K x)``, counting from 0) goes to

    .. math:: z = \sum_{j < k} p_{ij} + p_{ik} (K x - k), \qquad
              \log\left|\frac{dz}{dx}\right| = \log(K p_{ik}):

    the cumulative distribution function of the histogram density ``K p_{ik}`` on bin ``k``. It
    is continuous, strictly increasing and linear within each bin, so a value drawn from that
    histogram comes out uniform on ``[0, 1]``. Alone, followed by a uniform base, the layer is the
    model of independent pixels with one histogram each (its bits/dim are the mean entropy of
    those histograms); put before :class:`Logit` at the front of an image flow, it hands the
    couplings pixels whose marginals are already about uniform, whatever their position (the
    leftmost and rightmost columns of a digit are almost always background, its centre rarely),
    and the couplings spend their capacity on how pixels depend on each other. Within a bin the
    map is linear, so the uniform noise of dequantization stays uniform.

    **Parameters.** ``p_i = m + (1 - K m) softmax(scale * logits_i)``: every bin keeps at least the
    probability ``m = min_probability`` (as the splines of nflows keep a minimal bin width), so
    the slope never falls below ``K m`` and the inverse, which divides by ``p_ik``, stays accurate
    (an empty bin would otherwise be pushed towards probability 0 by training, and its inverse
    would amplify rounding errors without bound). Adam moves every parameter by about its
    learning rate per step, whatever its gradient's size, so the ``scale`` (16 by default) lets
    the log-probabilities move 16 times as fast as a network weight: at the course's learning
    rates (1e-3 to 4e-3) the histograms otherwise take thousands of steps to settle (Glow scales
    the log-scales of its ActNorm and zero-initialised convolutions by 3 for the same reason).

    **Data-dependent initialisation**, with :class:`ActNorm`'s rules: the first ``forward`` in
    training mode sets the probabilities to the histograms of its batch, with one extra count in
    every bin (``p_ik`` proportional to ``count_ik + 1``, or ``m`` if that is smaller: no bin gets
    probability 0, so the map stays a bijection of ``[0, 1]``), and sets the ``initialized``
    buffer, which travels with ``state_dict``. Eval mode and ``inverse`` never initialise; an
    uninitialised layer (all probabilities ``1/K``) is the identity. :meth:`initialize` does it by
    hand, from any batch.

    The support is ``[0, 1]``: ``forward`` gives ``log_det = -inf`` to a sample with a value
    outside it (a finite placeholder as its output), and rejects integer dtypes, NaN, infinity
    and unscaled pixel levels as :class:`Logit` does. ``inverse`` maps ``[0, 1]`` back, with the
    same rule outside.

    Args:
        shape: the shape of one sample, e.g. ``(1, 8, 8)``; every coordinate gets a histogram.
        num_bins: ``K``.
        scale: the factor on the logits (see above).
        min_probability: ``m``, the least probability of a bin; below ``1 / K``.
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        num_bins: int = 16,
        scale: float = 16.0,
        min_probability: float = 1e-4,
    ):
        super().__init__()
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        num_bins = _check_count(num_bins, "num_bins")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        if (
            isinstance(min_probability, bool)
            or not isinstance(min_probability, (int, float))
            or not 0 <= min_probability < 1 / num_bins
        ):
            raise ValueError(f"min_probability must lie in [0, 1 / num_bins), got {min_probability!r}")
        self.shape = shape
        self.num_bins = num_bins
        self.scale = float(scale)
        self.min_probability = float(min_probability)
        self.logits = nn.Parameter(torch.zeros(*shape, num_bins))  # zeros: uniform bins, the identity
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # a Python copy of a True flag: no sync per step

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded flag may say either: read it again

    def _flat(self, t: torch.Tensor, what: str) -> torch.Tensor:
        if tuple(t.shape[1:]) != self.shape:
            raise ValueError(
                f"HistogramCDF(shape={self.shape}) expects a batch of shape (B, {', '.join(map(str, self.shape))}), "
                f"got {tuple(t.shape)} in {what}"
            )
        return t.reshape(len(t), math.prod(self.shape))  # (B, N), N coordinates per sample

    def probabilities(self) -> torch.Tensor:
        """The bin probabilities, ``(*shape, K)``; each row sums to 1."""
        m = self.min_probability
        return m + (1 - self.num_bins * m) * torch.softmax(self.scale * self.logits, dim=-1)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log p, p, left)``, each ``(N, K)``: log-probabilities, probabilities, CDF at each bin's left edge."""
        p = self.probabilities().reshape(-1, self.num_bins)
        return torch.log(p), p, torch.cumsum(p, dim=-1) - p

    def _offsets(self, t: torch.Tensor) -> torch.Tensor:
        """Where each coordinate's row starts in the flattened ``(N K,)`` tables, ``(N,)``."""
        return torch.arange(t.shape[1], device=t.device) * self.num_bins

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the probabilities to the histograms of the batch ``x`` (values in ``[0, 1]``), one count added per bin."""
        flat = self._flat(x, "initialize")  # binned in its own dtype, as forward bins it
        inside = (flat >= 0) & (flat <= 1)
        bins = (flat * self.num_bins).floor().clamp(0, self.num_bins - 1).long() + self._offsets(flat)
        counts = torch.bincount(bins[inside], minlength=flat.shape[1] * self.num_bins).view_as(self.logits)
        counts = counts.to(self.logits.dtype) + 1  # one extra count per bin
        target = counts / counts.sum(-1, keepdim=True)  # (*shape, K)
        m = self.min_probability
        softmax = ((target - m) / (1 - self.num_bins * m)).clamp_min(1e-12)  # what softmax must give
        self.logits.copy_(torch.log(softmax) / self.scale)
        self.initialized.fill_(True)
        self._known_initialized = True

    def forward(self, x):
        _check_float_tensor(x, "HistogramCDF")
        _check_pixel_scale(x, "HistogramCDF")
        flat = self._flat(x, "forward")
        if self.training and not self._known_initialized:
            if bool(self.initialized):
                self._known_initialized = True
            elif len(x) > 0:  # an empty batch has no histogram
                self.initialize(x)
        log_p, p, left = self._tables()
        inside = (flat >= 0) & (flat <= 1)
        position = torch.where(inside, flat, 0.5) * self.num_bins  # in bins, (B, N)
        bin_index = position.floor().clamp(0, self.num_bins - 1)
        index = bin_index.long() + self._offsets(flat)  # into the flattened tables, (B, N)
        p_k = p.reshape(-1)[index]
        z = (left.reshape(-1)[index] + p_k * (position - bin_index)).clamp(0, 1)
        log_det = torch.where(inside, log_p.reshape(-1)[index] + math.log(self.num_bins), -math.inf)
        return torch.where(inside, z, 0.5).view_as(x), log_det.sum(1)

    def inverse(self, z):
        _check_float_tensor(z, "HistogramCDF.inverse")
        flat = self._flat(z, "inverse")
        log_p, p, left = self._tables()
        inside = (flat >= 0) & (flat <= 1)
        z_in = torch.where(inside, flat, 0.5)
        # The bin of z: how many of its coordinate's inner left edges lie at or below it.
        bin_index = (z_in.unsqueeze(-1) >= left[:, 1:]).sum(-1)  # (B, N)
        index = bin_index + self._offsets(flat)
        x = (bin_index + (z_in - left.reshape(-1)[index]) / p.reshape(-1)[index]) / self.num_bins
        log_det = torch.where(inside, -log_p.reshape(-1)[index] - math.log(self.num_bins), -math.inf)
        return torch.where(inside, x.clamp(0, 1), 0.5).view_as(z), log_det.sum(1)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, num_bins={self.num_bins}, scale={self.scale}, min_probability={self.min_probability}"
