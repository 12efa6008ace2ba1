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
"""

from __future__ import annotations

import torch

from ..core import Flow
from .reshape import squeeze, unsqueeze

__all__ = ["MultiScale"]


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
