"""BatchNormFlow: batch statistics in training, running averages in eval, and its log-determinant."""

import math

import pytest
import torch

from coursepkg import layers as L
from coursepkg.jacobian import log_abs_det_jacobian


def test_training_mode_standardises_the_batch_and_reports_its_log_det():
    torch.manual_seed(0)
    x = 3 + 2 * torch.randn(500, 3)
    layer = L.BatchNormFlow(3)
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    expected = -0.5 * torch.log(x.var(0, unbiased=False) + layer.eps).sum()
    torch.testing.assert_close(log_det, expected.expand(500))


def test_running_averages_follow_momentum():
    layer = L.BatchNormFlow(2, momentum=0.25)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    layer(x)
    torch.testing.assert_close(layer.running_mean, 0.25 * torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(layer.running_var, 0.75 + 0.25 * torch.tensor([1.0, 4.0]))


def test_eval_mode_and_inverse_use_the_running_averages():
    layer = L.BatchNormFlow(2).eval()
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25]))
        layer.log_gamma.copy_(torch.tensor([0.3, -0.1]))
        layer.beta.copy_(torch.tensor([0.5, 0.0]))
    x = torch.randn(6, 2)
    z, log_det = layer(x)
    std = torch.sqrt(torch.tensor([4.0, 0.25]) + layer.eps)
    torch.testing.assert_close(
        z, (x - torch.tensor([1.0, -2.0])) / std * torch.tensor([0.3, -0.1]).exp() + torch.tensor([0.5, 0.0])
    )
    torch.testing.assert_close(log_det, (0.2 - torch.log(std).sum()).expand(6))
    # The output of one sample does not depend on the others in eval mode.
    torch.testing.assert_close(layer(x[:1])[0], z[:1])
    layer.train()
    x_back, log_det_back = layer.inverse(z)  # running averages even in training mode
    torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_det_back, -log_det)


def test_training_mode_map_depends_on_the_batch():
    layer = L.BatchNormFlow(2)
    x = torch.randn(8, 2)
    z_all, _ = layer(x)
    z_half, _ = layer(x[:4])
    assert not torch.allclose(z_all[:4], z_half)


def test_images_use_per_channel_statistics_and_count_every_pixel():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 4, 5) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    layer = L.BatchNormFlow(3)
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    var = x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(log_det, (-0.5 * 20 * torch.log(var + layer.eps).sum()).expand(16))
    # Eval mode: the brute-force Jacobian of the now fixed map agrees, with H W = 20 pixels.
    layer = layer.double().eval()
    with torch.no_grad():
        layer.log_gamma.copy_(torch.tensor([0.2, -0.4, 0.1]))
    x = x[:2].double()
    expected = log_abs_det_jacobian(layer, x)
    torch.testing.assert_close(layer(x)[1], expected)
    assert math.isclose(expected[0].item(), layer(x)[1][0].item(), rel_tol=1e-9)


def test_state_dict_keeps_the_running_averages_and_bad_input_is_rejected():
    layer = L.BatchNormFlow(2)
    layer(torch.randn(10, 2) * 3 + 1)
    restored = L.BatchNormFlow(2)
    restored.load_state_dict(layer.state_dict())
    torch.testing.assert_close(restored.running_mean, layer.running_mean)
    torch.testing.assert_close(restored.running_var, layer.running_var)
    with pytest.raises(ValueError, match=r"BatchNormFlow\(2\)"):
        layer(torch.randn(3, 3))
    with pytest.raises(ValueError, match="momentum"):
        L.BatchNormFlow(2, momentum=0.0)
