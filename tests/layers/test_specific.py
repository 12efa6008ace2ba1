"""Layer-specific behaviour beyond the shared properties."""

import math

import pytest
import torch

from coursepkg import NormalizingFlow, StandardNormal
from coursepkg import layers as L
from coursepkg.data import Dequantize


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


# ----------------------------------------------------------------------------------------------
# HistogramCDF
# ----------------------------------------------------------------------------------------------


def _histogram_cdf_by_hand(x, probabilities):
    """The CDF of a histogram on [0, 1] by linear interpolation between its knots, per coordinate."""
    num_bins = probabilities.shape[-1]
    knots_x = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)
    z, slope = torch.empty_like(x), torch.empty_like(x)
    for i in range(x.shape[1]):
        knots_z = torch.cat([torch.zeros(1, dtype=torch.float64), probabilities[i].cumsum(0)])
        for b in range(x.shape[0]):
            k = min(int(x[b, i] * num_bins), num_bins - 1)
            t = (x[b, i] - knots_x[k]) / (knots_x[k + 1] - knots_x[k])
            z[b, i] = knots_z[k] + t * (knots_z[k + 1] - knots_z[k])
            slope[b, i] = (knots_z[k + 1] - knots_z[k]) / (knots_x[k + 1] - knots_x[k])
    return z, slope


def test_histogram_cdf_is_the_cdf_of_its_histogram():
    torch.manual_seed(0)
    layer = L.HistogramCDF(3, num_bins=4, scale=2.0).double().eval()
    with torch.no_grad():
        layer.logits.normal_()
    m = layer.min_probability
    probabilities = m + (1 - 4 * m) * torch.softmax(2.0 * layer.logits, -1)
    torch.testing.assert_close(layer.probabilities(), probabilities)
    x = torch.rand(50, 3, dtype=torch.float64)
    z, log_det = layer(x)
    z_expected, slope = _histogram_cdf_by_hand(x, probabilities)
    torch.testing.assert_close(z, z_expected)
    torch.testing.assert_close(log_det, slope.log().sum(1))
    x_back, inverse_log_det = layer.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(inverse_log_det, -log_det)
    # The ends stay where they are; the identity when every bin has probability 1/K.
    ends = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(layer(ends)[0], ends)
    uniform = L.HistogramCDF(3, num_bins=4).double().eval()
    torch.testing.assert_close(uniform(x)[0], x)
    torch.testing.assert_close(uniform(x)[1], torch.zeros(50, dtype=torch.float64))


def test_histogram_cdf_initialises_from_the_first_training_batch_once():
    torch.manual_seed(0)
    levels = torch.randint(0, 4, (200, 1, 2, 2))  # 4 levels, 4 bins: bin = level
    levels[:, 0, 0, 0] = 0  # one pixel always in the first bin
    x = Dequantize(4)(levels)
    layer = L.HistogramCDF((1, 2, 2), num_bins=4)
    layer.eval()
    layer(x)
    assert not layer.initialized, "eval mode never initialises"
    layer.train()
    layer(x)
    assert layer.initialized
    counts = torch.stack([(levels.flatten(1) == k).sum(0) for k in range(4)], 1).float()  # (4 pixels, 4 bins)
    expected = (counts + 1) / (counts + 1).sum(1, keepdim=True)
    torch.testing.assert_close(layer.probabilities().view(4, 4), expected)
    # The data now come out with uniform marginals: each bin holds its share of [0, 1].
    z, _ = layer(x)
    assert (z >= 0).all() and (z <= 1).all()
    assert (z.flatten(1).mean(0) - 0.5).abs().max() < 0.05
    # A second training batch does not initialise again; the flag travels with state_dict.
    before = layer.logits.detach().clone()
    layer(Dequantize(4)(torch.zeros(8, 1, 2, 2, dtype=torch.long)))
    assert torch.equal(layer.logits, before)
    restored = L.HistogramCDF((1, 2, 2), num_bins=4)
    restored.load_state_dict(layer.state_dict())
    restored.train()(Dequantize(4)(torch.full((8, 1, 2, 2), 3)))
    assert torch.equal(restored.logits, before)


def test_histogram_cdf_alone_is_the_model_of_independent_histograms():
    # With a uniform base the log-density of a dequantized image is sum_i log(K p_ik): its bits/dim
    # are those of independent pixels with histograms p, the dequantization noise adding nothing.
    torch.manual_seed(1)
    layer = L.HistogramCDF((1, 2, 2), num_bins=5).double().eval()
    with torch.no_grad():
        layer.logits.normal_(0, 0.3)
    p = layer.probabilities().view(4, 5)
    levels = torch.randint(0, 5, (30, 1, 2, 2))
    x = Dequantize(5)(levels).double()
    _, log_det = layer(x)
    discrete = torch.log(p[torch.arange(4), levels.flatten(1)]).sum(1)  # log P(levels), (30,)
    torch.testing.assert_close(log_det, discrete + 4 * math.log(5))


def test_histogram_cdf_outside_the_unit_interval_and_bad_input():
    layer = L.HistogramCDF((1, 2, 2), num_bins=4).eval()  # uninitialised: the identity inside [0, 1]
    x = torch.full((3, 1, 2, 2), 0.5)
    x[1, 0, 0, 1] = 1.5
    x[2, 0, 1, 0] = -0.25
    z, log_det = layer(x)
    assert torch.isfinite(z).all()
    assert log_det[0] == 0 and log_det[1:].eq(-math.inf).all()
    _, inverse_log_det = layer.inverse(x)
    assert inverse_log_det[1:].eq(-math.inf).all()
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.zeros(2, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="unscaled pixel"):
        layer(torch.full((2, 1, 2, 2), 16.0))
    with pytest.raises(ValueError, match=r"expects a batch of shape \(B, 1, 2, 2\)"):
        layer(torch.rand(2, 4))
    with pytest.raises(ValueError, match="num_bins must be a positive int"):
        L.HistogramCDF(4, num_bins=0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        L.HistogramCDF(4, scale=0.0)
    with pytest.raises(ValueError, match="min_probability must lie in"):
        L.HistogramCDF(4, num_bins=10, min_probability=0.1)


def test_histogram_cdf_keeps_a_least_probability_per_bin_and_an_accurate_inverse():
    layer = L.HistogramCDF(2, num_bins=8).double().eval()
    with torch.no_grad():
        layer.logits.normal_(0, 5)  # scale 16: logits of about +-80, softmax probabilities down to 1e-60
    p = layer.probabilities()
    assert p.min() >= layer.min_probability and torch.allclose(p.sum(-1), torch.ones(2, dtype=torch.float64))
    x = torch.rand(1000, 2, dtype=torch.float64)
    z, _ = layer(x)
    x_back, _ = layer.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    # An initialisation from a batch larger than 1 / m: the rarest bins get m, not less.
    big = L.HistogramCDF(1, num_bins=4, min_probability=1e-3)
    big.initialize(torch.full((5000, 1), 0.1))
    torch.testing.assert_close(big.probabilities()[0, 1:], torch.full((3,), 1e-3))
