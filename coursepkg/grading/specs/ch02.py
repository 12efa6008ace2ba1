"""Tests of the exercises of chapter 2 (Jacobians and determinants), ``solutions/02_jacobians.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs; log-determinants are compared in float64. While a probe calls the
student's code, the brute-force Jacobian of ``coursepkg`` is switched off (and, for the O(D)
exercise, torch's determinant functions too), so that a graded function cannot lean on them
even through an attribute access such as ``coursepkg.log_abs_det_jacobian``.
"""

from __future__ import annotations

import math

import torch

import coursepkg
from coursepkg.grading.spec import (
    ExerciseSet,
    ForbiddenCall,
    default_compare,
    forbid,
    forbid_brute_force_jacobian,
    forbid_determinants,
)

SET = ExerciseSet(
    "ch02",
    notebook="02_jacobians.ipynb",
    forbidden=forbid_brute_force_jacobian(
        "this exercise asks for your own code, not coursepkg's brute-force Jacobian"
    )
    + forbid(coursepkg.layers, "Planar")
    + forbid(coursepkg, "Compose"),
)
_DETERMINANTS = forbid_determinants(
    "the O(D) log-determinant comes from the diagonal, without a determinant function"
)


def _switched_off(determinants: bool = False):
    """The set's forbidden answers (and torch's determinants) raise within the block."""
    return SET.switched_off(*(_DETERMINANTS if determinants else ()))


# -- ch02-jacobian --------------------------------------------------------------------------------

SET.check_cell("ch02-jacobian", points=0.5)


def _maps():
    """Three maps (B, D) -> (B, D) with non-symmetric Jacobians, and their test points."""
    generator = torch.Generator().manual_seed(10)
    weight3 = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    mixing4 = torch.randn(4, 4, generator=generator, dtype=torch.float64)

    def twist(x):
        return torch.stack([x[:, 0] * torch.exp(0.5 * x[:, 1]), x[:, 1] + 0.3 * torch.tanh(x[:, 0])], dim=1)

    def linear(x):
        return x @ weight3.to(x.dtype).T + 1.0

    def residual(x):
        return x + torch.tanh(x @ mixing4.to(x.dtype).T) * torch.arange(1, 5, dtype=x.dtype)

    return [
        ("twist", twist, torch.randn(50, 2, generator=generator, dtype=torch.float64)),
        ("x -> W x + 1 (3 dimensions)", linear, torch.randn(20, 3, generator=generator, dtype=torch.float64)),
        (
            "x -> x + tanh(M x) * (1, 2, 3, 4)",
            residual,
            torch.randn(30, 4, generator=generator, dtype=torch.float64),
        ),
    ]


@SET.test("ch02-jacobian", points=0.5, requires=("batched_jacobian",), rtol=1e-7, atol=1e-9)
def jacobian_values(ns):
    """batched_jacobian of three maps in float64."""
    result = {}
    with _switched_off():
        for name, fn, x in _maps():
            result[f"batched_jacobian({name})"] = ns.batched_jacobian(fn, x)
    return result


@SET.test("ch02-jacobian", points=0.5, requires=("batched_jacobian",))
def jacobian_float32(ns):
    """A float32 input: float32 (B, D, D) result without gradient history, x unchanged."""
    name, fn, x = _maps()[2]
    x = x.float()
    before = x.clone()
    with _switched_off():
        jacobian = ns.batched_jacobian(fn, x)
    if not isinstance(jacobian, torch.Tensor):
        return {"batched_jacobian returns a tensor": False}
    return {
        "batched_jacobian returns a tensor": True,
        "shape": tuple(jacobian.shape),
        "dtype": str(jacobian.dtype),
        "result without gradient history": not jacobian.requires_grad,
        "x unchanged (values, no requires_grad)": bool(torch.equal(x, before)) and not x.requires_grad,
    }


