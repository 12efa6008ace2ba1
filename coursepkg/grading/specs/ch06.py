"""Tests of the exercises of chapter 6 (Glow), ``solutions/06_glow.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs, in float64. Nothing is judged by the package's Glow layers: the
expected values are computed here (per-channel statistics, ``W x`` at every pixel with
``einsum``, ``P L U`` from the factors, ``H W log|det W|`` with ``slogdet`` of the student's own
matrix) and every log-determinant is also compared with the brute-force ``log|det J|`` of the
student's own map (one autograd Jacobian per sample). While a probe calls the student's code,
Glow's layers (ActNorm, the 1x1 convolutions, the LU linear layer, the split prior, their
methods and the modules that define them) and ``coursepkg.models.glow`` are switched off; for
the LU exercise also torch's determinants (its log-determinant is a sum of log-diagonals). The
split-prior exercise runs the student's code with fixed random convolutions of the grader.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

import coursepkg
from coursepkg.grading.spec import ExerciseSet, default_compare, forbid, forbid_determinants
from coursepkg.grading.specs.common import brute_log_det, compare_log_dets
from coursepkg.layers import actnorm, linear, multiscale
from coursepkg.testing import assert_close

_LAYERS = ("ActNorm", "Conv1x1", "LUConv1x1", "LULinear", "SplitPrior")
SET = ExerciseSet(
    "ch06",
    notebook="06_glow.ipynb",
    # Glow's layers (also in the modules that define them, and their methods), those modules
    # themselves, and the builder that stacks them.
    forbidden=forbid(coursepkg.layers, *_LAYERS, "actnorm", "linear", "multiscale")
    + forbid(actnorm, "ActNorm")
    + forbid(linear, "Conv1x1", "LUConv1x1", "LULinear", "_conv1x1")
    + forbid(multiscale, "SplitPrior")
    + forbid(actnorm.ActNorm, "forward", "inverse", "initialize")
    + forbid(linear.Conv1x1, "forward", "inverse")
    + forbid(linear.LULinear, "forward", "inverse", "weight", "_factors")
    + forbid(linear.LUConv1x1, "forward", "inverse", "weight", "_inverse_weight")
    + forbid(multiscale.SplitPrior, "forward", "inverse", "prior")
    + forbid(coursepkg.models, "glow"),
)
_NO_DETERMINANTS = forbid_determinants(
    "an LU factorisation gives log|det W| as the sum of the log-diagonal: no determinant is needed"
)
_F64 = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _label(shape) -> str:
    b, c, h, w = shape
    return f"B = {b}, C = {c}, H x W = {h} x {w}"


def _images(shape, seed: int) -> torch.Tensor:
    """``(B, C, H, W)`` float64 images whose channels have means in [-2, 2] and scales in [0.4, 2.7]."""
    generator = _generator(seed)
    c = shape[1]
    means = 4 * torch.rand(c, generator=generator, dtype=_F64) - 2
    scales = torch.exp(2 * torch.rand(c, generator=generator, dtype=_F64) - 1)
    noise = torch.randn(*shape, generator=generator, dtype=_F64)
    return means.view(1, c, 1, 1) + scales.view(1, c, 1, 1) * noise


def _pixelwise(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight @ x[b, :, h, w]`` at every pixel, computed here."""
    return torch.einsum("ij,bjhw->bihw", weight, x)


def _compare_pairs(student, reference, atol: float = 1e-9, rtol: float = 1e-7):
    """Entries ``{"got": ..., "expected": ...}`` are compared with each other (both computed in the
    student's process, the expected value by the grader's code); the others with the reference."""
    for key, expected in reference.items():
        if key not in student:
            raise AssertionError(f"missing entry {key!r}")
        got = student[key]
        if isinstance(expected, dict) and "expected" in expected:
            value = got["got"]
            if not isinstance(value, torch.Tensor):
                raise AssertionError(f"{key}: expected a tensor, got {type(value).__name__}")
            assert_close(value, got["expected"], key, atol, rtol)
        else:
            default_compare({key: got}, {key: expected})


def _pair(got, expected) -> dict:
    if isinstance(got, torch.Tensor):
        got = got.detach()
    return {"got": got, "expected": expected.detach()}


