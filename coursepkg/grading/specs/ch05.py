"""Tests of the exercises of chapter 5 (MAF and IAF), ``solutions/05_maf_iaf.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs. The autoregressive exercises run the student's code with conditioners
of the grader (:class:`_Conditioner`): fixed random masked networks, autoregressive in a given
order, that count their calls. Log-determinants are compared in float64 with the brute-force
``log|det J|`` of :mod:`coursepkg.jacobian`, computed here from the student's own map, and the
inverse is checked against a forward pass computed here, so that no exercise is judged by another
of the student's answers. While a probe calls the student's code, MADE and its masks, the
autoregressive layer and its transformers, the spline functions, the MAF and IAF builders and
``ReverseKL`` are switched off; for the autoregressive exercises also the brute-force Jacobian and
torch's determinants (their log-determinants have a closed form).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import coursepkg
from coursepkg import training
from coursepkg.grading.spec import (
    ExerciseSet,
    default_compare,
    forbid,
    forbid_brute_force_jacobian,
    forbid_determinants,
)
from coursepkg.grading.specs.common import LOG_2PI, brute_log_det, compare_log_dets, points
from coursepkg.layers import autoregressive, transformers
from coursepkg.testing import assert_close

_SPLINE = (
    "RationalQuadraticSpline",
    "rational_quadratic_spline",
    "rational_quadratic_spline_inverse",
    "_forward",
    "_inverse",
    "_log_derivative",
)
SET = ExerciseSet(
    "ch05",
    notebook="05_maf_iaf.ipynb",
    # MADE and its masks, the autoregressive layer and its transformers (also in the modules that
    # define them, and their methods), the spline functions, the builders and the reverse-KL loss.
    forbidden=forbid(coursepkg.nets, "MADE", "MaskedLinear", "degree_mask")
    + forbid(coursepkg.layers, "MaskedAutoregressive", "AffineTransformer", "RationalQuadraticSpline")
    + forbid(autoregressive, "MaskedAutoregressive", "AffineTransformer", "MADE")
    + forbid(transformers, *_SPLINE)
    + forbid(autoregressive.MaskedAutoregressive, "forward", "inverse")
    + forbid(autoregressive.AffineTransformer, "forward", "inverse")
    + forbid(transformers.RationalQuadraticSpline, "forward", "inverse")
    + forbid(coursepkg.models, "maf", "iaf")
    + forbid(training, "ReverseKL"),
)
# An autoregressive layer's log-determinant is a sum of log-scales.
_CLOSED_FORM = forbid_brute_force_jacobian(
    "the exercise asks for the log-determinant of an autoregressive layer, a sum of log-scales"
) + forbid_determinants("an autoregressive layer's Jacobian is triangular: no determinant is needed")


def _switched_off():
    """The set's answers, the brute-force Jacobian and torch's determinants raise within the block."""
    return SET.switched_off(*_CLOSED_FORM)


def _degrees(order) -> torch.Tensor:
    """The position of each dimension in ``order``, from 1 (computed here, never by the student)."""
    order = torch.as_tensor(order, dtype=torch.long)
    degrees = torch.empty_like(order)
    degrees[order] = torch.arange(1, len(order) + 1)
    return degrees


def _label(order) -> str:
    order = [int(i) for i in order]
    if order == sorted(order):
        return f"D = {len(order)}, natural order"
    return f"D = {len(order)}, order {order}"


# -- ch05-masks -----------------------------------------------------------------------------------

SET.check_cell("ch05-masks", points=0.5)

_ORDERS = ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 1], [3, 1, 4, 0, 2], [1, 5, 0, 3, 6, 2, 4], [0])


@SET.test("ch05-masks", points=0.5, requires=("input_degrees",))
def degrees_values(ns):
    """input_degrees for natural, reversed and random orders, and D = 1."""
    result = {}
    with SET.switched_off():
        for order in _ORDERS:
            result[f"input_degrees({order})"] = ns.input_degrees(torch.tensor(order))
    return result


def _hidden_cases():
    generator = torch.Generator().manual_seed(5)

    def draw(dim, size):
        return torch.randint(1, dim, (size,), generator=generator)

    return (
        ([2, 0, 1], [torch.tensor([1, 2, 2, 1, 1])]),
        ([3, 1, 4, 0, 2], [draw(5, 7), draw(5, 6)]),
        ([0, 1, 2, 3], [draw(4, 5), draw(4, 5), draw(4, 3)]),
        ([1, 5, 0, 3, 6, 2, 4], [torch.arange(9) % 6 + 1]),
        ([2, 1, 0], []),
        ([0], []),
    )


def _describe_hidden(hidden) -> str:
    if not hidden:
        return "no hidden layer"
    return "hidden degrees " + ", ".join(str(h.tolist()) for h in hidden)


@SET.test("ch05-masks", points=0.5, requires=("made_masks",))
def masks_values(ns):
    """made_masks against the reference, shapes and dtype included, for 0 to 3 hidden layers."""
    result = {}
    for order, hidden in _hidden_cases():
        label = f"made_masks({order}, {_describe_hidden(hidden)})"
        with SET.switched_off():
            masks = ns.made_masks(torch.tensor(order), [h.clone() for h in hidden])
        masks = list(masks) if isinstance(masks, (list, tuple)) else masks
        if not isinstance(masks, list) or len(masks) != len(hidden) + 1:
            result[f"{label}: number of masks"] = len(masks) if isinstance(masks, list) else repr(type(masks))
            continue
        result[f"{label}: number of masks"] = len(masks)
        for index, mask in enumerate(masks):
            name = "output mask" if index == len(hidden) else f"mask {index + 1}"
            result[f"{label}, {name}"] = mask
    return result


@SET.test("ch05-masks", points=0.5, requires=("made_masks",))
def masks_connectivity(ns):
    """Paths through the masks: output d sees input j exactly when m(j) < m(d), with full hidden layers."""
    result = {}
    for order in ([2, 0, 1], [3, 1, 4, 0, 2], [0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 2, 4]):
        dim = len(order)
        hidden = [torch.arange(2 * dim) % (dim - 1) + 1, torch.arange(dim + 1) % (dim - 1) + 1]
        with SET.switched_off():
            masks = ns.made_masks(torch.tensor(order), hidden)
        paths = torch.eye(dim, dtype=torch.float64)
        for mask in masks:
            paths = torch.as_tensor(mask).double() @ paths  # (out, D): paths from each input
        degrees = _degrees(order)
        result[f"{_label(order)}: shape of the paths matrix"] = tuple(paths.shape)
        result[f"{_label(order)}: output d sees input j (d, j)"] = paths > 0
        result[f"{_label(order)}: no output sees an input that is not strictly before it"] = bool(
            ((paths > 0) <= (degrees[None, :] < degrees[:, None])).all()
        )
    return result


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch05-masks",
    "degrees[order] = torch.arange(1, len(order) + 1)",
    "degrees = torch.arange(1, len(order) + 1)",
    fails="degrees_values",
)
SET.variant(
    "ch05-masks",
    "degrees[order] = torch.arange(1, len(order) + 1)",
    "degrees = order + 1",
    fails="degrees_values",
)
SET.variant(
    "ch05-masks", "torch.arange(1, len(order) + 1)", "torch.arange(len(order))", fails="degrees_values"
)
SET.variant(
    "ch05-masks",
    "(degrees[:, None] >= previous[None, :])",
    "(degrees[:, None] > previous[None, :])",
    fails="masks_values",
)
SET.variant(
    "ch05-masks",
    "(inputs[:, None] > previous[None, :])",
    "(inputs[:, None] >= previous[None, :])",
    fails="masks_connectivity",
)
SET.variant(
    "ch05-masks",
    "(degrees[:, None] >= previous[None, :])",
    "(degrees[None, :] >= previous[:, None])",
    fails="masks_values",
)
SET.variant(
    "ch05-masks",
    "inputs = input_degrees(order)",
    "inputs = torch.arange(1, len(order) + 1)",
    fails="masks_connectivity",
)


# -- the grader's conditioners --------------------------------------------------------------------


class _Conditioner(nn.Module):
    """``(B, D) -> (B, 2, D)``, ``[:, 0]`` the shift ``t``, ``[:, 1]`` the log-scale ``s``: a fixed random
    masked network, strictly autoregressive in ``order``, that counts its calls.

    A tanh hidden layer of random degrees plus a direct masked linear map, so that every parameter
    of a dimension depends on the dimensions before it; the log-scales are ``gain * tanh(.)``, of a
    few units at most, and every output has a constant part (the first dimension in the order has
    nothing else), so that a swapped or misplaced parameter does not agree with the reference by
    accident.
    """

    def __init__(self, order, seed: int, gain: float = 1.2, hidden: int = 24, dtype=torch.float64):
        super().__init__()
        order = torch.as_tensor(order, dtype=torch.long)
        dim = len(order)
        generator = torch.Generator().manual_seed(seed)
        degrees = _degrees(order)  # (D,), 1..D
        hidden_degrees = torch.randint(1, max(dim, 2), (hidden,), generator=generator)  # 1..D-1
        outputs = degrees.repeat(2)  # (2D,): the shifts, then the log-scales

        def draw(*shape, scale):
            return nn.Parameter(
                scale * torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
            )

        self.w1 = draw(hidden, dim, scale=1.0)
        self.b1 = draw(hidden, scale=0.5)
        self.w2 = draw(2 * dim, hidden, scale=0.6)
        self.b2 = draw(2 * dim, scale=0.6)
        self.direct = draw(2 * dim, dim, scale=0.4)
        self.register_buffer("m1", (hidden_degrees[:, None] >= degrees[None, :]).to(dtype))
        self.register_buffer("m2", (outputs[:, None] > hidden_degrees[None, :]).to(dtype))
        self.register_buffer("m_direct", (outputs[:, None] > degrees[None, :]).to(dtype))
        self.dim = dim
        self.gain = gain
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.tanh(F.linear(x, self.w1 * self.m1, self.b1))  # (B, H)
        out = F.linear(h, self.w2 * self.m2, self.b2) + F.linear(x, self.direct * self.m_direct)
        t, s = out.unflatten(1, (2, self.dim)).unbind(1)  # (B, D) each
        return torch.stack([t, self.gain * torch.tanh(s / self.gain)], dim=1)  # (B, 2, D)


def _affine_forward(conditioner, x):
    """The grader's own MAF forward, ``z = x e^{s(x)} + t(x)`` and ``sum(s)``."""
    t, s = conditioner(x).unbind(1)
    return x * torch.exp(s) + t, s.sum(1)