@SET.test("ch02-jacobian", points=0.5, requires=("twist_log_abs_det",), rtol=1e-7, atol=1e-9)
def twist_closed_form(ns):
    """The hand-derived log|det J| of twist."""
    generator = torch.Generator().manual_seed(11)
    x = 2 * torch.randn(400, 2, generator=generator, dtype=torch.float64)
    with _switched_off():
        return {"twist_log_abs_det(x)": ns.twist_log_abs_det(x)}


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch02-jacobian",
    "return torch.stack(rows, dim=1).detach()",
    "return torch.stack(rows, dim=2).detach()",
    fails="jacobian_values",
)
SET.variant(
    "ch02-jacobian",
    "return torch.stack(rows, dim=1).detach()",
    "return torch.stack(rows, dim=1).detach().double()",
    fails="jacobian_float32",
)
SET.variant(
    "ch02-jacobian",
    "return torch.stack(rows, dim=1).detach()",
    "return torch.stack(rows, dim=1).detach().transpose(1, 2)",
    fails="jacobian_values",
)
SET.variant(
    "ch02-jacobian",
    "    x = x.detach().requires_grad_(True)\n    with",
    "    x.requires_grad_(True)\n    with",
    fails="jacobian_float32",
)
SET.variant("ch02-jacobian", "return 0.5 * x2 + torch.log1p", "return torch.log1p", fails="twist_closed_form")
SET.variant("ch02-jacobian", "torch.log1p(-0.15 * x1", "torch.log1p(0.15 * x1", fails="twist_closed_form")


# -- ch02-autoregressive --------------------------------------------------------------------------

SET.check_cell("ch02-autoregressive", points=0.5)


def _autoregressive_inputs(dtype=torch.float64, dim=7, batch=64):
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    scale_weights = 0.5 * torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    scale_bias = torch.randn(dim, generator=generator, dtype=torch.float64)
    shift_weights = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return [t.to(dtype) for t in (x, scale_weights, scale_bias, shift_weights)]


@SET.test("ch02-autoregressive", points=0.5, requires=("autoregressive_affine",), rtol=1e-7, atol=1e-9)
def autoregressive_output(ns):
    """z for full random matrices (only their strictly lower triangles count)."""
    with _switched_off():
        z, _ = ns.autoregressive_affine(*_autoregressive_inputs())
    return {"z": z}


@SET.test("ch02-autoregressive", points=0.5, requires=("autoregressive_affine",))
def autoregressive_log_det(ns):
    """log_det in O(D): determinant functions and brute-force Jacobians are switched off."""
    inputs = _autoregressive_inputs()
    try:
        with _switched_off(determinants=True):
            _, log_det = ns.autoregressive_affine(*inputs)
    except ForbiddenCall as error:
        return {"log_det": f"{error}"}
    return {"log_det": log_det}


@autoregressive_log_det.compare
def _(student, reference):
    if isinstance(student.get("log_det"), str):
        raise AssertionError(student["log_det"])
    default_compare(student, reference, rtol=1e-7, atol=1e-9)


@SET.test("ch02-autoregressive", points=0.5, requires=("autoregressive_affine",))
def autoregressive_float32(ns):
    """float32 inputs give float32 outputs of shapes (B, D) and (B,)."""
    with _switched_off():
        z, log_det = ns.autoregressive_affine(*_autoregressive_inputs(torch.float32, dim=3, batch=5))
    return [(tuple(t.shape), str(t.dtype)) for t in (z, log_det)]


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch02-autoregressive",
    "scale_weights = torch.tril(scale_weights, diagonal=-1)",
    "scale_weights = torch.tril(scale_weights)",
    fails="autoregressive_output",
)
SET.variant(
    "ch02-autoregressive",
    "shift_weights = torch.tril(shift_weights, diagonal=-1)",
    "shift_weights = shift_weights.T",
    fails="autoregressive_output",
)
SET.variant(
    "ch02-autoregressive",
    "return z, torch.log(scale).sum(1)",
    "return z, torch.log(scale).sum(0)",
    fails="autoregressive_log_det",
)
SET.variant(
    "ch02-autoregressive",
    "return z, torch.log(scale).sum(1)",
    "return z, scale.sum(1)",
    fails="autoregressive_log_det",
)
SET.variant(
    "ch02-autoregressive",
    "return z, torch.log(scale).sum(1)",
    "jac = torch.func.vmap(torch.func.jacrev(lambda v: v * F.softplus(v @ scale_weights.T + scale_bias) + v @ shift_weights.T))(x)\n    return z, torch.linalg.slogdet(jac)[1]",
    fails="autoregressive_log_det",
)
SET.variant(
    "ch02-autoregressive",
    "return z, torch.log(scale).sum(1)",
    "return z.double(), torch.log(scale).sum(1).double()",
    fails="autoregressive_float32",
)


