r"""Batch normalization as a flow layer (RealNVP, MAF): standardise, then a learnable affine map.

Per feature (channel for images),

.. math:: z = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\, e^{\gamma} + \beta, \qquad
          \log|\det J| = N_\text{pix} \sum_c \Bigl(\gamma_c - \tfrac12 \log(\sigma_c^2 + \epsilon)\Bigr),

with :math:`N_\text{pix} = H W` for images (1 for vectors). In training mode :math:`\mu,
\sigma^2` are the mean and (biased) variance of the current batch, and they update running
averages; in eval mode the running averages are used, so the map is a fixed affine bijection.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import Flow

__all__ = ["BatchNormFlow"]


class BatchNormFlow(Flow):
    r"""Batch normalization on ``(B, D)`` vectors or ``(B, C, H, W)`` images, with its log-determinant.

    Training mode: ``forward`` normalises with the batch's own statistics (gradients flow through
    them, as in ordinary batch norm) and updates ``running_mean`` and ``running_var`` with
    ``running = (1 - momentum) * running + momentum * batch``. Eval mode: the running averages.
    ``inverse`` always uses the running averages: the statistics of an unknown ``x`` cannot be
    computed from ``z``.

    In training mode each output depends on the whole batch, so the map is not a bijection of
    one sample and its per-sample Jacobian is not what ``log_det`` reports: check the layer in
    eval mode (as :func:`coursepkg.testing.check_flow` does). The log-likelihoods a model reports
    in training mode are those of the batch-dependent map; evaluate a trained model in eval mode.

    Args:
        num_features: ``D`` for vectors, ``C`` for images.
        momentum: weight of each new batch in the running averages.
        eps: added to the variance before the square root.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        self.momentum = momentum
        self.eps = eps
        self.log_gamma = nn.Parameter(torch.zeros(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _shape(self, t: torch.Tensor) -> tuple[int, ...]:
        n = self.beta.numel()
        if t.dim() not in (2, 4) or t.shape[1] != n:
            raise ValueError(f"BatchNormFlow({n}) expects (B, {n}) or (B, {n}, H, W), got {tuple(t.shape)}")
        return (1, -1) + (1,) * (t.dim() - 2)

    def _log_det(self, var: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        pixels = math.prod(t.shape[2:])
        per_feature = self.log_gamma - 0.5 * torch.log(var + self.eps)
        return (pixels * per_feature.sum()).expand(t.shape[0])

    def forward(self, x):
        shape = self._shape(x)
        # An empty batch has no statistics: it uses (and leaves) the running averages.
        if self.training and len(x) > 0:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        z = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        z = z * self.log_gamma.view(shape).exp() + self.beta.view(shape)
        return z, self._log_det(var, x)

    def inverse(self, z):
        shape = self._shape(z)
        mean, var = self.running_mean, self.running_var
        x = (z - self.beta.view(shape)) * torch.exp(-self.log_gamma.view(shape))
        x = x * torch.sqrt(var.view(shape) + self.eps) + mean.view(shape)
        return x, -self._log_det(var, z)

    def extra_repr(self) -> str:
        return f"{self.beta.numel()}, momentum={self.momentum}, eps={self.eps}"
