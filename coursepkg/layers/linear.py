r"""Linear bijections ``z = W x + b`` and permutations.

A dense ``W`` costs :math:`O(D^3)` for its log-determinant and inverse; a triangular one costs
:math:`O(D)` for the log-determinant (the product of the diagonal) and :math:`O(D^2)` to invert.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core import Flow

__all__ = ["Linear", "LULinear", "Permutation", "Reverse"]


def _check_vectors(layer: nn.Module, t: torch.Tensor, dim: int) -> None:
    if t.dim() != 2 or t.shape[1] != dim:
        raise ValueError(
            f"{type(layer).__name__}(dim={dim}) expects inputs of shape (B, {dim}), got {tuple(t.shape)}"
        )


class Linear(Flow):
    r"""``z = x W^T + b`` with a dense learnable matrix; ``log_det = log|det W|`` via ``slogdet``.

    Args:
        dim: the dimension ``D``.
        weight: optional initial ``(D, D)`` matrix (default: a random rotation, so ``log_det = 0``).
        bias: whether to learn ``b``.
    """

    def __init__(self, dim: int, weight: torch.Tensor | None = None, bias: bool = True):
        super().__init__()
        if weight is None:
            weight = torch.linalg.qr(torch.randn(dim, dim))[0]
        weight = torch.as_tensor(weight)
        if not weight.is_floating_point():
            weight = weight.to(torch.get_default_dtype())
        if weight.shape != (dim, dim):
            raise ValueError(f"weight must have shape ({dim}, {dim}), got {tuple(weight.shape)}")
        self.dim = dim
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def _log_det(self, batch: int) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1].expand(batch)

    def forward(self, x):
        _check_vectors(self, x, self.dim)
        return F.linear(x, self.weight, self.bias), self._log_det(x.shape[0])

    def inverse(self, z):
        _check_vectors(self, z, self.dim)
        if self.bias is not None:
            z = z - self.bias
        x = torch.linalg.solve(self.weight, z.T).T  # (B, D), no explicit inverse
        return x, -self._log_det(z.shape[0])


class LULinear(Flow):
    r"""``W = P L U`` with a fixed permutation ``P``, unit lower-triangular ``L`` and upper ``U``.

    The diagonal of ``U`` is ``exp(log_diag)``, so ``log|det W| = sum(log_diag)`` costs
    :math:`O(D)` and ``W`` is invertible by construction (Glow's LU-decomposed 1x1 convolution
    uses the same parametrization).
    """

    def __init__(self, dim: int, bias: bool = True):
        super().__init__()
        self.dim = dim
        q = torch.linalg.qr(torch.randn(dim, dim))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.register_buffer("sign", torch.sign(diag))
        self.log_diag = nn.Parameter(diag.abs().log())
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def _factors(self):
        eye = torch.eye(self.dim, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.tril(self.lower, -1) + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_diag.exp())
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The matrix ``W = P L U``, shape ``(D, D)``."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def forward(self, x):
        _check_vectors(self, x, self.dim)
        return F.linear(x, self.weight(), self.bias), self.log_diag.sum().expand(x.shape[0])

    def inverse(self, z):
        _check_vectors(self, z, self.dim)
        if self.bias is not None:
            z = z - self.bias
        lower, upper = self._factors()
        # W x = z  <=>  L U x = P^T z: two triangular solves, O(D^2) each.
        y = torch.linalg.solve_triangular(lower, self.permutation.T @ z.T, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, y, upper=True).T
        return x, -self.log_diag.sum().expand(z.shape[0])


class Permutation(Flow):
    """Reorders the coordinates of ``(B, D)`` vectors (or the channels of ``(B, C, H, W)`` images).

    Volume preserving: ``log_det = 0``. Coupling flows put one between couplings so that every
    coordinate is transformed.
    """

    def __init__(self, permutation: torch.Tensor | list[int]):
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ValueError(f"not a permutation of 0..{len(permutation) - 1}: {permutation.tolist()}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    @classmethod
    def random(cls, dim: int, generator: torch.Generator | None = None) -> Permutation:
        return cls(torch.randperm(dim, generator=generator))

    def _permute(self, t, index):
        if t.shape[1] != len(index):
            raise ValueError(f"expected {len(index)} features in dimension 1, got {tuple(t.shape)}")
        return t.index_select(1, index)

    def forward(self, x):
        return self._permute(x, self.permutation), x.new_zeros(x.shape[0])

    def inverse(self, z):
        return self._permute(z, self.inverse_permutation), z.new_zeros(z.shape[0])


class Reverse(Permutation):
    """Reverses the order of the features in dimension 1."""

    def __init__(self, dim: int):
        super().__init__(torch.arange(dim - 1, -1, -1))
