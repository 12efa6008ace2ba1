import math

import numpy as np
import pytest
import torch

from coursepkg import Compose, Flow, Inverse, NormalizingFlow, StandardNormal, nats_to_bits_per_dim
from coursepkg import layers as L


def _flow(dim=3, seed=0):
    torch.manual_seed(seed)
    transform = Compose(L.ElementwiseAffine(dim), L.LULinear(dim), L.Planar(dim))
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return NormalizingFlow(transform, StandardNormal(dim))


def test_compose_sums_log_dets_and_inverts_in_reverse_order():
    flow = _flow().transform
    x = torch.randn(5, 3)
    z, log_det = flow(x)
    manual, total = x, torch.zeros(5)
    for layer in flow:
        manual, ld = layer(manual)
        total = total + ld
    torch.testing.assert_close(z, manual)
    torch.testing.assert_close(log_det, total)
    x_back, log_det_back = flow.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-5, rtol=1e-5)


def test_compose_accepts_a_list_indexes_and_slices():
    layers = [L.ElementwiseAffine(2), L.Reverse(2), L.ElementwiseAffine(2)]
    flow = Compose(layers)
    assert len(flow) == 3 and flow[1] is layers[1]
    assert isinstance(flow[:2], Compose) and len(flow[:2]) == 2
    states = flow.trajectory(torch.randn(4, 2))
    assert len(states) == 4 and states[-1].shape == (4, 2)


def test_compose_rejects_non_flows():
    with pytest.raises(TypeError, match="not a flow"):
        Compose(L.ElementwiseAffine(2), torch.nn.Linear(2, 2))


def test_inverse_swaps_directions():
    layer = _flow().transform[2]
    inverted = Inverse(layer)
    z = torch.randn(4, 3)
    torch.testing.assert_close(inverted(z)[0], layer.inverse(z)[0])
    torch.testing.assert_close(inverted.inverse(z)[0], layer(z)[0])


def test_flow_base_class_says_what_to_implement():
    with pytest.raises(NotImplementedError, match="forward"):
        Flow()(torch.zeros(1, 1))


def test_log_prob_equals_change_of_variables_with_brute_force_jacobian():
    flow = _flow().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    z, _ = flow.transform(x)
    jac = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], row) for row in x]
    )
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(flow.log_prob(x), expected)


def test_density_integrates_to_one_in_2d():
    flow = _flow(dim=2, seed=3).double()
    edges = torch.linspace(-12, 12, 801, dtype=torch.float64)
    centres = (edges[1:] + edges[:-1]) / 2
    xx, yy = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (edges[1] - edges[0]) ** 2
    assert abs(mass.item() - 1) < 2e-3


def test_sample_shapes_devices_and_no_grad():
    flow = _flow()
    x = flow.sample(7)
    assert x.shape == (7, 3) and not x.requires_grad
    assert flow.rsample(2).requires_grad
    torch.manual_seed(1)
    a = flow.sample(3)
    torch.manual_seed(1)
    b = flow.sample(3)
    torch.testing.assert_close(a, b)
    assert flow.double().sample(2).dtype == torch.float64


def test_samples_follow_the_model_density():
    # A linear flow is Gaussian with a known covariance: compare sample moments.
    torch.manual_seed(0)
    weight = torch.tensor([[2.0, 0.5], [0.0, 0.5]])
    flow = NormalizingFlow(L.Linear(2, weight=weight, bias=False), StandardNormal(2))
    x = flow.sample(200_000)
    inverse = torch.linalg.inv(weight)
    torch.testing.assert_close(torch.cov(x.T), inverse @ inverse.T, atol=0.03, rtol=0.03)


def test_sample_with_log_prob_matches_log_prob():
    flow = _flow()
    torch.manual_seed(0)
    x, log_prob = flow.sample_with_log_prob(6)
    torch.testing.assert_close(log_prob, flow.log_prob(x), atol=1e-4, rtol=1e-4)


def test_temperature_scales_base_samples():
    flow = NormalizingFlow(L.ElementwiseAffine(2), StandardNormal(2))
    torch.manual_seed(0)
    x = flow.sample(100_000, temperature=0.5)
    assert abs(x.std().item() - 0.5) < 0.01


def test_bits_per_dim_against_discrete_probability():
    # Uniform density on [0,1]^D: every one of K^D bins has probability K^-D, i.e. log2(K) bits/dim.
    class UnitCubeUniform(torch.nn.Module):
        def log_prob(self, z):
            return torch.zeros(z.shape[0], dtype=z.dtype)

    flow = NormalizingFlow(L.ElementwiseAffine((1, 4, 4)), UnitCubeUniform())
    x = torch.rand(5, 1, 4, 4)
    torch.testing.assert_close(flow.bits_per_dim(x, num_levels=17), torch.full((5,), math.log2(17)))
    # and relative to log_prob: bpd = (-log p / D + log K) / log 2
    model = NormalizingFlow(L.Logit(), StandardNormal((1, 4, 4)))
    expected = (-model.log_prob(x) / 16 + math.log(256)) / math.log(2)
    torch.testing.assert_close(model.bits_per_dim(x), expected)
    with pytest.raises(ValueError, match="num_levels"):
        model.bits_per_dim(x, num_levels=1)


def test_nats_to_bits_per_dim_on_numbers_arrays_and_tensors():
    # 64 dimensions, 17 levels: a loss of 64 log 2 nats per image is 1 bit/dim plus log2(17).
    assert nats_to_bits_per_dim(64 * math.log(2), 64, 17) == pytest.approx(1 + math.log2(17))
    assert nats_to_bits_per_dim(2 * math.log(2), 2) == pytest.approx(1.0)  # continuous data
    np.testing.assert_allclose(nats_to_bits_per_dim(np.array([0.0, 16 * math.log(4)]), 16), [0.0, 2.0])
    with pytest.raises(ValueError, match="dims"):
        nats_to_bits_per_dim(1.0, 0)


def test_state_dict_round_trip_of_a_whole_model():
    flow = _flow()
    copy = _flow(seed=99)
    copy.load_state_dict(flow.state_dict())
    x = torch.randn(3, 3)
    torch.testing.assert_close(copy.log_prob(x), flow.log_prob(x))
