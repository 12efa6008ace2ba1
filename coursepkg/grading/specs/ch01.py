"""Tests of the exercises of chapter 1 (change of variables), ``solutions/01_change_of_variables.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs, and log-densities are compared in float64.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from coursepkg.grading.spec import ExerciseSet, default_compare, describe

SET = ExerciseSet(
    "ch01",
    notebook="01_change_of_variables.ipynb",
    # The chapter's layers that would answer exercises 1 and 4 (a logit map and its derivative;
    # a piecewise-linear map, or the inverse of one).
    forbidden_imports=("PiecewiseLinear", "Inverse", "Logit", "Sigmoid"),
)

_LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(z):
    return -0.5 * (z.square() + _LOG_2PI)


def _logistic_log_prob(z):
    return -F.softplus(z) - F.softplus(-z)


# -- ch01-density ---------------------------------------------------------------------------------


@SET.test("ch01-density", points=1.5, requires=("log_density",))
def density_values(ns):
    """log p_X on a grid of (0, 1), float64."""
    x = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    return {"log_density(x)": ns.log_density(x)}


@density_values.compare
def _(student, reference):
    default_compare(student, reference, rtol=1e-6, atol=1e-7)


@SET.test("ch01-density", points=0.5, requires=("log_density",))
def density_shape_dtype(ns):
    """A float32 input of shape (4, 25) gives a float32 result of the same shape."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(4, 25, generator=generator) * 0.98 + 0.01
    return {"log_density(x) for a float32 x of shape (4, 25)": ns.log_density(x)}


# -- ch01-inverse-cdf -----------------------------------------------------------------------------


@SET.test("ch01-inverse-cdf", points=1, requires=("weibull_cdf", "weibull_icdf"))
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


@weibull_cdf_icdf.compare
def _(student, reference):
    default_compare(student, reference, rtol=1e-6, atol=1e-8)


def _weibull_cdf(x, shape=1.5, scale=2.0):
    return -torch.expm1(-((x.clamp_min(0.0) / scale) ** shape))


@SET.test("ch01-inverse-cdf", points=0.5, requires=("sample_weibull",))
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


@SET.test("ch01-inverse-cdf", points=1.5, requires=("invert_cdf",), timeout=60)
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


@invert_cdf_values.compare
def _(student, reference):
    # Any bracket that follows the recipe shrinks below 1e-12 after 60 halvings.
    default_compare(student, reference, rtol=1e-9, atol=1e-6)


# -- ch01-autograd-nll ----------------------------------------------------------------------------


def _nll_data():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(500, generator=generator, dtype=torch.float64) * 1.5 + 0.3


@SET.test("ch01-autograd-nll", points=1, requires=("nll_autograd",))
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


@SET.test("ch01-autograd-nll", points=1, requires=("nll_autograd",))
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


# -- ch01-knots -----------------------------------------------------------------------------------

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


@SET.test("ch01-knots", points=1, requires=("KnotPiecewiseLinear",))
def knots_forward(ns):
    """forward and output_knots with non-uniform knots and random logits, float64."""
    layer = _random_knot_layer(ns)
    x = _uniform(2000, -4.5, 4.5, 5)
    with torch.no_grad():
        z, log_det = layer(x)
        knots = layer.output_knots()
    return {"output_knots()": knots, "forward(x)[0] (z)": z, "forward(x)[1] (log_det)": log_det}


@knots_forward.compare
def _(student, reference):
    default_compare(student, reference, rtol=1e-6, atol=1e-8)


@SET.test("ch01-knots", points=1, requires=("KnotPiecewiseLinear",))
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


@knots_inverse.compare
def _(student, reference):
    default_compare(student, reference, rtol=1e-6, atol=1e-8)


@SET.test("ch01-knots", points=1, requires=("KnotPiecewiseLinear",))
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


# -- ch01-experiment ------------------------------------------------------------------------------


@SET.test("ch01-experiment", points=2, requires=("fit_knots",), timeout=180)
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
