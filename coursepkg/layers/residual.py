r"""Invertible residual blocks (Behrmann et al., 2019, i-ResNet): ``z = x + g(x)`` with ``Lip(g) < 1``.

Every linear map of the network ``g`` is spectrally normalised to a norm of at most
``coefficient`` ``c < 1`` and the activations are 1-Lipschitz, so ``Lip(g) <= c^L < 1``
(``L`` linear maps). Then ``x -> x + g(x)`` is a bijection:

- **inverse** by the fixed-point iteration ``x_{k+1} = z - g(x_k)``, a contraction whose
  error shrinks by ``Lip(g)`` per step;
- **log-determinant** ``log det(I + J_g(x))`` (positive: the eigenvalues of ``J_g`` lie inside the
  unit disc), either exactly (``log_det="exact"``: every sample's Jacobian carried forward through
  the network beside ``x`` (forward mode), then ``slogdet``; ``O(D)`` times the work of a pass
  and ``O(D^3)``, for small ``D``) or by the truncated power
  series ``sum_{k=1}^n (-1)^{k+1} tr(J_g^k) / k`` with Hutchinson's estimator
  ``tr(A) ~ v^T A v`` (``log_det="series"``: ``n`` vector-Jacobian products per probe, never the
  Jacobian; biased by the truncation, random by the probes), or with Residual Flows'
  Russian-roulette estimator (Chen et al., 2019; ``log_det="roulette"``): the first ``n`` terms,
  then each further term ``m`` kept while a coin with probability ``1 - p`` of going on comes up,
  and weighted by ``1 / (1 - p)^m``, the inverse of its probability of being kept. Its
  expectation is the whole series, so the estimate is unbiased (up to a hard cap of
  ``MAX_ROULETTE_TERMS`` extra terms, whose probability ``(1 - p)^cap`` is negligible); each probe
  draws its own number of terms.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn import functional as F

from ..core import Flow, _under_function_transform
from ._utils import _check_count

__all__ = ["InvertibleResidual", "LipSwish", "SpectralLinear"]

#: ``log_det=None`` picks ``"exact"`` up to this dimension, ``"series"`` above.
EXACT_MAX_DIM = 16


class LipSwish(nn.Module):
    r"""``x sigmoid(beta x) / 1.1`` (Chen et al., 2019), 1-Lipschitz; ``beta = softplus(.) > 0`` is learned."""

    def __init__(self):
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(math.log(math.e - 1)))  # beta = 1

    def forward(self, x):
        return x * torch.sigmoid(F.softplus(self.raw_beta) * x) / 1.1

    def value_and_derivative(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The activation and its slope, element-wise: with :math:`s = \sigma(\beta x)`,
        :math:`(x s,\; s + \beta x\, s (1 - s)) / 1.1`."""
        beta = F.softplus(self.raw_beta)
        s = torch.sigmoid(beta * x)
        value = x * s
        return value / 1.1, (s + beta * value * (1 - s)) / 1.1


