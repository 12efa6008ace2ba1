r"""Planar flow (Rezende & Mohamed, 2015): ``f(x) = x + u tanh(w^T x + b)``.

Its Jacobian ``I + h'(w^T x + b) u w^T`` is the identity plus a rank-one matrix, so the matrix
determinant lemma gives ``det = 1 + h'(w^T x + b) u^T w`` in :math:`O(D)`. The map is invertible
when ``u^T w >= -1``; ``u`` is reparametrized to guarantee it. There is no closed-form inverse:
``inverse`` solves the one-dimensional equation along ``w`` by bisection.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core import Flow

__all__ = ["Planar"]


class Planar(Flow):
    """A planar flow layer on ``(B, D)`` vectors.

    Args:
        dim: the dimension ``D``.
        inverse_iterations: bisection steps used by ``inverse`` (60 reach float64 precision).
    """

    def __init__(self, dim: int, inverse_iterations: int = 60):
        super().__init__()
        self.dim = dim
        self.inverse_iterations = inverse_iterations
        self.margin = 1e-4
        self.u = nn.Parameter(torch.randn(dim) * 0.1)
        self.w = nn.Parameter(torch.randn(dim) * 0.1)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """``u`` moved along ``w`` so that ``u_hat . w = -1 + margin + softplus(u . w) > -1``.

        The small margin keeps ``1 + h' u_hat . w`` away from zero in float32, where
        ``softplus`` of a very negative number rounds to nothing.
        """
        wu = self.w @ self.u
        target = -1 + self.margin + F.softplus(wu)
        return self.u + (target - wu) * self.w / (self.w @ self.w)

    def forward(self, x):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"Planar(dim={self.dim}) expects (B, {self.dim}), got {tuple(x.shape)}")
        u = self.u_hat()
        a = x @ self.w + self.b  # (B,)
        h = torch.tanh(a)
        z = x + h.unsqueeze(1) * u
        # matrix determinant lemma: det(I + h' u w^T) = 1 + h' w^T u
        log_det = torch.log1p((1 - h.square()) * (self.w @ u))
        return z, log_det

    def inverse(self, z):
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"Planar(dim={self.dim}) expects (B, {self.dim}), got {tuple(z.shape)}")
        u = self.u_hat()
        wu = self.w @ u
        # With a = w^T x + b:  w^T z + b = a + (w^T u) tanh(a), increasing in a because w^T u > -1.
        target = z @ self.w + self.b  # (B,)
        # |tanh| <= 1 brackets the root: a lies within |w^T u| of the target.
        with torch.no_grad():
            low = target - wu.abs() - 1
            high = target + wu.abs() + 1
            for _ in range(self.inverse_iterations):
                mid = (low + high) / 2
                too_big = mid + wu * torch.tanh(mid) > target
                high = torch.where(too_big, mid, high)
                low = torch.where(too_big, low, mid)
        a = ((low + high) / 2).detach()
        # One Newton step from the root changes nothing numerically but makes ``a`` depend on
        # z and the parameters with the right derivative (implicit function theorem).
        residual = a + wu * torch.tanh(a) - target
        a = a - residual / (1 + wu * (1 - torch.tanh(a).square()))
        x = z - torch.tanh(a).unsqueeze(1) * u
        _, log_det = self.forward(x)
        return x, -log_det
