"""Layer-specific behaviour beyond the shared properties."""

import math

import pytest
import torch

from coursepkg import NormalizingFlow, StandardNormal
from coursepkg import layers as L


def test_piecewise_linear_starts_as_identity_and_maps_interval_onto_itself():
    layer = L.PiecewiseLinear(2, num_bins=8, bound=3.0)
    x = torch.linspace(-5, 5, 101).unsqueeze(1).repeat(1, 2)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(log_det, torch.zeros(101))
    with torch.no_grad():
        layer.heights.normal_()
    ends = torch.tensor([[-3.0, -3.0], [3.0 - 1e-6, 3.0 - 1e-6]])
    z, _ = layer(ends)
    torch.testing.assert_close(z, ends, atol=1e-5, rtol=0)
    # strictly increasing
    z, _ = layer(x)
    assert (z[1:] > z[:-1]).all()


def test_piecewise_linear_slope_is_num_bins_times_softmax():
    layer = L.PiecewiseLinear(1, num_bins=4, bound=2.0)
    with torch.no_grad():
        layer.heights.copy_(torch.tensor([[0.0, 1.0, 2.0, 3.0]]))
    widths = torch.softmax(layer.heights[0], 0)
    centres = torch.tensor([[-1.5], [-0.5], [0.5], [1.5]])  # one point per bin
    _, log_det = layer(centres)
    torch.testing.assert_close(log_det, torch.log(4 * widths))


def test_planar_stays_invertible_for_adversarial_u():
    layer = L.Planar(3)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([1.0, 0.0, 0.0]))
        layer.u.copy_(torch.tensor([-50.0, 0.0, 0.0]))  # raw w.u = -50 would fold the space
    assert (layer.w @ layer.u_hat()).item() > -1
    x = torch.linspace(-3, 3, 50).unsqueeze(1) * torch.tensor([[1.0, 0.3, -0.2]])
    z, log_det = layer(x)
    assert torch.isfinite(log_det).all()
    assert (z[1:, 0] > z[:-1, 0]).all()  # monotone along w: no folding


def test_linear_log_det_and_inverse_of_known_matrix():
    weight = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    layer = L.Linear(2, weight=weight, bias=False)
    x = torch.tensor([[1.0, 1.0]])
    z, log_det = layer(x)
    torch.testing.assert_close(z, torch.tensor([[3.0, 3.0]]))
    torch.testing.assert_close(log_det, torch.tensor([math.log(6.0)]))
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        L.Linear(2, weight=torch.eye(3))


def test_lu_linear_weight_matches_its_log_det():
    torch.manual_seed(0)
    layer = L.LULinear(5)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    sign, logabs = torch.linalg.slogdet(layer.weight())
    torch.testing.assert_close(layer.log_diag.sum(), logabs)


def test_permutation_rejects_non_permutations():
    with pytest.raises(ValueError, match="not a permutation"):
        L.Permutation([0, 0, 1])


def test_actnorm_initialises_once_and_flag_survives_state_dict():
    torch.manual_seed(0)
    x = 3 + 2 * torch.randn(256, 3)
    layer = L.ActNorm(3)
    assert not layer.initialized
    z, _ = layer(x)
    assert layer.initialized
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    restored = L.ActNorm(3)
    restored.load_state_dict(layer.state_dict())
    assert restored.initialized
    before = restored.loc.clone()
    restored(x + 100)  # must not re-initialise on new data
    torch.testing.assert_close(restored.loc, before)


def test_actnorm_does_not_initialise_in_eval_mode():
    layer = L.ActNorm(2).eval()
    layer(torch.randn(10, 2) + 5)
    assert not layer.initialized


def test_layers_reject_wrong_shapes_with_clear_message():
    with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 3\)"):
        L.Linear(3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="ActNorm"):
        L.ActNorm(3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="Planar"):
        L.Planar(3)(torch.randn(4, 5))


def test_logit_layer_gives_density_on_unit_square_that_integrates_to_one():
    flow = NormalizingFlow(L.Logit(alpha=0.05), StandardNormal(1))
    grid = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    density = flow.double().log_prob(grid.unsqueeze(1)).exp()
    # p(x) on [0,1] must integrate to the mass the base puts on logit([alpha, 1 - alpha]).
    edge = math.log(0.95 / 0.05)
    mass = math.erf(edge / math.sqrt(2))
    assert abs(density.mean().item() - mass) < 1e-4


def test_linear_keeps_a_float64_weight_exact():
    weight = torch.tensor([[1.0 + 1e-12, 0.0], [0.0, 1.0]], dtype=torch.float64)
    layer = L.Linear(2, weight=weight)
    assert layer.weight.dtype == torch.float64
    assert layer.weight[0, 0].item() == 1.0 + 1e-12
