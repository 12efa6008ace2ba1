"""Tests of the exercises of chapter 3 (NICE), ``solutions/03_nice.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs; log-determinants are compared in float64 with the brute-force
``log|det J|`` of :mod:`coursepkg.jacobian`, computed here. While a probe calls the student's code
for exercises 1 to 3, the brute-force Jacobian and torch's determinant functions are switched
off, and for exercises 1 and 2 so are the coursepkg layers that compute the same thing (the
additive coupling, the element-wise affine and scaling layers, ``Logit``, ``Sigmoid`` and the
logistic prior), so that a graded cell cannot lean on them even through ``getattr``.
Exercises 3 and 4 run the student's code on stacks of coursepkg's own ``AdditiveCoupling`` and
``Scaling``, so that they test those exercises alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import coursepkg
from coursepkg.distributions import StandardLogistic
from coursepkg.grading.spec import (
    ExerciseSet,
    default_compare,
    forbid,
    forbid_brute_force_jacobian,
    forbid_determinants,
)
from coursepkg.grading.specs.common import LOG_2PI, brute_log_det, points, shapes
from coursepkg.layers import coupling, elementwise

SET = ExerciseSet(
    "ch03",
    notebook="03_nice.ipynb",
    # The layers, priors and builder that would answer the exercises, and the private classes
    # and modules they live in.
    forbidden=forbid(
        coursepkg.layers,
        "AdditiveCoupling",
        "AffineCoupling",
        "ConvAdditiveCoupling",
        "ConvAffineCoupling",
        "Scaling",
        "ElementwiseAffine",
        "Logit",
        "Sigmoid",
        "coupling",
    )
    + forbid(coupling, "_Coupling", "_Additive", "_Affine")
    + forbid(coursepkg, "StandardLogistic")
    + forbid(coursepkg.models, "nice"),
)
# Exercises 1 to 3 have closed-form log-determinants.
_CLOSED_FORM = forbid_brute_force_jacobian(
    "the exercise asks for your own code, without coursepkg's brute-force Jacobian"
) + forbid_determinants("a NICE layer's log-determinant has a closed form, without a determinant function")
# Exercises 1 and 2 ask for these layers, which exercises 3 and 4 run (on coursepkg's own layers).
_LAYER_METHODS = [
    entry
    for cls in (coupling._Additive, elementwise.ElementwiseAffine, elementwise.Logit, elementwise.Sigmoid)
    for entry in forbid(cls, "forward", "inverse", why="this exercise asks for your own implementation")
] + forbid(StandardLogistic, "log_prob", "sample", why="this exercise asks for your own implementation")


def _switched_off(layers: bool = True):
    """The set's answers, the brute-force Jacobian, torch's determinants and (``layers``) the
    methods of coursepkg's layers that answer exercises 1 and 2 raise within the block."""
    return SET.switched_off(*_CLOSED_FORM, *(_LAYER_METHODS if layers else ()))


# -- ch03-coupling --------------------------------------------------------------------------------

SET.check_cell("ch03-coupling", points=0.5)


