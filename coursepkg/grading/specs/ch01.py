"""Tests of the exercises of chapter 1 (change of variables), ``solutions/01_change_of_variables.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs, and log-densities are compared in float64. No probe needs the
package's answers, so each one runs whole with them switched off (:func:`_without_answers`).
"""

from __future__ import annotations

import functools
import math

import torch
from torch.nn import functional as F

import coursepkg
from coursepkg.grading.spec import ExerciseSet, default_compare, describe, forbid
from coursepkg.grading.specs.common import LOG_2PI

SET = ExerciseSet(
    "ch01",
    notebook="01_change_of_variables.ipynb",
    # The chapter's layers that would answer exercises 1 and 4 (a logit map and its derivative;
    # a piecewise-linear map, or the inverse of one).
    forbidden=forbid(coursepkg.layers, "PiecewiseLinear", "Logit", "Sigmoid") + forbid(coursepkg, "Inverse"),
)


def _without_answers(probe):
    """The probe, run with the set's forbidden answers switched off."""

    @functools.wraps(probe)
    def run(ns):
        with SET.switched_off():
            return probe(ns)

    return run


def _normal_log_prob(z):
    return -0.5 * (z.square() + LOG_2PI)


def _logistic_log_prob(z):
    return -F.softplus(z) - F.softplus(-z)


# -- ch01-density ---------------------------------------------------------------------------------

SET.check_cell("ch01-density", points=0.5)


@SET.test("ch01-density", points=1, requires=("log_density",), rtol=1e-6, atol=1e-7)
@_without_answers
def density_values(ns):
    """log p_X on a grid of (0, 1), float64."""
    x = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    return {"log_density(x)": ns.log_density(x)}


