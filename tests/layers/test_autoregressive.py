"""What is specific to the masked autoregressive layers (MAF) and their inverses (IAF).

The properties every flow shares (log_det against the brute-force Jacobian, gradients,
state_dict...) are checked in test_all_layers.py.
"""

import pytest
import torch

from coursepkg import Inverse
from coursepkg import layers as L
from coursepkg.layers import AffineTransformer, RationalQuadraticSpline, Transformer
from coursepkg.testing import check_autoregressive, check_flow

ORDERS = ["natural", "reversed", "random", [3, 0, 4, 1, 2]]


def _maf(order="natural", features=5, **kwargs):
    """A layer with non-trivial parameters (the MADE's last layer starts at zero, the identity)."""
    torch.manual_seed(7)
    layer = L.MaskedAutoregressive(features, hidden=(10, 8), order=order, **kwargs)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return layer


def _count_made_calls(layer):
    calls = []
    layer.made.register_forward_hook(lambda module, inputs, output: calls.append(1))
    return calls


@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_maf_and_iaf_are_autoregressive_in_the_order(order):
    layer = _maf(order)
    x = torch.randn(8, 5)
    check_autoregressive(layer, x, order=layer.order, strict=False)
    check_autoregressive(Inverse(layer), x, order=layer.order, strict=False)
    if order != "natural":  # the dependencies really follow the order, not the indices
        with pytest.raises(AssertionError, match="not autoregressive"):
            check_autoregressive(layer, x, strict=False)


def test_density_is_one_made_pass_and_sampling_one_per_dimension():
    layer = _maf("random", features=6)
    calls = _count_made_calls(layer)
    x = torch.randn(4, 6)
    z, _ = layer(x)
    assert len(calls) == 1
    layer.inverse(z)
    assert len(calls) == 1 + 6
    # An IAF trades the two: sampling (its inverse) is the single pass.
    iaf = Inverse(layer)
    calls.clear()
    iaf.inverse(x)
    assert len(calls) == 1
    iaf(x)
    assert len(calls) == 1 + 6


@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_inverse_undoes_forward_in_float64(order):
    layer = _maf(order).double()
    x = 2.0 * torch.randn(32, 5, dtype=torch.float64)
    z, log_det = layer(x)
    x_back, log_det_back = layer.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-12, rtol=1e-12)


def test_iaf_is_the_maf_run_backwards():
    maf = _maf("reversed").double()
    iaf = Inverse(maf)
    z = torch.randn(16, 5, dtype=torch.float64)
    x, log_det_sampling = iaf.inverse(z)  # one pass: x = maf(z)
    z_maf, log_det_maf = maf(z)
    torch.testing.assert_close(x, z_maf, atol=0, rtol=0)
    torch.testing.assert_close(log_det_sampling, log_det_maf, atol=0, rtol=0)
    # The density direction of the IAF undoes it, with the opposite log-det.
    z_back, log_det_density = iaf(x)
    torch.testing.assert_close(z_back, z, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(log_det_density, -log_det_sampling, atol=1e-12, rtol=1e-12)


def test_affine_transformer_is_a_soft_clamped_affine_map_with_blocks_of_parameters():
    transformer = AffineTransformer(scale_bound=2.0)
    assert transformer.num_params == 2
    x = torch.randn(3, 4)
    shift, raw_log_scale = torch.randn(3, 4), 5 * torch.randn(3, 4)
    params = torch.stack([shift, raw_log_scale], 1)  # (B, 2, D): shifts, then log-scales
    z, log_det = transformer(x, params)
    log_scale = 2.0 * torch.tanh(raw_log_scale / 2.0)
    torch.testing.assert_close(z, x * log_scale.exp() + shift)
    torch.testing.assert_close(log_det, log_scale)  # per element, (B, D)
    assert log_det.abs().max() < 2.0
    x_back, log_det_back = transformer.inverse(z, params)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(log_det_back, -log_scale)
    z_unbounded, _ = AffineTransformer(None)(x, params)
    torch.testing.assert_close(z_unbounded, x * raw_log_scale.exp() + shift)


def test_the_layer_log_det_is_the_sum_of_the_transformer_terms():
    layer = _maf("random")
    x = torch.randn(6, 5)
    z, log_det = layer(x)
    z_parts, log_det_parts = layer.transformer(x, layer.made(x))
    torch.testing.assert_close(z, z_parts)
    torch.testing.assert_close(log_det, log_det_parts.sum(1))


def test_the_layer_starts_as_the_identity():
    layer = L.MaskedAutoregressive(4, hidden=8)
    x = torch.randn(5, 4)
    z, log_det = layer(x)
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(5))


class Shift(Transformer):
    """z = x + t: one parameter per dimension (K = 1), volume preserving."""

    num_params = 1

    def forward(self, x, params):
        return x + params[:, 0], torch.zeros_like(x)

    def inverse(self, z, params):
        return z - params[:, 0], torch.zeros_like(z)


def test_any_transformer_with_the_interface_fits():
    def make():
        torch.manual_seed(3)
        layer = L.MaskedAutoregressive(4, hidden=8, transformer=Shift(), order="reversed")
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.5 * torch.randn_like(p))
        return layer

    layer = make()
    assert layer.made.num_params == 1
    x = torch.randn(6, 4)
    check_flow(layer, x, make)
    check_autoregressive(layer, x, order=[3, 2, 1, 0])


def test_bad_arguments_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="transformer must be 'affine' or a Transformer module"):
        L.MaskedAutoregressive(4, transformer="spline")
    with pytest.raises(TypeError, match="num_params"):
        L.MaskedAutoregressive(4, transformer=torch.nn.Identity())
    with pytest.raises(ValueError, match="scale_bound"):
        L.MaskedAutoregressive(4, scale_bound=0.0)
    with pytest.raises(ValueError, match="permutation"):
        L.MaskedAutoregressive(4, order=[0, 1, 2])
    layer = L.MaskedAutoregressive(4, hidden=8)
    for direction in (layer, layer.inverse):
        with pytest.raises(ValueError, match=r"expects inputs of shape \(B, 4\)"):
            direction(torch.randn(3, 5))


def test_spline_transformer():
    spline = RationalQuadraticSpline(num_bins=5, bound=2.5)
    layer = L.MaskedAutoregressive(4, hidden=8, transformer=spline, order="reversed")
    assert layer.transformer is spline and layer.made.num_params == 3 * 5 - 1
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(6, 4)
    check_autoregressive(layer, x, order=layer.order)
    check_autoregressive(Inverse(layer), x, order=layer.order)
