r"""Masked autoregressive flows (MAF); inverted, inverse autoregressive flows (IAF).

Each dimension is transformed by a one-dimensional bijection, the *transformer*, whose parameters
depend on the dimensions before it in an order:

.. math:: z_i = \tau\bigl(x_i;\ \theta_i(x_{<i})\bigr), \qquad
          \log\left|\det \frac{\partial z}{\partial x}\right| = \sum_{i=1}^{D}
          \log\left|\frac{\partial \tau}{\partial x_i}\bigl(x_i;\ \theta_i(x_{<i})\bigr)\right|.

The Jacobian :math:`\partial z / \partial x` is triangular in that order (:math:`z_i` does not
depend on :math:`x_{>i}`), so its log-determinant is the sum of the logs of its diagonal, one
term per dimension, whatever the network computing :math:`\theta`. A :class:`~coursepkg.nets.MADE`
computes all :math:`\theta_i(x_{<i})` in one pass, so the **density direction** (``forward``,
data to latent) costs one network pass. The inverse, :math:`x_i = \tau^{-1}(z_i;\ \theta_i(x_{<i}))`,
needs :math:`x_{<i}` before :math:`x_i`: **sampling** costs :math:`D` passes, one per dimension.

An IAF is the same layer used the other way round, ``coursepkg.Inverse(MaskedAutoregressive(...))``:
sampling in one pass, densities of arbitrary points in :math:`D` passes.

The transformer follows the interface of :class:`~coursepkg.layers.transformers.Transformer`:
``num_params`` (``K``, parameters per dimension), ``forward(x, params) -> (z, log_det)`` and
``inverse(z, params) -> (x, log_det)`` with ``x``, ``z`` ``(B, D)``, ``params`` ``(B, K, D)`` (``K``
contiguous blocks of ``D``, as a :class:`~coursepkg.nets.MADE` lays them out) and the per-element
log-derivatives ``(B, D)``, which the layer sums. :class:`AffineTransformer` is the MAF paper's;
:class:`~coursepkg.layers.transformers.RationalQuadraticSpline` makes a neural spline flow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core import Flow
from ..nets import MADE
from .coupling import soft_clamp
from .transformers import Transformer

__all__ = ["AffineTransformer", "MaskedAutoregressive"]


class AffineTransformer(Transformer):
    r"""``z = x * exp(s) + t`` per element, with ``K = 2`` parameters: ``params[:, 0]`` is the shift
    ``t``, ``params[:, 1]`` the raw log-scale.

    The log-scale is soft-clamped like the coupling layers' (:func:`~coursepkg.layers.soft_clamp`),
    :math:`s = b \tanh(s_\mathrm{raw} / b)` with ``b = scale_bound``, so that no layer stretches or
    shrinks by more than :math:`e^{b}`; ``log_det = s`` per element (``-s`` for the inverse,
    :math:`x = (z - t)\, e^{-s}`). All-zero parameters give the identity.

    Args:
        scale_bound: the bound :math:`b`; ``None`` for an unbounded ``exp`` scale.
    """

    num_params = 2

    def __init__(self, scale_bound: float | None = 3.0):
        super().__init__()
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.scale_bound = scale_bound

    def forward(self, x, params):
        self._check(x, params, "forward")
        shift, log_scale = params.unbind(1)  # (B, D) each, contiguous along D
        log_scale = soft_clamp(log_scale, self.scale_bound)
        return x * torch.exp(log_scale) + shift, log_scale

    def inverse(self, z, params):
        self._check(z, params, "inverse")
        shift, log_scale = params.unbind(1)
        log_scale = soft_clamp(log_scale, self.scale_bound)
        return (z - shift) * torch.exp(-log_scale), -log_scale

    def extra_repr(self) -> str:
        return f"scale_bound={self.scale_bound}"


def _make_transformer(transformer, scale_bound: float | None) -> nn.Module:
    if isinstance(transformer, str):
        if transformer == "affine":
            return AffineTransformer(scale_bound)
        raise ValueError(
            "transformer must be 'affine' or a Transformer module such as RationalQuadraticSpline(), "
            f"got {transformer!r}"
        )
    num_params = getattr(transformer, "num_params", None)
    if (
        not isinstance(transformer, nn.Module)
        or not callable(getattr(transformer, "inverse", None))
        or isinstance(num_params, bool)
        or not isinstance(num_params, int)
        or num_params < 1
    ):
        raise TypeError(
            "transformer must be 'affine' or a module with an int num_params >= 1, "
            f"forward(x, params) and inverse(z, params); got {type(transformer).__name__}"
        )
    return transformer


class MaskedAutoregressive(Flow):
    r"""A masked autoregressive flow layer (MAF, Papamakarios et al., 2017) on ``(B, D)`` vectors.

    ``forward`` (data to latent, the density direction) is one pass of a
    :class:`~coursepkg.nets.MADE`: ``params = made(x)``, ``(B, K, D)``, then
    ``z, log_det = transformer(x, params)`` element-wise, the log-det summed over ``D`` (the
    Jacobian is triangular in ``order``; see the module's docstring).

    ``inverse`` (sampling) runs ``D`` passes, one per dimension in ``order``: after pass ``k``
    the dimension ``order[k]`` is final, because its parameters depend only on the dimensions
    before it, already final. Only the newly determined dimension is kept from each pass; the
    others stay at 0 until their turn, so that values computed from dimensions not yet final
    never feed a later pass (where they could grow from pass to pass). ``log_det`` comes from
    the last pass, whose parameters are all final.

    For an IAF, use ``coursepkg.Inverse(MaskedAutoregressive(...))``: one pass to sample, ``D``
    to evaluate a density.

    Args:
        features: ``D``.
        hidden: hidden sizes of the MADE, an int (two layers) or a tuple; use at least ``D - 1``
            units per layer, or some dependencies on earlier dimensions are lost.
        transformer: ``"affine"`` (:class:`AffineTransformer` with ``scale_bound``) or a
            :class:`~coursepkg.layers.transformers.Transformer` module, such as
            ``RationalQuadraticSpline(num_bins, bound)`` (choose ``bound`` to cover the data: the
            spline is the identity outside ``[-bound, bound]``).
        order: the order of the dimensions, ``"natural"``, ``"reversed"``, ``"random"`` or a
            permutation of ``range(D)`` (:func:`~coursepkg.nets.autoregressive_order`). Stack layers
            with different orders (or put a :class:`~coursepkg.layers.Permutation` between them) so
            that every dimension gets to condition the others.
        scale_bound: the affine transformer's bound of the log-scale (ignored for the others).
        generator: draws a ``"random"`` order.
        activation: the MADE's activation.

    The MADE's last layer starts at zero: with the affine transformer the layer starts as the
    identity.
    """

    def __init__(
        self,
        features: int,
        hidden: int | Sequence[int] = (64, 64),
        transformer: str | nn.Module = "affine",
        order: str | Sequence[int] | torch.Tensor = "natural",
        *,
        scale_bound: float | None = 3.0,
        generator: torch.Generator | None = None,
        activation: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.transformer = _make_transformer(transformer, scale_bound)
        self.made = MADE(features, hidden, self.transformer.num_params, order, generator, activation)
        self.features = features

    def _check(self, t: torch.Tensor) -> None:
        if t.dim() != 2 or t.shape[1] != self.features:
            raise ValueError(
                f"{type(self).__name__}(features={self.features}) expects inputs of shape "
                f"(B, {self.features}), got {tuple(t.shape)}"
            )

    def forward(self, x):
        self._check(x)
        params = self.made(x)  # (B, K, D)
        z, log_det = self.transformer(x, params)  # (B, D), (B, D)
        return z, log_det.sum(1)

    def inverse(self, z):
        self._check(z)
        degrees = self.made.degrees  # (D,): the position of each dimension in the order
        x = torch.zeros_like(z)
        for k in range(self.features):
            params = self.made(x)  # (B, K, D): final for the dimensions up to order[k]
            x_k, log_det = self.transformer.inverse(z, params)  # (B, D), (B, D)
            x = torch.where(degrees == k, x_k, x)
        return x, log_det.sum(1)

    @property
    def order(self) -> torch.Tensor:
        """The order of the dimensions, ``(D,)``: ``order[0]`` is generated first."""
        return self.made.order

    def extra_repr(self) -> str:
        return f"features={self.features}"