class _ShiftNet(nn.Module):
    """t(v) = tanh(v W + b) V + c: every output depends on every input, and none is zero."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(dim, 16, generator=generator, dtype=torch.float64))
        self.bias = nn.Parameter(0.5 * torch.randn(16, generator=generator, dtype=torch.float64))
        self.out = nn.Parameter(0.5 * torch.randn(16, dim, generator=generator, dtype=torch.float64))
        self.offset = nn.Parameter(0.5 + torch.rand(dim, generator=generator, dtype=torch.float64))

    def forward(self, v):
        return torch.tanh(v @ self.weight + self.bias) @ self.out + self.offset


# Masks that are neither halves nor contiguous, True = passes unchanged.
_COUPLING_CASES = (
    ("D = 5, mask (T, F, F, T, F)", (True, False, False, True, False), 30),
    ("D = 4, mask (F, T, T, F)", (False, True, True, False), 31),
    ("D = 6, mask (F, F, F, F, T, F)", (False, False, False, False, True, False), 32),
)


def _coupling(ns, mask, seed, dtype=torch.float64):
    return ns.NiceCoupling(torch.tensor(mask), _ShiftNet(len(mask), seed)).to(dtype)


@SET.test("ch03-coupling", points=1, requires=("NiceCoupling",), rtol=1e-9, atol=1e-10)
def coupling_forward(ns):
    """forward (z, log_det) in float64 for three masks and networks that see every coordinate."""
    result = {}
    with _switched_off(), torch.no_grad():
        for label, mask, seed in _COUPLING_CASES:
            layer = _coupling(ns, mask, seed)
            z, log_det = layer(points(40, len(mask), seed + 10))
            result[f"forward(x)[0] (z), {label}"] = z
            result[f"forward(x)[1] (log_det), {label}"] = log_det
    return result


@SET.test("ch03-coupling", points=0.5, requires=("NiceCoupling",), rtol=1e-9, atol=1e-10)
def coupling_inverse(ns):
    """inverse of any z against the reference; inverse(forward(x)) == x."""
    result = {}
    with _switched_off(), torch.no_grad():
        for label, mask, seed in _COUPLING_CASES:
            layer = _coupling(ns, mask, seed)
            x_of, log_det_of = layer.inverse(points(40, len(mask), seed + 20))
            x = points(40, len(mask), seed + 30)
            x_back, _ = layer.inverse(layer(x)[0])
            result[f"inverse(z)[0] (x), {label}"] = x_of
            result[f"inverse(z)[1] (log_det), {label}"] = log_det_of
            result[f"inverse(forward(x)) == x, {label}"] = bool((x_back - x).abs().max() < 1e-10)
    return result


@SET.test("ch03-coupling", points=0.5, requires=("NiceCoupling",))
def coupling_log_det(ns):
    """log_det of forward and inverse against the brute-force log|det J| (zero), shape (B,)."""
    result = {}
    for label, mask, seed in _COUPLING_CASES[:2]:
        layer = _coupling(ns, mask, seed)
        x = points(25, len(mask), seed + 40)
        with _switched_off(), torch.no_grad():
            z, log_det = layer(x)
            _, log_det_inverse = layer.inverse(z)
        result[label] = {
            "forward log_det": log_det,
            "brute force forward": brute_log_det(lambda v, layer=layer: layer(v)[0], x),
            "inverse log_det": log_det_inverse,
            "brute force inverse": brute_log_det(lambda v, layer=layer: layer.inverse(v)[0], z),
        }
    return result


def _compare_log_dets(student, reference, tolerance=1e-8):
    from coursepkg.testing import assert_close

    for label, values in student.items():
        for direction in ("forward", "inverse"):
            log_det = values[f"{direction} log_det"]
            brute = values[f"brute force {direction}"]
            if not isinstance(log_det, torch.Tensor):
                raise AssertionError(f"{direction} log_det ({label}): expected a tensor, got {type(log_det)}")
            if log_det.dtype != brute.dtype:
                raise AssertionError(
                    f"{direction} log_det ({label}): expected dtype {brute.dtype}, got {log_det.dtype}"
                )
            assert_close(
                log_det, brute, f"{direction} log_det vs brute-force log|det J| ({label})", tolerance, 1e-7
            )


@coupling_log_det.compare
def _(student, reference):
    _compare_log_dets(student, reference)


@SET.test("ch03-coupling", points=0.5, requires=("NiceCoupling",))
def coupling_float32(ns):
    """float32 in, float32 out (shapes (B, D), (B,)); the network's parameters receive gradients."""
    label, mask, seed = _COUPLING_CASES[0]
    layer = _coupling(ns, mask, seed, torch.float32)
    x = points(8, len(mask), seed + 50, torch.float32)
    with _switched_off():
        z, log_det = layer(x)
        x_back, log_det_back = layer.inverse(z)
    result = {"float32 shapes and dtypes": shapes(z, log_det, x_back, log_det_back)}
    if isinstance(z, torch.Tensor) and z.requires_grad:
        (z.square().sum() + x_back.square().sum()).backward()
    result["every parameter of shift_net receives a finite, non-zero gradient"] = all(
        p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool(p.grad.abs().sum() > 0)
        for p in layer.shift_net.parameters()
    )
    return result


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
# The mask not complemented: the kept half is shifted, the other half passes unchanged.
SET.variant(
    "ch03-coupling",
    "shift = self.shift_net(x * keep) * (1 - keep)",
    "shift = self.shift_net(x * keep) * keep",
    fails="coupling_forward",
)
SET.variant("ch03-coupling", "return z - shift", "return z + shift", fails="coupling_inverse")
# The inverse computes its shift from the wrong half of z.
SET.variant(
    "ch03-coupling", "self.shift_net(z * keep)", "self.shift_net(z * (1 - keep))", fails="coupling_inverse"
)
SET.variant(
    "ch03-coupling",
    "keep = self.mask.to(x.dtype)  #",
    "keep = self.mask.double()  #",
    fails="coupling_float32",
)


