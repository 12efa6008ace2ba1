"""Activation normalization (Glow): a per-channel affine map initialised from the first batch."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import Flow

__all__ = ["ActNorm"]


class ActNorm(Flow):
    r"""``z = (x - loc) * exp(log_scale)`` per channel, on ``(B, C)`` or ``(B, C, H, W)`` inputs.

    On the first ``forward`` in training mode, ``loc`` and ``log_scale`` are set so that the
    batch has zero mean and unit variance per channel (data-dependent initialisation). Whether
    that happened is kept in the ``initialized`` buffer, so a model restored with
    ``load_state_dict`` is not initialised a second time.

    ``log_det = (H W) * sum(log_scale)`` (``H W = 1`` for vectors).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

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

    def forward(self, x):
        shape = self._shape(x)
        # An empty batch has no statistics to initialise from (they would be NaN).
        if self.training and not self.initialized and len(x) > 0:
            self.initialize(x)
        z = (x - self.loc.view(shape)) * self.log_scale.view(shape).exp()
        pixels = math.prod(x.shape[2:])
        return z, (pixels * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z):
        shape = self._shape(z)
        x = z * torch.exp(-self.log_scale.view(shape)) + self.loc.view(shape)
        pixels = math.prod(z.shape[2:])
        return x, (-pixels * self.log_scale.sum()).expand(z.shape[0])
