"""What is specific to InvertibleResidual (the generic checks, exact log_det included, are in test_all_layers)."""

import math

import pytest
import torch

from coursepkg import layers as L
from coursepkg.jacobian import log_abs_det_jacobian


def _layer(dim=4, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("hidden", 8)
    return L.InvertibleResidual(dim, **kwargs).double().eval()


def test_default_log_det_is_exact_for_small_dimensions_and_series_above():
    assert L.InvertibleResidual(4, hidden=4).log_det == "exact"
    assert L.InvertibleResidual(16, hidden=4).log_det == "exact"
    assert L.InvertibleResidual(17, hidden=4).log_det == "series"


def _diagonal_layer(coefficient, **kwargs):
    """g(x) = W3 elu(W2 elu(W1 x + 5)), positive pre-activations: J_g = coefficient^3 I everywhere.

    A strongly contracting g whose higher powers matter: for coefficient 0.7 the first term of
    the series, tr J = 1.37, is 0.19 above log det = 4 log 1.343 = 1.18.
    """
    layer = _layer(coefficient=coefficient, num_probes=4000, probe="gaussian", **kwargs)
    with torch.no_grad():
        eye = torch.eye(4, dtype=torch.float64)
        layer.linears[0].weight.copy_(torch.cat([eye, eye]))  # normalised: c [I; I] / sqrt 2
        layer.linears[0].bias.fill_(5.0)
        layer.linears[1].weight.copy_(torch.eye(8))  # c I
        layer.linears[1].bias.zero_()
        layer.linears[2].weight.copy_(torch.cat([eye, eye], 1))  # c [I, I] / sqrt 2
    return layer


def test_the_series_estimate_is_unbiased_up_to_truncation():
    # J_g = 0.125 I: 12 terms leave a truncation error below 1e-11; with 4000 Gaussian probes
    # the standard error is about 0.006, the tolerance 0.03.
    layer = _diagonal_layer(0.5, log_det="series", num_terms=12)
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.manual_seed(1)
    with torch.no_grad():
        z, estimate = layer(x)
    exact = log_abs_det_jacobian(layer, x)
    torch.testing.assert_close(exact, torch.full((5,), 4 * math.log(1.125), dtype=torch.float64))
    torch.testing.assert_close(estimate, exact, atol=0.03, rtol=0)
    torch.testing.assert_close(z, x + layer.g(x))


def test_the_roulette_estimate_is_unbiased_where_the_truncated_series_is_not():
    # One fixed term, then coin flips (p = 1/2); 4000 probes, each with its own number of terms.
    # The standard error is about 0.015 (the Gaussian probes and the roulette), the tolerance 0.06;
    # the one-term series is 0.19 off.
    layer = _diagonal_layer(0.7, log_det="roulette", num_terms=1)
    x = torch.randn(5, 4, dtype=torch.float64)
    exact = log_abs_det_jacobian(layer, x)
    torch.manual_seed(1)
    with torch.no_grad():
        _, estimate = layer(x)
        layer.log_det = "series"
        _, truncated = layer(x)
    torch.testing.assert_close(estimate, exact, atol=0.06, rtol=0)
    assert ((truncated - exact).abs() > 0.1).all()  # the bias that the roulette removes


def test_roulette_mode_trains():
    torch.manual_seed(0)
    layer = L.InvertibleResidual(3, hidden=8, log_det="roulette", num_probes=2).train()
    x = torch.randn(6, 3)
    z, log_det = layer(x)
    (z.square().sum() - log_det.sum()).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_the_series_variance_falls_with_more_probes(probe):
    layer = _layer(log_det="series", num_terms=4, probe=probe)
    x = torch.randn(3, 4, dtype=torch.float64).repeat(200, 1)  # 200 draws at each of 3 points
    torch.manual_seed(2)
    variances = []
    for num_probes in (1, 16):
        layer.num_probes = num_probes
        with torch.no_grad():
            _, estimate = layer(x)
        variances.append(estimate.view(200, 3).var(0))
    assert (variances[1] < variances[0] / 4).all(), variances


def test_series_mode_trains_with_create_graph_and_its_inverse_negates_an_estimate():
    torch.manual_seed(0)
    layer = L.InvertibleResidual(3, hidden=8, log_det="series", num_terms=3, num_probes=2).train()
    x = torch.randn(6, 3, requires_grad=True)
    z, log_det = layer(x)
    assert log_det.requires_grad and log_det.shape == (6,)
    (z.square().sum() - log_det.sum()).backward()
    assert torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    layer.eval()
    with torch.no_grad():
        x_back, log_det_back = layer.inverse(z.detach())
    torch.testing.assert_close(x_back, x.detach(), atol=1e-4, rtol=1e-4)
    assert log_det_back.shape == (6,) and not log_det_back.requires_grad


def test_series_mode_refuses_torch_func_transforms_with_advice():
    layer = _layer(log_det="series")
    with pytest.raises(RuntimeError, match="log_det='exact'"):
        torch.func.vmap(lambda xi: layer(xi.unsqueeze(0))[0])(torch.randn(2, 4, dtype=torch.float64))


@pytest.mark.parametrize("tol", [1e-6, 1e-12])
def test_the_inverse_stops_within_its_tolerance(tol):
    layer = _layer(coefficient=0.95, tol=tol)
    x = torch.randn(8, 4, dtype=torch.float64)
    with torch.no_grad():
        z, _ = layer(x)
        x_back, _ = layer.inverse(z)
    # The error after the last step is at most Lip/(1 - Lip) times that step (Lip <= 0.95^3).
    lip = 0.95**3
    bound = lip / (1 - lip) * tol * max(1.0, z.abs().max().item())
    assert (x_back - x).abs().max().item() <= bound
    assert 1 < layer.last_iterations < layer.max_iter


def test_non_convergence_is_an_error_that_says_what_to_do():
    layer = _layer(coefficient=0.99, max_iter=2)
    with torch.no_grad():
        z, _ = layer(3 * torch.randn(4, 4, dtype=torch.float64))
        with pytest.raises(RuntimeError, match=r"did not converge.*max_iter=2.*Raise max_iter.*coefficient"):
            layer.inverse(z)
    assert layer.last_iterations == 2


def _push_norms_up(layer, steps, lr, check):
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    x = torch.randn(64, 3)
    for _ in range(steps):
        # Maximising the volume pushes every weight's norm up, against the normalisation.
        _, log_det = layer(x)
        optimizer.zero_grad()
        (-log_det.mean()).backward()
        optimizer.step()
        with torch.no_grad():
            check([torch.linalg.matrix_norm(w, 2) for w in layer.normalized_weights()])


def test_lipschitz_bound_holds_after_optimiser_steps():
    torch.manual_seed(0)
    c = 0.8
    layer = L.InvertibleResidual(3, hidden=(16, 16), coefficient=c, log_det="exact").train()

    def check(norms):  # the weights as the next training step uses them
        assert max(norms) <= c * (1 + 1e-5)

    _push_norms_up(layer, 15, 0.05, check)
    assert max(torch.linalg.matrix_norm(w.weight, 2) for w in layer.linears) > c  # the bound was active
    layer.eval()
    with torch.no_grad():
        a, b = torch.randn(2, 500, 3)
        ratio = (layer.g(a) - layer.g(b)).norm(dim=1) / (a - b).norm(dim=1)
    assert ratio.max() < c**3 * (1 + 1e-5)


def test_the_power_method_keeps_lip_g_below_1_and_eval_is_exact():
    # The power method under-estimates a norm that the optimiser pushes up (see SpectralLinear):
    # the bound is c plus the lag, far below 1 here; eval mode is exact.
    torch.manual_seed(0)
    c = 0.8
    layer = L.InvertibleResidual(3, hidden=(16, 16), coefficient=c, power_iterations=5).train()

    def check(norms):
        assert max(norms) <= 0.9

    _push_norms_up(layer, 15, 1e-2, check)
    layer.eval()
    with torch.no_grad():
        assert max(torch.linalg.matrix_norm(w, 2) for w in layer.normalized_weights()) <= c * (1 + 1e-6)


def test_lipswish_is_1_lipschitz():
    act = L.LipSwish()
    x = torch.linspace(-20, 20, 4001, requires_grad=True)
    for beta in (0.1, 1.0, 10.0, 50.0):
        with torch.no_grad():
            act.raw_beta.fill_(torch.log(torch.expm1(torch.tensor(beta))))
        (grad,) = torch.autograd.grad(act(x).sum(), x)
        assert grad.abs().max() <= 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"coefficient": 0.0}, r"coefficient must be in \(0, 1\)"),
        ({"coefficient": 1.5}, r"coefficient must be in \(0, 1\)"),
        ({"coefficient": "0.9"}, "coefficient must be a finite number"),
        ({"hidden": (8, 0)}, "hidden must be a positive int"),
        ({"activation": "relu"}, "activation must be 'elu' or 'lipswish'"),
        ({"log_det": "slogdet"}, "log_det must be 'exact', 'series', 'roulette' or None"),
        ({"roulette_p": 0}, r"roulette_p must be in \(0, 1\)"),
        ({"num_terms": 0}, "num_terms must be a positive int"),
        ({"num_probes": True}, "num_probes must be a positive int"),
        ({"probe": "normal"}, "probe must be 'gaussian' or 'rademacher'"),
        ({"tol": 0}, "tol must be > 0"),
        ({"max_iter": 0}, "max_iter must be a positive int"),
        ({"power_iterations": 0}, "power_iterations must be a positive int"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        L.InvertibleResidual(4, **kwargs)


def test_wrong_input_shape_names_the_expected_shape():
    layer = _layer()
    with pytest.raises(ValueError, match=r"expects \(B, 4\), got \(2, 3\)"):
        layer(torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expects \(B, 4\)"):
        layer.inverse(torch.randn(4, dtype=torch.float64))


@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_activation_slopes_match_autograd(activation):
    layer = L.InvertibleResidual(2, hidden=4, activation=activation).double()
    act = layer.activations[0]
    if activation == "lipswish":
        with torch.no_grad():
            act.raw_beta.fill_(0.7)
    x = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
    value, slope = act.value_and_derivative(x)
    (expected,) = torch.autograd.grad(act(x).sum(), x)
    torch.testing.assert_close(value, act(x))
    torch.testing.assert_close(slope, expected)


@pytest.mark.parametrize("activation", ["elu", "lipswish"])
def test_forward_mode_jacobian_matches_brute_force_with_gradients(activation):
    """The Jacobian carried forward, and its log-det's gradient, against jacrev of the block's output."""
    torch.manual_seed(1)
    layer = L.InvertibleResidual(3, hidden=(16, 16), activation=activation).double().train()
    x = torch.randn(5, 3, dtype=torch.float64)
    _, log_det = layer(x)
    brute = log_abs_det_jacobian(layer, x, method="vmap")  # jacrev of z, differentiable
    torch.testing.assert_close(log_det, brute)
    params = [p for p in layer.parameters()]
    # The last bias does not move the Jacobian: its gradients are zero.
    grads = torch.autograd.grad(log_det.sum(), params, allow_unused=True, materialize_grads=True)
    expected = torch.autograd.grad(brute.sum(), params, allow_unused=True, materialize_grads=True)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_the_eval_weight_cache_follows_the_weights():
    """Without gradients in eval mode the normalised weights are cached; a step, a load and the
    return to training all see the new weights."""
    torch.manual_seed(2)
    layer = L.InvertibleResidual(2, hidden=8, coefficient=0.5).double()
    x = torch.randn(6, 2, dtype=torch.float64)

    def output():
        with torch.no_grad():
            return layer.eval()(x)[0]

    before = output()
    torch.testing.assert_close(output(), before)
    saved = {k: v.clone() for k, v in layer.state_dict().items()}
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.train()
    (layer(x)[0] ** 2).sum().backward()
    optimizer.step()
    after_step = output()
    assert not torch.allclose(after_step, before)
    with torch.no_grad():  # the cached weights are those of the new parameters
        expected = x + layer._g(
            x,
            [
                lin.weight / torch.clamp(torch.linalg.matrix_norm(lin.weight, 2) / 0.5, min=1)
                for lin in layer.linears
            ],
        )
    torch.testing.assert_close(after_step, expected)
    layer.load_state_dict(saved)
    torch.testing.assert_close(output(), before)
    with torch.no_grad():
        layer.linears[0].weight.add_(torch.randn_like(layer.linears[0].weight))  # an edit by hand
    assert not torch.allclose(output(), before)
    # With gradients enabled nothing is cached: the result carries the graph.
    layer.eval()
    z, _ = layer(x)
    assert z.requires_grad
    # A change of dtype is a new weight: the cached float64 weight is not used in float32.
    with torch.no_grad():
        reference = layer(x)[0]
        layer.float()
        z32 = layer(x.float())[0]
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), reference, atol=1e-5, rtol=1e-5)


def test_an_activation_without_a_closed_form_slope_still_gets_an_exact_log_det():
    """A 1-Lipschitz element-wise activation of one's own (here tanh) in place of ELU."""
    torch.manual_seed(3)
    layer = L.InvertibleResidual(3, hidden=(16, 16)).double().train()
    layer.activations = torch.nn.ModuleList(torch.nn.Tanh() for _ in layer.activations)
    x = torch.randn(4, 3, dtype=torch.float64)
    _, log_det = layer(x)
    brute = log_abs_det_jacobian(layer, x, method="vmap")  # jacrev of z, differentiable
    torch.testing.assert_close(log_det, brute)
    weight = layer.linears[0].weight
    torch.testing.assert_close(
        torch.autograd.grad(log_det.sum(), weight)[0], torch.autograd.grad(brute.sum(), weight)[0]
    )
