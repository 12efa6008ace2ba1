"""Tests of coursepkg.zoo, chapter 8's comparison: builders, clocks, round trips and the row makers."""

from __future__ import annotations

import math

import pytest
import torch

from coursepkg import NormalizingFlow, zoo
from coursepkg.core import Flow
from coursepkg.data import DIGITS_LEVELS, dequantize, load_digits, toy
from coursepkg.distributions import StandardNormal
from coursepkg.layers import Logit

VECTOR = list(zoo.FAMILIES)
IMAGE = list(zoo.IMAGE_FAMILIES)


def perturbed(model: NormalizingFlow, x: torch.Tensor, scale: float = 0.1) -> NormalizingFlow:
    """The model after a forward pass (ActNorm initialisation) and a random nudge of every
    parameter: freshly built couplings and MADEs are the identity, whose round trip is trivial."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        model.transform(x)
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model.eval()


@pytest.mark.parametrize("name", VECTOR)
def test_every_vector_family_builds_scores_and_samples(name):
    torch.manual_seed(0)
    model = zoo.build(name, 3)
    assert isinstance(model, NormalizingFlow)
    x = torch.randn(16, 3)
    model = perturbed(model, x)
    with torch.no_grad():
        log_p = model.log_prob(x)
        samples = model.sample(5)
    assert log_p.shape == (16,) and torch.isfinite(log_p).all()
    assert samples.shape == (5, 3) and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", IMAGE)
def test_every_image_family_builds_and_scores_digits(name):
    torch.manual_seed(0)
    model = zoo.build(name, (1, 8, 8))
    x = dequantize(load_digits("test")[:8], DIGITS_LEVELS, generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        model.transform(x)  # ActNorm / batch-norm statistics
    model.eval()
    with torch.no_grad():
        bpd = model.bits_per_dim(x, DIGITS_LEVELS)
    assert bpd.shape == (8,) and torch.isfinite(bpd).all() and (bpd > 0).all()


def test_logit_option_puts_a_logit_layer_first():
    for name in VECTOR:
        with_logit = zoo.build(name, 4, logit=True)
        assert isinstance(with_logit.transform[0], Logit), name
        without = zoo.build(name, 4)
        assert not isinstance(without.transform[0], Logit), name


def test_toy_configurations_have_parameter_counts_of_the_same_order():
    # The chapter says the networked families have 10k to 18k parameters at D = 2.
    counts = {name: zoo.num_parameters(zoo.build(name, 2)) for name in VECTOR}
    networked = {name: n for name, n in counts.items() if name != "planar"}
    assert all(10_000 <= n <= 18_000 for n in networked.values()), networked
    assert counts["planar"] == 16 * (2 * 2 + 1)  # sixteen layers of u, w and b


def test_the_families_with_iterative_inverses_are_flagged():
    iterative = {name for name, family in zoo.FAMILIES.items() if not family.exact_inverse}
    assert iterative == {"planar", "i-ResNet"}
    assert all(family.exact_inverse for family in zoo.IMAGE_FAMILIES.values())
    assert zoo.family_names() == VECTOR + IMAGE


def test_bad_family_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown family 'MAFF'.*'MAF'.*'Glow'"):
        zoo.build("MAFF", 2)
    with pytest.raises(TypeError, match="string"):
        zoo.build(3, 2)


def test_vector_family_on_images_and_image_family_on_vectors_are_errors():
    with pytest.raises(ValueError, match=r"MAF works on vectors.*flatten.*64"):
        zoo.build("MAF", (1, 8, 8))
    with pytest.raises(ValueError, match=r"Glow works on images.*\(C, H, W\)"):
        zoo.build("Glow", 64)


@pytest.mark.parametrize("name", VECTOR)
def test_round_trip_error_is_tiny_for_formulas_and_reported_for_iterations(name):
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    model = perturbed(zoo.build(name, 2), x)
    error = zoo.invertibility_error(model, x)
    assert math.isfinite(error) and error >= 0
    if zoo.FAMILIES[name].exact_inverse or name == "planar":
        # Formulas, and bisection run to float64 precision.
        assert error < 1e-10, f"{name}: {error:.1e}"
    else:
        # Fixed-point iteration stops at its float64 tolerance (1e-10 relative): small, not rounding.
        assert error < 1e-6, f"{name}: {error:.1e}"
    assert next(model.parameters()).dtype == torch.float32, "the model itself must stay float32"


class _WrongInverse(Flow):
    """z = 2 x, but the inverse forgets to divide: x_back = z = 2 x."""

    def forward(self, x):
        return 2 * x, x.new_full((len(x),), math.log(2) * x.shape[1])

    def inverse(self, z):
        return z, z.new_zeros(len(z))


def test_round_trip_error_catches_a_wrong_inverse():
    model = NormalizingFlow(_WrongInverse(), StandardNormal(2))
    x = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    assert zoo.invertibility_error(model, x) == pytest.approx(3.0)  # |2 x - x| at x = -3


def test_round_trip_error_in_the_model_dtype_sees_float32_rounding():
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    model = perturbed(zoo.build("RealNVP", 2), x, scale=0.05)
    in_float64 = zoo.invertibility_error(model, x)
    in_float32 = zoo.invertibility_error(model, x, dtype=None)
    assert in_float64 < 1e-12
    assert 1e-9 < in_float32 < 1e-4, f"{in_float32:.1e}"


def test_round_trip_error_rejects_bad_input():
    model = zoo.build("NICE", 2)
    with pytest.raises(ValueError, match="batch"):
        zoo.invertibility_error(model, torch.zeros(0, 2))
    with pytest.raises(TypeError, match="no inverse"):
        zoo.invertibility_error(torch.nn.Linear(2, 2), torch.zeros(3, 2))


def test_time_per_1000_warms_up_repeats_without_gradients_and_is_positive():
    calls = []

    def fn():
        calls.append(torch.is_grad_enabled())
        torch.ones(10).sum()

    seconds = zoo.time_per_1000(fn, num_points=10, repeats=4)
    assert isinstance(seconds, float) and seconds > 0
    assert len(calls) == 1 + 4, "one warm-up call, then the repeats"
    assert not any(calls), "the clock runs under torch.no_grad()"


def test_time_per_1000_stops_repeating_slow_calls():
    calls = []

    def slow():
        calls.append(1)
        end = __import__("time").perf_counter() + 0.02
        while __import__("time").perf_counter() < end:
            pass

    zoo.time_per_1000(slow, repeats=10, max_seconds=0.03)
    assert len(calls) < 1 + 10


def test_time_per_1000_rejects_bad_arguments():
    with pytest.raises(TypeError, match="function"):
        zoo.time_per_1000(42)
    with pytest.raises(ValueError, match="num_points"):
        zoo.time_per_1000(lambda: None, num_points=0)


def test_compare_on_toy_returns_a_measured_row_per_family():
    target = toy("eight_gaussians")
    rows = zoo.compare_on_toy(
        target, ["NICE", "i-ResNet"], seconds=0.3, num_samples=500, timing_points=100, device="cpu"
    )
    assert [row["family"] for row in rows] == ["NICE", "i-ResNet"]
    for row in rows:
        assert row["steps"] >= 1
        assert math.isfinite(row["kl"]) and row["kl"] > -0.1  # a KL divergence, up to Monte-Carlo noise
        assert row["density_seconds"] > 0 and row["sample_seconds"] > 0
        assert 0 <= row["inverse_error"] < 1e-6
        assert row["parameters"] == zoo.num_parameters(row["model"])
        assert not row["model"].training


def test_compare_on_toy_refuses_image_families():
    with pytest.raises(ValueError, match="image family"):
        zoo.compare_on_toy(toy("checkerboard"), ["Glow"], seconds=0.1)


def test_compare_on_digits_handles_vector_and_image_families():
    digits = {split: load_digits(split)[:64] for split in ("train", "val", "test")}
    rows = zoo.compare_on_digits(digits, ["NICE", "Glow"], seconds=0.3, timing_points=32, device="cpu")
    assert [row["family"] for row in rows] == ["NICE", "Glow"]
    for row in rows:
        assert math.isfinite(row["bits_per_dim"]) and 0 < row["bits_per_dim"] < 20
        assert row["density_seconds"] > 0 and row["sample_seconds"] > 0
        assert row["inverse_error"] < 1e-6
    assert isinstance(rows[0]["model"].transform[0], Logit)  # the flattened images go through a logit


def test_planar_flow_has_the_documented_parameters_and_checks_its_arguments():
    flow = zoo.planar_flow(3, num_layers=4)
    assert zoo.num_parameters(flow) == 4 * (2 * 3 + 1)
    with pytest.raises(ValueError, match="num_layers"):
        zoo.planar_flow(3, num_layers=0)
    with pytest.raises(TypeError, match="dim"):
        zoo.planar_flow(2.5)