# -- ch03-scaling ---------------------------------------------------------------------------------

SET.check_cell("ch03-scaling", points=0.5)


_LOG_SCALE = (0.7, -1.2, 0.0, 2.1, -0.4)


def _scaling(ns, dtype=torch.float64):
    layer = ns.DiagonalScaling(len(_LOG_SCALE))
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor(_LOG_SCALE))
    return layer.to(dtype)


@SET.test("ch03-scaling", points=0.5, requires=("DiagonalScaling",), rtol=1e-9, atol=1e-10)
def scaling_forward(ns):
    """forward (z, log_det) with log-scales set here, float64, batch 7 (not the dimension 5)."""
    layer = _scaling(ns)
    with _switched_off(), torch.no_grad():
        z, log_det = layer(points(7, len(_LOG_SCALE), 60))
    return {"forward(x)[0] (z)": z, "forward(x)[1] (log_det)": log_det}


@SET.test("ch03-scaling", points=0.5, requires=("DiagonalScaling",))
def scaling_log_det(ns):
    """log_det of forward and inverse against the brute-force log|det J|, shape (B,)."""
    layer = _scaling(ns)
    x = points(7, len(_LOG_SCALE), 61)
    with _switched_off(), torch.no_grad():
        z, log_det = layer(x)
        _, log_det_inverse = layer.inverse(z)
    return {
        "DiagonalScaling(5), batch 7": {
            "forward log_det": log_det,
            "brute force forward": brute_log_det(lambda v: layer(v)[0], x),
            "inverse log_det": log_det_inverse,
            "brute force inverse": brute_log_det(lambda v: layer.inverse(v)[0], z),
        }
    }


@scaling_log_det.compare
def _(student, reference):
    _compare_log_dets(student, reference, tolerance=1e-9)


@SET.test("ch03-scaling", points=0.5, requires=("DiagonalScaling",), rtol=1e-9, atol=1e-10)
def scaling_inverse(ns):
    """inverse against the reference, inverse(forward(x)) == x, float32 dtypes and shapes."""
    layer = _scaling(ns)
    x = points(7, len(_LOG_SCALE), 62)
    with _switched_off(), torch.no_grad():
        x_of, log_det_of = layer.inverse(points(7, len(_LOG_SCALE), 63))
        x_back, _ = layer.inverse(layer(x)[0])
        layer32 = _scaling(ns, torch.float32)
        x32 = points(3, len(_LOG_SCALE), 64, torch.float32)
        z32, log_det32 = layer32(x32)
        x_back32, log_det_back32 = layer32.inverse(z32)
    return {
        "inverse(z)[0] (x)": x_of,
        "inverse(z)[1] (log_det)": log_det_of,
        "inverse(forward(x)) == x": bool((x_back - x).abs().max() < 1e-12),
        "float32 shapes and dtypes": shapes(z32, log_det32, x_back32, log_det_back32),
    }


@SET.test("ch03-scaling", points=0.5, requires=("logistic_log_prob",), rtol=1e-9, atol=1e-10)
def logistic_values(ns):
    """logistic_log_prob on (64, 5) points of moderate size, float64."""
    z = 3 * points(64, 5, 65)
    with _switched_off(), torch.no_grad():
        return {"logistic_log_prob(z)": ns.logistic_log_prob(z)}


_EXTREMES = (
    (0.0, 1.0, -1.0, 30.0, -30.0, 88.0),
    (-88.0, 100.0, -100.0, 750.0, -750.0, 1e4),
    (-1e4, 3.0, -1e4, 1e4, -5.0, 0.5),
)


@SET.test("ch03-scaling", points=0.5, requires=("logistic_log_prob",))
def logistic_stable(ns):
    """|z| up to 1e4 in float32 and float64: finite, accurate, dtype kept."""
    result = {}
    z64 = torch.tensor(_EXTREMES, dtype=torch.float64)  # (3, 6)
    magnitude = z64.abs()
    # -|z| - 2 log(1 + e^{-|z|}): the same density written another way, exact in float64.
    result["expected"] = -(magnitude + 2 * torch.log1p(torch.exp(-magnitude))).sum(1)
    for dtype in (torch.float32, torch.float64):
        with _switched_off(), torch.no_grad():
            result[str(dtype)] = ns.logistic_log_prob(z64.to(dtype))
    return result


