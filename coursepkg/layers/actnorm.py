"""Activation normalization (Glow): a per-channel affine map initialised from the first batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import Flow

__all__ = ["ActNorm"]


class ActNorm(Flow):
    r"""``z = (x - loc) * exp(log_scale)`` per channel, on ``(B, C)`` or ``(B, C, H, W)`` inputs.

    ``log_det = (H W) * sum(log_scale)`` (``H W = 1`` for vectors): the same scale applies at
    every pixel.

    **Data-dependent initialisation.** The first ``forward`` in training mode sets ``loc`` and
    ``log_scale`` from its batch so that the batch comes out with zero mean and unit variance per
    channel (statistics over the batch and the pixels), and then sets the ``initialized`` buffer.
    Being a buffer, the flag travels with ``state_dict``: a model restored from a checkpoint is not
    initialised a second time. The rules:

    - only ``forward`` in training mode initialises, and only once, on a non-empty batch (an empty
      one has no statistics);
    - in eval mode, and in ``inverse`` (sampling), the layer never initialises: an uninitialised
      layer applies its current parameters (the identity for a new layer) and stays
      uninitialised. So evaluating or sampling from a fresh model changes nothing, gives the same
      result whichever batch comes first, and the first training batch still initialises it;
    - :meth:`initialize` does it by hand, from any batch, in any mode.

    The flag is read from the buffer once and then remembered in Python (``load_state_dict``
    makes the layer read it again), so a training step costs no device synchronisation.

    Args:
        num_channels: ``C``.
        eps: added to the standard deviation, so a constant channel gets a large finite scale.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False  # a Python copy of a True flag: no sync per step

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # the loaded flag may say either: read it again

    def _shape(self, t):
        if t.dim() not in (2, 4) or t.shape[1] != self.loc.numel():
            raise ValueError(
                f"ActNorm({self.loc.numel()}) expects (B, {self.loc.numel()}) or "
                f"(B, {self.loc.numel()}, H, W), got {tuple(t.shape)}"
            )
        return (1, -1) + (1,) * (t.dim() - 2)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``loc`` and ``log_scale`` from a batch so that its output is standardised."""
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        std = x.std(dims, unbiased=False)
        self.loc.copy_(mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)
        self._known_initialized = True

    def forward(self, x):
        shape = self._shape(x)
        if self.training and not self._known_initialized:
            if bool(self.initialized):
                self._known_initialized = True
            elif len(x) > 0:  # an empty batch has no statistics (they would be NaN)
                self.initialize(x)
        z = (x - self.loc.view(shape)) * self.log_scale.view(shape).exp()
        pixels = math.prod(x.shape[2:])
        return z, (pixels * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z):
        shape = self._shape(z)
        x = z * torch.exp(-self.log_scale.view(shape)) + self.loc.view(shape)
        pixels = math.prod(z.shape[2:])
        return x, (-pixels * self.log_scale.sum()).expand(z.shape[0])
