import pytest
import torch

from coursepkg.jacobian import jacobian, log_abs_det_jacobian


def test_jacobian_of_linear_map_is_its_matrix_for_every_sample():
    weight = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    jac = jacobian(lambda v: v @ weight.T, x)
    assert jac.shape == (5, 3, 4)
    torch.testing.assert_close(jac, weight.expand(5, 3, 4))


def test_jacobian_of_elementwise_map_is_diagonal_and_samples_do_not_mix():
    x = torch.randn(4, 3, dtype=torch.float64)
    jac = jacobian(torch.sin, x)
    torch.testing.assert_close(jac, torch.diag_embed(torch.cos(x)))


@pytest.mark.parametrize("method", ["vmap", "loop", "auto"])
def test_methods_agree_with_autograd_on_a_nonlinear_map(method):
    torch.manual_seed(0)
    weight = torch.randn(3, 3, dtype=torch.float64)

    def fn(v):
        return torch.tanh(v @ weight) + v.roll(1, dims=1) ** 2

    x = torch.randn(4, 3, dtype=torch.float64)
    expected = torch.stack([torch.autograd.functional.jacobian(lambda r: fn(r[None])[0], row) for row in x])
    torch.testing.assert_close(jacobian(fn, x, method), expected)
    torch.testing.assert_close(log_abs_det_jacobian(fn, x, method), torch.linalg.slogdet(expected)[1])


def test_images_are_flattened_and_tuples_take_the_first_element():
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    jac = jacobian(lambda v: (2 * v, torch.zeros(v.shape[0])), x)
    assert jac.shape == (2, 4, 4)
    torch.testing.assert_close(
        log_abs_det_jacobian(lambda v: 2 * v, x),
        torch.full((2,), 4 * torch.log(torch.tensor(2.0)).item(), dtype=torch.float64),
    )


def test_fallback_to_loop_for_code_vmap_cannot_run():
    def data_dependent(v):
        return v * 2 if v.sum() > 0 else v * 3  # Python control flow on values breaks vmap

    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    jac = jacobian(data_dependent, x)
    torch.testing.assert_close(jac[0], 2 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(jac[1], 3 * torch.eye(2, dtype=torch.float64))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="method"):
        jacobian(torch.sin, torch.zeros(2, 2), method="fast")
    with pytest.raises(ValueError, match=r"\(B, \.\.\.\)"):
        jacobian(torch.sin, torch.zeros(3))
    with pytest.raises(ValueError, match="not square"):
        log_abs_det_jacobian(lambda v: v[:, :1], torch.zeros(2, 2))