@logistic_stable.compare
def _(student, reference):
    from coursepkg.testing import assert_close

    expected = student["expected"]
    for dtype, rtol in (("torch.float32", 1e-6), ("torch.float64", 1e-12)):
        value = student[dtype]
        what = f"logistic_log_prob of a {dtype.split('.')[1]} z with |z| up to 1e4"
        if not isinstance(value, torch.Tensor):
            raise AssertionError(f"{what}: expected a tensor, got {type(value)}")
        if value.dtype != getattr(torch, dtype.split(".")[1]):
            raise AssertionError(f"{what}: expected dtype {dtype}, got {value.dtype}")
        assert_close(value, expected, what, 1e-6, rtol)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch03-scaling",
    "return z, self.log_scale.sum().expand(x.shape[0])",
    "return z, -self.log_scale.sum().expand(x.shape[0])",
    fails="scaling_log_det",
)
# exp and log confused: the sum of the scales instead of the sum of the log-scales.
SET.variant(
    "ch03-scaling",
    "return z, self.log_scale.sum().expand(x.shape[0])",
    "return z, torch.exp(self.log_scale).sum().expand(x.shape[0])",
    fails="scaling_log_det",
)
# The log-determinant summed over the batch axis instead of the feature axis.
SET.variant(
    "ch03-scaling",
    "return z, self.log_scale.sum().expand(x.shape[0])",
    "return z, (torch.zeros_like(x) + self.log_scale).sum(0)",
    fails="scaling_log_det",
)
SET.variant(
    "ch03-scaling",
    "-(F.softplus(z) + F.softplus(-z)).sum(1)",
    "-(F.softplus(z) + F.softplus(-z)).sum(0)",
    fails="logistic_values",
)
SET.variant(
    "ch03-scaling",
    "return -(F.softplus(z) + F.softplus(-z)).sum(1)",
    "return (F.softplus(z) + F.softplus(-z)).sum(1)",
    fails="logistic_values",
)
# The textbook formula, which underflows to log(0) for large |z|.
SET.variant(
    "ch03-scaling",
    "return -(F.softplus(z) + F.softplus(-z)).sum(1)",
    "return torch.log(torch.sigmoid(z) * torch.sigmoid(-z)).sum(1)",
    fails="logistic_stable",
)


# -- ch03-likelihood ------------------------------------------------------------------------------

SET.check_cell("ch03-likelihood", points=0.5)


def _nice_stack(dim: int, seed: int, dtype=torch.float64):
    """coursepkg's NICE layers with random parameters: four additive couplings, then a scaling."""
    from coursepkg.layers import AdditiveCoupling, Scaling, alternating_mask

    torch.manual_seed(seed)
    layers = [AdditiveCoupling(alternating_mask(dim, i % 2), hidden=16) for i in range(4)]
    layers.append(Scaling(dim))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for parameter in layer.parameters():
                parameter.add_(0.4 * torch.randn(parameter.shape, generator=generator))
    return [layer.to(dtype) for layer in layers]


def _transform(layers):
    def transform(v):
        for layer in layers:
            v, _ = layer(v)
        return v

    return transform


def _normal_log_prob(z):
    return -0.5 * (z.square() + LOG_2PI).sum(1)


def _logistic_log_prob(z):
    return -(F.softplus(z) + F.softplus(-z)).sum(1)


@SET.test("ch03-likelihood", points=0.5, requires=("nice_log_prob",))
def likelihood_values(ns):
    """nice_log_prob against log p_Z(f(x)) + brute-force log|det J_f(x)|, gradients, float32."""
    layers = _nice_stack(4, 70)
    x = 2 * points(60, 4, 71)
    transform = _transform(layers)
    with torch.no_grad():
        z = transform(x)
    brute = brute_log_det(transform, x)
    result = {}
    for name, log_prior in (("normal", _normal_log_prob), ("logistic", _logistic_log_prob)):
        with _switched_off(layers=False):
            log_p = ns.nice_log_prob(layers, x, log_prior)
        result[f"{name} prior"] = {"nice_log_prob": log_p, "brute force": log_prior(z) + brute}
    with _switched_off(layers=False):
        log_p = ns.nice_log_prob(layers, x, _normal_log_prob)
    if isinstance(log_p, torch.Tensor) and log_p.requires_grad:
        log_p.sum().backward()
    result["gradients"] = all(
        p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool(p.grad.abs().sum() > 0)
        for layer in layers
        for p in layer.parameters()
    )
    layers32 = _nice_stack(4, 72, torch.float32)
    with _switched_off(layers=False), torch.no_grad():
        log_p32 = ns.nice_log_prob(layers32, points(5, 4, 73, torch.float32), _logistic_log_prob)
    result["float32"] = shapes(log_p32)
    return result


