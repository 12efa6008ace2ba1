"""Tests of the exercises of chapter 4 (RealNVP), ``solutions/04_realnvp.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds its own inputs. Log-determinants are compared in float64 with the brute-force
``log|det J|`` computed here, one autograd Jacobian per sample and ``torch.linalg.slogdet``, so a
layer is never judged by its own bookkeeping. While a probe calls the student's code, the
coursepkg functions that answer the exercises (masks, squeeze, soft clamp) and torch's
``pixel_shuffle``/``pixel_unshuffle`` are switched off, so that a graded function cannot lean on
them even through an attribute access that the grader's static check does not see.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

import coursepkg
from coursepkg.grading.spec import ExerciseSet, forbid
from coursepkg.grading.specs.common import brute_log_det, points
from coursepkg.layers import coupling, reshape

_MASKS = ("checkerboard_mask", "channel_mask", "halves_mask", "alternating_mask", "soft_clamp")
SET = ExerciseSet(
    "ch04",
    notebook="04_realnvp.ipynb",
    # The chapter's masks, reshapes and coupling layers (the functions also in the modules that
    # define them, another way in), the builder that stacks them, and torch's squeeze.
    forbidden=forbid(
        coursepkg.layers,
        *_MASKS,
        "squeeze",
        "unsqueeze",
        "Squeeze",
        "Unsqueeze",
        "MultiScale",
        "AffineCoupling",
        "ConvAffineCoupling",
        "AdditiveCoupling",
        "ConvAdditiveCoupling",
        "coupling",
    )
    + forbid(coupling, *_MASKS)
    + forbid(reshape, "squeeze", "unsqueeze")
    + forbid(coursepkg.models, "realnvp")
    + forbid(torch, "pixel_shuffle", "pixel_unshuffle")
    + forbid(functional, "pixel_shuffle", "pixel_unshuffle"),
)


def _error_name(fn, *args) -> str:
    """The name of the exception ``fn(*args)`` raises, or ``"no error"``; the stub's is passed on."""
    try:
        with SET.switched_off():
            fn(*args)
    except NotImplementedError:
        raise
    except Exception as error:  # any other exception is an answer to compare
        return type(error).__name__
    return "no error"


def _compare_errors(student, reference):
    for call, expected in reference.items():
        got = student.get(call)
        if got != expected:
            said = "returned without an error" if got == "no error" else f"raised {got}"
            raise AssertionError(f"{call} should raise {expected}, but it {said}")


# -- ch04-masks -----------------------------------------------------------------------------------

SET.check_cell("ch04-masks", points=0.5)


@SET.test("ch04-masks", points=0.5, requires=("checkerboard",))
def checkerboard_values(ns):
    """checkerboard for square and non-square sizes and both parities."""
    result = {}
    with SET.switched_off():
        for height, width in ((1, 1), (2, 2), (4, 4), (3, 5), (6, 3), (8, 8), (1, 7)):
            for parity in (0, 1):
                result[f"checkerboard({height}, {width}, parity={parity})"] = ns.checkerboard(
                    height, width, parity
                )
        result["checkerboard(5, 4) (default parity)"] = ns.checkerboard(5, 4)
    return result


@SET.test("ch04-masks", points=0.5, requires=("channel_halves",))
def channel_values(ns):
    """channel_halves for even and odd numbers of channels and both parities."""
    result = {}
    with SET.switched_off():
        for channels in (2, 3, 4, 5, 8, 12):
            for parity in (0, 1):
                result[f"channel_halves({channels}, parity={parity})"] = ns.channel_halves(channels, parity)
        result["channel_halves(6) (default parity)"] = ns.channel_halves(6)
    return result


@SET.test("ch04-masks", points=0.5, requires=("checkerboard", "channel_halves"))
def masks_invalid(ns):
    """ValueError for a parity other than 0 or 1, and for fewer than 2 channels."""
    return {
        "checkerboard(4, 4, parity=2)": _error_name(ns.checkerboard, 4, 4, 2),
        "checkerboard(3, 3, parity=-1)": _error_name(ns.checkerboard, 3, 3, -1),
        "channel_halves(4, parity=2)": _error_name(ns.channel_halves, 4, 2),
        "channel_halves(1, parity=0)": _error_name(ns.channel_halves, 1, 0),
    }