_AR_CASES = (
    ([0], 70),
    ([2, 0, 1], 71),
    ([3, 1, 4, 0, 2], 72),
    ([5, 4, 3, 2, 1, 0], 73),
    ([0, 1, 2, 3], 74),
)


# -- ch05-maf-density -----------------------------------------------------------------------------

SET.check_cell("ch05-maf-density", points=0.5)


@SET.test("ch05-maf-density", points=1, requires=("maf_forward",), rtol=1e-9, atol=1e-10)
def maf_forward_values(ns):
    """maf_forward (z, log_det) in float64 against the reference; one conditioner call; float32 kept."""
    result = {}
    for order, seed in _AR_CASES:
        conditioner = _Conditioner(order, seed)
        x = points(30, len(order), seed + 100)
        with _switched_off(), torch.no_grad():
            z, log_det = ns.maf_forward(x, conditioner)
        result[f"{_label(order)}: maf_forward(x)[0] (z)"] = z
        result[f"{_label(order)}: maf_forward(x)[1] (log_det)"] = log_det
        result[f"{_label(order)}: conditioner calls per maf_forward"] = conditioner.calls
    conditioner = _Conditioner([1, 2, 0], 75, dtype=torch.float32)
    with _switched_off(), torch.no_grad():
        z, log_det = ns.maf_forward(points(8, 3, 176, dtype=torch.float32), conditioner)
    result["float32: shapes and dtypes of (z, log_det)"] = [
        (tuple(t.shape), str(t.dtype)) for t in (z, log_det)
    ]
    return result


