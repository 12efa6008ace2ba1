r"""Linear bijections ``z = W x + b`` and permutations, on vectors and (1x1 convolutions) on images.

A dense ``W`` costs :math:`O(D^3)` for its log-determinant and inverse; a triangular one costs
:math:`O(D)` for the log-determinant (the product of the diagonal) and :math:`O(D^2)` to invert.

Glow's invertible 1x1 convolution applies one ``C x C`` matrix to the channels of every pixel of
a ``(B, C, H, W)`` image: the Jacobian is block diagonal with ``H W`` copies of ``W``, so
``log_det = H W log|det W|`` (:class:`Conv1x1` with ``slogdet``, :class:`LUConv1x1` in
:math:`O(C)` from an LU factorisation).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core import Flow, _under_function_transform

__all__ = ["Conv1x1", "Linear", "LUConv1x1", "LULinear", "Permutation", "Reverse"]


def _check_vectors(layer: nn.Module, t: torch.Tensor, dim: int) -> None:
    if t.dim() != 2 or t.shape[1] != dim:
        raise ValueError(
            f"{type(layer).__name__}(dim={dim}) expects inputs of shape (B, {dim}), got {tuple(t.shape)}"
        )


def _square_weight(size: int, weight: torch.Tensor | None) -> torch.Tensor:
    """A fresh ``(size, size)`` float copy of ``weight``, or a random orthogonal matrix for ``None``."""
    if weight is None:
        weight = torch.linalg.qr(torch.randn(size, size))[0]
    weight = torch.as_tensor(weight)
    if not weight.is_floating_point():
        weight = weight.to(torch.get_default_dtype())
    if weight.shape != (size, size):
        raise ValueError(f"weight must have shape ({size}, {size}), got {tuple(weight.shape)}")
    return weight.clone()


class Linear(Flow):
    r"""``z = x W^T + b`` with a dense learnable matrix; ``log_det = log|det W|`` via ``slogdet``.

    Args:
        dim: the dimension ``D``.
        weight: optional initial ``(D, D)`` matrix (default: a random rotation, so ``log_det = 0``).
        bias: whether to learn ``b``.
    """

    def __init__(self, dim: int, weight: torch.Tensor | None = None, bias: bool = True):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(_square_weight(dim, weight))
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
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * self.log_diag.exp())
        # L U = U + L_strict U: one fused multiply-add, no identity matrix.
        return self.permutation @ torch.addmm(upper, torch.tril(self.lower, -1), upper)

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


# ----------------------------------------------------------------------------------------------
# Invertible 1x1 convolutions (Glow)
# ----------------------------------------------------------------------------------------------


def _check_images(layer: nn.Module, t: torch.Tensor, channels: int) -> None:
    if t.dim() != 4 or t.shape[1] != channels:
        raise ValueError(
            f"{type(layer).__name__}({channels}) expects images of shape (B, {channels}, H, W), "
            f"got {tuple(t.shape)}"
        )


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, :, h, w] = weight @ x[b, :, h, w] + bias``: a ``(C, C)`` matrix at every pixel.

    A batched matrix product on the ``(B, C, H W)`` view rather than ``F.conv2d``: for the few
    channels and pixels of a Glow step the convolution's set-up costs about twice as much,
    forward and backward.
    """
    b, c, h, w = x.shape
    out = torch.matmul(weight, x.reshape(b, c, h * w))  # (B, C, H W)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(b, weight.shape[0], h, w)


class _WeightCache:
    """Derived weights (an inverse matrix, a log-determinant) kept while the parameters do not change.

    A value is reused only in eval mode and when no graph is being recorded for the parameters
    (under ``torch.no_grad``, or with frozen parameters), and never under ``torch.func``
    transforms: in training the values are computed afresh in every call, so that gradients flow.
    An entry is keyed on the version counter, storage, dtype and device of every parameter and
    buffer of the layer: an optimizer step, ``load_state_dict``, an in-place edit under
    ``torch.no_grad`` or ``.to(...)`` each make it stale. Switching between ``train()`` and
    ``eval()`` empties the cache too, which covers the changes that bypass version counters
    (``p.data.copy_(...)``, fused optimizers) as long as the training happens in training mode.
    """

    def __init__(self):
        self.entries: dict[str, tuple[tuple, torch.Tensor]] = {}

    @staticmethod
    def usable(layer: nn.Module) -> bool:
        if layer.training:
            return False
        tensors = list(layer.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in tensors):
            return False
        # Inference tensors (made under torch.inference_mode) have no version counter.
        return not any(_under_function_transform(t) or t.is_inference() for t in (*tensors, *layer.buffers()))

    @staticmethod
    def key(layer: nn.Module) -> tuple:
        return tuple(
            (t._version, t.data_ptr(), t.dtype, t.device) for t in (*layer.parameters(), *layer.buffers())
        )

    def get(self, layer: nn.Module, name: str, compute):
        if not self.usable(layer):
            return compute()
        key = self.key(layer)
        hit = self.entries.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self.entries[name] = (key, value)
        return value

    def clear(self) -> None:
        self.entries.clear()


