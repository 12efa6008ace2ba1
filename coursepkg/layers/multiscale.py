r"""The multi-scale architecture of RealNVP: transform, squeeze, factor out half, recurse on the rest.

One scale maps an image ``x`` of shape ``(C, H, W)`` as follows:

1. ``steps`` (e.g. couplings with checkerboard masks, a :class:`~coursepkg.layers.Squeeze`, then
   couplings with channel masks) turn it into ``y`` of shape ``(4C, H/2, W/2)``;
2. ``y`` is split along the channels into ``y_keep`` (the first ``2C``) and ``y_out`` (the other
   ``2C``); ``y_out`` is *factored out*: it is final, it goes straight to the latent;
3. ``inner`` (the next scale, itself a :class:`MultiScale`, or the last couplings) transforms
   ``y_keep`` only, at half the resolution and so at a quarter of the cost per channel.

Half of the dimensions leave at every scale, so the deep part of the flow works on few of them,
and the factored-out ones are Gaussianised by the early, local layers. The latent is the
concatenation ``[inner(y_keep), y_out]`` *unsqueezed* back to ``(C, H, W)``:

.. math:: z = \mathrm{unsqueeze}\bigl([\,\mathrm{inner}(y_{keep}),\ y_{out}\,]\bigr),
          \qquad \log|\det J| = \log|\det J_{steps}| + \log|\det J_{inner}|.

So ``forward`` returns one tensor of the input's shape, the base stays
``StandardNormal((C, H, W))`` and :meth:`~coursepkg.NormalizingFlow.bits_per_dim` needs nothing
special. In the latent image, the factored-out values sit in the second half of each block's
channels (with the :mod:`squeeze order <coursepkg.layers.reshape>`, the bottom row of each
``2 x 2`` block for a single-channel image).

**Glow's learned prior of the factored-out half.** RealNVP gives ``y_out`` a standard normal
prior. Glow instead predicts a mean and a log-standard deviation for it from ``y_keep``,
:math:`p(y_{out} \mid y_{keep}) = \mathcal N(\mu(y_{keep}), \sigma(y_{keep})^2)`. A
:class:`SplitPrior` as the last layer of ``steps`` writes this prior as a change of variables,

.. math:: \varepsilon = (y_{out} - \mu(y_{keep}))\, e^{-\log\sigma(y_{keep})}, \qquad
          \log|\det J| = -\textstyle\sum \log\sigma(y_{keep}),

an affine coupling in which ``y_keep`` conditions ``y_out``. With a standard-normal base,
:math:`\log \mathcal N(\varepsilon; 0, I) + \log|\det J| = \log \mathcal N(y_{out};
\mu, \sigma^2)` exactly: the learned prior's log-density is part of ``log_prob``, while the
model stays a :class:`~coursepkg.NormalizingFlow` with a fixed ``StandardNormal`` base, a latent
of the data's shape, and every tool of the course (bits per dimension, sampling, brute-force
checks) working unchanged. Sampling at a temperature ``T`` draws :math:`\varepsilon \sim
\mathcal N(0, T^2 I)`, so :math:`y_{out} \sim \mathcal N(\mu, T^2 \sigma^2)`: Glow's
reduced-temperature sampling, exact for every level.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import Flow
from ..nets import conv3x3_pixels
from ._utils import sum_except_batch
from .coupling import soft_clamp
from .reshape import squeeze, unsqueeze

__all__ = ["MultiScale", "SplitPrior"]


class MultiScale(Flow):
    """One scale of a multi-scale flow on ``(B, C, H, W)`` images; nest them for several scales.

    Args:
        steps: a flow from ``(B, C, H, W)`` to ``(B, C f^2, H / f, W / f)``: it must contain a
            squeeze by ``factor``.
        inner: the flow applied to the kept channels, ``(B, keep, H / f, W / f)`` to the same
            shape (the next scale); ``None`` factors out and transforms nothing more.
        factor: the squeeze factor inside ``steps``, used to unsqueeze the latent.
        keep: how many channels of ``y`` go on to ``inner``; default half of them.
    """

    def __init__(self, steps: Flow, inner: Flow | None = None, factor: int = 2, keep: int | None = None):
        super().__init__()
        self.steps = steps
        self.inner = inner
        self.factor = int(factor)
        self.keep = keep

    def _split(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = y.shape[1] // 2 if self.keep is None else self.keep
        return y[:, :keep], y[:, keep:]

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"MultiScale expects images (B, C, H, W), got {tuple(x.shape)}")
        y, log_det = self.steps(x)
        f = self.factor
        b, c, h, w = x.shape
        if y.shape != (b, c * f * f, h // f, w // f):
            raise ValueError(
                f"MultiScale: steps turned {tuple(x.shape)} into {tuple(y.shape)}, expected "
                f"{(b, c * f * f, h // f, w // f)}; put a Squeeze({f}) in the steps"
            )
        if self.inner is not None:
            y_keep, y_out = self._split(y)
            y_keep, inner_log_det = self.inner(y_keep)
            y = torch.cat([y_keep, y_out], dim=1)
            log_det = log_det + inner_log_det
        return unsqueeze(y, f), log_det

    def inverse(self, z):
        if z.dim() != 4:
            raise ValueError(f"MultiScale expects images (B, C, H, W), got {tuple(z.shape)}")
        y = squeeze(z, self.factor)
        log_det = z.new_zeros(z.shape[0])
        if self.inner is not None:
            y_keep, y_out = self._split(y)
            y_keep, log_det = self.inner.inverse(y_keep)
            y = torch.cat([y_keep, y_out], dim=1)
        x, steps_log_det = self.steps.inverse(y)
        return x, log_det + steps_log_det

    def extra_repr(self) -> str:
        return f"factor={self.factor}, keep={'half' if self.keep is None else self.keep}"


class SplitPrior(Flow):
    r"""Glow's learned prior of the factored-out channels, as a flow layer (see the module's text).

    On ``(B, C, H, W)``, the first ``keep`` channels ``y_keep`` pass unchanged and a conditioner
    (a zero-initialised 3x3 convolution, as Glow's) computes from them the mean ``mu`` and the raw
    log-standard deviation of the other ``C - keep`` channels, ``y_out``, as two contiguous blocks.
    ``log_std = soft_clamp(raw, scale_bound)``, and

    - ``forward``: ``eps = (y_out - mu) * exp(-log_std)``, ``log_det = -sum(log_std)``;
    - ``inverse``: ``y_out = mu + exp(log_std) * eps``.

    Put it last in the ``steps`` of a :class:`MultiScale` with the same ``keep``: ``y_keep`` is
    then what the next scale receives, and ``eps`` the factored-out latent, standard normal
    under the model. At initialisation ``mu = 0`` and ``log_std = 0``: the layer is the identity,
    and the model starts with RealNVP's standard-normal prior.

    Args:
        channels: ``C``.
        keep: the channels that condition the others (default ``C // 2``, :class:`MultiScale`'s).
        scale_bound: bound of ``log_std`` (:func:`~coursepkg.layers.soft_clamp`); ``None`` for
            none.
        conditioner: a module ``(B, keep, H, W) -> (B, 2 (C - keep), H, W)`` (means, then raw
            log-standard deviations) to use instead of the convolution; start it at zero.
    """

    def __init__(
        self,
        channels: int,
        keep: int | None = None,
        scale_bound: float | None = 3.0,
        conditioner: nn.Module | None = None,
    ):
        super().__init__()
        keep = channels // 2 if keep is None else int(keep)
        if not 0 < keep < channels:
            raise ValueError(f"keep must be between 1 and channels - 1 = {channels - 1}, got {keep}")
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.channels = channels
        self.keep = keep
        self.scale_bound = scale_bound
        self._default_net = conditioner is None  # computed by conv3x3_pixels, the same map
        if conditioner is None:
            conditioner = nn.Conv2d(keep, 2 * (channels - keep), 3, padding=1)
            nn.init.zeros_(conditioner.weight)
            nn.init.zeros_(conditioner.bias)
        self.net = conditioner

    def prior(self, y_keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_std)`` of the factored-out channels given the kept ones, each ``(B, C - keep, H, W)``."""
        if self._default_net and type(self.net) is nn.Conv2d:  # self.net(y_keep), computed faster
            b, c, h, w = y_keep.shape
            pixels = y_keep.permute(0, 2, 3, 1).reshape(b, h * w, c)
            out = conv3x3_pixels(pixels, self.net.weight, self.net.bias, h, w).transpose(1, 2)
            out = out.reshape(b, self.net.out_channels, h, w)
        else:
            out = self.net(y_keep)
        mu, raw = out.chunk(2, dim=1)
        return mu, soft_clamp(raw, self.scale_bound)

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if t.dim() != 4 or t.shape[1] != self.channels:
            raise ValueError(
                f"SplitPrior({self.channels}) expects images of shape (B, {self.channels}, H, W), "
                f"got {tuple(t.shape)}"
            )
        return t[:, : self.keep], t[:, self.keep :]

    def forward(self, y):
        y_keep, y_out = self._split(y)
        mu, log_std = self.prior(y_keep)
        eps = (y_out - mu) * torch.exp(-log_std)
        return torch.cat([y_keep, eps], dim=1), -sum_except_batch(log_std)

    def inverse(self, z):
        y_keep, eps = self._split(z)
        mu, log_std = self.prior(y_keep)
        y_out = mu + torch.exp(log_std) * eps
        return torch.cat([y_keep, y_out], dim=1), sum_except_batch(log_std)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, keep={self.keep}, scale_bound={self.scale_bound}"