@SET.test("ch05-maf-density", points=0.5, requires=("maf_forward",))
def maf_log_det(ns):
    """The log_det of maf_forward against the brute-force log|det dz/dx| of its own z (float64)."""
    result = {}
    for order, seed in _AR_CASES[1:4]:
        conditioner = _Conditioner(order, seed)
        x = points(12, len(order), seed + 200)
        with _switched_off(), torch.no_grad():
            _, log_det = ns.maf_forward(x, conditioner)

        def fn(v, conditioner=conditioner):
            with _switched_off():
                return ns.maf_forward(v, conditioner)[0]

        result[_label(order)] = {
            "log_det": log_det,
            "expected": brute_log_det(fn, x),
            "against": "the brute-force log|det dz/dx| of your z",
        }
    return result


maf_log_det.compare(compare_log_dets)


def _grid(half_width: float, count: int) -> tuple[torch.Tensor, float]:
    axis = torch.linspace(-half_width, half_width, count, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)  # (count^2, 2)
    return grid, float(axis[1] - axis[0]) ** 2


@SET.test("ch05-maf-density", points=1, requires=("maf_log_prob",))
def maf_log_prob(ns):
    """maf_log_prob against the reference; for D = 2 its density integrates to 1 over a grid."""
    result = {}
    for order, seed in _AR_CASES[:4]:
        conditioner = _Conditioner(order, seed)
        x = points(30, len(order), seed + 300)
        with _switched_off(), torch.no_grad():
            result[f"{_label(order)}: maf_log_prob(x)"] = ns.maf_log_prob(x, conditioner)
    grid, cell = _grid(14.0, 561)
    conditioner = _Conditioner([1, 0], 76, gain=0.6)
    with _switched_off(), torch.no_grad():
        density = ns.maf_log_prob(grid, conditioner).exp()
    result["D = 2: integral of exp(maf_log_prob) over [-14, 14]^2"] = float(density.sum()) * cell
    return result