masks_invalid.compare(_compare_errors)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch04-masks",
    "(rows + columns) % 2 == parity",
    "(rows + columns) % 2 != parity",
    fails="checkerboard_values",
)
SET.variant(
    "ch04-masks",
    "torch.arange(channels) < channels // 2",
    "torch.arange(channels) < (channels + 1) // 2",
    fails="channel_values",
)


# -- ch04-squeeze ---------------------------------------------------------------------------------

SET.check_cell("ch04-squeeze", points=0.5)


def _random(*shape, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)


@SET.test("ch04-squeeze", points=1, requires=("squeeze2x2",))
def squeeze_values(ns):
    """squeeze2x2 of an integer image and of a random float64 batch."""
    image = torch.arange(2 * 3 * 4 * 6).reshape(2, 3, 4, 6)
    batch = _random(4, 2, 6, 2, seed=40)
    with SET.switched_off():
        return {
            "squeeze2x2(arange(144).reshape(2, 3, 4, 6))": ns.squeeze2x2(image),
            "squeeze2x2(x) for a random x of shape (4, 2, 6, 2)": ns.squeeze2x2(batch),
        }


@SET.test("ch04-squeeze", points=0.5, requires=("squeeze2x2", "unsqueeze2x2"))
def squeeze_round_trip(ns):
    """unsqueeze2x2 against the reference; both round trips; images of a batch do not mix."""
    z = _random(3, 8, 2, 5, seed=41)
    x = _random(5, 3, 4, 6, seed=42)
    with SET.switched_off():
        unsqueezed = ns.unsqueeze2x2(z)
        x_back = ns.unsqueeze2x2(ns.squeeze2x2(x))
        z_back = ns.squeeze2x2(ns.unsqueeze2x2(z))
        whole = ns.squeeze2x2(x)
        one_by_one = torch.cat([ns.squeeze2x2(x[b : b + 1]) for b in range(len(x))])
    return {
        "unsqueeze2x2(z) for a random z of shape (3, 8, 2, 5)": unsqueezed,
        "unsqueeze2x2(squeeze2x2(x)) == x": bool(torch.equal(x_back, x)),
        "squeeze2x2(unsqueeze2x2(z)) == z": bool(torch.equal(z_back, z)),
        "a batch squeezed at once == its images squeezed one by one": bool(torch.equal(whole, one_by_one)),
    }


@SET.test("ch04-squeeze", points=0.5, requires=("squeeze2x2", "unsqueeze2x2"))
def squeeze_errors(ns):
    """ValueError for odd sizes, a missing dimension, and a channel count not divisible by 4."""
    return {
        "squeeze2x2(x of shape (2, 1, 3, 4))": _error_name(ns.squeeze2x2, torch.zeros(2, 1, 3, 4)),
        "squeeze2x2(x of shape (2, 1, 4, 5))": _error_name(ns.squeeze2x2, torch.zeros(2, 1, 4, 5)),
        "squeeze2x2(x of shape (1, 4, 4))": _error_name(ns.squeeze2x2, torch.zeros(1, 4, 4)),
        "unsqueeze2x2(z of shape (2, 6, 2, 2))": _error_name(ns.unsqueeze2x2, torch.zeros(2, 6, 2, 2)),
        "unsqueeze2x2(z of shape (8, 2, 2))": _error_name(ns.unsqueeze2x2, torch.zeros(8, 2, 2)),
    }


squeeze_errors.compare(_compare_errors)


@SET.test("ch04-squeeze", points=0.5, requires=("squeeze2x2", "unsqueeze2x2"))
def squeeze_dtypes(ns):
    """float32, float64 and bool inputs keep their dtype; a non-contiguous input works."""
    result = {}
    x = _random(2, 3, 4, 6, seed=43)
    inputs = {"float32": x.float(), "float64": x, "bool": x > 0}
    transposed = _random(2, 1, 6, 4, seed=44).transpose(2, 3)  # (2, 1, 4, 6), not contiguous
    with SET.switched_off():
        for name, tensor in inputs.items():
            squeezed = ns.squeeze2x2(tensor)
            back = ns.unsqueeze2x2(squeezed)
            result[f"{name}: squeeze2x2 shape and dtype"] = (tuple(squeezed.shape), str(squeezed.dtype))
            result[f"{name}: unsqueeze2x2 shape and dtype"] = (tuple(back.shape), str(back.dtype))
        result["squeeze2x2(x.transpose(2, 3)) == squeeze2x2 of its contiguous copy"] = bool(
            torch.equal(ns.squeeze2x2(transposed), ns.squeeze2x2(transposed.contiguous()))
        )
        result["unsqueeze2x2 of a non-contiguous z == of its contiguous copy"] = bool(
            torch.equal(
                ns.unsqueeze2x2(_random(2, 4, 3, 2, seed=45).transpose(2, 3)),
                ns.unsqueeze2x2(_random(2, 4, 3, 2, seed=45).transpose(2, 3).contiguous()),
            )
        )
    return result


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch04-squeeze",
    "blocks.permute(0, 1, 3, 5, 2, 4)",
    "blocks.permute(0, 1, 5, 3, 2, 4)",
    fails="squeeze_values",
)
SET.variant(
    "ch04-squeeze",
    "blocks.permute(0, 1, 3, 5, 2, 4)",
    "blocks.permute(1, 0, 3, 5, 2, 4)",
    fails="squeeze_round_trip",
)
SET.variant(
    "ch04-squeeze",
    "blocks.permute(0, 1, 4, 2, 5, 3)",
    "blocks.permute(0, 1, 4, 3, 5, 2)",
    fails="squeeze_round_trip",
)