# -- ch02-planar ----------------------------------------------------------------------------------

SET.check_cell("ch02-planar", points=0.5)


def _planar(ns, dim, seed, wu=None, dtype=torch.float64):
    """A SoftsignPlanar with parameters set here; w.u is set to `wu` when given."""
    generator = torch.Generator().manual_seed(seed)
    layer = ns.SoftsignPlanar(dim).to(dtype)
    w = torch.randn(dim, generator=generator, dtype=torch.float64)
    u = torch.randn(dim, generator=generator, dtype=torch.float64)
    if wu is not None:
        u = u - (w @ u - wu) * w / (w @ w)
    with torch.no_grad():
        layer.w.copy_(w)
        layer.u.copy_(u)
        layer.b.fill_(0.4)
    return layer


def _planar_points(dim, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(100, dim, generator=generator, dtype=torch.float64)).to(dtype)


@SET.test("ch02-planar", points=0.5, requires=("SoftsignPlanar",), rtol=1e-7, atol=1e-9)
def planar_u_hat(ns):
    """u_hat against the reference, and w.u_hat > -1 for w.u = -5, 0.3 and 4."""
    result = {}
    with _switched_off():
        for wu in (-5.0, 0.3, 4.0):
            layer = _planar(ns, 5, 20, wu=wu)
            with torch.no_grad():
                u_hat = layer.u_hat()
            result[f"u_hat() for w.u = {wu}"] = u_hat
            result[f"w.u_hat > -1 for w.u = {wu}"] = bool(layer.w.detach() @ u_hat > -1)
    return result


@SET.test("ch02-planar", points=0.5, requires=("SoftsignPlanar",), rtol=1e-7, atol=1e-9)
def planar_forward(ns):
    """z of forward against the reference, in dimensions 2 and 5."""
    result = {}
    with _switched_off():
        for dim, wu in ((2, -0.8), (5, 2.0)):
            layer = _planar(ns, dim, 21 + dim, wu=wu)
            with torch.no_grad():
                z, _ = layer(_planar_points(dim, 31 + dim))
            result[f"forward(x)[0] (z), D = {dim}"] = z
    return result


@SET.test("ch02-planar", points=0.5, requires=("SoftsignPlanar",))
def planar_log_det(ns):
    """forward's log_det against the brute-force log|det J| (computed here) in dimensions 2, 5, 16."""
    from coursepkg.jacobian import log_abs_det_jacobian  # bound before the switch-off

    result = {}
    for dim, wu in ((2, -0.9), (5, 1.5), (16, -3.0)):
        layer = _planar(ns, dim, 40 + dim, wu=wu)
        x = _planar_points(dim, 50 + dim)
        with _switched_off(), torch.no_grad():
            _, log_det = layer(x)
        brute = log_abs_det_jacobian(lambda v, layer=layer: layer(v)[0], x)
        result[f"D = {dim}"] = {"log_det": log_det, "brute force": brute}
    return result


@planar_log_det.compare
def _(student, reference):
    from coursepkg.testing import assert_close

    for key, values in student.items():
        assert_close(
            values["log_det"],
            values["brute force"],
            f"forward log_det vs brute-force log|det J| ({key})",
            1e-8,
            1e-7,
        )


