"""The rational-quadratic spline transformer (coursepkg.layers.transformers).

Log-derivatives are compared with autograd's derivative of the map itself, values with a
scalar re-implementation of Durkan et al.'s eq. 4, and the round trips, monotonicity and
smoothness at the knots are measured directly. Parameters are random and large, so that bins
are uneven and knot derivatives far from 1: at zero parameters the spline is the identity, where
a wrong log_det of zero would pass.
"""

import bisect
import math

import pytest
import torch
from torch import nn

from coursepkg import Flow
from coursepkg.layers.transformers import (
    RationalQuadraticSpline,
    Transformer,
    rational_quadratic_spline,
    rational_quadratic_spline_inverse,
    spline_knots,
)
from coursepkg.testing import assert_close, check_flow

NUM_BINS, BOUND, DIM = 5, 2.0, 3


def _raw_params(spline, batch=1, dim=DIM, dtype=torch.float64):
    """``(batch, 3K - 1, D)`` raw parameters, scaled so that bins are uneven and derivatives far from 1."""
    k = spline.num_bins
    raw = torch.randn(batch, spline.num_params, dim, dtype=dtype)
    raw[:, : 2 * k] *= 1.5  # widths and heights: softmax over values of spread 1.5
    raw[:, 2 * k :] *= 2.5  # derivatives: from about 0.01 to about 7
    return raw


def _knots(spline, params):
    """x knots, y knots and knot derivatives, each ``(P, D, K + 1)``."""
    return spline_knots(*spline.spline_parameters(params), bound=spline.bound)


def _points(spline, knots, num_rows):
    """``(num_rows, D)`` points that cover, for every dimension, its knots (``knots`` ``(P, D,
    K + 1)``), points inside the bins, points within 1e-12 of the interval's ends, the ends
    themselves and the tails. Row ``n`` uses the spline of sample ``n`` when ``P = num_rows``."""
    bound = spline.bound
    knots = knots.expand(num_rows, -1, -1)  # (N, D, K + 1)
    shape = knots.shape[:2]
    dtype = knots.dtype
    inside = (2 * torch.rand(*shape, 6, dtype=dtype) - 1) * bound
    fixed = torch.tensor(
        [-bound, bound, -bound + 1e-12, bound - 1e-12, -1.3 * bound, 1.3 * bound, -3 * bound, 4 * bound],
        dtype=dtype,
    ).expand(*shape, -1)
    candidates = torch.cat([knots, inside, fixed], dim=-1)  # (N, D, C)
    choice = torch.arange(num_rows) % candidates.shape[-1]  # every candidate appears in each column
    return candidates.gather(-1, choice.view(-1, 1, 1).expand(*shape, 1)).squeeze(-1)


def _derivative(fn, t, params):
    """``log_det`` of ``fn`` and the log of autograd's element-wise derivative of its output."""
    t = t.clone().requires_grad_(True)
    out, log_det = fn(t, params)
    (grad,) = torch.autograd.grad(out.sum(), t)  # each output depends on its own input only
    return log_det, torch.log(grad)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-params", "per-sample-params"])
def test_forward_log_det_matches_autograd(shared):
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    rows = 48
    params = _raw_params(spline, batch=1 if shared else rows)
    x_knots, _, knot_derivatives = _knots(spline, params)
    assert (knot_derivatives.log().abs() > 1).any(), "the test needs derivatives far from 1"
    x = _points(spline, x_knots, rows)
    log_det, expected = _derivative(spline, x, params)
    assert_close(log_det, expected, "forward log_det vs log of autograd's dz/dx", atol=1e-8, rtol=0)
    tails = x.abs() > BOUND
    assert tails.any() and (log_det[tails] == 0).all()
    assert log_det[~tails].abs().max() > 1


@pytest.mark.parametrize("shared", [True, False], ids=["shared-params", "per-sample-params"])
def test_inverse_log_det_matches_autograd(shared):
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    rows = 48
    params = _raw_params(spline, batch=1 if shared else rows)
    _, y_knots, _ = _knots(spline, params)
    z = _points(spline, y_knots, rows)
    log_det, expected = _derivative(spline.inverse, z, params)
    assert_close(log_det, expected, "inverse log_det vs log of autograd's dx/dz", atol=1e-8, rtol=0)
    assert log_det[z.abs() <= BOUND].abs().max() > 1


