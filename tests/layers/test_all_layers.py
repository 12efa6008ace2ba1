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
    "AdditiveCoupling": lambda: L.AdditiveCoupling(L.alternating_mask(4), hidden=8),
    "AffineCoupling": lambda: L.AffineCoupling(L.halves_mask(4), hidden=8),
    "AffineCoupling-random-mask": lambda: L.AffineCoupling(L.random_mask(4), hidden=(8, 6)),
    "AffineCoupling-unbounded": lambda: L.AffineCoupling(
        L.alternating_mask(4, 1), hidden=8, scale_bound=None
    ),
    "Scaling": lambda: L.Scaling(4),
    "BatchNormFlow": lambda: _with_running_stats(L.BatchNormFlow(4)),
    "MaskedAutoregressive": lambda: L.MaskedAutoregressive(4, hidden=8),
    "MaskedAutoregressive-random-order": lambda: L.MaskedAutoregressive(4, hidden=(8, 6), order="random"),
    "MaskedAutoregressive-unbounded": lambda: L.MaskedAutoregressive(
        4, hidden=8, order="reversed", scale_bound=None
    ),
    # bound 2: some of the inputs fall in the identity tails, the others inside the spline.
    "MaskedAutoregressive-spline": lambda: L.MaskedAutoregressive(
        4, hidden=8, transformer=L.RationalQuadraticSpline(num_bins=4, bound=2.0), order="reversed"
    ),
    "InvertibleResidual": lambda: L.InvertibleResidual(4, hidden=8, log_det="exact"),
    "InvertibleResidual-lipswish": lambda: L.InvertibleResidual(
        4, hidden=(8, 6), coefficient=0.97, activation="lipswish", log_det="exact"
    ),
    "InvertibleResidual-power-method": lambda: L.InvertibleResidual(
        4, hidden=8, coefficient=0.7, log_det="exact", power_iterations=2
    ),
    "Inverse-MaskedAutoregressive": lambda: Inverse(L.MaskedAutoregressive(4, hidden=8, order=[2, 0, 3, 1])),
}


def _with_running_stats(layer):
    # Non-trivial running averages: eval mode (where log_det is checked) uses them.
    with torch.no_grad():
        layer.running_mean.normal_()
        layer.running_var.uniform_(0.5, 2.0)
    return layer


def _multiscale():
    # (2, 4, 4) -> checkerboard, squeeze, channel coupling -> (8, 2, 2); 4 channels go on.
    steps = Compose(
        L.ConvAffineCoupling(2, L.checkerboard_mask(4, 4, 0), hidden=4, num_blocks=0),
        L.Squeeze(),
        L.ConvAffineCoupling(8, L.channel_mask(8, 1), hidden=4, num_blocks=0),
    )
    inner = Compose(
        L.ActNorm(4), L.ConvAffineCoupling(4, L.checkerboard_mask(2, 2, 1), hidden=4, num_blocks=0)
    )
    return L.MultiScale(steps, inner)


def _glow_level():
    # One Glow level on (2, 4, 4): squeeze, a step of flow, the learned prior, factor-out.
    steps = Compose(
        L.Squeeze(),
        L.ActNorm(8),
        L.LUConv1x1(8),
        L.ChannelAffineCoupling(8, hidden=4),
        L.SplitPrior(8),
    )
    inner = L.MultiScale(Compose(L.Squeeze(), L.Conv1x1(16), L.ChannelAffineCoupling(16, hidden=4)))
    return L.MultiScale(steps, inner, keep=4)