@maf_log_prob.compare
def _(student, reference):
    key = "D = 2: integral of exp(maf_log_prob) over [-14, 14]^2"
    values = {k: v for k, v in student.items() if k != key}
    default_compare(values, {k: v for k, v in reference.items() if k != key}, rtol=1e-9, atol=1e-10)
    integral = student.get(key)
    if not isinstance(integral, float) or not abs(integral - 1) < 1e-3:
        shown = f"{integral:.6g}" if isinstance(integral, float) else repr(integral)
        raise AssertionError(f"a density integrates to 1, but {key} is {shown}")


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch05-maf-density", "return z, s.sum(dim=1)", "return z, -s.sum(dim=1)", fails="maf_log_det")
SET.variant(
    "ch05-maf-density",
    "z = x * torch.exp(s) + t",
    "z = (x - t) * torch.exp(-s)",
    fails="maf_forward_values",
)
SET.variant(
    "ch05-maf-density",
    "t, s = conditioner(x).unbind(1)",
    "s, t = conditioner(x).unbind(1)",
    fails="maf_forward_values",
)
SET.variant(
    "ch05-maf-density", "return log_base + log_det", "return log_base - log_det", fails="maf_log_prob"
)
SET.variant(
    "ch05-maf-density",
    "-0.5 * (z.square() + math.log(2 * math.pi))",
    "-0.5 * z.square()",
    fails="maf_log_prob",
)


# -- ch05-maf-sample ------------------------------------------------------------------------------

SET.check_cell("ch05-maf-sample", points=0.5)


def _order_tensor(order) -> torch.Tensor:
    return torch.tensor(order, dtype=torch.long)


@SET.test("ch05-maf-sample", points=1, requires=("maf_inverse",), rtol=1e-9, atol=1e-10)
def maf_inverse_values(ns):
    """maf_inverse (x, log_det) of random z in float64 against the reference."""
    result = {}
    for order, seed in _AR_CASES:
        conditioner = _Conditioner(order, seed + 10)
        z = points(30, len(order), seed + 400)
        with _switched_off(), torch.no_grad():
            x, log_det = ns.maf_inverse(z, conditioner, _order_tensor(order))
        result[f"{_label(order)}: maf_inverse(z)[0] (x)"] = x
        result[f"{_label(order)}: maf_inverse(z)[1] (log_det)"] = log_det
    return result


@SET.test("ch05-maf-sample", points=0.5, requires=("maf_inverse",))
def maf_inverse_round_trip(ns):
    """maf_inverse inverts the grader's one-pass forward z = x e^{s(x)} + t(x), to within 1e-9."""
    result = {}
    for order, seed in _AR_CASES:
        conditioner = _Conditioner(order, seed + 20)
        x = points(40, len(order), seed + 500)
        with torch.no_grad():
            z, _ = _affine_forward(conditioner, x)
            with _switched_off():
                x_back, _ = ns.maf_inverse(z, conditioner, _order_tensor(order))
        error = (x_back - x).abs().max().item() if x_back.shape == x.shape else math.inf
        result[_label(order)] = error
    return result