# -- ch06-actnorm ---------------------------------------------------------------------------------

SET.check_cell("ch06-actnorm", points=0.5)

_ACTNORM_SHAPES = ((16, 3, 4, 5), (8, 1, 3, 3), (5, 4, 2, 6), (32, 2, 1, 1))


def _standardised(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / (std + 1e-6)`` with the per-channel statistics of ``reference`` (population std)."""
    mean = reference.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = reference.std(dim=(0, 2, 3), unbiased=False).view(1, -1, 1, 1)
    return (x - mean) / (std + 1e-6)


def _actnorm(ns, channels: int, first_batch: torch.Tensor | None = None):
    """A new float64 ``ActNormLayer``, initialised by a training ``forward`` on ``first_batch``."""
    with SET.switched_off():
        layer = ns.ActNormLayer(channels).double()
        layer.train()
        if first_batch is not None:
            layer(first_batch)
    return layer


@SET.test("ch06-actnorm", points=1, requires=("ActNormLayer",))
def actnorm_init(ns):
    """The first training batch comes out standardised: per-channel mean 0, std 1, (x - mean) / std."""
    result = {}
    for index, shape in enumerate(_ACTNORM_SHAPES):
        x = _images(shape, seed=600 + index)
        layer = _actnorm(ns, shape[1])
        with SET.switched_off():
            z, _ = layer(x)  # gradients on, as in training
        z = z.detach()
        label = _label(shape)
        result[f"{label}: per-channel mean of z"] = z.mean(dim=(0, 2, 3))
        result[f"{label}: per-channel standard deviation of z"] = z.std(dim=(0, 2, 3), unbiased=False)
        result[f"{label}: z vs (x - mean) / std of the batch"] = _pair(z, _standardised(x, x))
    return result


actnorm_init.compare(lambda student, reference: _compare_pairs(student, reference, 1e-5, 1e-5))


@SET.test("ch06-actnorm", points=0.5, requires=("ActNormLayer",))
def actnorm_second_batch(ns):
    """A second batch, and a copy loaded by load_state_dict, use the first batch's statistics."""
    result = {}
    for index, shape in enumerate(_ACTNORM_SHAPES[:3]):
        first = _images(shape, seed=610 + index)
        layer = _actnorm(ns, shape[1], first)
        second = 0.5 + 3 * _images(shape, seed=620 + index)
        with SET.switched_off():
            z, _ = layer(second)
            restored = ns.ActNormLayer(shape[1]).double()
            restored.load_state_dict(layer.state_dict())
            restored.train()
            third = _images(shape, seed=630 + index) - 1
            z_restored, _ = restored(third)
        label = _label(shape)
        result[f"{label}: second training batch vs the first batch's standardisation"] = _pair(
            z, _standardised(second, first)
        )
        result[f"{label}: layer restored by load_state_dict, its first training batch"] = _pair(
            z_restored, _standardised(third, first)
        )
    return result


actnorm_second_batch.compare(lambda student, reference: _compare_pairs(student, reference, 1e-5, 1e-5))


_SMALL_SHAPES = ((3, 2, 2, 3), (2, 3, 2, 2), (2, 1, 3, 1), (2, 2, 1, 1))


@SET.test("ch06-actnorm", points=0.5, requires=("ActNormLayer",))
def actnorm_log_det(ns):
    """log_det of an initialised layer against the brute-force log|det dz/dx| of its own z (float64)."""
    result = {}
    for index, shape in enumerate(_SMALL_SHAPES):
        layer = _actnorm(ns, shape[1], _images((6, *shape[1:]), seed=640 + index))
        layer.eval()
        x = _images(shape, seed=650 + index)
        with SET.switched_off(), torch.no_grad():
            _, log_det = layer(x)

        def fn(v, layer=layer):
            with SET.switched_off():
                return layer(v)[0]

        result[f"{_label(shape)}: log_det vs the brute-force log|det dz/dx| of your z"] = {
            "log_det": log_det,
            "expected": brute_log_det(fn, x),
        }
    return result


actnorm_log_det.compare(compare_log_dets)


@SET.test("ch06-actnorm", points=0.5, requires=("ActNormLayer",))
def actnorm_inverse(ns):
    """inverse undoes forward, with minus its log_det; inverse on a new layer does not initialise it."""
    result = {}
    for index, shape in enumerate(_ACTNORM_SHAPES[:3]):
        layer = _actnorm(ns, shape[1], _images(shape, seed=660 + index))
        x = _images(shape, seed=670 + index)
        with SET.switched_off(), torch.no_grad():
            z, log_det = layer(x)
            x_back, log_det_back = layer.inverse(z)
        label = _label(shape)
        result[f"{label}: inverse(forward(x)) vs x"] = _pair(x_back, x)
        result[f"{label}: inverse log_det vs minus the forward log_det"] = _pair(log_det_back, -log_det)
        fresh = _actnorm(ns, shape[1])
        with SET.switched_off(), torch.no_grad():
            x_fresh, _ = fresh.inverse(x)
            z_fresh, _ = fresh(x)  # still its first training batch: it initialises now
        result[f"{label}: inverse of a new layer (training mode) vs its input"] = _pair(x_fresh, x)
        result[f"{label}: then the first forward vs (x - mean) / std"] = _pair(z_fresh, _standardised(x, x))
    return result


actnorm_inverse.compare(lambda student, reference: _compare_pairs(student, reference, 1e-5, 1e-5))


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch06-actnorm",
    "log_det = h * w * self.log_scale.sum()",
    "log_det = self.log_scale.sum()",
    fails="actnorm_log_det",
)
SET.variant(
    "ch06-actnorm",
    "log_det = h * w * self.log_scale.sum()",
    "log_det = -h * w * self.log_scale.sum()",
    fails="actnorm_log_det",
)
SET.variant(
    "ch06-actnorm",
    "if self.training and not self.initialized:",
    "if self.training:",
    fails="actnorm_second_batch",
)
SET.variant(
    "ch06-actnorm",
    'self.register_buffer("initialized", torch.tensor(False))',
    "self.initialized = torch.tensor(False)",
    fails="actnorm_second_batch",
)
SET.variant(
    "ch06-actnorm",
    "std = x.std(dim=(0, 2, 3), unbiased=False)",
    "std = x.var(dim=(0, 2, 3), unbiased=False)",
    fails="actnorm_init",
)
SET.variant(
    "ch06-actnorm",
    "std = x.std(dim=(0, 2, 3), unbiased=False)",
    "std = x.std(dim=(0, 2, 3))",
    fails="actnorm_init",
)
SET.variant(
    "ch06-actnorm",
    "self.log_scale.copy_(-torch.log(std + 1e-6))",
    "self.log_scale.copy_(torch.log(std + 1e-6))",
    fails="actnorm_init",
)
SET.variant(
    "ch06-actnorm",
    "x = z * torch.exp(-self.log_scale.view(1, c, 1, 1)) + self.loc.view(1, c, 1, 1)",
    "x = (z + self.loc.view(1, c, 1, 1)) * torch.exp(-self.log_scale.view(1, c, 1, 1))",
    fails="actnorm_inverse",
)