@SET.test("ch02-planar", points=0.5, requires=("SoftsignPlanar",), rtol=1e-7, atol=1e-8)
def planar_inverse(ns):
    """inverse against the reference; inverse(forward(x)) == x, opposite log-determinants."""
    result = {}
    with _switched_off():
        for dim, wu in ((2, -0.9), (5, 3.0)):
            layer = _planar(ns, dim, 60 + dim, wu=wu)
            x = _planar_points(dim, 70 + dim)
            with torch.no_grad():
                x_of, log_det_of = layer.inverse(x)
                z, log_det = layer(x)
                x_back, log_det_back = layer.inverse(z)
            result[f"inverse(z), D = {dim}"] = (x_of, log_det_of)
            result[f"inverse(forward(x)) == x, D = {dim}"] = bool((x_back - x).abs().max() < 1e-8)
            result[f"inverse log_det == -forward log_det, D = {dim}"] = bool(
                (log_det_back + log_det).abs().max() < 1e-8
            )
    return result


@SET.test("ch02-planar", points=0.5, requires=("SoftsignPlanar",))
def planar_float32(ns):
    """A float32 layer and input: float32 outputs of the right shapes in both directions."""
    layer = _planar(ns, 3, 80, dtype=torch.float32)
    x = _planar_points(3, 81, torch.float32)
    with _switched_off(), torch.no_grad():
        z, log_det = layer(x)
        x_back, log_det_back = layer.inverse(z)
    return [(tuple(t.shape), str(t.dtype)) for t in (z, log_det, x_back, log_det_back)]


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch02-planar", "* self.w / (self.w @ self.w)", "* self.w", fails="planar_u_hat")
SET.variant("ch02-planar", "(F.softplus(wu) - 1 - wu)", "(F.softplus(wu) - wu)", fails="planar_u_hat")
SET.variant(
    "ch02-planar",
    "derivative = 1 / (1 + a.abs()).square()  # h'(a)",
    "derivative = 1 / (1 + a.abs())  # h'(a)",
    fails="planar_log_det",
)
SET.variant(
    "ch02-planar",
    "return z, torch.log1p(derivative * (self.w @ u))",
    "return z, -torch.log1p(derivative * (self.w @ u))",
    fails="planar_log_det",
)
SET.variant(
    "ch02-planar",
    "return z, torch.log1p(derivative * (self.w @ u))",
    "return z, torch.log1p(derivative * (self.w @ self.u))",
    fails="planar_log_det",
)
SET.variant(
    "ch02-planar",
    "z = x + F.softsign(a).unsqueeze(1) * u",
    "z = x + torch.tanh(a).unsqueeze(1) * u",
    fails="planar_forward",
)
SET.variant(
    "ch02-planar",
    "t = 0.5 * (torch.sqrt(linear.square() + 4 * size) - linear)",
    "t = 0.5 * (-torch.sqrt(linear.square() + 4 * size) - linear)",
    fails="planar_inverse",
)
SET.variant("ch02-planar", "a = torch.sign(y) * t", "a = t", fails="planar_inverse")
SET.variant(
    "ch02-planar",
    "a = x @ self.w + self.b  # (B,)",
    "a = (x @ self.w + self.b).double()  # (B,)",
    fails="planar_float32",
)


# -- ch02-stack -----------------------------------------------------------------------------------

SET.check_cell("ch02-stack", points=0.5)


def _coursepkg_stack(dtype=torch.float64):
    from coursepkg.layers import ElementwiseAffine, LULinear, Planar, Reverse

    torch.manual_seed(13)
    layers = [ElementwiseAffine(3), LULinear(3), Planar(3), Reverse(3), Planar(3)]
    with torch.no_grad():
        for layer in layers:
            for parameter in layer.parameters():
                parameter.add_(0.5 * torch.randn_like(parameter))
    return [layer.to(dtype) for layer in layers]