@maf_inverse_round_trip.compare
def _(student, reference):
    for label in reference:
        error = student.get(label)
        if not (isinstance(error, float) and error < 1e-9):
            shown = f"by up to {error:.3g}" if isinstance(error, float) else "in shape"
            raise AssertionError(
                f"{label}: x = maf_inverse(z) for z = x e^(s(x)) + t(x), computed by the grader, differs "
                f"from x {shown}: it is not the inverse of the one-pass forward"
            )


@SET.test("ch05-maf-sample", points=0.5, requires=("maf_inverse",))
def maf_inverse_log_det(ns):
    """log_det of maf_inverse against the brute-force log|det dx/dz| and minus the forward's."""
    result = {}
    for order, seed in _AR_CASES[1:4]:
        conditioner = _Conditioner(order, seed + 30)
        z = points(10, len(order), seed + 600)
        order_tensor = _order_tensor(order)
        with _switched_off(), torch.no_grad():
            x, log_det = ns.maf_inverse(z, conditioner, order_tensor)

        def fn(v, conditioner=conditioner, order_tensor=order_tensor):
            with _switched_off():
                return ns.maf_inverse(v, conditioner, order_tensor)[0]

        with torch.no_grad():
            _, forward_log_det = _affine_forward(conditioner, x)
        result[_label(order)] = {
            "log_det": log_det,
            "expected": brute_log_det(fn, z),
            "against": "the brute-force log|det dx/dz| of your x",
        }
        result[f"{_label(order)} (minus the forward)"] = {
            "log_det": log_det,
            "expected": -forward_log_det,
            "against": "minus the forward log_det at your x",
        }
    return result


maf_inverse_log_det.compare(compare_log_dets)


@SET.test("ch05-maf-sample", points=0.5, requires=("maf_inverse",))
def maf_inverse_passes(ns):
    """At most D + 1 conditioner calls; float32 in, float32 out; z left unchanged."""
    result = {}
    for order, seed in _AR_CASES:
        conditioner = _Conditioner(order, seed + 40)
        z = points(6, len(order), seed + 700)
        copy = z.clone()
        with _switched_off(), torch.no_grad():
            ns.maf_inverse(z, conditioner, _order_tensor(order))
        result[f"{_label(order)}: at most D + 1 conditioner calls"] = conditioner.calls <= len(order) + 1
        result[f"{_label(order)}: z unchanged"] = bool(torch.equal(z, copy))
    conditioner = _Conditioner([2, 0, 1], 78, dtype=torch.float32)
    with _switched_off(), torch.no_grad():
        x, log_det = ns.maf_inverse(
            points(5, 3, 179, dtype=torch.float32), conditioner, _order_tensor([2, 0, 1])
        )
    result["float32: shapes and dtypes of (x, log_det)"] = [
        (tuple(t.shape), str(t.dtype)) for t in (x, log_det)
    ]
    return result


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch05-maf-sample",
    "t, s = conditioner(x).unbind(1)",
    "t, s = conditioner(z).unbind(1)",
    fails="maf_inverse_round_trip",
)
SET.variant(
    "ch05-maf-sample",
    "for i in torch.as_tensor(order).tolist():",
    "for i in range(len(order)):",
    fails="maf_inverse_round_trip",
)
SET.variant(
    "ch05-maf-sample",
    "for i in torch.as_tensor(order).tolist():",
    "for i in torch.as_tensor(order).tolist()[:-1]:",
    fails="maf_inverse_round_trip",
)
SET.variant(
    "ch05-maf-sample", "return x, -s.sum(dim=1)", "return x, s.sum(dim=1)", fails="maf_inverse_log_det"
)
SET.variant(
    "ch05-maf-sample",
    "(z[:, i] - t[:, i]) * torch.exp(-s[:, i])",
    "z[:, i] * torch.exp(-s[:, i]) - t[:, i]",
    fails="maf_inverse_values",
)