# -- ch06-conv1x1-logdet --------------------------------------------------------------------------

SET.check_cell("ch06-conv1x1-logdet", points=0.5)


def _weight(channels: int, seed: int, negative: bool, dtype=_F64) -> torch.Tensor:
    """A random invertible ``(C, C)`` matrix, not orthogonal, with a determinant of the given sign."""
    generator = _generator(seed)
    rotation = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=_F64))[0]
    scales = torch.exp(0.6 * torch.randn(channels, generator=generator, dtype=_F64))
    weight = rotation * scales + 0.2 * torch.randn(channels, channels, generator=generator, dtype=_F64)
    if (torch.linalg.det(weight) < 0) != negative:
        weight[:, 0] = -weight[:, 0]
    return weight.to(dtype)


_CONV_CASES = (
    ((4, 1, 3, 3), True),
    ((5, 2, 4, 4), False),
    ((3, 3, 2, 5), True),
    ((2, 4, 5, 3), False),
    ((3, 5, 1, 4), True),
)


def _conv(ns, name, *args):
    with SET.switched_off(), torch.no_grad():
        return getattr(ns, name)(*args)


@SET.test("ch06-conv1x1-logdet", points=1, requires=("conv1x1",))
def conv1x1_values(ns):
    """z against W x at every pixel and log_det against H W log|det W|, both computed here (float64)."""
    result = {}
    for index, (shape, negative) in enumerate(_CONV_CASES):
        weight = _weight(shape[1], seed=700 + index, negative=negative)
        x = _images(shape, seed=710 + index)
        z, log_det = _conv(ns, "conv1x1", x, weight.clone())
        b, _, h, w = shape
        sign = "negative" if negative else "positive"
        label = f"{_label(shape)}, det W {sign}"
        result[f"{label}: z vs W x at every pixel"] = _pair(z, _pixelwise(weight, x))
        expected = h * w * torch.linalg.slogdet(weight)[1] * torch.ones(b, dtype=_F64)
        result[f"{label}: log_det vs H W log|det W|"] = _pair(log_det, expected)
    z, log_det = _conv(
        ns, "conv1x1", _images((2, 3, 2, 2), 719).float(), _weight(3, 719, True, torch.float32)
    )
    result["float32: shapes and dtypes of (z, log_det)"] = [
        (tuple(t.shape), str(t.dtype)) for t in (z, log_det)
    ]
    return result