def _reference_spline(x, widths, heights, derivatives, bound):
    """Eq. 4 of Durkan et al. for one float ``x`` and one spline given as lists, bin by bisection."""
    if not -bound <= x <= bound:
        return x
    x_knots, y_knots = [-bound], [-bound]
    for w, h in zip(widths, heights, strict=True):
        x_knots.append(x_knots[-1] + 2 * bound * w / sum(widths))
        y_knots.append(y_knots[-1] + 2 * bound * h / sum(heights))
    d = [1.0, *derivatives, 1.0]
    k = min(bisect.bisect_right(x_knots, x) - 1, len(widths) - 1)
    w, h = x_knots[k + 1] - x_knots[k], y_knots[k + 1] - y_knots[k]
    s, xi = h / w, (x - x_knots[k]) / w
    return y_knots[k] + h * (s * xi**2 + d[k] * xi * (1 - xi)) / (
        s + (d[k + 1] + d[k] - 2 * s) * xi * (1 - xi)
    )


def test_values_match_a_scalar_implementation_of_eq_4():
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    rows = 40
    params = _raw_params(spline, batch=rows)
    x_knots, _, _ = _knots(spline, params)
    x = _points(spline, x_knots, rows)
    z, _ = spline(x, params)
    widths, heights, derivatives = spline.spline_parameters(params)
    expected = torch.tensor(
        [
            [
                _reference_spline(
                    x[b, d].item(),
                    widths[b, d].tolist(),
                    heights[b, d].tolist(),
                    derivatives[b, d].tolist(),
                    BOUND,
                )
                for d in range(DIM)
            ]
            for b in range(rows)
        ],
        dtype=torch.float64,
    )
    assert_close(z, expected, "z vs a scalar implementation of eq. 4", atol=1e-12, rtol=0)


def test_round_trip_in_float64_at_knots_and_near_the_ends():
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    rows = 60
    params = _raw_params(spline, batch=rows)
    x_knots, y_knots, _ = _knots(spline, params)
    x = _points(spline, x_knots, rows)
    z, log_det = spline(x, params)
    x_back, log_det_back = spline.inverse(z, params)
    assert_close(x_back, x, "inverse(forward(x)) vs x", atol=1e-10, rtol=0)
    assert_close(log_det_back, -log_det, "inverse log_det vs -forward log_det", atol=1e-10, rtol=0)
    z = _points(spline, y_knots, rows)
    x, log_det = spline.inverse(z, params)
    z_back, log_det_back = spline(x, params)
    assert_close(z_back, z, "forward(inverse(z)) vs z", atol=1e-10, rtol=0)
    assert_close(log_det_back, -log_det, "forward log_det vs -inverse log_det", atol=1e-10, rtol=0)


def test_round_trip_in_float32():
    """At the scale of a freshly initialised conditioner's output. (With derivatives near
    ``min_derivative`` the inverse is ill-conditioned: float32 rounding of ``z`` alone moves
    ``x`` by ``eps |z| / f'(x)``, so no float32 implementation meets 1e-5 there.)"""
    spline = RationalQuadraticSpline(8, 3.0)
    params = 0.5 * torch.randn(256, spline.num_params, 16)
    for direction, fn, fn_back in (("x", spline, spline.inverse), ("z", spline.inverse, spline)):
        t = 2 * torch.randn(256, 16)
        out, log_det = fn(t, params)
        assert out.dtype == log_det.dtype == torch.float32
        t_back, log_det_back = fn_back(out, params)
        assert_close(t_back, t, f"float32 round trip of {direction}", atol=1e-5, rtol=0)
        assert_close(log_det_back, -log_det, f"float32 log_det of {direction} and back", atol=5e-5, rtol=0)


def test_strictly_increasing_on_a_fine_grid():
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    params = _raw_params(spline)
    grid = torch.linspace(-1.5 * BOUND, 1.5 * BOUND, 20001, dtype=torch.float64)
    t = grid.unsqueeze(1).expand(-1, DIM)  # (N, D)
    for direction, fn in (("forward", spline), ("inverse", spline.inverse)):
        out, _ = fn(t, params)
        steps = out.diff(dim=0)
        assert (steps > 0).all(), f"{direction} is not strictly increasing: smallest step {steps.min():.3g}"
        assert_close(out[[0, -1]], t[[0, -1]], f"{direction} at the grid's ends (the identity tails)", 0, 0)