# -- ch05-reverse-kl ------------------------------------------------------------------------------

SET.check_cell("ch05-reverse-kl", points=0.5)


def _banana(x):
    """An unnormalised banana in the first two coordinates, a Gaussian in the others."""
    bend = x[:, 1] - 0.5 * x[:, 0].square()
    return -0.5 * (x[:, 0].square() / 2 + 4 * bend.square() + x[:, 2:].square().sum(1)) + 1.3


def _correlated(x):
    """An unnormalised Gaussian whose coordinates are correlated with their neighbours."""
    neighbours = x[:, 1:] - 0.8 * x[:, :-1]
    return -0.5 * (x[:, 0].square() + 2 * neighbours.square().sum(1)) - 0.7


_TARGETS = {"banana": _banana, "correlated Gaussian": _correlated}
_INDEPENDENT = "log_q vs log N(eps) - brute-force log|det dx/deps|"


@SET.test("ch05-reverse-kl", points=1, requires=("iaf_sample",))
def iaf_sample_values(ns):
    """iaf_sample (x, log_q) in float64 against the reference; one call; log_q from the brute force."""
    result = {}
    for order, seed in _AR_CASES[:4]:
        conditioner = _Conditioner(order, seed + 50)
        eps = points(20, len(order), seed + 800) / 1.5
        with _switched_off(), torch.no_grad():
            x, log_q = ns.iaf_sample(eps, conditioner)
        label = _label(order)
        result[f"{label}: iaf_sample(eps)[0] (x)"] = x
        result[f"{label}: iaf_sample(eps)[1] (log_q)"] = log_q
        result[f"{label}: conditioner calls per iaf_sample"] = conditioner.calls

        def fn(v, conditioner=conditioner):
            with _switched_off():
                return ns.iaf_sample(v, conditioner)[0]

        log_base = -0.5 * (eps.square() + LOG_2PI).sum(1)
        result[f"{label}: {_INDEPENDENT}"] = {
            "log_q": log_q,
            "independent": log_base - brute_log_det(fn, eps),
        }
    return result


@iaf_sample_values.compare
def _(student, reference):
    independent = [k for k in reference if k.endswith(_INDEPENDENT)]
    default_compare(
        {k: v for k, v in student.items() if k not in independent},
        {k: v for k, v in reference.items() if k not in independent},
        rtol=1e-9,
        atol=1e-10,
    )
    for key in independent:
        assert_close(student[key]["log_q"], student[key]["independent"], key, 1e-9, 1e-7)


@SET.test("ch05-reverse-kl", points=0.5, requires=("reverse_kl_loss",), rtol=1e-9, atol=1e-10)
def reverse_kl_value(ns):
    """reverse_kl_loss against the reference for two targets and three conditioners; a scalar."""
    result = {}
    for order, seed in _AR_CASES[1:4]:
        for name, target in _TARGETS.items():
            conditioner = _Conditioner(order, seed + 60)
            eps = points(64, len(order), seed + 900) / 1.5
            with _switched_off(), torch.no_grad():
                result[f"{_label(order)}, {name} target"] = ns.reverse_kl_loss(eps, conditioner, target)
    return result


@SET.test("ch05-reverse-kl", points=1, requires=("reverse_kl_loss",))
def reverse_kl_gradients(ns):
    """The gradient of reverse_kl_loss with respect to each parameter of the conditioner."""
    result = {}
    for (order, seed), name in zip(_AR_CASES[2:4], _TARGETS, strict=True):
        conditioner = _Conditioner(order, seed + 70)
        eps = points(64, len(order), seed + 1000) / 1.5
        names, parameters = zip(*conditioner.named_parameters(), strict=True)
        with _switched_off():
            loss = ns.reverse_kl_loss(eps, conditioner, _TARGETS[name])
        label = f"{_label(order)}, {name} target"
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad or loss.numel() != 1:
            result[label] = "the loss is not a scalar tensor that carries gradients"
            continue
        grads = torch.autograd.grad(loss.reshape(()), parameters, allow_unused=True)
        result[label] = {n: ("no gradient" if g is None else g) for n, g in zip(names, grads, strict=True)}
    return result