conv1x1_values.compare(_compare_pairs)


@SET.test("ch06-conv1x1-logdet", points=0.5, requires=("conv1x1",))
def conv1x1_brute(ns):
    """log_det against the brute-force log|det dz/dx| of your own z (float64)."""
    result = {}
    for index, shape in enumerate(_SMALL_SHAPES):
        weight = _weight(shape[1], seed=720 + index, negative=index % 2 == 0)
        x = _images(shape, seed=730 + index)
        _, log_det = _conv(ns, "conv1x1", x, weight)

        def fn(v, weight=weight):
            with SET.switched_off():
                return ns.conv1x1(v, weight)[0]

        result[f"{_label(shape)}: log_det vs the brute-force log|det dz/dx| of your z"] = {
            "log_det": log_det,
            "expected": brute_log_det(fn, x),
        }
    return result


conv1x1_brute.compare(compare_log_dets)


@SET.test("ch06-conv1x1-logdet", points=0.5, requires=("conv1x1", "conv1x1_inverse"))
def conv1x1_inverse_round_trip(ns):
    """conv1x1_inverse undoes conv1x1, and its log_det is minus the forward's (float64)."""
    result = {}
    for index, (shape, negative) in enumerate(_CONV_CASES):
        weight = _weight(shape[1], seed=740 + index, negative=negative)
        x = _images(shape, seed=750 + index)
        z, log_det = _conv(ns, "conv1x1", x, weight)
        x_back, log_det_back = _conv(ns, "conv1x1_inverse", z, weight)
        label = _label(shape)
        result[f"{label}: conv1x1_inverse(conv1x1(x)) vs x"] = _pair(x_back, x)
        result[f"{label}: inverse log_det vs minus the forward log_det"] = _pair(log_det_back, -log_det)
    return result


conv1x1_inverse_round_trip.compare(_compare_pairs)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch06-conv1x1-logdet",
    "log_det = h * w * torch.linalg.slogdet(weight)[1]",
    "log_det = torch.linalg.slogdet(weight)[1]",
    fails="conv1x1_values",
)
SET.variant(
    "ch06-conv1x1-logdet",
    "log_det = h * w * torch.linalg.slogdet(weight)[1]",
    "log_det = torch.linalg.slogdet(weight)[1]",
    fails="conv1x1_brute",
)
SET.variant(
    "ch06-conv1x1-logdet",
    "log_det = h * w * torch.linalg.slogdet(weight)[1]",
    "log_det = h * w * torch.det(weight)",
    fails="conv1x1_values",
)
SET.variant(
    "ch06-conv1x1-logdet",
    "log_det = h * w * torch.linalg.slogdet(weight)[1]",
    "log_det = h * w * torch.log(torch.det(weight))",
    fails="conv1x1_values",
)
SET.variant(
    "ch06-conv1x1-logdet",
    'z = torch.einsum("ij,bjhw->bihw", weight, x)',
    'z = torch.einsum("ji,bjhw->bihw", weight, x)',
    fails="conv1x1_values",
)
SET.variant(
    "ch06-conv1x1-logdet",
    "return x, -(h * w) * log_abs_det * z.new_ones(b)",
    "return x, (h * w) * log_abs_det * z.new_ones(b)",
    fails="conv1x1_inverse_round_trip",
)


