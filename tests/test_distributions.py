import pytest
import torch
from torch import distributions as D

from coursepkg import StandardLogistic, StandardNormal


def test_standard_normal_matches_torch_distributions():
    base = StandardNormal((2, 3)).double()
    z = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = D.Independent(D.Normal(torch.zeros(2, 3), torch.ones(2, 3)), 2).log_prob(z)
    torch.testing.assert_close(base.log_prob(z), expected.double())


def test_standard_logistic_matches_transformed_uniform():
    base = StandardLogistic(4).double()
    z = 5 * torch.randn(6, 4, dtype=torch.float64)
    logistic = D.TransformedDistribution(
        D.Uniform(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)),
        [D.SigmoidTransform().inv],
    )
    torch.testing.assert_close(base.log_prob(z), logistic.log_prob(z).sum(1))


@pytest.mark.parametrize("cls, std", [(StandardNormal, 1.0), (StandardLogistic, torch.pi / 3**0.5)])
def test_sample_shape_dtype_and_spread(cls, std):
    torch.manual_seed(0)
    base = cls(3)
    x = base.sample(200_000)
    assert x.shape == (200_000, 3) and x.dtype == torch.float32
    assert abs(x.std().item() - std) < 0.02
    assert torch.isfinite(x).all()
    assert base.double().sample(2).dtype == torch.float64
    assert abs(base.sample(100_000, temperature=0.5).std().item() - 0.5 * std) < 0.02


def test_wrong_shape_and_bad_event_shape_are_explained():
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        StandardNormal(3).log_prob(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="event shape"):
        StandardNormal(0)


@pytest.mark.parametrize("cls", [StandardNormal, StandardLogistic])
def test_bad_sample_sizes_and_temperatures_are_explained(cls):
    base = cls(3)
    assert base.sample(0).shape == (0, 3)
    with pytest.raises(ValueError, match="at least 0"):
        base.sample(-2)
    with pytest.raises(TypeError, match="must be an int"):
        base.sample(2.5)
    with pytest.raises(TypeError, match=r"int\(n\)"):
        base.sample(torch.tensor(2))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        base.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        base.sample(2, temperature=float("nan"))
    with pytest.raises(TypeError, match=r"float\(temperature\)"):
        base.sample(2, temperature=torch.tensor(0.5))


def test_event_shapes_must_be_positive_ints():
    assert StandardNormal(torch.Size([1, 8, 8])).event_shape == (1, 8, 8)
    for bad in (2.5, (1, 8.0, 8), (), True):
        with pytest.raises((TypeError, ValueError), match="event shape"):
            StandardNormal(bad)