@likelihood_values.compare
def _(student, reference):
    from coursepkg.testing import assert_close

    for name in ("normal prior", "logistic prior"):
        log_p = student[name]["nice_log_prob"]
        exact = student[name]["brute force"]
        what = f"nice_log_prob with a {name}"
        if not isinstance(log_p, torch.Tensor) or log_p.dtype != exact.dtype:
            got = log_p.dtype if isinstance(log_p, torch.Tensor) else type(log_p)
            raise AssertionError(f"{what}: expected a tensor of dtype {exact.dtype}, got {got}")
        assert_close(log_p, exact, f"{what} vs log p_Z(f(x)) + brute-force log|det J_f(x)|", 1e-8, 1e-8)
    if not student["gradients"]:
        raise AssertionError(
            "nice_log_prob(...).sum().backward() does not give every parameter of the layers a "
            "finite, non-zero gradient: keep the computation differentiable"
        )
    default_compare(student["float32"], reference["float32"], "nice_log_prob for float32 layers and x")


@SET.test("ch03-likelihood", points=0.5, requires=("nice_sample",))
def sample_values(ns):
    """nice_sample with a seeded generator, float64, against the reference; reproducible."""
    layers = _nice_stack(4, 74)
    layers32 = _nice_stack(4, 76, torch.float32)
    with _switched_off(layers=False):
        first = ns.nice_sample(
            layers, 300, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64
        )
        again = ns.nice_sample(
            layers, 300, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64
        )
        default = ns.nice_sample(layers32, 10, 4, generator=torch.Generator().manual_seed(6))
    return {
        "nice_sample(layers, 300, 4, generator, float64)": first,
        "same seed, same samples": isinstance(first, torch.Tensor) and bool(torch.equal(first, again)),
        "nice_sample(float32 layers, 10, 4, generator), default dtype": default,
    }


@sample_values.compare
def _(student, reference):
    float32 = "nice_sample(float32 layers, 10, 4, generator), default dtype"
    rest = [key for key in reference if key != float32]
    default_compare({k: student.get(k) for k in rest}, {k: reference[k] for k in rest}, rtol=1e-7, atol=1e-9)
    default_compare({float32: student.get(float32)}, {float32: reference[float32]}, rtol=1e-5, atol=1e-6)


@SET.test("ch03-likelihood", points=0.5, requires=("nice_sample",))
def sample_distribution(ns):
    """20 000 samples mapped back by forward: logistic in every coordinate (Kolmogorov-Smirnov)."""
    layers = _nice_stack(4, 75)
    with _switched_off(layers=False):
        samples = ns.nice_sample(
            layers, 20_000, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        )
    if not isinstance(samples, torch.Tensor) or samples.shape != (20_000, 4):
        return {"shape": shapes(samples)}
    with torch.no_grad():
        latents = _transform(layers)(samples.detach().double())
    empirical = torch.arange(1, 20_001, dtype=torch.float64) / 20_000
    gaps = []
    for d in range(4):
        cdf = torch.sigmoid(latents[:, d].sort().values)
        gap = torch.maximum(empirical - cdf, cdf - (empirical - 1 / 20_000)).max().item()
        gaps.append(gap if math.isfinite(gap) else float("inf"))
    return {"shape": shapes(samples), "gaps": gaps}


@sample_distribution.compare
def _(student, reference):
    if student["shape"] != reference["shape"]:
        raise AssertionError(
            f"nice_sample(layers, 20000, 4, dtype=torch.float64): expected (shape, dtype) "
            f"{reference['shape'][0]}, got {student['shape'][0]}"
        )
    worst = max(student["gaps"])
    if not worst < 0.02:
        raise AssertionError(
            f"the samples, mapped back by the layers' forward, are not logistic: the largest gap between "
            f"an empirical CDF and the sigmoid is {worst:.3g}, more than 0.02 (draw z as the logit of u, "
            "then apply the inverses in reverse order)"
        )


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch03-likelihood",
    "return log_prior(z) + log_det",
    "return log_prior(z) - log_det",
    fails="likelihood_values",
)
# The inverses applied in the forward order.
SET.variant(
    "ch03-likelihood", "for layer in reversed(layers):", "for layer in layers:", fails="sample_distribution"
)