# -- ch04-coupling --------------------------------------------------------------------------------

SET.check_cell("ch04-coupling", points=0.5)


class _TestConditioner(nn.Module):
    """``(B, D) -> (s_raw, t)``: a fixed random tanh network, ``s_raw`` of a few units (``gain``).

    It records whether every input it was given is zero where the mask transforms values, and
    has a constant part (``bias``) so that a layer that feeds it the wrong values cannot
    accidentally agree with the reference.
    """

    def __init__(self, mask: torch.Tensor, seed: int, gain: float = 2.5, dtype=torch.float64):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        dim = len(mask)

        def draw(*shape, scale=1.0):
            return nn.Parameter(
                scale * torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)
            )

        self.w1 = draw(dim, 16, scale=0.8)
        self.b1 = draw(16, scale=0.3)
        self.w2 = draw(16, 2 * dim, scale=0.6)
        self.b2 = draw(2 * dim, scale=0.5)
        self.gain = gain
        self.register_buffer("transformed", ~mask.bool(), persistent=False)
        self.saw_only_kept_values = True

    def forward(self, v):
        if v.shape[-1] == len(self.transformed) and bool((v[..., self.transformed] != 0).any()):
            self.saw_only_kept_values = False
        hidden = torch.tanh(v @ self.w1 + self.b1)
        s_raw, t = (hidden @ self.w2 + self.b2).chunk(2, dim=-1)
        return self.gain * s_raw, t


class _ConstantConditioner(nn.Module):
    """``(s_raw, t) = (level, ..., level, -level), 0.1)`` whatever the input: huge raw log-scales."""

    def __init__(self, dim: int, level: float):
        super().__init__()
        signs = torch.ones(dim, dtype=torch.float64)
        signs[-1] = -1.0  # both signs, but the transformed values of the test all get +level
        self.register_buffer("s_raw", level * signs)

    def forward(self, v):
        s_raw = (self.s_raw.to(v.dtype) + 0 * v).contiguous()  # (B, D)
        return s_raw, torch.full_like(v, 0.1)


_MASKS = {
    "D = 5, mask [T, F, T, F, F]": torch.tensor([True, False, True, False, False]),
    "D = 6, mask [F, T, T, F, F, T]": torch.tensor([False, True, True, False, False, True]),
}


def _layer(ns, mask, conditioner, scale_bound=None):
    if scale_bound is None:
        return ns.MaskedAffineCoupling(mask.clone(), conditioner)
    return ns.MaskedAffineCoupling(mask.clone(), conditioner, scale_bound=scale_bound)


@SET.test("ch04-coupling", points=1, requires=("MaskedAffineCoupling",), rtol=1e-7, atol=1e-9)
def coupling_forward(ns):
    """forward in float64 for two masks; kept values unchanged; the conditioner sees only them."""
    result = {}
    for index, (label, mask) in enumerate(_MASKS.items()):
        conditioner = _TestConditioner(mask, seed=50 + index)
        x = points(40, len(mask), seed=60 + index)
        with SET.switched_off(), torch.no_grad():
            layer = _layer(ns, mask, conditioner, scale_bound=None if index == 0 else 3.0)
            z, log_det = layer(x)
        result[f"{label}: forward(x)[0] (z)"] = z
        result[f"{label}: forward(x)[1] (log_det)"] = log_det
        result[f"{label}: kept values unchanged"] = bool(
            isinstance(z, torch.Tensor) and z.shape == x.shape and torch.equal(z[:, mask], x[:, mask])
        )
        result[f"{label}: the conditioner got zeros where the mask is False"] = (
            conditioner.saw_only_kept_values
        )
    return result


