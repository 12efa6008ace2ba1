"""Every layer of coursepkg.layers against the properties all flows share.

The log-determinant is compared with the brute-force Jacobian in float64, the inverse with the
input, and so on (see coursepkg.testing). Each layer is given non-trivial parameters first:
many layers start as the identity, where a wrong log_det of zero would pass.
"""

import pytest
import torch

from coursepkg import Compose, Inverse
from coursepkg import layers as L
from coursepkg.testing import check_flow


def _perturbed(make):
    def build():
        torch.manual_seed(123)
        layer = make()
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(0.5 * torch.randn_like(p))
        return layer

    return build


VECTOR_LAYERS = {
    "ElementwiseAffine": lambda: L.ElementwiseAffine(4),
    "ElementwiseAffine-noshift": lambda: L.ElementwiseAffine(4, shift=False),
    "Linear": lambda: L.Linear(4),
    "LULinear": lambda: L.LULinear(4),
    "Permutation": lambda: L.Permutation([2, 0, 3, 1]),
    "Reverse": lambda: L.Reverse(4),
    "Planar": lambda: L.Planar(4),
    "PiecewiseLinear": lambda: L.PiecewiseLinear(4, num_bins=6, bound=1.5),
    "Sigmoid": lambda: L.Sigmoid(),
    "ActNorm": lambda: L.ActNorm(4),
    "Compose": lambda: Compose(L.ActNorm(4), L.Planar(4), L.LULinear(4), L.PiecewiseLinear(4, 5, 2.0)),
    "Inverse-Planar": lambda: Inverse(L.Planar(4)),
}


@pytest.mark.parametrize("name", sorted(VECTOR_LAYERS))
def test_vector_layer(name):
    make = _perturbed(VECTOR_LAYERS[name])
    torch.manual_seed(0)
    x = 1.2 * torch.randn(6, 4)
    check_flow(make(), x, make)


def test_logit_on_unit_interval():
    make = lambda: L.Logit(alpha=0.05)
    x = torch.rand(6, 1, 3, 3)
    check_flow(make(), x, make)


def test_image_shaped_layers():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 4)
    for make in (_perturbed(lambda: L.ActNorm(2)), _perturbed(lambda: L.ElementwiseAffine((2, 4, 4)))):
        check_flow(make(), x, make)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_accelerator(device):
    available = torch.cuda.is_available() if device == "cuda" else torch.backends.mps.is_available()
    if not available:
        pytest.skip(f"no {device} device on this machine")
    x = torch.randn(6, 4, device=device)
    for name, make in VECTOR_LAYERS.items():
        layer = _perturbed(make)().to(device)
        z, log_det = layer(x)
        assert z.device.type == device and log_det.device.type == device, name
        x_back, _ = layer.inverse(z)
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4, msg=name)