@reverse_kl_gradients.compare
def _(student, reference):
    for label, expected in reference.items():
        got = student.get(label)
        if isinstance(got, str):
            raise AssertionError(f"{label}: {got}")
        for name, grad in expected.items():
            if isinstance(got[name], str):
                raise AssertionError(f"{label}: the conditioner's parameter {name!r} received no gradient")
            assert_close(got[name], grad, f"{label}: gradient of {name!r}", 1e-9, 1e-7)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch05-reverse-kl",
    "return (log_q - log_target(x)).mean()",
    "return (log_q - log_target(x.detach())).mean()",
    fails="reverse_kl_gradients",
)
SET.variant(
    "ch05-reverse-kl",
    "return (log_q - log_target(x)).mean()",
    "return (log_target(x) - log_q).mean()",
    fails="reverse_kl_value",
)
SET.variant(
    "ch05-reverse-kl",
    "return (log_q - log_target(x)).mean()",
    "return (-log_target(x)).mean()",
    fails="reverse_kl_value",
)
SET.variant(
    "ch05-reverse-kl",
    "x = eps * torch.exp(s) + t",
    "x = (eps - t) * torch.exp(-s)",
    fails="iaf_sample_values",
)
SET.variant(
    "ch05-reverse-kl",
    "return x, log_base - s.sum(dim=1)",
    "return x, log_base + s.sum(dim=1)",
    fails="iaf_sample_values",
)


# -- ch05-rq-bin ----------------------------------------------------------------------------------

SET.check_cell("ch05-rq-bin", points=0.5)


def _bins(count: int, seed: int) -> dict[str, torch.Tensor]:
    """Random bins in float64: widths, heights and knot derivatives over two orders of magnitude."""
    generator = torch.Generator().manual_seed(seed)

    def log_uniform(low, high):
        u = torch.rand(count, generator=generator, dtype=torch.float64)
        return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * u)

    x_left = 4 * torch.rand(count, generator=generator, dtype=torch.float64) - 2
    width = log_uniform(0.05, 3.0)
    xi = torch.rand(count, generator=generator, dtype=torch.float64)
    return {
        "x": x_left + xi * width,
        "x_left": x_left,
        "width": width,
        "y_left": 4 * torch.rand(count, generator=generator, dtype=torch.float64) - 2,
        "height": log_uniform(0.05, 3.0),
        "d_left": log_uniform(0.05, 8.0),
        "d_right": log_uniform(0.05, 8.0),
    }


def _rq(ns, bins):
    with SET.switched_off():
        return ns.rq_bin(
            *(bins[k].clone() for k in ("x", "x_left", "width", "y_left", "height", "d_left", "d_right"))
        )


@SET.test("ch05-rq-bin", points=1, requires=("rq_bin",), rtol=1e-9, atol=1e-10)
def rq_bin_values(ns):
    """y and log dy/dx of random bins (float64) against the reference; a (4, 50) batch keeps its shape."""
    bins = _bins(200, seed=90)
    y, log_dydx = _rq(ns, bins)
    shaped = {k: v.reshape(4, 50) for k, v in _bins(200, seed=91).items()}
    y2, log_dydx2 = _rq(ns, shaped)
    return {
        "rq_bin(...)[0] (y)": y,
        "rq_bin(...)[1] (log dy/dx)": log_dydx,
        "(4, 50) inputs: y": y2,
        "(4, 50) inputs: log dy/dx": log_dydx2,
    }


@SET.test("ch05-rq-bin", points=0.5, requires=("rq_bin",))
def rq_bin_derivative(ns):
    """log_dydx against the log of the autograd derivative of the returned y (float64)."""
    bins = _bins(200, seed=92)
    bins["x"].requires_grad_(True)
    y, log_dydx = _rq(ns, bins)
    (derivative,) = torch.autograd.grad(y.sum(), bins["x"])
    return {"log_dydx": log_dydx.detach(), "log of autograd dy/dx": derivative.log()}


@rq_bin_derivative.compare
def _(student, reference):
    assert_close(
        student["log_dydx"],
        student["log of autograd dy/dx"],
        "log_dydx vs log of autograd dy/dx of y",
        1e-9,
        1e-7,
    )