class ELU(nn.ELU):
    r"""``nn.ELU`` (``alpha = 1``, 1-Lipschitz) with its slope: ``1`` for ``x > 0``, else
    :math:`e^x = \mathrm{elu}(x) + 1`."""

    def __init__(self):
        super().__init__(alpha=1.0)

    def value_and_derivative(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = F.elu(x)
        return value, torch.where(x > 0, torch.ones_like(x), value + 1)


def _value_and_slope(activation: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An element-wise activation and its slope at ``x``: its own closed form where it has one
    (``value_and_derivative``), else by forward-mode differentiation along a tangent of ones
    (an activation module of one's own, or one saved before the closed forms existed)."""
    if hasattr(activation, "value_and_derivative"):
        return activation.value_and_derivative(x)
    with warnings.catch_warnings():
        # torch's forward AD loads its decompositions with torch.jit.script on first use, which
        # warns of that function's deprecation: torch's own business, not the caller's.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=DeprecationWarning)
        with forward_ad.dual_level():
            dual = activation(forward_ad.make_dual(x, torch.ones_like(x)))
            value, slope = forward_ad.unpack_dual(dual)
    return value, slope


class SpectralLinear(nn.Module):
    r"""A linear map whose weight is used as ``W / max(1, sigma(W) / coefficient)``.

    The normalisation only shrinks: a weight whose spectral norm ``sigma`` is already at most
    ``coefficient`` is used as it is. How ``sigma`` is computed in training mode:

    - ``power_iterations=None`` (the default): exactly (``torch.linalg.matrix_norm(W, 2)``, an SVD of
      the weight, differentiable), so every training step uses a weight of norm at most
      ``coefficient``, however far the optimiser moved it;
    - an int ``n``: ``n`` steps of the power method per forward, warm-started from the vectors
      ``u``, ``v`` kept as buffers (saved in the ``state_dict``), the gradient flowing through
      ``sigma = u^T W v`` (Miyato et al., 2018; the i-ResNet paper's way, cheaper for wide layers).
      The estimate is a lower bound that lags a weight which changes fast: with
      ``coefficient=0.8`` and Adam at ``lr=1e-2`` pushing the norms up, 5 steps let them reach
      about 0.86 (2 steps: 0.91), still far below 1 but above ``coefficient``.

    In eval mode ``sigma`` is always exact, so evaluation and sampling never see a norm above
    ``coefficient``.
    """

    def __init__(
        self, in_features: int, out_features: int, coefficient: float, power_iterations: int | None = None
    ):
        super().__init__()
        self.coefficient = coefficient
        self.power_iterations = power_iterations
        linear = nn.Linear(in_features, out_features)
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())
        self.register_buffer("u", F.normalize(torch.randn(out_features), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(in_features), dim=0))
        self._eval_cache: tuple | None = None  # (key, normalised weight, weight); see normalized_weight
        with torch.no_grad():
            self._power_method(30)

    def _power_method(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            u, v = self.u.clone(), self.v.clone()
            for _ in range(steps):
                v = F.normalize(self.weight.t() @ u, dim=0, eps=1e-12)
                u = F.normalize(self.weight @ v, dim=0, eps=1e-12)
            self.u.copy_(u)
            self.v.copy_(v)
        return u, v

    def sigma(self) -> torch.Tensor:
        """The spectral norm used now: the power-method estimate (training, if chosen) or the exact one."""
        if self.training and self.power_iterations is not None:
            u, v = self._power_method(self.power_iterations)
            return torch.dot(u, self.weight @ v)
        return torch.linalg.matrix_norm(self.weight, ord=2)

    def normalized_weight(self) -> torch.Tensor:
        """The weight as the layer uses it (advances the power method in training mode).

        In eval mode without gradients (sampling, evaluation) the result is cached until the
        weight changes (an optimiser step, ``load_state_dict``, ``.to()``), since its exact
        spectral norm costs an SVD.
        """
        weight = self.weight
        cacheable = not (self.training or torch.is_grad_enabled() or _under_function_transform(weight))
        if cacheable:
            key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, self.coefficient)
            if self._eval_cache is not None and self._eval_cache[0] == key:
                return self._eval_cache[1]
        factor = torch.clamp(self.sigma() / self.coefficient, min=1.0)
        normalized = weight / factor
        # The cache also holds the weight's storage, so that no other tensor can be given its
        # address (the key's data_ptr) while the cached result lives.
        self._eval_cache = (key, normalized, weight.detach()) if cacheable else None
        return normalized

    def forward(self, x):
        return F.linear(x, self.normalized_weight(), self.bias)


_ACTIVATIONS = {"elu": ELU, "lipswish": LipSwish}
_LOG_DETS = ("exact", "series", "roulette")

#: The roulette estimator stops after this many terms beyond ``num_terms`` whatever the coins say.
MAX_ROULETTE_TERMS = 100
_PROBES = ("gaussian", "rademacher")


def _check_real(value, name: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= low or (high is not None and value >= high):
        bounds = f"in ({low:g}, {high:g})" if high is not None else f"> {low:g}"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return float(value)


class InvertibleResidual(Flow):
    r"""An i-ResNet block on ``(B, D)`` vectors: ``forward(x) = x + g(x)``, ``Lip(g) < 1``.

    Args:
        dim: the dimension ``D``.
        hidden: hidden sizes of ``g``, an int (two layers of that size) or a tuple.
        coefficient: ``c`` in ``(0, 1)``, the bound on the spectral norm of each linear map of
            ``g``; smaller contracts more (faster inverse) but makes each block less expressive.
        activation: ``"elu"`` or ``"lipswish"``, both 1-Lipschitz.
        log_det: ``"exact"``, ``"series"`` or ``"roulette"`` (see the module's docstring);
            ``None`` picks ``"exact"`` for ``dim <= 16`` and ``"series"`` above.
        num_terms: terms of the power series (series), or the terms always computed (roulette).
        roulette_p: roulette only: the probability, in ``(0, 1)``, of stopping after each term
            beyond ``num_terms``; smaller costs more terms on average (``(1 - p) / p``) and has a
            smaller variance. The variance is finite when ``1 - p`` exceeds ``Lip(g)^2`` (at
            most ``coefficient^(2m)`` for ``m`` linear maps), since term ``k`` is weighted by
            ``(1 - p)^-k`` and shrinks like ``Lip(g)^k``. A batch runs until its longest draw
            stops, so the cost of a batch grows (slowly, like ``log B``) with its size ``B``.
        num_probes: Hutchinson probes per sample (series, roulette); the estimate's variance falls
            as ``1 / num_probes``.
        probe: ``"gaussian"`` or ``"rademacher"`` (entries ``+-1``, smaller variance).
        tol: the inverse stops when a step moves no coordinate by more than
            ``tol * max(1, max|z|)``; ``None``: ``1e-10`` in float64, ``1e-5`` otherwise.
        max_iter: the most fixed-point steps; the inverse raises ``RuntimeError`` beyond.
        power_iterations: ``None`` (default): each weight's spectral norm is computed exactly in
            training; an int: that many power-method steps per training forward, cheaper but a
            lagging under-estimate (see :class:`SpectralLinear`). Eval mode is always exact.

    ``last_iterations`` holds the number of fixed-point steps of the latest ``inverse``.

    The series and roulette estimates are drawn anew at every call (so the ``forward`` and
    ``inverse`` log-dets are opposite only in expectation), uses ``torch.autograd.grad`` (``create_graph`` when gradients
    are on) and so does not run under ``torch.func`` transforms: use ``"exact"`` for brute-force
    checks. When gradients are needed, ``inverse`` takes one Newton step from the fixed point,
    which builds the Jacobian of ``g`` (carried forward beside ``x``, as in ``forward``): the
    result then depends on ``z`` and the parameters with the exact derivative ``(I + J_g)^{-1}``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int | Sequence[int] = 64,
        coefficient: float = 0.9,
        activation: str = "elu",
        log_det: str | None = None,
        num_terms: int = 5,
        roulette_p: float = 0.5,
        num_probes: int = 1,
        probe: str = "rademacher",
        tol: float | None = None,
        max_iter: int = 200,
        power_iterations: int | None = None,
    ):
        super().__init__()
        self.dim = _check_count(dim, "dim")
        sizes = (
            (hidden, hidden)
            if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool)
            else hidden
        )
        if (
            not isinstance(sizes, Sequence)
            or isinstance(sizes, str)
            or not sizes
            or not all(isinstance(h, numbers.Integral) and not isinstance(h, bool) and h > 0 for h in sizes)
        ):
            raise ValueError(
                f"hidden must be a positive int or a non-empty tuple of positive ints, got {hidden!r}"
            )
        self.coefficient = _check_real(coefficient, "coefficient", 0.0, 1.0)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be 'elu' or 'lipswish', got {activation!r}")
        if log_det is None:
            log_det = "exact" if self.dim <= EXACT_MAX_DIM else "series"
        if log_det not in _LOG_DETS:
            raise ValueError(f"log_det must be 'exact', 'series', 'roulette' or None, got {log_det!r}")
        if probe not in _PROBES:
            raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        self.log_det = log_det
        self.num_terms = _check_count(num_terms, "num_terms")
        self.roulette_p = _check_real(roulette_p, "roulette_p", 0.0, 1.0)
        self.num_probes = _check_count(num_probes, "num_probes")
        self.probe = probe
        self.tol = None if tol is None else _check_real(tol, "tol", 0.0)
        self.max_iter = _check_count(max_iter, "max_iter")
        if power_iterations is not None:
            power_iterations = _check_count(power_iterations, "power_iterations")
        self.last_iterations: int | None = None

        widths = (self.dim, *(int(h) for h in sizes), self.dim)
        self.linears = nn.ModuleList(
            SpectralLinear(a, b, self.coefficient, power_iterations)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.activations = nn.ModuleList(_ACTIVATIONS[activation]() for _ in widths[1:-1])

    # -- the residual network ------------------------------------------------------------------

    def normalized_weights(self) -> list[torch.Tensor]:
        """The weights of ``g`` as used now (in training mode this advances the power method)."""
        return [linear.normalized_weight() for linear in self.linears]

    def _g(self, x: torch.Tensor, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        for i, (linear, weight) in enumerate(zip(self.linears, weights, strict=True)):
            x = F.linear(x, weight, linear.bias)
            if i < len(self.activations):
                x = self.activations[i](x)
        return x

    def g(self, x: torch.Tensor) -> torch.Tensor:
        """The residual ``g(x)``, shape ``(B, D)``."""
        return self._g(x, self.normalized_weights())

    def _g_and_jacobian(self, x: torch.Tensor, weights) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(g(x), J_g(x))``, shapes ``(B, D)`` and ``(B, D, D)``, from one forward pass.

        Forward mode, by the chain rule
        :math:`J_g = W_L \,\mathrm{diag}(\phi'(h_{L-1}))\, W_{L-1} \cdots \mathrm{diag}(\phi'(h_1))\, W_1`:
        the ``D`` derivatives with respect to the inputs travel through the network beside ``x``,
        a linear map multiplying them by its weight and an activation by its slope at its input.
        Training then differentiates this one pass, where a Jacobian taken by
        ``torch.autograd.grad`` would have to be differentiated through its own backward pass.
        """
        h, tangents = x, None  # tangents[b, i, :] = d(current layer's output of sample b) / dx_i
        last = len(self.linears) - 1
        for i, (linear, weight) in enumerate(zip(self.linears, weights, strict=True)):
            h = F.linear(h, weight, linear.bias)
            # (D, H) at the first layer, then (B, D, H). Kept row-major so that F.linear folds
            # (B, D) into one matrix product (a transposed layout falls back to a slow bmm).
            tangents = weight.t().contiguous() if tangents is None else F.linear(tangents, weight)
            if i < last:
                h, slope = _value_and_slope(self.activations[i], h)
                tangents = tangents * slope.unsqueeze(1)  # (B, D, H)
        return h, tangents.transpose(1, 2)  # J[b, j, i] = dg_j / dx_i

    def _exact_log_det(self, jac: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.dim, dtype=jac.dtype, device=jac.device)
        return torch.linalg.slogdet(eye + jac).logabsdet

    def _probes(self, shape, like: torch.Tensor) -> torch.Tensor:
        if self.probe == "gaussian":
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1

    def _series_log_det(self, x: torch.Tensor, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g(x), estimate)``: the power series with Hutchinson's estimator, all probes at once."""
        if _under_function_transform(x):
            raise RuntimeError(
                f"InvertibleResidual(log_det={self.log_det!r}) uses torch.autograd.grad, which does not run under "
                "torch.func transforms (vmap, jacrev); use log_det='exact' for brute-force checks"
            )
        create_graph = torch.is_grad_enabled()
        batch = x.shape[0]
        with torch.enable_grad():
            x_rep = x.repeat(self.num_probes, 1)  # (P B, D), probe-major
            if not x_rep.requires_grad:
                x_rep = x_rep.detach().requires_grad_(True)
            gx = self._g(x_rep, weights)
            v = self._probes(x_rep.shape, x)
            # weight[k - 1]: the factor of term k for each probe row (0: the term is dropped).
            num_terms = self.num_terms
            term_weights = x.new_ones(num_terms, x_rep.shape[0])
            if self.log_det == "roulette":
                q = 1.0 - self.roulette_p
                # Extra terms M with P(M >= m) = q^m: M = floor(log U / log q).
                uniform = torch.rand(x_rep.shape[0], dtype=torch.float64, device=x.device)
                extra = torch.floor(torch.log(uniform) / math.log(q)).clamp(max=MAX_ROULETTE_TERMS)
                num_extra = int(extra.max().item())
                m = torch.arange(1, num_extra + 1, dtype=torch.float64, device=x.device).unsqueeze(1)
                kept = (extra.unsqueeze(0) >= m) * q ** (-m)
                term_weights = torch.cat([term_weights, kept.to(x.dtype)])
                num_terms += num_extra
            w = v
            estimate = x.new_zeros(x_rep.shape[0])
            for k in range(1, num_terms + 1):
                # w <- w^T J_g: after k steps, (v^T J^k) v estimates tr(J^k).
                (w,) = torch.autograd.grad(gx, x_rep, w, create_graph=create_graph, retain_graph=True)
                estimate = estimate + (-1) ** (k + 1) / k * term_weights[k - 1] * (w * v).sum(-1)
        g_x = gx[:batch]
        estimate = estimate.view(self.num_probes, batch).mean(0)
        if not create_graph:
            g_x, estimate = g_x.detach(), estimate.detach()
        return g_x, estimate

    # -- the flow ------------------------------------------------------------------------------

    def _check(self, t: torch.Tensor) -> None:
        if t.dim() != 2 or t.shape[1] != self.dim:
            raise ValueError(
                f"InvertibleResidual(dim={self.dim}) expects (B, {self.dim}), got {tuple(t.shape)}"
            )

    def forward(self, x):
        self._check(x)
        if x.shape[0] == 0:
            return x.clone(), x.new_zeros(0)
        weights = self.normalized_weights()
        if self.log_det != "exact":
            g_x, log_det = self._series_log_det(x, weights)
            return x + g_x, log_det
        g_x, jac = self._g_and_jacobian(x, weights)
        return x + g_x, self._exact_log_det(jac)

    def _tolerance(self, z: torch.Tensor) -> float:
        if self.tol is not None:
            return self.tol
        return 1e-10 if z.dtype == torch.float64 else 1e-5

    def inverse(self, z):
        self._check(z)
        if z.shape[0] == 0:
            self.last_iterations = 0
            return z.clone(), z.new_zeros(0)
        weights = self.normalized_weights()
        transformed = _under_function_transform(z)
        with torch.no_grad():
            target = z.detach()
            x = target
            if transformed:
                # Values cannot be read here: run every step (the brute-force checks' case).
                for _ in range(self.max_iter):
                    x = target - self._g(x, weights)
                self.last_iterations = self.max_iter
            else:
                threshold = self._tolerance(z) * max(1.0, target.abs().max().item())
                step = math.inf
                self.last_iterations = 0
                while self.last_iterations < self.max_iter:
                    x_next = target - self._g(x, weights)
                    step = (x_next - x).abs().max().item()
                    x = x_next
                    self.last_iterations += 1
                    if step <= threshold:
                        break
                if not step <= threshold:
                    raise RuntimeError(
                        f"InvertibleResidual.inverse did not converge: after max_iter={self.max_iter} "
                        f"fixed-point steps x <- z - g(x) the last step moved x by {step:.3g}, above the "
                        f"tolerance {threshold:.3g}. Raise max_iter, loosen tol, or lower the coefficient "
                        f"(now {self.coefficient:g}) so that g contracts faster; a NaN step means the "
                        "input or the weights hold NaN"
                    )
        needs_graph = torch.is_grad_enabled() and (
            transformed or z.requires_grad or any(w.requires_grad for w in weights)
        )
        if needs_graph:
            # One Newton step from the fixed point x*: at the root it changes x by rounding only,
            # but gives x the derivative (I + J_g)^{-1} with respect to z and the parameters.
            x_star = x.detach()
            g_star, jac_star = self._g_and_jacobian(x_star, weights)
            residual = x_star + g_star - z
            eye = torch.eye(self.dim, dtype=z.dtype, device=z.device)
            step = torch.linalg.solve(eye + jac_star, residual.unsqueeze(-1))
            x = x_star - step.squeeze(-1)
        if self.log_det != "exact":
            _, log_det = self._series_log_det(x, weights)
        else:
            log_det = self._exact_log_det(self._g_and_jacobian(x, weights)[1])
        return x, -log_det

    def extra_repr(self) -> str:
        return f"dim={self.dim}, coefficient={self.coefficient:g}, log_det={self.log_det!r}"
