"""Coupling layers and their masks: what the shared checks in test_all_layers do not cover."""

import pytest
import torch

from coursepkg import layers as L
from coursepkg.jacobian import jacobian


def _perturb(layer, scale=0.5, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))
    return layer


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def test_vector_masks_values_and_complements():
    assert L.halves_mask(5).tolist() == [True, True, False, False, False]
    assert torch.equal(L.halves_mask(5, parity=1), ~L.halves_mask(5))
    assert L.alternating_mask(5).tolist() == [True, False, True, False, True]
    assert torch.equal(L.alternating_mask(5, 1), ~L.alternating_mask(5, 0))
    for mask in (L.halves_mask(4), L.alternating_mask(4), L.random_mask(4)):
        assert mask.dtype == torch.bool and mask.shape == (4,)
    with pytest.raises(ValueError, match="parity"):
        L.alternating_mask(4, 2)


def test_random_mask_keeps_half_and_follows_its_generator():
    a = L.random_mask(10, torch.Generator().manual_seed(3))
    b = L.random_mask(10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert int(a.sum()) == 5
    masks = {tuple(L.random_mask(10, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(masks) > 1


def test_image_masks():
    board = L.checkerboard_mask(3, 4)
    assert board.shape == (3, 4) and board.dtype == torch.bool
    assert board.tolist()[0] == [True, False, True, False]
    assert board.tolist()[1] == [False, True, False, True]
    assert torch.equal(L.checkerboard_mask(3, 4, 1), ~board)
    assert L.channel_mask(4).tolist() == [True, True, False, False]
    assert torch.equal(L.channel_mask(4, 1), ~L.channel_mask(4))


def test_soft_clamp_is_identity_near_zero_and_bounded():
    s = torch.linspace(-100, 100, 2001, dtype=torch.float64)
    clamped = L.soft_clamp(s, 3.0)
    assert clamped.abs().max() <= 3.0
    assert (clamped[1:] >= clamped[:-1]).all()
    middle = L.soft_clamp(torch.linspace(-10, 10, 201, dtype=torch.float64), 3.0)
    assert (middle[1:] > middle[:-1]).all()
    small = torch.tensor([1e-3, -2e-3])
    torch.testing.assert_close(L.soft_clamp(small, 3.0), small, rtol=1e-5, atol=0)
    assert L.soft_clamp(s, None) is s


# ----------------------------------------------------------------------------------------------
# Vector couplings
# ----------------------------------------------------------------------------------------------

VECTOR_COUPLINGS = {
    "additive": lambda mask: L.AdditiveCoupling(mask, hidden=8),
    "affine": lambda mask: L.AffineCoupling(mask, hidden=8),
}


@pytest.mark.parametrize("kind", sorted(VECTOR_COUPLINGS))
def test_starts_as_identity(kind):
    layer = VECTOR_COUPLINGS[kind](L.alternating_mask(5))
    x = torch.randn(7, 5)
    z, log_det = layer(x)
    assert torch.equal(z, x)
    assert torch.equal(log_det, torch.zeros(7))


@pytest.mark.parametrize("kind", sorted(VECTOR_COUPLINGS))
@pytest.mark.parametrize("mask", ["halves", "alternating", "random"])
def test_masked_part_passes_unchanged_and_the_rest_moves(kind, mask):
    make_mask = {
        "halves": lambda: L.halves_mask(6),
        "alternating": lambda: L.alternating_mask(6, 1),
        "random": lambda: L.random_mask(6, torch.Generator().manual_seed(1)),
    }[mask]
    m = make_mask()
    layer = _perturb(VECTOR_COUPLINGS[kind](m))
    x = torch.randn(8, 6)
    z, _ = layer(x)
    assert torch.equal(z[:, m], x[:, m])
    assert (z[:, ~m] - x[:, ~m]).abs().min() > 0
    x_back, _ = layer.inverse(z)
    assert torch.equal(x_back[:, m], x[:, m])


@pytest.mark.parametrize("kind", sorted(VECTOR_COUPLINGS))
def test_jacobian_is_triangular_under_the_mask_permutation(kind):
    mask = L.random_mask(6, torch.Generator().manual_seed(2))
    layer = _perturb(VECTOR_COUPLINGS[kind](mask)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    order = torch.cat([torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()])
    jac = jacobian(layer, x)[:, order][:, :, order]  # (B, D, D), kept coordinates first
    k = int(mask.sum())
    eye = torch.eye(k, dtype=torch.float64).expand(4, k, k)
    torch.testing.assert_close(jac[:, :k, :k], eye)  # kept outputs = kept inputs
    assert torch.equal(jac[:, :k, k:], torch.zeros_like(jac[:, :k, k:]))  # and nothing else
    lower = jac[:, k:, k:]  # transformed block: diagonal (element-wise given the kept part)
    off_diagonal = lower - torch.diag_embed(torch.diagonal(lower, dim1=1, dim2=2))
    assert off_diagonal.abs().max() < 1e-12
    if kind == "additive":
        torch.testing.assert_close(lower, torch.eye(6 - k, dtype=torch.float64).expand_as(lower))
    assert jac[:, k:, :k].abs().max() > 1e-3  # the kept part does condition the rest


@pytest.mark.parametrize("kind", sorted(VECTOR_COUPLINGS))
def test_flipped_mask_changes_the_result(kind):
    mask = L.alternating_mask(6)
    layer = _perturb(VECTOR_COUPLINGS[kind](mask))
    flipped = VECTOR_COUPLINGS[kind](~mask)
    state = {k: v for k, v in layer.state_dict().items() if k != "mask"}
    flipped.load_state_dict(state, strict=False)
    x = torch.randn(5, 6)
    z, _ = layer(x)
    z_flipped, _ = flipped(x)
    assert torch.equal(z_flipped[:, ~mask], x[:, ~mask])
    assert not torch.allclose(z, z_flipped)


def test_affine_log_det_never_exceeds_the_scale_bound():
    layer = L.AffineCoupling(L.halves_mask(6), hidden=8, scale_bound=2.0)
    _perturb(layer, scale=50.0)
    x = 10 * torch.randn(64, 6)
    z, log_det = layer(x)
    assert torch.isfinite(z).all()
    assert log_det.abs().max() <= 2.0 * 3 + 1e-5
    unbounded = L.AffineCoupling(L.halves_mask(6), hidden=8, scale_bound=None)
    unbounded.load_state_dict(layer.state_dict())
    assert unbounded(x)[1].abs().max() > 2.0 * 3


def test_custom_conditioner_and_float_mask():
    # A network of the whole masked input (B, D) -> (B, 2 D), the mask form of the definition.
    net = torch.nn.Linear(4, 8)
    layer = L.AffineCoupling(torch.tensor([1.0, 0.0, 1.0, 0.0]), conditioner=net, conditioner_input="masked")
    assert layer.net is net
    x = torch.randn(3, 4)
    z, _ = layer(x)
    assert torch.equal(z[:, [0, 2]], x[:, [0, 2]])


class _Recorder(torch.nn.Module):
    """Wraps a network and keeps the inputs it was given."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, v):
        self.inputs.append(v.detach().clone())
        return self.net(v)


@pytest.mark.parametrize("kind", sorted(VECTOR_COUPLINGS))
def test_conditioner_reads_the_kept_coordinates_and_writes_for_the_changed_ones(kind):
    mask = L.random_mask(7, torch.Generator().manual_seed(4))  # 3 kept, 4 changed
    layer = VECTOR_COUPLINGS[kind](mask)
    first, last = layer.net[0], layer.net[-1]
    params_per_value = 1 if kind == "additive" else 2
    assert (first.in_features, last.out_features) == (3, params_per_value * 4)
    layer.net = _Recorder(layer.net)
    x = torch.randn(5, 7)
    z, _ = layer(x)
    layer.inverse(z)
    assert [tuple(v.shape) for v in layer.net.inputs] == [(5, 3), (5, 3)]
    torch.testing.assert_close(layer.net.inputs[0], x[:, mask], rtol=0, atol=0)
    torch.testing.assert_close(layer.net.inputs[1], x[:, mask], rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(VECTOR_COUPLINGS))
def test_masked_conditioner_input_is_the_same_map_as_the_kept_one(kind):
    """The mask form of the definition, a network of m * x whose outputs on A are ignored."""
    mask = L.random_mask(6, torch.Generator().manual_seed(5))
    kept_layer = _perturb(VECTOR_COUPLINGS[kind](mask)).double()
    blocks = 1 if kind == "additive" else 2

    class Widened(torch.nn.Module):  # (B, D) -> (B, blocks * D), junk in the columns of A
        def forward(self, v):
            assert torch.equal(v[:, ~mask], torch.zeros_like(v[:, ~mask]))
            out = torch.full((v.shape[0], blocks, 6), 123.0, dtype=v.dtype)
            out[:, :, ~mask] = kept_layer.net(v[:, mask]).view(v.shape[0], blocks, -1)
            return out.flatten(1)

    cls = L.AdditiveCoupling if kind == "additive" else L.AffineCoupling
    masked_layer = cls(mask.double(), conditioner=Widened(), conditioner_input="masked")
    x = torch.randn(9, 6, dtype=torch.float64)
    for direction in ("forward", "inverse"):
        out, log_det = getattr(kept_layer, direction)(x)
        out_masked, log_det_masked = getattr(masked_layer, direction)(x)
        torch.testing.assert_close(out_masked, out)
        torch.testing.assert_close(log_det_masked, log_det)
    # and both are the definition: z_A = x_A, z_B = x_B exp(s(x_A)) + t(x_A), computed here
    params = kept_layer.net(x[:, mask]).view(9, blocks, -1)
    s = L.soft_clamp(params[:, 0], 3.0) if blocks == 2 else torch.zeros_like(params[:, 0])
    expected = x.clone()
    expected[:, ~mask] = x[:, ~mask] * s.exp() + params[:, -1]
    torch.testing.assert_close(kept_layer(x)[0], expected)
    torch.testing.assert_close(kept_layer(x)[1], s.sum(1))


def test_a_conditioner_of_the_wrong_width_gets_a_clear_error():
    full_width = torch.nn.Linear(4, 8)  # written for m * x, given to the default "kept" input
    layer = L.AffineCoupling(L.halves_mask(4), conditioner=full_width)
    with pytest.raises(RuntimeError) as caught:
        layer(torch.randn(3, 4))
    if hasattr(caught.value, "add_note"):
        assert "conditioner_input='masked'" in "\n".join(caught.value.__notes__)
    too_wide = L.AdditiveCoupling(L.halves_mask(4), conditioner=torch.nn.Linear(2, 4))
    with pytest.raises(ValueError, match=r"must return shape \(B, 2\).*returned shape \(3, 4\)"):
        too_wide(torch.randn(3, 4))
    masked = L.AffineCoupling(L.halves_mask(4), conditioner=torch.nn.Linear(4, 4), conditioner_input="masked")
    with pytest.raises(ValueError, match=r"must return shape \(B, 8\)"):
        masked(torch.randn(3, 4))
    with pytest.raises(ValueError, match="conditioner_input"):
        L.AffineCoupling(L.halves_mask(4), conditioner_input="all")


def test_bad_masks_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="keep some"):
        L.AffineCoupling(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="keep some"):
        L.AdditiveCoupling(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        L.AffineCoupling(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        L.AffineCoupling(L.halves_mask(4))(torch.randn(3, 5))
    with pytest.raises(ValueError, match="scale_bound"):
        L.AffineCoupling(L.halves_mask(4), scale_bound=0.0)


def test_random_mask_survives_state_dict():
    a = L.AffineCoupling(L.random_mask(8, torch.Generator().manual_seed(0)), hidden=4)
    b = L.AffineCoupling(L.random_mask(8, torch.Generator().manual_seed(1)), hidden=4)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.mask, b.mask)
    # The indices of the kept and changed coordinates follow the loaded mask.
    _perturb(a)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 8)
    assert torch.equal(b(x)[0], a(x)[0])
    assert "kept_index" not in a.state_dict()


def test_scaling_is_nice_diagonal_layer():
    layer = L.Scaling(3)
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3)
    z, log_det = layer(x)
    torch.testing.assert_close(z, x * torch.tensor([0.5, -1.0, 2.0]).exp())
    torch.testing.assert_close(log_det, torch.full((4,), 1.5))
    assert not any("shift" in name for name, _ in layer.named_parameters())


# ----------------------------------------------------------------------------------------------
# Convolutional couplings
# ----------------------------------------------------------------------------------------------

IMAGE_MASKS = {
    "checkerboard": lambda: L.checkerboard_mask(4, 4, 1),
    "channel": lambda: L.channel_mask(4, 0),
}


def _expanded(mask, shape):
    """The (C, H, W) bool mask that a (H, W) or (C,) mask stands for."""
    c, h, w = shape
    if mask.dim() == 2:
        return mask.expand(c, h, w)
    return mask.view(-1, 1, 1).expand(c, h, w)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mask_kind", sorted(IMAGE_MASKS))
def test_conv_coupling_masked_values_pass_unchanged(affine, mask_kind):
    mask = IMAGE_MASKS[mask_kind]()
    cls = L.ConvAffineCoupling if affine else L.ConvAdditiveCoupling
    fresh = cls(4, mask, hidden=8, num_blocks=1)
    x = torch.randn(3, 4, 4, 4)
    assert torch.equal(fresh(x)[0], x)  # identity at initialisation
    layer = _perturb(fresh)
    z, log_det = layer(x)
    full = _expanded(mask, (4, 4, 4))
    assert torch.equal(z[:, full], x[:, full])
    assert (z[:, ~full] - x[:, ~full]).abs().min() > 0
    if not affine:
        assert torch.equal(log_det, torch.zeros(3))
    layer, x = layer.double(), x.double()
    x_back, _ = layer.inverse(layer(x)[0])
    torch.testing.assert_close(x_back, x)


@pytest.mark.parametrize("mask_kind", sorted(IMAGE_MASKS))
def test_conv_coupling_jacobian_is_triangular_under_the_mask_permutation(mask_kind):
    mask = IMAGE_MASKS[mask_kind]()
    layer = _perturb(L.ConvAffineCoupling(4, mask, hidden=4, num_blocks=0)).double()
    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    full = _expanded(mask, (4, 4, 4)).flatten()
    order = torch.cat([torch.nonzero(full).flatten(), torch.nonzero(~full).flatten()])
    jac = jacobian(layer, x)[:, order][:, :, order]
    k = int(full.sum())
    torch.testing.assert_close(jac[:, :k, :k], torch.eye(k, dtype=torch.float64).expand(2, k, k))
    assert jac[:, :k, k:].abs().max() == 0
    lower = jac[:, k:, k:]
    assert (lower - torch.diag_embed(torch.diagonal(lower, dim1=1, dim2=2))).abs().max() < 1e-12
    assert jac[:, k:, :k].abs().max() > 1e-3


def test_conv_coupling_flipped_mask_changes_the_result():
    layer = _perturb(L.ConvAffineCoupling(2, L.checkerboard_mask(4, 4, 0), hidden=4, num_blocks=0))
    flipped = L.ConvAffineCoupling(2, L.checkerboard_mask(4, 4, 1), hidden=4, num_blocks=0)
    flipped.load_state_dict({k: v for k, v in layer.state_dict().items() if k != "mask"}, strict=False)
    x = torch.randn(3, 2, 4, 4)
    assert not torch.allclose(layer(x)[0], flipped(x)[0])


def test_conv_coupling_rejects_mismatched_shapes():
    layer = L.ConvAffineCoupling(2, L.checkerboard_mask(4, 4), hidden=4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        layer(torch.randn(3, 2, 6, 6))
    with pytest.raises(ValueError, match=r"\(C,\) \(channel-wise\)"):
        L.ConvAffineCoupling(2, torch.ones(1, 2, 2, 2, dtype=torch.bool), hidden=4)
