"""The shared checks must catch the mistakes they exist for."""

import pytest
import torch

from coursepkg import Flow
from coursepkg import layers as L
from coursepkg.testing import (
    assert_close,
    check_autoregressive,
    check_dtype_device,
    check_flow,
    check_gradients,
    check_inverse,
    check_log_det,
    check_state_dict,
)


class Scale(Flow):
    """z = 2 x, with deliberate mistakes switched on by flags."""

    def __init__(self, wrong_sign=False, wrong_inverse=False, sum_over_batch=False, float32_log_det=False):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.tensor(0.7))
        self.unused = torch.nn.Parameter(torch.zeros(1)) if sum_over_batch == "unused" else None
        self.wrong_sign, self.wrong_inverse = wrong_sign, wrong_inverse
        self.sum_over_batch, self.float32_log_det = sum_over_batch, float32_log_det

    def forward(self, x):
        z = x * self.log_scale.exp()
        log_det = self.log_scale * x.shape[1] * torch.ones(x.shape[0], dtype=x.dtype)
        if self.wrong_sign:
            log_det = -log_det
        if self.sum_over_batch is True:
            log_det = log_det.sum().reshape(1)
        if self.float32_log_det:
            log_det = log_det.float()
        return z, log_det

    def inverse(self, z):
        scale = self.log_scale.exp() * (1.01 if self.wrong_inverse else 1)
        return z / scale, -self.log_scale * z.shape[1] * torch.ones(z.shape[0], dtype=z.dtype)


x = torch.randn(5, 3)


def test_correct_layer_passes():
    check_flow(Scale(), x, Scale)


def test_wrong_sign_is_caught():
    with pytest.raises(AssertionError, match="brute-force"):
        check_log_det(Scale(wrong_sign=True), x)


def test_wrong_inverse_is_caught():
    with pytest.raises(AssertionError, match="inverse"):
        check_inverse(Scale(wrong_inverse=True), x)


def test_log_det_summed_over_batch_is_caught():
    with pytest.raises(AssertionError, match=r"shape \(5,\)"):
        check_dtype_device(Scale(sum_over_batch=True), x)


def test_dtype_not_following_is_caught():
    with pytest.raises(AssertionError, match="float64"):
        check_dtype_device(Scale(float32_log_det=True), x)


def test_parameter_without_gradient_is_caught():
    with pytest.raises(AssertionError, match="unused"):
        check_gradients(Scale(sum_over_batch="unused"), x)


def test_state_dict_mismatch_is_caught():
    layer = L.ElementwiseAffine(3)
    with torch.no_grad():
        layer.log_scale.fill_(0.5)

    class Forgetful(L.ElementwiseAffine):
        def load_state_dict(self, state, strict=True):
            return None  # ignores the saved parameters

    with pytest.raises(AssertionError, match="state_dict"):
        check_state_dict(layer, lambda: Forgetful(3), x)


def test_assert_close_reports_index_and_values():
    with pytest.raises(AssertionError, match=r"index \[1\]: expected 2, got 5"):
        assert_close(torch.tensor([1.0, 5.0]), torch.tensor([1.0, 2.0]), "thing")
    with pytest.raises(AssertionError, match="expected shape"):
        assert_close(torch.zeros(2), torch.zeros(3), "thing")
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close(torch.tensor([float("nan")]), torch.zeros(1), "thing")


# ----------------------------------------------------------------------------------------------
# check_autoregressive
# ----------------------------------------------------------------------------------------------


def _rank(order, dim):
    rank = torch.empty(dim, dtype=torch.long)
    rank[torch.as_tensor(order)] = torch.arange(dim)
    return rank


class MaskedNet(torch.nn.Module):
    """tanh(x W_masked^T): output i sees input j if j comes before i in ``order`` (or is i, unless strict)."""

    def __init__(self, dim, order=None, num_params=1, strict=True, layout="blocks", seed=0):
        super().__init__()
        rank = _rank(range(dim) if order is None else order, dim)
        mask = rank.unsqueeze(0) < rank.unsqueeze(1)  # (D out, D in)
        if not strict:
            mask |= torch.eye(dim, dtype=torch.bool)
        if layout == "blocks":
            mask = mask.repeat(num_params, 1)
        else:
            mask = mask.repeat_interleave(num_params, 0)
        self.register_buffer("mask", mask.float())
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(num_params * dim, dim, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(num_params * dim, generator=generator))

    def forward(self, x):
        return torch.tanh(x @ (self.weight * self.mask).T + self.bias)