def _stack_points(dtype=torch.float64):
    generator = torch.Generator().manual_seed(14)
    return torch.randn(64, 3, generator=generator, dtype=torch.float64).to(dtype)


@SET.test("ch02-stack", points=1, requires=("run_stack",), rtol=1e-7, atol=1e-9)
def stack_values(ns):
    """run_stack on five coursepkg layers, float64: z, total and per-layer log-determinants."""
    layers = _coursepkg_stack()
    with _switched_off(), torch.no_grad():
        z, log_det, per_layer = ns.run_stack(layers, _stack_points())
    return {"z": z, "log_det": log_det, "per_layer": per_layer}


@SET.test("ch02-stack", points=0.5, requires=("run_stack",))
def stack_float32(ns):
    """A one-layer stack in float32: shapes (B, D), (B,), (B, 1) and dtype float32."""
    layers = _coursepkg_stack(torch.float32)[1:2]
    with _switched_off(), torch.no_grad():
        outputs = ns.run_stack(layers, _stack_points(torch.float32))
    return [(tuple(t.shape), str(t.dtype)) for t in outputs]


class _Wrong(torch.nn.Module):
    """A layer whose log_det is too low by 0.25 (1 + x_1^2) at its input x: the gap must reveal it.

    The error varies from point to point and has one sign, so a gap without the absolute value,
    or a mean instead of the largest value, gives another number.
    """

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        z, log_det = self.layer(x)
        return z, log_det - 0.25 * (1 + x[:, 0].square())

    def inverse(self, z):
        raise NotImplementedError("not needed by the test")


@SET.test("ch02-stack", points=1, requires=("log_det_gap",))
def stack_gap(ns):
    """log_det_gap of a correct stack (tiny) and of a stack with one wrong log_det."""
    layers = _coursepkg_stack()
    x = _stack_points()
    broken = list(layers)
    broken[2] = _Wrong(layers[2])
    with _switched_off():
        good = ns.log_det_gap(layers, x)
        bad = ns.log_det_gap(broken, x)
    return {"gap of a correct stack": float(good), "gap with one wrong log_det": float(bad)}


@stack_gap.compare
def _(student, reference):
    good = student["gap of a correct stack"]
    bad = student["gap with one wrong log_det"]
    if not (math.isfinite(good) and abs(good) < 1e-8):
        raise AssertionError(f"log_det_gap of a correct stack should be below 1e-8, got {good:.3g}")
    key = "gap with one wrong log_det"
    default_compare({key: bad}, {key: reference[key]}, rtol=1e-6, atol=1e-7)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch02-stack",
    "    for layer in layers:\n        x, log_det = layer(x)",
    "    start = x\n    for layer in layers:\n        x, log_det = layer(start)",
    fails="stack_values",
)
SET.variant(
    "ch02-stack",
    "torch.stack(per_layer, dim=1) if per_layer",
    "torch.stack(per_layer, dim=0) if per_layer",
    fails="stack_values",
)
SET.variant(
    "ch02-stack",
    "return x, per_layer.sum(1), per_layer",
    "return x, per_layer[:, :-1].sum(1), per_layer",
    fails="stack_values",
)
SET.variant(
    "ch02-stack",
    "return x, per_layer.sum(1), per_layer",
    "return x.double(), per_layer.sum(1).double(), per_layer.double()",
    fails="stack_float32",
)
SET.variant(
    "ch02-stack",
    "(log_det - torch.linalg.slogdet(jacobians)[1]).abs().max()",
    "(log_det - torch.linalg.slogdet(jacobians)[1]).max()",
    fails="stack_gap",
)
SET.variant(
    "ch02-stack",
    "(log_det - torch.linalg.slogdet(jacobians)[1]).abs().max()",
    "(log_det - torch.linalg.slogdet(jacobians)[1]).abs().mean()",
    fails="stack_gap",
)