# -- ch06-lu --------------------------------------------------------------------------------------

SET.check_cell("ch06-lu", points=0.5)


def _lu_factors(channels: int, seed: int, dtype=_F64) -> tuple[torch.Tensor, ...]:
    """``(permutation, lower, upper, sign, log_diag)``: full random ``lower`` and ``upper`` (their
    diagonals and other triangles must be ignored), a permutation other than the identity and
    both signs when ``C > 1``."""
    generator = _generator(seed)
    order = torch.randperm(channels, generator=generator)
    if channels > 1 and torch.equal(order, torch.arange(channels)):
        order = order.roll(1)
    permutation = torch.eye(channels, dtype=_F64)[order]
    lower = 0.7 * torch.randn(channels, channels, generator=generator, dtype=_F64)
    upper = 0.7 * torch.randn(channels, channels, generator=generator, dtype=_F64)
    sign = torch.where(torch.rand(channels, generator=generator) < 0.5, -1.0, 1.0).to(_F64)
    sign[0] = -1.0
    if channels > 1:
        sign[-1] = 1.0
    log_diag = 0.5 * torch.randn(channels, generator=generator, dtype=_F64)
    return tuple(t.to(dtype) for t in (permutation, lower, upper, sign, log_diag))


def _plu(permutation, lower, upper, sign, log_diag) -> torch.Tensor:
    """``P L U`` from the factors, computed here."""
    eye = torch.eye(len(log_diag), dtype=log_diag.dtype)
    return (
        permutation
        @ (torch.tril(lower, -1) + eye)
        @ (torch.triu(upper, 1) + torch.diag(sign * log_diag.exp()))
    )


def _lu(ns, name, *args):
    with SET.switched_off(*_NO_DETERMINANTS), torch.no_grad():
        return getattr(ns, name)(*(a.clone() for a in args))


_LU_CASES = ((4, 1, 3, 3), (5, 2, 4, 4), (3, 3, 2, 5), (2, 4, 5, 3), (3, 5, 1, 4))


@SET.test("ch06-lu", points=1, requires=("lu_weight",))
def lu_weight_values(ns):
    """lu_weight against P L U computed here, C from 1 to 5 (float64); float32 in, float32 out."""
    result = {}
    for channels in range(1, 6):
        for seed in (800 + channels, 810 + channels):
            factors = _lu_factors(channels, seed)
            weight = _lu(ns, "lu_weight", *factors)
            result[f"C = {channels}, seed {seed}: lu_weight vs P L U"] = _pair(weight, _plu(*factors))
    weight = _lu(ns, "lu_weight", *_lu_factors(3, 820, torch.float32))
    result["float32: shape and dtype of W"] = (tuple(weight.shape), str(weight.dtype))
    return result


lu_weight_values.compare(_compare_pairs)


@SET.test("ch06-lu", points=0.5, requires=("lu_conv1x1",))
def lu_conv1x1_values(ns):
    """z of lu_conv1x1 against W x at every pixel, with W = P L U computed here (float64)."""
    result = {}
    for index, shape in enumerate(_LU_CASES):
        factors = _lu_factors(shape[1], seed=830 + index)
        x = _images(shape, seed=840 + index)
        z, _ = _lu(ns, "lu_conv1x1", x, *factors)
        result[f"{_label(shape)}: z vs W x at every pixel"] = _pair(z, _pixelwise(_plu(*factors), x))
    return result


lu_conv1x1_values.compare(_compare_pairs)