class AffineAutoregressive(Flow):
    """z = x * exp(s(x)) + t(x), with (t, s) from a strictly autoregressive MaskedNet of 2 blocks."""

    def __init__(self, dim, order=None):
        super().__init__()
        self.net = MaskedNet(dim, order, num_params=2)

    def forward(self, x):
        shift, log_scale = self.net(x).chunk(2, dim=1)
        return x * log_scale.exp() + shift, log_scale.sum(1)


x_ar = torch.randn(6, 4)


@pytest.mark.parametrize("order", [None, [2, 0, 3, 1]])
@pytest.mark.parametrize("strict", [True, False])
def test_autoregressive_masked_nets_pass(order, strict):
    check_autoregressive(MaskedNet(4, order, strict=strict), x_ar, order, strict=strict)
    for layout in ("blocks", "interleaved"):
        net = MaskedNet(4, order, num_params=2, strict=strict, layout=layout)
        check_autoregressive(net, x_ar, order, strict=strict, layout=layout)


def test_an_autoregressive_flow_layer_and_a_coupling_pass():
    check_autoregressive(AffineAutoregressive(4), x_ar)
    check_autoregressive(AffineAutoregressive(4, [3, 1, 0, 2]).forward, x_ar, [3, 1, 0, 2])
    # A coupling is autoregressive with the unchanged half first.
    coupling = L.AffineCoupling(L.halves_mask(4, 1), hidden=8)
    with torch.no_grad():
        for p in coupling.parameters():
            p.add_(0.5 * torch.randn_like(p))
    check_autoregressive(coupling, x_ar, order=[2, 3, 0, 1])
    with pytest.raises(AssertionError, match="output 0 depends on input 2, which comes after it"):
        check_autoregressive(coupling, x_ar)


def test_a_dense_map_is_caught_with_the_first_offending_pair():
    dense = torch.nn.Linear(4, 4)
    with pytest.raises(
        AssertionError, match=r"output 0 depends on input 1, which comes after it.* 6 forbidden"
    ):
        check_autoregressive(dense, x_ar)
    with pytest.raises(AssertionError, match=r"output 0 depends on its own input 0.* 10 forbidden"):
        check_autoregressive(dense, x_ar, strict=True)


def test_a_map_autoregressive_in_another_order_is_caught():
    net = MaskedNet(4, order=[2, 0, 3, 1])
    with pytest.raises(AssertionError, match="output 0 depends on input 2, which comes after it"):
        check_autoregressive(net, x_ar)
    # Two neighbours swapped: only output 0 seeing input 2 is wrong.
    with pytest.raises(
        AssertionError, match=r"in the order \[0, 2, 3, 1\]: output 0 depends on input 2.* 1 forbidden"
    ):
        check_autoregressive(net, x_ar, order=[0, 2, 3, 1])


def test_strict_catches_a_conditioner_that_sees_its_own_dimension():
    net = MaskedNet(4, num_params=2, strict=False)
    check_autoregressive(net, x_ar)
    with pytest.raises(
        AssertionError,
        match=r"strictly autoregressive: output 0 \(parameter 0 of dimension 0\) depends on its own input 0",
    ):
        check_autoregressive(net, x_ar, strict=True)


def test_the_layout_of_the_parameters_matters():
    interleaved = MaskedNet(4, num_params=2, layout="interleaved")  # outputs 4, 5 are dimension 2's
    check_autoregressive(interleaved, x_ar, layout="interleaved", strict=True)
    # Read as blocks, output 4 is the second parameter of dimension 0, yet it sees inputs 0 and 1.
    with pytest.raises(
        AssertionError, match=r"output 4 \(parameter 1 of dimension 0\) depends on its own input 0"
    ):
        check_autoregressive(interleaved, x_ar, strict=True)


def test_a_transform_without_diagonal_is_not_invertible():
    class Shift(Flow):
        def forward(self, x):  # z_i = sum of x_<i: triangular, but zero diagonal
            return torch.cumsum(x, 1) - x, x.new_zeros(x.shape[0])

    check_autoregressive(Shift(), x_ar, strict=True)
    with pytest.raises(AssertionError, match="output 0 does not depend on input 0"):
        check_autoregressive(Shift(), x_ar)


def test_bad_arguments_are_explained():
    net = MaskedNet(4)
    with pytest.raises(ValueError, match=r"permutation of range\(4\)"):
        check_autoregressive(net, x_ar, order=[0, 1, 1, 2])
    with pytest.raises(ValueError, match=r"permutation of range\(4\)"):
        check_autoregressive(net, x_ar, order=[0, 1, 2])
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        check_autoregressive(net, x_ar[0])
    with pytest.raises(ValueError, match="layout"):
        check_autoregressive(net, x_ar, layout="rows")
    with pytest.raises(ValueError, match=r"K \* 4"):
        check_autoregressive(torch.nn.Linear(4, 5), x_ar)