@SET.test("ch04-coupling", points=1, requires=("MaskedAffineCoupling",))
def coupling_log_det(ns):
    """log_det of forward and of inverse against the brute-force log|det J| (float64)."""
    result = {}
    for index, (label, mask) in enumerate(_MASKS.items()):
        x = points(25, len(mask), seed=80 + index)
        with SET.switched_off():
            layer = _layer(ns, mask, _TestConditioner(mask, seed=70 + index))
            with torch.no_grad():
                z, log_det = layer(x)
                _, log_det_inverse = layer.inverse(z)
            brute = brute_log_det(layer, x)
            brute_inverse = brute_log_det(layer.inverse, z)
        result[f"{label}: forward"] = {"log_det": log_det, "brute force": brute}
        result[f"{label}: inverse"] = {"log_det": log_det_inverse, "brute force": brute_inverse}
    return result


@coupling_log_det.compare
def _(student, reference):
    from coursepkg.testing import assert_close

    for key, values in student.items():
        log_det = values["log_det"]
        if not isinstance(log_det, torch.Tensor):
            raise AssertionError(
                f"{key}: log_det should be a tensor of shape (B,), got {type(log_det).__name__}"
            )
        assert_close(log_det, values["brute force"], f"{key} log_det vs brute-force log|det J|", 1e-9, 1e-7)


@SET.test("ch04-coupling", points=0.5, requires=("MaskedAffineCoupling",), rtol=1e-7, atol=1e-9)
def coupling_inverse(ns):
    """inverse against the reference; inverse(forward(x)) == x; opposite log-determinants."""
    result = {}
    for index, (label, mask) in enumerate(_MASKS.items()):
        layer = _layer(ns, mask, _TestConditioner(mask, seed=90 + index))
        x = points(40, len(mask), seed=100 + index)
        with SET.switched_off(), torch.no_grad():
            x_of, log_det_of = layer.inverse(x)
            z, log_det = layer(x)
            x_back, log_det_back = layer.inverse(z)
        result[f"{label}: inverse(z)[0] (x)"] = x_of
        result[f"{label}: inverse(z)[1] (log_det)"] = log_det_of
        result[f"{label}: inverse(forward(x)) == x"] = bool((x_back - x).abs().max() < 1e-10)
        result[f"{label}: inverse log_det == -forward log_det"] = bool(
            (log_det_back + log_det).abs().max() < 1e-10
        )
    return result


@SET.test("ch04-coupling", points=0.5, requires=("MaskedAffineCoupling",), rtol=1e-7, atol=1e-9)
def coupling_clamp(ns):
    """The soft clamp: raw log-scales of a few units (bound 1), and huge ones (bound 2)."""
    mask = torch.tensor([False, True, False, False, True, False, True])
    conditioner = _TestConditioner(mask, seed=110, gain=4.0)
    x = points(30, 7, seed=111)
    huge = _ConstantConditioner(7, 1e4)
    with SET.switched_off(), torch.no_grad():
        z, log_det = _layer(ns, mask, conditioner, scale_bound=1.0)(x)
        z_huge, log_det_huge = _layer(ns, mask, huge, scale_bound=2.0)(x)
    transformed = int((~mask).sum())
    finite = bool(torch.isfinite(z_huge).all() and torch.isfinite(log_det_huge).all())
    return {
        "bound 1: forward(x)[0] (z)": z,
        "bound 1: forward(x)[1] (log_det)": log_det,
        "raw log-scales of +-1e4, bound 2: z and log_det finite": finite,
        "raw log-scales of +-1e4, bound 2: |log_det| <= 2 x (number of transformed values)": bool(
            finite and log_det_huge.abs().max() <= 2.0 * transformed + 1e-9
        ),
    }


