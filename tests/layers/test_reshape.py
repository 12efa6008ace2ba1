"""Squeeze / unsqueeze and the multi-scale factor-out."""

import pytest
import torch

from coursepkg import Compose, NormalizingFlow, StandardNormal
from coursepkg import layers as L


def test_squeeze_follows_the_documented_order():
    x = torch.randn(2, 3, 4, 6)
    out = L.squeeze(x)
    assert out.shape == (2, 12, 2, 3)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(out[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])


def test_squeeze_factor_three_and_unsqueeze_round_trip():
    x = torch.randn(2, 2, 6, 3)
    out = L.squeeze(x, 3)
    assert out.shape == (2, 18, 2, 1)
    assert torch.equal(out[:, 9 * 1 + 3 * 2 + 1], x[:, 1, 2::3, 1::3])
    assert torch.equal(L.unsqueeze(out, 3), x)
    assert torch.equal(L.squeeze(L.unsqueeze(out, 3), 3), out)


def test_squeeze_layers_have_zero_log_det_and_invert_each_other():
    x = torch.randn(3, 1, 4, 4)
    z, log_det = L.Squeeze()(x)
    assert z.shape == (3, 4, 2, 2) and torch.equal(log_det, torch.zeros(3))
    back, log_det = L.Unsqueeze()(z)
    assert torch.equal(back, x) and torch.equal(log_det, torch.zeros(3))
    assert torch.equal(L.Unsqueeze().inverse(z)[0], L.Squeeze()(z)[0])


def test_squeeze_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 2"):
        L.squeeze(torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError, match="divisible by 4"):
        L.unsqueeze(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="factor"):
        L.Squeeze(0)


def _perturbed(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return module


def _scale(inner=True):
    steps = Compose(
        L.ConvAffineCoupling(1, L.checkerboard_mask(4, 4, 0), hidden=4, num_blocks=0),
        L.Squeeze(),
        L.ConvAffineCoupling(4, L.channel_mask(4, 0), hidden=4, num_blocks=0),
    )
    rest = L.ConvAffineCoupling(2, L.checkerboard_mask(2, 2, 1), hidden=4, num_blocks=0) if inner else None
    return _perturbed(L.MultiScale(steps, rest))


def test_multiscale_keeps_the_input_shape_and_factors_out_half():
    layer = _scale()
    x = torch.randn(5, 1, 4, 4)
    z, log_det = layer(x)
    assert z.shape == x.shape and log_det.shape == (5,)
    y, steps_log_det = layer.steps(x)
    z_squeezed = L.squeeze(z)
    # The factored-out channels are final after the steps; the kept ones went through inner.
    assert torch.equal(z_squeezed[:, 2:], y[:, 2:])
    kept, inner_log_det = layer.inner(y[:, :2])
    torch.testing.assert_close(z_squeezed[:, :2], kept)
    torch.testing.assert_close(log_det, steps_log_det + inner_log_det)
    # The round trip in float64: in float32 a few of the 80 values drift by ~2e-5 through the
    # perturbed couplings, which says nothing about whether the inverse is right.
    layer, x = layer.double(), x.double()
    z, log_det = layer(x)
    x_back, log_det_back = layer.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(log_det_back, -log_det, atol=1e-10, rtol=1e-10)


def test_multiscale_without_inner_is_steps_then_unsqueeze():
    layer = _scale(inner=False)
    x = torch.randn(3, 1, 4, 4)
    z, log_det = layer(x)
    y, steps_log_det = layer.steps(x)
    assert torch.equal(z, L.unsqueeze(y)) and torch.equal(log_det, steps_log_det)


def test_multiscale_latent_works_with_an_image_base():
    model = NormalizingFlow(_scale(), StandardNormal((1, 4, 4)))
    assert model.sample(3).shape == (3, 1, 4, 4)
    assert model.bits_per_dim(torch.rand(3, 1, 4, 4), num_levels=17).shape == (3,)


def test_multiscale_says_when_the_steps_do_not_squeeze():
    layer = L.MultiScale(L.ConvAffineCoupling(2, L.checkerboard_mask(4, 4), hidden=4))
    with pytest.raises(ValueError, match="Squeeze"):
        layer(torch.randn(2, 2, 4, 4))