@SET.test("ch01-density", points=0.5, requires=("log_density",))
@_without_answers
def density_shape_dtype(ns):
    """A float32 input of shape (4, 25) gives a float32 result of the same shape."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4, 25, generator=generator) * 0.98 + 0.01
    return {"log_density(x) for a float32 x of shape (4, 25)": ns.log_density(x)}


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch01-density", "+ log_abs_derivative", "- log_abs_derivative", fails="density_values")
SET.variant(
    "ch01-density",
    "log_abs_derivative = -math.log(SCALE)",
    "log_abs_derivative = math.log(SCALE)",
    fails="density_values",
)
SET.variant(
    "ch01-density",
    "- torch.log(x) - torch.log1p(-x)  # log|f'(x)|",
    "- torch.log(x)  # log|f'(x)|",
    fails="density_values",
)
SET.variant(
    "ch01-density",
    "z = (torch.log1p(-x) - torch.log(x) - SHIFT) / SCALE",
    "z = (torch.log(x) - torch.log1p(-x) - SHIFT) / SCALE",
    fails="density_values",
)
SET.variant(
    "ch01-density",
    "    z = (torch.log1p(-x)",
    "    x = x.double()\n    z = (torch.log1p(-x)",
    fails="density_shape_dtype",
)


# -- ch01-inverse-cdf -----------------------------------------------------------------------------

SET.check_cell("ch01-inverse-cdf", points=0.5)


@SET.test("ch01-inverse-cdf", points=1, requires=("weibull_cdf", "weibull_icdf"), rtol=1e-6, atol=1e-8)
@_without_answers
def weibull_cdf_icdf(ns):
    """The Weibull CDF (negative x included) and its closed-form inverse."""
    x = torch.linspace(-2.0, 12.0, 1401, dtype=torch.float64)
    u = torch.linspace(1e-6, 1 - 1e-6, 1001, dtype=torch.float64)
    u32 = torch.linspace(0.01, 0.99, 99)
    return {
        "weibull_cdf(x)": ns.weibull_cdf(x),
        "weibull_icdf(u)": ns.weibull_icdf(u),
        "weibull_icdf(u) for a float32 u": ns.weibull_icdf(u32),
    }


def _weibull_cdf(x, shape=1.5, scale=2.0):
    return -torch.expm1(-((x.clamp_min(0.0) / scale) ** shape))


@SET.test("ch01-inverse-cdf", points=0.5, requires=("sample_weibull",))
@_without_answers
def weibull_sampler(ns):
    """20 000 samples: shape, dtype, a Kolmogorov-Smirnov gap, and reproducibility with a generator."""
    n = 20_000
    first = ns.sample_weibull(n, generator=torch.Generator().manual_seed(123))
    again = ns.sample_weibull(n, generator=torch.Generator().manual_seed(123))
    other = ns.sample_weibull(n, generator=torch.Generator().manual_seed(124))
    if not all(isinstance(s, torch.Tensor) for s in (first, again, other)):
        return {"type": describe(first)}
    result = {
        "type": "tensor",
        "shape": tuple(first.shape),
        "dtype": str(first.dtype),
        "same seed, same samples": bool(torch.equal(first, again)),
        "other seed, other samples": not bool(torch.equal(first, other)),
    }
    if first.shape == (n,) and first.is_floating_point():
        cdf = _weibull_cdf(first.detach().double().sort().values)
        upper = torch.arange(1, n + 1, dtype=torch.float64) / n
        ks = torch.maximum(upper - cdf, cdf - (upper - 1 / n)).max().item()
        result["ks"] = ks if math.isfinite(ks) else float("inf")
    return result


@weibull_sampler.compare
def _(student, reference):
    if student["type"] != "tensor":
        raise AssertionError(f"sample_weibull should return a tensor, got {student['type']}")
    if student["shape"] != reference["shape"]:
        raise AssertionError(
            f"sample_weibull(20000): expected shape {reference['shape']}, got {student['shape']}"
        )
    if student["dtype"] != reference["dtype"]:
        raise AssertionError(f"sample_weibull: expected dtype {reference['dtype']}, got {student['dtype']}")
    if not student["same seed, same samples"]:
        raise AssertionError("sample_weibull: two generators with the same seed gave different samples")
    if not student["other seed, other samples"]:
        raise AssertionError("sample_weibull: generators with different seeds gave the same samples")
    ks = student.get("ks", float("inf"))
    if not ks < 0.02:
        raise AssertionError(
            f"sample_weibull: the largest gap between the empirical CDF and the Weibull CDF is "
            f"{ks:.3g}, more than 0.02: the samples do not follow the Weibull distribution"
        )

    # Any bracket that follows the recipe shrinks below 1e-12 after 60 halvings.


@SET.test("ch01-inverse-cdf", points=1, requires=("invert_cdf",), timeout=60, rtol=1e-9, atol=1e-6)
@_without_answers
def invert_cdf_values(ns):
    """Bracketing and bisection for CDFs centred at -1, 3000 (scale 500) and -40; output shape."""
    generator = torch.Generator().manual_seed(2)

    def levels(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64) * 0.998 + 0.001

    def mixture(x):
        return 0.3 * torch.special.ndtr((x + 2.0) / 0.5) + 0.7 * torch.special.ndtr((x - 1.0) / 0.8)

    def far_right(x):
        return torch.special.ndtr((x - 3000.0) / 500.0)

    def far_left(x):
        return torch.sigmoid((x + 40.0) / 3.0)

    return {
        "invert_cdf(mixture CDF, u)": ns.invert_cdf(mixture, levels(200)),
        "invert_cdf(CDF of N(3000, 500^2), u)": ns.invert_cdf(far_right, levels(200)),
        "invert_cdf(logistic CDF centred at -40, u of shape (10, 20))": ns.invert_cdf(
            far_left, levels(10, 20)
        ),
    }


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch01-inverse-cdf", "positive = x.clamp_min(0.0)", "positive = x", fails="weibull_cdf_icdf")
SET.variant("ch01-inverse-cdf", "** (1 / WEIBULL_SHAPE)", "** WEIBULL_SHAPE", fails="weibull_cdf_icdf")
SET.variant(
    "ch01-inverse-cdf",
    "torch.rand(n, generator=generator, dtype=torch.float64)",
    "torch.rand(n, dtype=torch.float64)",
    fails="weibull_sampler",
)
SET.variant(
    "ch01-inverse-cdf",
    "u = torch.rand(n, generator=generator, dtype=torch.float64)",
    "u = torch.rand(n, generator=generator)",
    fails="weibull_sampler",
)
SET.variant(
    "ch01-inverse-cdf", "return weibull_icdf(u)", "return weibull_icdf(u) * 1.2", fails="weibull_sampler"
)
SET.variant(
    "ch01-inverse-cdf",
    "low = torch.where(below, middle, low)\n        high = torch.where(below, high, middle)",
    "low = torch.where(below, low, middle)\n        high = torch.where(below, middle, high)",
    fails="invert_cdf_values",
)
SET.variant("ch01-inverse-cdf", "    while True:", "    while False:", fails="invert_cdf_values")
SET.variant(
    "ch01-inverse-cdf",
    "for _ in range(num_halvings):",
    "for _ in range(num_halvings // 4):",
    fails="invert_cdf_values",
)


# -- ch01-autograd-nll ----------------------------------------------------------------------------

SET.check_cell("ch01-autograd-nll", points=0.5)


def _nll_data():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(500, generator=generator, dtype=torch.float64) * 1.5 + 0.3


@SET.test("ch01-autograd-nll", points=1, requires=("nll_autograd",))
@_without_answers
def nll_values(ns):
    """The mean NLL for an increasing and a decreasing map, normal and logistic latents."""
    x = _nll_data()
    before = x.clone()

    def increasing(t):
        return 0.7 * t + 0.5 * torch.tanh(2.0 * t - 0.3) + 0.1

    def decreasing(t):
        return -1.3 * t - 0.4 * torch.sinh(0.5 * t) + 0.2

    result = {
        "increasing map, normal latent": ns.nll_autograd(increasing, x, _normal_log_prob),
        "increasing map, logistic latent": ns.nll_autograd(increasing, x, _logistic_log_prob),
        "decreasing map, normal latent": ns.nll_autograd(decreasing, x, _normal_log_prob),
    }
    result["x left unchanged"] = bool(torch.equal(x, before)) and not x.requires_grad
    return result


@SET.test("ch01-autograd-nll", points=0.5, requires=("nll_autograd",))
@_without_answers
def nll_gradient(ns):
    """loss.backward() gives the parameters of f the gradient of the full NLL (create_graph)."""
    x = _nll_data()
    theta = torch.tensor([0.7, 0.5, 2.0, -0.3, 0.1], dtype=torch.float64, requires_grad=True)

    def f(t):
        return theta[0] * t + theta[1] * torch.tanh(theta[2] * t + theta[3]) + theta[4]

    loss = ns.nll_autograd(f, x, _normal_log_prob)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        return {"gradient of the NLL with respect to the parameters of f": "the loss carries no gradient"}
    loss.backward()
    return {"gradient of the NLL with respect to the parameters of f": theta.grad}


@nll_gradient.compare
def _(student, reference):
    key = "gradient of the NLL with respect to the parameters of f"
    if isinstance(student.get(key), str):
        raise AssertionError(
            f"{key}: {student[key]}; the result must be a tensor that stays connected to the parameters of f"
        )
    default_compare(student, reference, rtol=1e-6, atol=1e-8)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch01-autograd-nll", "torch.log(derivative.abs())", "torch.log(derivative)", fails="nll_values")
SET.variant("ch01-autograd-nll", "x, create_graph=True)", "x, create_graph=False)", fails="nll_gradient")
SET.variant(
    "ch01-autograd-nll",
    "log_prob_latent(z) + torch.log",
    "log_prob_latent(z) - torch.log",
    fails="nll_values",
)
SET.variant("ch01-autograd-nll", "derivative.abs())).mean()", "derivative.abs())).sum()", fails="nll_values")
SET.variant(
    "ch01-autograd-nll",
    "x = x.detach().clone().requires_grad_(True)",
    "x.requires_grad_(True)",
    fails="nll_values",
)


# -- ch01-knots -----------------------------------------------------------------------------------

SET.check_cell("ch01-knots", points=0.5)


_KNOTS = (-3.0, -2.2, -1.0, -0.6, 0.3, 0.9, 2.0, 3.5)


def _random_knot_layer(ns):
    layer = ns.KnotPiecewiseLinear(torch.tensor(_KNOTS, dtype=torch.float64)).double()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        layer.logits.copy_(torch.randn(len(_KNOTS) - 1, generator=generator, dtype=torch.float64))
    return layer


def _uniform(n, low, high, seed):
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 1, generator=generator, dtype=torch.float64)


@SET.test("ch01-knots", points=1, requires=("KnotPiecewiseLinear",), rtol=1e-6, atol=1e-8)
@_without_answers
def knots_forward(ns):
    """forward and output_knots with non-uniform knots and random logits, float64."""
    layer = _random_knot_layer(ns)
    x = _uniform(2000, -4.5, 4.5, 5)
    with torch.no_grad():
        z, log_det = layer(x)
        knots = layer.output_knots()
    return {"output_knots()": knots, "forward(x)[0] (z)": z, "forward(x)[1] (log_det)": log_det}


@SET.test("ch01-knots", points=1, requires=("KnotPiecewiseLinear",), rtol=1e-6, atol=1e-8)
@_without_answers
def knots_inverse(ns):
    """inverse against the reference; inverse(forward(x)) == x and opposite log-derivatives."""
    layer = _random_knot_layer(ns)
    x = _uniform(2000, -4.5, 4.5, 6)
    with torch.no_grad():
        x_back_of, log_det_inverse = layer.inverse(x)
        z, log_det = layer(x)
        x_back, log_det_back = layer.inverse(z)
    return {
        "inverse(z)[0] (x)": x_back_of,
        "inverse(z)[1] (log_det)": log_det_inverse,
        "inverse(forward(x)) == x": bool((x_back - x).abs().max() < 1e-9),
        "inverse log_det == -forward log_det": bool((log_det_back + log_det).abs().max() < 1e-9),
    }


@SET.test("ch01-knots", points=0.5, requires=("KnotPiecewiseLinear",))
@_without_answers
def knots_properties(ns):
    """A new layer is the identity; log_det = log dz/dx by autograd; gradients; buffer; float32."""
    result = {}
    knots = torch.tensor(_KNOTS, dtype=torch.float64)
    fresh = ns.KnotPiecewiseLinear(knots).double()
    x = _uniform(500, -4.5, 4.5, 7)
    with torch.no_grad():
        z, log_det = fresh(x)
    result["a new layer is the identity"] = bool((z - x).abs().max() < 1e-6 and log_det.abs().max() < 1e-6)
    result["knots is a buffer"] = "knots" in dict(fresh.named_buffers())

    layer = _random_knot_layer(ns)
    x = x.clone().requires_grad_(True)
    z, log_det = layer(x)
    (dz_dx,) = torch.autograd.grad(z.sum(), x, retain_graph=True)
    result["log_det == log of the autograd derivative dz/dx"] = bool(
        (log_det - dz_dx[:, 0].log()).abs().max() < 1e-8
    )
    (z.square().sum() + log_det.sum()).backward()
    grad = layer.logits.grad
    result["the logits receive a finite, non-zero gradient"] = bool(
        grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    )

    layer32 = ns.KnotPiecewiseLinear(knots.float())
    x32 = _uniform(5, -4.5, 4.5, 8).float()
    with torch.no_grad():
        z32, log_det32 = layer32(x32)
        x_back32, log_det_back32 = layer32.inverse(z32)
    result["float32 shapes and dtypes"] = [
        (tuple(t.shape), str(t.dtype)) for t in (z32, log_det32, x_back32, log_det_back32)
    ]
    return result


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch01-knots",
    "k = (v[:, None] >= source[1:-1]).sum(1)",
    "k = (v[:, None] >= source[:-1]).sum(1).clamp(max=len(source) - 2)",
    fails="knots_forward",
)
SET.variant(
    "ch01-knots",
    "torch.where(inside, torch.log(slopes[k])",
    "torch.where(inside, -torch.log(slopes[k])",
    fails="knots_forward",
)
SET.variant(
    "ch01-knots",
    "out = torch.where(inside, target[k] + (v - source[k]) * slopes[k], v)",
    "out = target[k] + (v - source[k]) * slopes[k]",
    fails="knots_forward",
)
SET.variant(
    "ch01-knots",
    "inner = t[0] + (t[-1] - t[0]) * torch.cumsum(widths, dim=0)[:-1]",
    "inner = t[0] + (t[-1] - t[0]) * torch.cumsum(widths, dim=0)[1:]",
    fails="knots_forward",
)
SET.variant(
    "ch01-knots",
    "return self._piecewise(z, self.output_knots().to(z.dtype), self.knots.to(z.dtype))",
    "return self._piecewise(z, self.knots.to(z.dtype), self.output_knots().to(z.dtype))",
    fails="knots_inverse",
)
SET.variant(
    "ch01-knots",
    'self.register_buffer("knots", knots.clone())',
    "self.knots = knots.clone()",
    fails="knots_properties",
)
SET.variant(
    "ch01-knots",
    "self.logits = nn.Parameter(torch.log(knots[1:] - knots[:-1]))",
    "self.logits = nn.Parameter(torch.zeros(len(knots) - 1, dtype=knots.dtype))",
    fails="knots_properties",
)
SET.variant(
    "ch01-knots",
    "return self._piecewise(x, self.knots.to(x.dtype), self.output_knots().to(x.dtype))",
    "return self._piecewise(x.double(), self.knots.double(), self.output_knots().double())",
    fails="knots_properties",
)


# -- ch01-experiment ------------------------------------------------------------------------------

SET.check_cell("ch01-experiment", points=0.5)


@SET.test("ch01-experiment", points=1.5, requires=("fit_knots",), timeout=180)
@_without_answers
def knot_placement(ns):
    """Trains 4 and 32 bins of each placement and measures KL(target || model) itself."""
    from coursepkg import NormalizingFlow, StandardNormal
    from coursepkg.data import kl_divergence, toy

    target = toy("gaussian_mixture_1d")
    scores = {}
    for placement in ("uniform", "quantile"):
        for num_bins in (4, 32):
            layer = ns.fit_knots(num_bins, placement, steps=400, seed=0)
            model = NormalizingFlow(layer, StandardNormal(1))
            kl = kl_divergence(model, target, num_samples=20_000)["kl"]
            scores[f"{placement}, {num_bins} bins"] = kl if math.isfinite(kl) else float("inf")
    return scores


@knot_placement.compare
def _(student, reference):
    u4, q4 = student["uniform, 4 bins"], student["quantile, 4 bins"]
    u32, q32 = student["uniform, 32 bins"], student["quantile, 32 bins"]
    table = ", ".join(f"{k}: {v:.3f}" for k, v in student.items())
    if min(student.values()) < -0.01:
        raise AssertionError(f"a KL divergence cannot be negative; measured {table}: check log_det")
    if not q4 < u4 - 0.1:
        raise AssertionError(
            f"with 4 bins the quantile knots should win by more than 0.1 nats; measured {table}"
        )
    if not u32 < 0.03:
        raise AssertionError(f"32 uniform bins should reach a KL below 0.03 nats; measured {table}")
    if not u32 < q32:
        raise AssertionError(f"with 32 bins the uniform knots should win; measured {table}")
    if not (u32 < u4 and q32 < q4):
        raise AssertionError(f"32 bins should beat 4 bins for both placements; measured {table}")


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch01-experiment", 'if placement == "uniform":', 'if placement == "quantile":', fails="knot_placement"
)
SET.variant("ch01-experiment", "+ log_det).mean()", ").mean()", fails="knot_placement")
SET.variant(
    "ch01-experiment", "for _ in range(steps):", "for _ in range(steps // 40):", fails="knot_placement"
)