@SET.test("ch04-coupling", points=0.5, requires=("MaskedAffineCoupling",))
def coupling_dtypes(ns):
    """float32 and float64 layers and inputs: shapes and dtypes both ways; the mask is a buffer."""
    result = {}
    mask = torch.tensor([True, False, False])
    for dtype in (torch.float32, torch.float64):
        layer = _layer(ns, mask, _TestConditioner(mask, seed=120, dtype=dtype))
        x = points(6, 3, seed=121, dtype=dtype)
        with SET.switched_off(), torch.no_grad():
            z, log_det = layer(x)
            x_back, log_det_back = layer.inverse(z)
        result[str(dtype)] = [(tuple(t.shape), str(t.dtype)) for t in (z, log_det, x_back, log_det_back)]
    result["the mask is a buffer named `mask`"] = "mask" in dict(layer.named_buffers())
    return result


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch04-coupling", "return z, s.sum(dim=1)", "return z, -s.sum(dim=1)", fails="coupling_log_det")
SET.variant("ch04-coupling", "return z, s.sum(dim=1)", "return z, s.sum(dim=0)", fails="coupling_forward")
SET.variant("ch04-coupling", "free = 1 - keep", "free = keep", fails="coupling_forward")
SET.variant("ch04-coupling", "self.conditioner(v * keep)", "self.conditioner(v)", fails="coupling_log_det")
SET.variant("ch04-coupling", "z = x * torch.exp(s) + t", "z = x * s + t", fails="coupling_forward")
SET.variant(
    "ch04-coupling",
    "s = self.scale_bound * torch.tanh(s_raw / self.scale_bound) * free",
    "s = s_raw * free",
    fails="coupling_clamp",
)
SET.variant(
    "ch04-coupling", "x = (z - t) * torch.exp(-s)", "x = z * torch.exp(-s) - t", fails="coupling_inverse"
)


# -- ch04-experiment ------------------------------------------------------------------------------

SET.check_cell("ch04-experiment", points=0.5)


@SET.test("ch04-experiment", points=1.5, requires=("fit_coupling_flow", "MaskedAffineCoupling"), timeout=150)
def alternating_masks(ns):
    """Trains an alternating and a fixed-mask flow (seed 1) and measures KL(target || model) itself."""
    from coursepkg import NormalizingFlow, StandardNormal
    from coursepkg.data import kl_divergence, toy

    target = toy("gaussian_mixture_2d")
    points = target.sample(1000, generator=torch.Generator().manual_seed(3))
    result = {}
    for alternate, label in ((True, "alternating masks"), (False, "fixed mask")):
        with SET.switched_off():
            flow = ns.fit_coupling_flow(alternate, seed=1)
        model = NormalizingFlow(flow, StandardNormal(2))
        kl = kl_divergence(model, target, num_samples=20_000)["kl"]
        result[f"{label}: KL"] = kl if math.isfinite(kl) else float("inf")
        with torch.no_grad():
            z, _ = flow(points)
        result[f"{label}: x_1 unchanged"] = bool(torch.equal(z[:, 0], points[:, 0]))
        result[f"{label}: x_2 unchanged"] = bool(torch.equal(z[:, 1], points[:, 1]))
    return result


@alternating_masks.compare
def _(student, reference):
    alternating, fixed = student["alternating masks: KL"], student["fixed mask: KL"]
    measured = f"measured KL {alternating:.3f} nats with alternating masks, {fixed:.3f} with a fixed mask"
    if min(alternating, fixed) < -0.02:
        raise AssertionError(f"a KL divergence cannot be negative; {measured}: check log_det")
    if student["fixed mask: x_1 unchanged"] is not True:
        raise AssertionError(
            "with alternate=False every layer keeps x_1 (mask [True, False]), so x_1 must pass "
            "unchanged through the whole flow; it does not"
        )
    if student["alternating masks: x_1 unchanged"] or student["alternating masks: x_2 unchanged"]:
        raise AssertionError(
            "with alternate=True both coordinates must be transformed by some layer; one passes unchanged"
        )
    if not alternating < 0.35:
        raise AssertionError(f"the alternating flow should reach a KL below 0.35 nats; {measured}")
    if not fixed > 0.5:
        raise AssertionError(
            f"a fixed mask cannot beat the floor KL(p_X1 || N(0, 1)), above 0.5 nats; {measured}"
        )
    if not fixed - alternating > 0.3:
        raise AssertionError(f"alternating masks should win by more than 0.3 nats; {measured}")


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch04-experiment",
    "keeps_first = k % 2 == 0 or not alternate",
    "keeps_first = k % 2 == 0",
    fails="alternating_masks",
)
SET.variant(
    "ch04-experiment",
    "-(base.log_prob(z) + log_det).mean()",
    "-(base.log_prob(z) - log_det).mean()",
    fails="alternating_masks",
)