@SET.test("ch05-rq-bin", points=0.5, requires=("rq_bin",), rtol=0, atol=1e-9)
def rq_bin_knots(ns):
    """y and dy/dx at the knots; with d_left = d_right = h / w the bin is a straight line."""
    bins = _bins(100, seed=93)
    result = {}
    for name, xi in (("left knot", 0.0), ("right knot", 1.0)):
        at_knot = dict(bins, x=(bins["x_left"] + xi * bins["width"]).requires_grad_(True))
        y, log_dydx = _rq(ns, at_knot)
        (derivative,) = torch.autograd.grad(y.sum(), at_knot["x"])
        expected_y = bins["y_left"] + xi * bins["height"]
        expected_d = bins["d_left"] if xi == 0 else bins["d_right"]
        result[f"{name}: y - expected y"] = y.detach() - expected_y
        result[f"{name}: exp(log_dydx) / expected derivative - 1"] = log_dydx.detach().exp() / expected_d - 1
        result[f"{name}: autograd dy/dx / expected derivative - 1"] = derivative / expected_d - 1
    slope = bins["height"] / bins["width"]
    y, log_dydx = _rq(ns, dict(bins, d_left=slope.clone(), d_right=slope.clone()))
    line = bins["y_left"] + slope * (bins["x"] - bins["x_left"])
    result["straight bin: y - the line"] = y - line
    result["straight bin: log_dydx - log(slope)"] = log_dydx - slope.log()
    return result


@SET.test("ch05-rq-bin", points=0.5, requires=("rq_bin",))
def rq_bin_spline(ns):
    """A spline of 6 bins on [-3, 3] assembled from rq_bin against coursepkg's rational_quadratic_spline."""
    generator = torch.Generator().manual_seed(94)
    widths = 0.2 + torch.rand(6, generator=generator, dtype=torch.float64) * 2
    heights = 0.2 + torch.rand(6, generator=generator, dtype=torch.float64) * 2
    derivatives = torch.exp(torch.randn(5, generator=generator, dtype=torch.float64))
    x = torch.linspace(-2.999, 2.999, 301, dtype=torch.float64)
    z, log_det = transformers.rational_quadratic_spline(x, widths, heights, derivatives, bound=3.0)
    x_knots, y_knots, knot_derivatives = transformers.spline_knots(widths, heights, derivatives, bound=3.0)
    k = torch.searchsorted(x_knots[1:-1], x, right=True)  # the bin of each x
    bins = {
        "x": x,
        "x_left": x_knots[k],
        "width": x_knots[k + 1] - x_knots[k],
        "y_left": y_knots[k],
        "height": y_knots[k + 1] - y_knots[k],
        "d_left": knot_derivatives[k],
        "d_right": knot_derivatives[k + 1],
    }
    y, log_dydx = _rq(ns, bins)
    return {"y": y, "coursepkg z": z, "log_dydx": log_dydx, "coursepkg log_det": log_det}


@rq_bin_spline.compare
def _(student, reference):
    assert_close(
        student["y"], student["coursepkg z"], "the spline's y vs rational_quadratic_spline", 1e-9, 1e-7
    )
    assert_close(
        student["log_dydx"],
        student["coursepkg log_det"],
        "the spline's log dy/dx vs rational_quadratic_spline",
        1e-9,
        1e-7,
    )


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch05-rq-bin",
    "log_dydx = 2 * torch.log(s) + torch.log(numerator)",
    "log_dydx = torch.log(numerator)",
    fails="rq_bin_derivative",
)
SET.variant(
    "ch05-rq-bin",
    "2 * s * xi_one_minus_xi + d_left",
    "s * xi_one_minus_xi + d_left",
    fails="rq_bin_derivative",
)
SET.variant(
    "ch05-rq-bin",
    "s * xi.square() + d_left * xi_one_minus_xi",
    "s * xi.square() + d_right * xi_one_minus_xi",
    fails="rq_bin_knots",
)
SET.variant(
    "ch05-rq-bin",
    "xi = (x - x_left) / width  # in [0, 1]",
    "xi = (x - x_left) / height  # in [0, 1]",
    fails="rq_bin_values",
)
SET.variant(
    "ch05-rq-bin",
    "(d_right + d_left - 2 * s) * xi_one_minus_xi",
    "(d_right + d_left - s) * xi_one_minus_xi",
    fails="rq_bin_spline",
)