# Each entry: (make, shape of one sample).
IMAGE_LAYERS = {
    "ActNorm": (lambda: L.ActNorm(2), (2, 4, 4)),
    "ElementwiseAffine": (lambda: L.ElementwiseAffine((2, 4, 4)), (2, 4, 4)),
    "BatchNormFlow": (lambda: _with_running_stats(L.BatchNormFlow(2)), (2, 4, 4)),
    "ConvAffineCoupling-checkerboard": (
        lambda: L.ConvAffineCoupling(2, L.checkerboard_mask(4, 4, 0), hidden=4, num_blocks=1),
        (2, 4, 4),
    ),
    "ConvAffineCoupling-channel": (
        lambda: L.ConvAffineCoupling(4, L.channel_mask(4, 1), hidden=4),
        (4, 2, 2),
    ),
    "ConvAdditiveCoupling-checkerboard": (
        lambda: L.ConvAdditiveCoupling(2, L.checkerboard_mask(4, 4, 1), hidden=4, num_blocks=0),
        (2, 4, 4),
    ),
    "ConvAdditiveCoupling-channel": (
        lambda: L.ConvAdditiveCoupling(4, L.channel_mask(4, 0), hidden=4),
        (4, 2, 2),
    ),
    # check_flow also runs inverse on x: a shape that both directions accept.
    "Squeeze": (lambda: L.Squeeze(), (4, 4, 4)),
    "Unsqueeze": (lambda: L.Unsqueeze(), (4, 4, 4)),
    "MultiScale": (_multiscale, (2, 4, 4)),
    "MultiScale-glow": (_glow_level, (2, 4, 4)),
    "Conv1x1": (lambda: L.Conv1x1(3), (3, 2, 2)),
    "LUConv1x1": (lambda: L.LUConv1x1(3), (3, 2, 2)),
    "LUConv1x1-bias": (lambda: L.LUConv1x1(4, bias=True), (4, 2, 3)),
    "ChannelAffineCoupling": (lambda: L.ChannelAffineCoupling(4, hidden=4), (4, 2, 2)),
    "ChannelAffineCoupling-odd-parity-1": (
        lambda: L.ChannelAffineCoupling(3, hidden=4, parity=1),
        (3, 2, 3),
    ),
    "ChannelAffineCoupling-unbounded": (
        lambda: L.ChannelAffineCoupling(4, hidden=4, scale_bound=None),
        (4, 2, 2),
    ),
    "SplitPrior": (lambda: L.SplitPrior(4), (4, 2, 2)),
    "SplitPrior-keep-1": (lambda: L.SplitPrior(3, keep=1, scale_bound=None), (3, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(VECTOR_LAYERS))
def test_vector_layer(name):
    make = _perturbed(VECTOR_LAYERS[name])
    torch.manual_seed(0)
    x = 1.2 * torch.randn(6, 4)
    check_flow(make(), x, make)


# Layers defined on the unit interval (images scaled to [0, 1]).
UNIT_INTERVAL_LAYERS = {
    "Logit": lambda: L.Logit(alpha=0.05),
    # Perturbed: a new HistogramCDF is the identity (every bin has probability 1/K).
    "HistogramCDF": _perturbed(lambda: L.HistogramCDF((1, 3, 3), num_bins=5, scale=2.0)),
}


@pytest.mark.parametrize("name", sorted(UNIT_INTERVAL_LAYERS))
def test_layer_on_unit_interval(name):
    make = UNIT_INTERVAL_LAYERS[name]
    x = torch.rand(6, 1, 3, 3)
    check_flow(make(), x, make)


@pytest.mark.parametrize("name", sorted(IMAGE_LAYERS))
def test_image_layer(name):
    make, shape = IMAGE_LAYERS[name]
    make = _perturbed(make)
    torch.manual_seed(0)
    x = torch.randn(3, *shape)
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
    for name, (make, shape) in IMAGE_LAYERS.items():
        x = torch.randn(3, *shape, device=device)
        layer = _perturbed(make)().to(device).eval()
        z, log_det = layer(x)
        assert z.device.type == device and log_det.device.type == device, name
        x_back, _ = layer.inverse(z)
        torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4, msg=name)


def test_every_exported_layer_is_checked_here():
    """A new layer exported by coursepkg.layers must be added to VECTOR_LAYERS or IMAGE_LAYERS."""
    from coursepkg import Flow

    exported = {
        name
        for name in L.__all__
        if isinstance(getattr(L, name), type) and issubclass(getattr(L, name), Flow)
    }
    checked = {type(make()).__name__ for make in VECTOR_LAYERS.values()}
    checked |= {type(make()).__name__ for make, _ in IMAGE_LAYERS.values()}
    checked |= {type(make()).__name__ for make in UNIT_INTERVAL_LAYERS.values()}
    missing = sorted(exported - checked)
    assert not missing, f"add {missing} to VECTOR_LAYERS, IMAGE_LAYERS or UNIT_INTERVAL_LAYERS in {__file__}"