def test_continuous_and_c1_at_the_knots():
    """Left and right limits of the map and of its autograd derivative agree at every knot,
    the ends of the interval included (where the spline meets the identity tails)."""
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    params = _raw_params(spline)
    x_knots, y_knots, knot_derivatives = (t[0].T for t in _knots(spline, params))  # (K + 1, D)
    # So small that the second derivative does not show, so large that x +- step is not x.
    step = 1e-12
    value, slope = {}, {}
    for side, x in (("left", x_knots - step), ("right", x_knots + step)):
        x = x.clone().requires_grad_(True)
        z, _ = spline(x, params)
        (slope[side],) = torch.autograd.grad(z.sum(), x)
        value[side] = z.detach()
    for side in ("left", "right"):
        # |z(knot -+ step) - y_knot| <= step * max derivative; the derivatives here stay below 100.
        assert_close(value[side], y_knots, f"{side} limit of z at the knots vs the knot values", 1e-10, 0)
        assert_close(slope[side], knot_derivatives, f"{side} limit of dz/dx vs the knot derivatives", 0, 1e-6)
    assert_close(slope["left"], slope["right"], "left vs right derivative at the knots", 0, 1e-6)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_zero_params_give_the_identity(direction):
    spline = RationalQuadraticSpline()  # 8 bins on [-3, 3], float32
    t = torch.linspace(-5.0, 5.0, 2001).unsqueeze(1).expand(-1, 4)  # (N, 4)
    fn = spline if direction == "forward" else spline.inverse
    out, log_det = fn(t, torch.zeros(1, spline.num_params, 4))
    inside = t.abs() <= 3.0
    assert_close(out[inside], t[inside], f"{direction} at zero params, inside", atol=1e-6, rtol=0)
    assert_close(log_det[inside], torch.zeros_like(t[inside]), f"{direction} log_det at zero params", 1e-6, 0)
    assert torch.equal(out[~inside], t[~inside]) and (log_det[~inside] == 0).all()