@SET.test("ch06-lu", points=1, requires=("lu_weight", "lu_conv1x1"))
def lu_log_det(ns):
    """log_det against H W log|det W| of your W (slogdet, here) and the brute-force log|det dz/dx| of your z."""
    result = {}
    for index, shape in enumerate(_LU_CASES):
        factors = _lu_factors(shape[1], seed=850 + index)
        x = _images(shape, seed=860 + index)
        _, log_det = _lu(ns, "lu_conv1x1", x, *factors)
        weight = _lu(ns, "lu_weight", *factors)
        b, _, h, w = shape
        result[f"{_label(shape)}: log_det vs H W log|det W| of your W"] = {
            "log_det": log_det,
            "expected": h * w * torch.linalg.slogdet(weight)[1] * torch.ones(b, dtype=_F64),
        }
    for index, shape in enumerate(_SMALL_SHAPES):
        factors = _lu_factors(shape[1], seed=870 + index)
        x = _images(shape, seed=880 + index)
        _, log_det = _lu(ns, "lu_conv1x1", x, *factors)

        def fn(v, factors=factors):
            with SET.switched_off(*_NO_DETERMINANTS):
                return ns.lu_conv1x1(v, *factors)[0]

        result[f"{_label(shape)}: log_det vs the brute-force log|det dz/dx| of your z"] = {
            "log_det": log_det,
            "expected": brute_log_det(fn, x),
        }
    return result


lu_log_det.compare(compare_log_dets)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch06-lu",
    "torch.diag(sign * torch.exp(log_diag))",
    "torch.diag(torch.exp(log_diag))",
    fails="lu_weight_values",
)
SET.variant(
    "ch06-lu",
    "l_factor = torch.tril(lower, diagonal=-1) + eye",
    "l_factor = torch.tril(lower)",
    fails="lu_weight_values",
)
SET.variant(
    "ch06-lu",
    "torch.triu(upper, diagonal=1)",
    "torch.triu(upper)",
    fails="lu_weight_values",
)
SET.variant(
    "ch06-lu",
    "return permutation @ l_factor @ u_factor",
    "return (permutation @ l_factor @ u_factor).T",
    fails="lu_weight_values",
)
SET.variant(
    "ch06-lu",
    "log_det = h * w * log_diag.sum()",
    "log_det = h * w * torch.log(sign * torch.exp(log_diag)).sum()",
    fails="lu_log_det",
)
SET.variant(
    "ch06-lu",
    "log_det = h * w * log_diag.sum()",
    "log_det = log_diag.sum()",
    fails="lu_log_det",
)
SET.variant(
    "ch06-lu",
    'z = torch.einsum("ij,bjhw->bihw", weight, x)',
    'z = torch.einsum("ji,bjhw->bihw", weight, x)',
    fails="lu_conv1x1_values",
)


# -- ch06-split-prior -----------------------------------------------------------------------------

SET.check_cell("ch06-split-prior", points=0.5)


class _Conditioner(nn.Module):
    """A fixed random 3x3 convolution ``(B, keep, H, W) -> (B, 2 (C - keep), H, W)`` (means, then
    log-standard deviations of a few tenths to about one), that counts its calls and remembers
    the channels it was given."""

    def __init__(self, keep: int, out: int, seed: int):
        super().__init__()
        generator = _generator(seed)
        self.weight = nn.Parameter(0.3 * torch.randn(2 * out, keep, 3, 3, generator=generator, dtype=_F64))
        self.bias = nn.Parameter(0.5 * torch.randn(2 * out, generator=generator, dtype=_F64))
        self.calls = 0
        self.inputs: list[int] = []

    def forward(self, y_keep):
        self.calls += 1
        self.inputs.append(int(y_keep.shape[1]))
        return functional.conv2d(y_keep, self.weight, self.bias, padding=1)


def _normal_log_prob(y, keep, conditioner) -> torch.Tensor:
    """``sum log N(y_out; mu, sigma^2)``, computed here with ``torch.distributions``."""
    mu, log_std = conditioner(y[:, :keep]).chunk(2, dim=1)
    normal = torch.distributions.Normal(mu, log_std.exp())
    return normal.log_prob(y[:, keep:]).sum(dim=(1, 2, 3))


_SPLIT_CASES = (((6, 4, 3, 3), 2), ((5, 2, 4, 2), 1), ((4, 6, 2, 3), 4), ((3, 3, 1, 1), 1))


