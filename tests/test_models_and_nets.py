import pytest
import torch

from coursepkg import brute_force_jacobian, models, nets
from coursepkg.nets import MADE, MLP, as_hidden, degree_mask
from coursepkg.testing import check_autoregressive


def test_data_shape_convention():
    assert models.data_shape(2) == (2,)
    assert models.data_shape((1, 8, 8)) == (1, 8, 8)
    for bad in (0, (1, 8), (3, 0, 2)):
        with pytest.raises(ValueError, match=r"\(C, H, W\)"):
            models.data_shape(bad)
    base = models.standard_normal_base((1, 8, 8))
    assert base.sample(2).shape == (2, 1, 8, 8)


def test_families_not_written_yet_say_which_chapter_brings_them(monkeypatch):
    # Every family of the book is written now; the mechanism stays for the next one.
    for name in models._PLANNED:
        assert name not in models.__all__, f"models.{name} exists: remove it from models._PLANNED"
    monkeypatch.setitem(models._PLANNED, "future_flow", "chapter 9 (a future family)")
    with pytest.raises(NotImplementedError, match="chapter 9"):
        models.future_flow  # noqa: B018


def test_written_families_are_no_longer_planned():
    assert {"nice", "realnvp", "maf", "iaf", "glow", "iresnet"} <= set(models.__all__)
    assert not set(models.__all__) & set(models._PLANNED)


def test_unknown_model_is_an_attribute_error():
    with pytest.raises(AttributeError):
        models.does_not_exist  # noqa: B018


def test_mlp_shapes_hidden_and_zero_last_layer():
    assert as_hidden(32) == (32, 32)
    assert as_hidden((16, 8)) == (16, 8)
    with pytest.raises(ValueError):
        as_hidden(())
    net = MLP(3, 5, hidden=(7, 11))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 7), (7, 11), (11, 5)]
    assert torch.count_nonzero(net(torch.randn(4, 3))) == 0
    assert torch.count_nonzero(MLP(3, 5, zero_last=False)(torch.randn(4, 3))) > 0


# ----------------------------------------------------------------------------------------------
# MADE
# ----------------------------------------------------------------------------------------------

ORDERS = ["natural", "reversed", "random", [2, 0, 4, 1, 3]]


def _made(order, num_params, **kwargs):
    # zero_last=False: a zero last layer has a zero Jacobian, which any mask would pass.
    return MADE(5, (12, 9), num_params, order=order, zero_last=False, **kwargs)


@pytest.mark.parametrize("num_params", [1, 2, 3])
@pytest.mark.parametrize("order", ORDERS, ids=str)
def test_made_is_strictly_autoregressive_in_its_order(order, num_params):
    made = _made(order, num_params, generator=torch.Generator().manual_seed(3))
    x = torch.randn(16, 5)
    out = made(x)
    assert out.shape == (16, num_params, 5) and out.is_contiguous()
    if order == "random":
        assert sorted(made.order.tolist()) == [0, 1, 2, 3, 4]
    else:
        expected = {"natural": [0, 1, 2, 3, 4], "reversed": [4, 3, 2, 1, 0]}.get(str(order), order)
        assert made.order.tolist() == expected
    check_autoregressive(made, x, order=made.order, strict=True)


def test_made_random_order_follows_the_generator_and_survives_state_dict():
    orders = {
        tuple(MADE(6, 8, order="random", generator=torch.Generator().manual_seed(s)).order.tolist())
        for s in range(5)
    }
    assert len(orders) > 1 and all(sorted(o) == list(range(6)) for o in orders)
    made = MADE(6, 8, order="random", generator=torch.Generator().manual_seed(1))
    restored = MADE(6, 8, order="random", generator=torch.Generator().manual_seed(2))
    restored.load_state_dict(made.state_dict())
    assert torch.equal(restored.order, made.order) and torch.equal(restored.degrees, made.degrees)


@pytest.mark.parametrize("order", ORDERS[1:], ids=str)
def test_made_uses_every_allowed_dependency(order):
    # tanh instead of ReLU: no unit is dead at every point, so an allowed connection shows up in
    # the Jacobian; with hidden layers of at least D - 1 units every earlier dimension is seen.
    made = _made(order, 2, activation=torch.nn.Tanh).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    seen = brute_force_jacobian(made, x).abs().amax(0) > 0  # (K D, D)
    degrees = made.degrees
    before = degrees.unsqueeze(0) < degrees.unsqueeze(1)  # (D, D): input j before output i
    assert torch.equal(seen, before.repeat(2, 1))


def test_a_made_with_a_non_strict_output_mask_is_caught(monkeypatch):
    x = torch.randn(16, 5)
    made = _made("random", 2, generator=torch.Generator().manual_seed(0))
    check_autoregressive(made, x, order=made.order, strict=True)
    # The deliberate mistake: `<=` instead of `<` in the degree rule of the output layer.
    monkeypatch.setattr(
        nets, "degree_mask", lambda inputs, outputs, strict: degree_mask(inputs, outputs, False)
    )
    wrong = _made("random", 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(wrong.order, made.order)
    with pytest.raises(AssertionError, match="not strictly autoregressive.*depends on its own input"):
        check_autoregressive(wrong, x, order=wrong.order, strict=True)


def test_made_starts_at_zero_and_rejects_bad_arguments():
    made = MADE(4, 8, 3)
    assert torch.count_nonzero(made(torch.randn(2, 4))) == 0
    with pytest.raises(ValueError, match="permutation"):
        MADE(4, 8, order=[0, 1, 1, 2])
    with pytest.raises(ValueError, match="order must be"):
        MADE(4, 8, order="sideways")
    with pytest.raises(ValueError, match="num_params"):
        MADE(4, 8, num_params=0)
    with pytest.raises(ValueError, match=r"expects \(B, 4\)"):
        made(torch.randn(2, 3))


# ----------------------------------------------------------------------------------------------
# Glow's conditioner
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("c_in", "c_out", "height", "width"),
    [(2, 16, 4, 4), (16, 4, 4, 4), (3, 3, 2, 5), (5, 2, 1, 3), (4, 8, 1, 1)],
)
def test_conv3x3_pixels_is_conv2d_in_a_pixel_major_layout(c_in, c_out, height, width):
    # Both ways of computing it (gather the inputs, or the outputs) against F.conv2d, with gradients.
    torch.manual_seed(0)
    x = torch.randn(3, c_in, height, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(c_out, c_in, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.conv2d(x, weight, bias, padding=1)
    pixels = x.permute(0, 2, 3, 1).reshape(3, height * width, c_in)
    out = nets.conv3x3_pixels(pixels, weight, bias, height, width)
    got = out.transpose(1, 2).reshape(3, c_out, height, width)
    torch.testing.assert_close(got, expected)
    upstream = torch.randn_like(expected)
    grads = torch.autograd.grad(expected, (x, weight, bias), upstream)
    grads_got = torch.autograd.grad(got, (x, weight, bias), upstream)
    for g, e in zip(grads_got, grads, strict=True):
        torch.testing.assert_close(g, e)


def test_glow_net_computes_its_convolutions_and_starts_at_zero():
    torch.manual_seed(0)
    net = nets.GlowNet(2, 6, hidden=8)
    x = torch.randn(4, 2, 4, 3)
    assert torch.equal(net(x), torch.zeros(4, 6, 4, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.testing.assert_close(net(x), net.conv_forward(x), atol=1e-5, rtol=1e-5)
    assert [type(m) for m in net.children()] == [torch.nn.Conv2d] * 3
    assert net.middle.kernel_size == (1, 1)
