"""The shared checks must catch the mistakes they exist for."""

import pytest
import torch

from coursepkg import Flow
from coursepkg import layers as L
from coursepkg.testing import (
    assert_close,
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