@SET.test("ch06-split-prior", points=1, requires=("split_prior_log_prob",))
def split_prior_values(ns):
    """Against sum log N(y_out; mu, sigma^2) computed here; one conditioner call, on the kept channels."""
    result = {}
    for index, (shape, keep) in enumerate(_SPLIT_CASES):
        conditioner = _Conditioner(keep, shape[1] - keep, seed=900 + index)
        y = _images(shape, seed=910 + index)
        with SET.switched_off(), torch.no_grad():
            log_p = ns.split_prior_log_prob(y.clone(), keep, conditioner)
        calls, inputs = conditioner.calls, list(conditioner.inputs)
        with torch.no_grad():
            expected = _normal_log_prob(y, keep, conditioner)
        label = f"{_label(shape)}, keep = {keep}"
        result[f"{label}: log p(y_out | y_keep) vs torch.distributions.Normal"] = _pair(log_p, expected)
        result[f"{label}: conditioner calls"] = calls
        result[f"{label}: channels given to the conditioner"] = inputs
    conditioner = _Conditioner(1, 1, seed=919).float()
    with SET.switched_off(), torch.no_grad():
        log_p = ns.split_prior_log_prob(_images((2, 2, 2, 2), 919).float(), 1, conditioner)
    result["float32: shape and dtype"] = (tuple(log_p.shape), str(log_p.dtype))
    return result


split_prior_values.compare(_compare_pairs)


@SET.test("ch06-split-prior", points=0.5, requires=("split_prior_log_prob",))
def split_prior_normalised(ns):
    """With one factored-out entry, exp(log p) integrates to 1 over y_out for several y_keep."""
    result = {}
    grid = torch.linspace(-20.0, 20.0, 4001, dtype=_F64)
    step = float(grid[1] - grid[0])
    for channels, seed in ((2, 920), (3, 921)):
        keep = channels - 1
        conditioner = _Conditioner(keep, 1, seed=seed)
        for draw in range(3):
            y_keep = _images((1, keep, 1, 1), seed=seed * 10 + draw)
            y = torch.cat([y_keep.expand(len(grid), keep, 1, 1), grid.view(-1, 1, 1, 1)], dim=1)
            with SET.switched_off(), torch.no_grad():
                log_p = ns.split_prior_log_prob(y, keep, conditioner)
            integral = log_p.exp().sum() * step
            result[f"C = {channels}, keep = {keep}, y_keep number {draw + 1}: integral over y_out"] = _pair(
                integral, torch.tensor(1.0, dtype=_F64)
            )
    return result


split_prior_normalised.compare(lambda student, reference: _compare_pairs(student, reference, 1e-6, 1e-6))


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch06-split-prior",
    "log_density = -0.5 * (eps.square() + math.log(2 * math.pi)) - log_std",
    "log_density = -0.5 * (eps.square() + math.log(2 * math.pi))",
    fails="split_prior_normalised",
)
SET.variant(
    "ch06-split-prior",
    "log_density = -0.5 * (eps.square() + math.log(2 * math.pi)) - log_std",
    "log_density = -0.5 * (eps.square() + math.log(2 * math.pi)) + log_std",
    fails="split_prior_values",
)
SET.variant(
    "ch06-split-prior",
    "mu, log_std = conditioner(y_keep).chunk(2, dim=1)",
    "log_std, mu = conditioner(y_keep).chunk(2, dim=1)",
    fails="split_prior_values",
)
SET.variant(
    "ch06-split-prior",
    "eps = (y_out - mu) * torch.exp(-log_std)",
    "eps = (y_out - mu) / log_std",
    fails="split_prior_values",
)
SET.variant(
    "ch06-split-prior",
    "return log_density.sum(dim=(1, 2, 3))",
    "return log_density.flatten(1).mean(dim=1)",
    fails="split_prior_values",
)
SET.variant(
    "ch06-split-prior",
    "y_keep, y_out = y[:, :keep], y[:, keep:]",
    "y_out, y_keep = y[:, :keep], y[:, keep:]",
    fails="split_prior_values",
)