# -- ch03-experiment ------------------------------------------------------------------------------

SET.check_cell("ch03-experiment", points=0.5)


_BOUND_CASES = ((-1.728, 2), (0.5, 2), (1 + LOG_2PI, 2), (10.0, 3), (-20.0, 64))


def _bound(entropy, dim):
    variance = math.exp(2 * entropy / dim) / (2 * math.pi * math.e)
    return 0.5 * dim * (variance - 1 - math.log(variance))

    # A formula with another factor or exponent is far off; float32 rounding is not.


@SET.test("ch03-experiment", points=1, requires=("kl_lower_bound",), rtol=1e-6, atol=1e-7)
def bound_values(ns):
    """kl_lower_bound for five entropies and dimensions (one of them the prior's own entropy)."""
    result = {}
    for entropy, dim in _BOUND_CASES:
        value = ns.kl_lower_bound(entropy, dim)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        result[f"kl_lower_bound({entropy:.4g}, {dim})"] = value
    return result


def _experiment_target():
    from coursepkg.data import GaussianMixture

    return GaussianMixture(
        means=((-0.2, -0.1), (0.2, -0.1), (0.0, 0.2)), stds=(0.06, 0.04, 0.08), weights=(0.3, 0.3, 0.4)
    )


@SET.test("ch03-experiment", points=1.5, requires=("fit_nice",), timeout=150)
def fit_values(ns):
    """Trains coursepkg's NICE (4 couplings and a scaling) with fit_nice; measures its KL here."""
    from coursepkg import Compose, NormalizingFlow, StandardNormal
    from coursepkg.data import kl_divergence
    from coursepkg.layers import AdditiveCoupling, Scaling, alternating_mask

    target = _experiment_target()
    data = target.sample(5000, generator=torch.Generator().manual_seed(0))  # (5000, 2)
    torch.manual_seed(80)
    layers = [AdditiveCoupling(alternating_mask(2, i % 2), hidden=32) for i in range(4)] + [Scaling(2)]
    losses = ns.fit_nice(layers, data, 300)
    if not isinstance(losses, (list, tuple)) or not all(isinstance(v, (int, float)) for v in losses):
        return {"losses": "not a list of Python floats"}
    model = NormalizingFlow(Compose(*layers), StandardNormal(2))
    score = kl_divergence(model, target, num_samples=20_000)
    kl = score["kl"]
    return {
        "losses": [float(v) for v in losses],
        "kl": kl if math.isfinite(kl) else float("inf"),
        "bound": _bound(score["entropy"], 2),
    }


@fit_values.compare
def _(student, reference):
    losses = student["losses"]
    if isinstance(losses, str):
        raise AssertionError(f"fit_nice should return the list of the losses; it returned {losses}")
    if len(losses) != 300:
        raise AssertionError(f"fit_nice(layers, data, 300) returned {len(losses)} losses, expected 300")
    if not all(math.isfinite(v) for v in losses):
        raise AssertionError("fit_nice returned losses that are not finite")
    first, last = sum(losses[:50]) / 50, sum(losses[-50:]) / 50
    if not last < first - 1:
        raise AssertionError(
            f"the loss should fall by more than 1 nat over 300 steps; the mean of the first 50 is "
            f"{first:.3f}, of the last 50 {last:.3f}"
        )
    kl, bound = student["kl"], student["bound"]
    if not kl < bound / 2:
        raise AssertionError(
            f"after training with fit_nice, the KL of a NICE with a scaling layer is {kl:.3f} nats; it "
            f"should be below half the bound of a volume-preserving flow, {bound / 2:.3f} nats"
        )


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch03-experiment", "math.exp(2 * entropy / dim)", "math.exp(entropy / dim)", fails="bound_values")
# Gradient ascent on the negative log-likelihood.
SET.variant(
    "ch03-experiment",
    "loss = -nice_log_prob(layers, batch, normal_log_prob).mean()",
    "loss = nice_log_prob(layers, batch, normal_log_prob).mean()",
    fails="fit_values",
)