def test_zero_params_mean_uniform_bins_and_unit_derivatives():
    spline = RationalQuadraticSpline(num_bins=6, bound=1.5, min_derivative=0.2).double()
    widths, heights, derivatives = spline.spline_parameters(torch.zeros(2, spline.num_params, 3).double())
    assert widths.shape == heights.shape == (2, 3, 6) and derivatives.shape == (2, 3, 5)
    assert_close(widths, torch.full_like(widths, 0.5), "widths at zero params", 1e-14, 0)
    assert_close(heights, torch.full_like(heights, 0.5), "heights at zero params", 1e-14, 0)
    assert_close(derivatives, torch.ones_like(derivatives), "derivatives at zero params", 1e-14, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_gradients_reach_every_parameter_and_are_finite(direction, dtype):
    spline = RationalQuadraticSpline(NUM_BINS, BOUND)
    params = _raw_params(spline, dtype=dtype).requires_grad_(True)
    x_knots, y_knots, _ = _knots(spline, params.detach())
    t = _points(spline, x_knots if direction == "forward" else y_knots, 64)
    # The ends themselves, exactly, and far tails, where the discarded spline branch overflows.
    huge = 1e30 if dtype == torch.float32 else 1e200
    t[:4] = torch.tensor([-BOUND, BOUND, -huge, huge], dtype=dtype).unsqueeze(1)
    t.requires_grad_(True)
    out, log_det = (spline if direction == "forward" else spline.inverse)(t, params)
    assert torch.equal(out[2:4], t[2:4].detach()) and (log_det[2:4] == 0).all()
    (out * torch.randn_like(out)).sum().add(log_det.sum()).backward()
    assert torch.isfinite(t.grad).all(), f"non-finite input gradient at {t[~torch.isfinite(t.grad)]}"
    assert torch.isfinite(params.grad).all(), "non-finite parameter gradient"
    unreached = (params.grad == 0).nonzero().tolist()
    assert not unreached, f"{direction}: no gradient reaches params at (sample, parameter, dim) {unreached}"


class _ElementwiseSplineFlow(Flow):
    """One spline per dimension with learnable parameters ``(1, K, D)``, shared by the batch."""

    def __init__(self, dim, transformer):
        super().__init__()
        self.transformer = transformer
        self.params = nn.Parameter(torch.randn(1, transformer.num_params, dim))

    def forward(self, x):
        z, log_det = self.transformer(x, self.params)
        return z, log_det.sum(1)

    def inverse(self, z):
        x, log_det = self.transformer.inverse(z, self.params)
        return x, log_det.sum(1)


def test_a_flow_of_splines_passes_check_flow():
    def make():
        torch.manual_seed(123)
        return _ElementwiseSplineFlow(4, RationalQuadraticSpline(num_bins=6, bound=2.0))

    x = 1.5 * torch.randn(6, 4)
    assert (x.abs() > 2.0).any() and (x.abs() < 2.0).any()
    check_flow(make(), x, make)


def test_function_form_broadcasts_one_spline_and_matches_the_layer():
    spline = RationalQuadraticSpline(NUM_BINS, BOUND).double()
    params = _raw_params(spline)
    widths, heights, derivatives = spline.spline_parameters(params)  # (1, D, K)...
    x = 3 * torch.randn(10, DIM, dtype=torch.float64)
    z, log_det = spline(x, params)
    # One spline for all points: parameters (K,), inputs of any shape.
    one = (widths[0, 1], heights[0, 1], derivatives[0, 1])
    z1, log_det1 = rational_quadratic_spline(x[:, 1], *one, bound=BOUND)
    assert z1.shape == (10,)
    assert_close(z1, z[:, 1], "function form vs layer", 0, 0)
    assert_close(log_det1, log_det[:, 1], "function form log_det vs layer", 0, 0)
    # Only the proportions of widths and heights matter.
    z2, _ = rational_quadratic_spline(x[:, 1], 7 * one[0], 0.5 * one[1], one[2], bound=BOUND)
    assert_close(z2, z1, "rescaled widths and heights", 1e-14, 0)
    x1, _ = rational_quadratic_spline_inverse(z1, *one, bound=BOUND)
    assert_close(x1, x[:, 1], "inverse function form", 1e-10, 0)


def test_empty_batch_and_shared_params():
    spline = RationalQuadraticSpline(4)
    z, log_det = spline(torch.zeros(0, 3), torch.zeros(0, spline.num_params, 3))
    assert z.shape == log_det.shape == (0, 3)
    z, log_det = spline.inverse(torch.zeros(0, 3), torch.zeros(1, spline.num_params, 3))
    assert z.shape == log_det.shape == (0, 3)


def test_one_bin_is_the_identity():
    spline = RationalQuadraticSpline(num_bins=1)
    assert spline.num_params == 2
    x = torch.linspace(-4, 4, 9).unsqueeze(1)
    z, log_det = spline(x, torch.randn(9, 2, 1))
    assert_close(z, x, "one bin, unit end derivatives", 1e-6, 0)
    assert_close(log_det, torch.zeros_like(x), "one bin log_det", 1e-6, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_bins": 0}, "num_bins must be an int of at least 1"),
        ({"num_bins": 2.5}, "num_bins must be an int"),
        ({"bound": 0.0}, "bound must be a positive finite number"),
        ({"bound": -1.0}, "bound must be a positive finite number"),
        ({"bound": math.inf}, "bound must be a positive finite number"),
        ({"num_bins": 10, "min_width": 0.1}, r"min_width .* \[0, 0.1\)"),
        ({"min_height": -0.01}, "min_height is a fraction of the interval"),
        ({"min_derivative": 0.0}, r"min_derivative must lie in \(0, 1\)"),
        ({"min_derivative": 1.0}, r"min_derivative must lie in \(0, 1\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RationalQuadraticSpline(**kwargs)


def test_bad_params_get_a_clear_error():
    spline = RationalQuadraticSpline(num_bins=4)  # 11 parameters per dimension
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"view the network's output as params.view\(5, 11, 3\)"):
        spline(x, torch.randn(5, 33))
    with pytest.raises(ValueError, match=r"the \(B, D, K\) layout"):
        spline.inverse(x, torch.randn(5, 3, 11))
    with pytest.raises(ValueError, match=r"expects params of shape \(B, 11, D\) = \(5, 11, 3\)"):
        spline(x, torch.randn(5, 12, 3))
    with pytest.raises(ValueError, match=r"expects params of shape"):
        spline(x, torch.randn(2, 11, 3))  # neither B nor 1 samples
    with pytest.raises(ValueError, match=r"the input must have shape \(B, D\)"):
        spline(x[0], torch.randn(1, 11, 3))
    with pytest.raises(TypeError, match="params are torch.float64 but the input is torch.float32"):
        spline(x, torch.randn(5, 11, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="the input must be a floating-point tensor"):
        spline(torch.ones(5, 3, dtype=torch.long), torch.randn(5, 11, 3))
    with pytest.raises(ValueError, match=r"derivatives must have shape \(..., K - 1\) = \(..., 3\)"):
        rational_quadratic_spline(x, torch.ones(5, 3, 4), torch.ones(5, 3, 4), torch.ones(5, 3, 4))
    with pytest.raises(ValueError, match="do not broadcast"):
        rational_quadratic_spline(x, torch.ones(4, 3, 4), torch.ones(4, 3, 4), torch.ones(4, 3, 3))
    with pytest.raises(ValueError, match="bound must be a positive finite number"):
        rational_quadratic_spline_inverse(x, torch.ones(4), torch.ones(4), torch.ones(3), bound=-2.0)


def test_the_base_class_names_what_is_missing():
    class Unfinished(Transformer):
        num_params = 1

    with pytest.raises(NotImplementedError, match=r"Unfinished must implement inverse\(z, params\)"):
        Unfinished().inverse(torch.zeros(1, 1), torch.zeros(1, 1, 1))