class Conv1x1(Flow):
    r"""Glow's invertible 1x1 convolution with a dense ``C x C`` matrix: ``z[:, :, h, w] = W x[:, :, h, w]``.

    The same matrix acts on the channels of every pixel, so the Jacobian is block diagonal with
    ``H W`` copies of ``W`` and ``log_det = H W log|det W|`` (one ``slogdet``, :math:`O(C^3)`,
    per call). The inverse convolves with ``W^{-1}``. Between the couplings of a Glow step it
    is a learned generalisation of a channel permutation. In eval mode, without gradients,
    ``W^{-1}`` and ``log|det W|`` are computed once and reused until the weight changes (see
    the cache rules of :class:`LUConv1x1`).

    Args:
        channels: ``C``.
        weight: optional initial ``(C, C)`` matrix (default: a random rotation, so the layer
            starts volume preserving, ``log_det = 0``, as in Glow).
    """

    def __init__(self, channels: int, weight: torch.Tensor | None = None):
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(_square_weight(channels, weight))
        self._cache = _WeightCache()

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

    def _log_abs_det(self) -> torch.Tensor:
        return self._cache.get(self, "log_abs_det", lambda: torch.linalg.slogdet(self.weight)[1])

    def forward(self, x):
        _check_images(self, x, self.channels)
        pixels = x.shape[2] * x.shape[3]
        return _conv1x1(x, self.weight), (pixels * self._log_abs_det()).expand(x.shape[0])

    def inverse(self, z):
        _check_images(self, z, self.channels)
        inverse_weight = self._cache.get(self, "inverse", lambda: torch.linalg.inv(self.weight))
        pixels = z.shape[2] * z.shape[3]
        return _conv1x1(z, inverse_weight), (-pixels * self._log_abs_det()).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class LUConv1x1(LULinear):
    r"""Glow's LU-decomposed invertible 1x1 convolution: ``W = P L (U + diag(sign * exp(log_diag)))``.

    ``P`` is a fixed permutation (a buffer), ``L`` unit lower triangular, ``U`` strictly upper
    triangular, and the diagonal of the upper factor is ``sign * exp(log_diag)`` with a fixed
    ``sign``: ``W`` is invertible whatever the parameters, and
    ``log_det = H W sum(log_diag)`` costs :math:`O(C)` instead of a ``slogdet``. The inverse
    convolves with ``W^{-1} = U^{-1} L^{-1} P^T``, computed by two triangular solves. It is the
    map of :class:`LULinear` (whose parameters it shares) applied at every pixel. The factors are
    initialised from a random rotation, as in Glow.

    **Cache.** In eval mode with no graph recorded for the parameters (``torch.no_grad``, as in
    ``sample`` and evaluation), ``W`` and ``W^{-1}`` are built once and reused until a parameter
    or buffer changes: the cache is keyed on their version counters (bumped by an optimizer
    step, ``load_state_dict`` or any in-place edit), storages, dtypes and devices, and emptied by
    ``train()``/``eval()``. In training mode both are built afresh in every call.

    Args:
        channels: ``C``.
        bias: add a learned bias per channel (Glow has none: ActNorm provides the shift).
    """

    def __init__(self, channels: int, bias: bool = False):
        super().__init__(channels, bias=bias)
        self.channels = channels
        self._cache = _WeightCache()

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

    def _inverse_weight(self) -> torch.Tensor:
        lower, upper = self._factors()
        # W^{-1} = U^{-1} L^{-1} P^T: solve L Y = P^T, then U W^{-1} = Y.
        y = torch.linalg.solve_triangular(lower, self.permutation.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, y, upper=True)

    def forward(self, x):
        _check_images(self, x, self.channels)
        weight = self._cache.get(self, "weight", self.weight)
        pixels = x.shape[2] * x.shape[3]
        return _conv1x1(x, weight, self.bias), (pixels * self.log_diag.sum()).expand(x.shape[0])

    def inverse(self, z):
        _check_images(self, z, self.channels)
        if self.bias is not None:
            z = z - self.bias.view(1, -1, 1, 1)
        inverse_weight = self._cache.get(self, "inverse", self._inverse_weight)
        pixels = z.shape[2] * z.shape[3]
        return _conv1x1(z, inverse_weight), (-pixels * self.log_diag.sum()).expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bias={self.bias is not None}"


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
