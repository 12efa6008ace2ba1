"""Toy distributions: densities normalised and consistent with the samplers, entropies and KL right."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from torch import distributions as D

from coursepkg.core import Compose, NormalizingFlow
from coursepkg.data import (
    TOY_NAMES,
    Banana,
    Checkerboard,
    GaussianMixture,
    Rings,
    Spirals,
    TwoMoons,
    kl_divergence,
    toy,
)
from coursepkg.distributions import StandardNormal
from coursepkg.layers import ActNorm

DENSITY_NAMES = [name for name in TOY_NAMES if toy(name).has_log_prob]
SAMPLE_ONLY_NAMES = [name for name in TOY_NAMES if not toy(name).has_log_prob]

# Rings close enough to the origin that the fold of negative radii carries real mass.
NEAR_ORIGIN = {"radii": (0.2, 1.0), "std": 0.3, "weights": (0.5, 0.5)}
# A longer, thinner banana bent downwards: its plotting window must follow the bend.
BENT_DOWN = {"std1": 1.5, "std2": 0.3, "curvature": -0.8}


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def density_cases():
    cases = [pytest.param(name, {}, id=name) for name in DENSITY_NAMES]
    return cases + [
        pytest.param("rings", NEAR_ORIGIN, id="rings_near_origin"),
        pytest.param("banana", BENT_DOWN, id="banana_bent_down"),
    ]


def grid_2d(bounds, cells):
    """Cell centres of a ``cells x cells`` grid over ``bounds``, and the area of a cell."""
    (x0, x1), (y0, y1) = bounds
    hx, hy = (x1 - x0) / cells, (y1 - y0) / cells
    xs = torch.linspace(x0 + hx / 2, x1 - hx / 2, cells, dtype=torch.float64)
    ys = torch.linspace(y0 + hy / 2, y1 - hy / 2, cells, dtype=torch.float64)
    points = torch.cartesian_prod(xs, ys)  # (cells^2, 2)
    return points, hx * hy


_GRIDS: dict = {}


def grid_log_prob(name, kwargs, cells=600):
    """log p on the cell centres of a ``cells x cells`` grid over the toy's bounds, and the cell
    area; computed once per toy for the integral and the entropy tests (two moons' quadrature
    costs seconds on 360,000 points)."""
    key = (name, repr(sorted(kwargs.items())), cells)
    if key not in _GRIDS:
        distribution = toy(name, **kwargs)
        points, area = grid_2d(distribution.bounds, cells)
        _GRIDS[key] = (distribution.log_prob(points), area)
    return _GRIDS[key]


def test_names_cover_the_classes():
    assert set(TOY_NAMES) == {
        "gaussian_mixture_1d",
        "gaussian_mixture_2d",
        "eight_gaussians",
        "checkerboard",
        "rings",
        "two_moons",
        "spirals",
        "banana",
    }
    assert set(SAMPLE_ONLY_NAMES) == {"spirals"}
    assert toy("gaussian_mixture_1d").dim == 1
    for name in TOY_NAMES:
        distribution = toy(name)
        assert distribution.name == name
        assert len(distribution.bounds) == distribution.dim
        assert name in repr(distribution) or type(distribution).__name__ in repr(distribution)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown toy distribution 'moons'.*checkerboard.*spirals"):
        toy("moons")


def test_kwargs_override_defaults():
    assert toy("rings", std=0.25).std == 0.25
    mixture = toy("gaussian_mixture_1d", weights=(1.0, 1.0))
    torch.testing.assert_close(mixture.weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("name", TOY_NAMES)
def test_samples_shape_dtype_and_reproducible(name):
    distribution = toy(name)
    x = distribution.sample(1000, generator(3))
    assert x.shape == (1000, distribution.dim)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, distribution.sample(1000, generator(3)), rtol=0, atol=0)
    assert not torch.equal(x, distribution.sample(1000, generator(4)))
    assert distribution.sample(0).shape == (0, distribution.dim)
    # The plotting window holds nearly all the mass.
    for d, (low, high) in enumerate(distribution.bounds):
        inside = ((x[:, d] >= low) & (x[:, d] <= high)).float().mean()
        assert inside > 0.995, f"{name}: only {inside:.4f} of the samples inside bounds of dim {d}"


@pytest.mark.parametrize(("name", "kwargs"), density_cases())
def test_density_integrates_to_one(name, kwargs):
    distribution = toy(name, **kwargs)
    if distribution.dim == 1:
        ((low, high),) = distribution.bounds
        xs = torch.linspace(low, high, 20_001, dtype=torch.float64)
        mass = torch.trapezoid(distribution.log_prob(xs[:, None]).exp(), xs).item()
    else:
        lp, area = grid_log_prob(name, kwargs)
        mass = lp.exp().sum().item() * area
    assert mass == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize(("name", "kwargs"), density_cases())
def test_histogram_of_samples_matches_density(name, kwargs):
    # The probability of each bin, by integrating the density on a fine sub-grid, against the
    # fraction of 200k samples that land in it.
    distribution = toy(name, **kwargs)
    n, bins, sub = 200_000, 20, 8
    x = distribution.sample(n, generator(1)).double()
    bounds = distribution.bounds
    if distribution.dim == 1:
        ((low, high),) = bounds
        counts = torch.histc(x[:, 0], bins, low, high)
        edges = torch.linspace(low, high, bins * sub + 1, dtype=torch.float64)
        centres = (edges[1:] + edges[:-1]) / 2
        mass = distribution.log_prob(centres[:, None]).exp() * (edges[1] - edges[0])
        expected = n * mass.view(bins, sub).sum(1)
    else:
        counts = torch.from_numpy(
            np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=bins, range=bounds)[0]
        )
        points, area = grid_2d(bounds, bins * sub)
        mass = (distribution.log_prob(points).exp() * area).view(bins, sub, bins, sub)
        expected = n * mass.sum((1, 3))
    z = (counts - expected) / (expected + 1).sqrt()
    assert z.abs().max() < 5, f"{name}: bin off by {z.abs().max():.1f} standard deviations"
    total_variation = 0.5 * (counts - expected).abs().sum() / n
    assert total_variation < 0.02


@pytest.mark.parametrize("dim", [1, 2])
def test_gaussian_mixture_matches_torch(dim):
    means = torch.tensor([[-1.0, 0.5], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)[:, :dim]
    stds = torch.tensor([0.3, 1.2, 0.7], dtype=torch.float64)
    weights = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    mixture = GaussianMixture(means.squeeze(1) if dim == 1 else means, stds, weights)
    reference = D.MixtureSameFamily(
        D.Categorical(probs=weights / weights.sum()),
        D.Independent(D.Normal(means, stds[:, None].expand(3, dim)), 1),
    )
    x = 3 * torch.randn(500, dim, generator=generator(), dtype=torch.float64)
    torch.testing.assert_close(mixture.log_prob(x), reference.log_prob(x))


def test_single_gaussian_entropy_is_exact():
    gaussian = GaussianMixture([[1.0, -1.0]], 0.7)
    expected = D.MultivariateNormal(torch.zeros(2), 0.49 * torch.eye(2)).entropy().item()
    assert gaussian.entropy() == pytest.approx(expected, abs=1e-6)


def test_one_dimensional_input_accepted_for_one_dimensional_toys():
    mixture = toy("gaussian_mixture_1d")
    x = torch.linspace(-3, 2, 11)
    torch.testing.assert_close(mixture.log_prob(x), mixture.log_prob(x[:, None]))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        toy("rings").log_prob(torch.zeros(4, 3))


@pytest.mark.parametrize("name", DENSITY_NAMES)
def test_log_prob_keeps_dtype(name):
    distribution = toy(name)
    x = distribution.sample(256, generator())
    lp32 = distribution.log_prob(x)
    lp64 = distribution.log_prob(x.double())
    assert lp32.shape == (256,)
    assert lp32.dtype == torch.float32 and lp64.dtype == torch.float64
    torch.testing.assert_close(lp32, lp64.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("name", "kwargs"), density_cases())
def test_entropy_agrees_with_grid_integral(name, kwargs):
    # -integral of p log p on a grid: independent of both the sampler and the Monte Carlo.
    distribution = toy(name, **kwargs)
    if distribution.dim == 1:
        ((low, high),) = distribution.bounds
        xs = torch.linspace(low, high, 20_001, dtype=torch.float64)
        lp = distribution.log_prob(xs[:, None])
        expected = -torch.trapezoid(lp.exp() * lp, xs).item()
    else:
        lp, area = grid_log_prob(name, kwargs)
        expected = -torch.special.xlogy(lp.exp(), lp.exp()).sum().item() * area
    assert distribution.entropy() == pytest.approx(expected, abs=2e-2)


def test_entropy_is_reproducible_without_generator():
    rings = toy("rings")
    assert rings.entropy() == rings.entropy()
    assert rings.entropy(num_samples=10_000, generator=generator(5)) != rings.entropy(num_samples=10_000)


def test_checkerboard_support_and_entropy():
    board = Checkerboard()
    assert board.entropy() == pytest.approx(math.log(32))
    x = board.sample(50_000, generator())
    torch.testing.assert_close(board.log_prob(x), torch.full((50_000,), -math.log(32)))
    monte_carlo = -board.log_prob(x).mean().item()
    assert monte_carlo == pytest.approx(board.entropy())
    # Squares counted from the lower left: (0, 0) and (3, 3) black, (1, 0) and (0, 3) white.
    points = torch.tensor([[-3.0, -3.0], [3.0, 3.0], [-1.0, -3.0], [-3.0, 3.0], [5.0, 0.0], [0.5, 1.5]])
    expected = torch.tensor([-math.log(32), -math.log(32), -math.inf, -math.inf, -math.inf, -math.log(32)])
    torch.testing.assert_close(board.log_prob(points), expected)
    # Each of the eight black squares gets an eighth of the samples.
    cells = torch.floor((x + 4) / 2).long()
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16).view(4, 4)
    black = (torch.arange(4)[:, None] + torch.arange(4)) % 2 == 0
    assert (counts[~black] == 0).all()
    assert ((counts[black] / 50_000 - 1 / 8).abs() < 0.01).all()


@pytest.mark.parametrize("kwargs", [{}, NEAR_ORIGIN], ids=["default", "near_origin"])
def test_rings_radius_histogram(kwargs):
    rings = Rings(**kwargs)
    radii, std, weights = rings.radii, rings.std, rings.weights

    def radial_density(rho):  # density of |x|, folding negative radii back
        normal = lambda r: (
            torch.exp(-0.5 * ((r[:, None] - radii) / std) ** 2) / (std * math.sqrt(2 * math.pi))
        )
        return ((normal(rho) + normal(-rho)) * weights).sum(1)

    n, bins = 200_000, 40
    rho = rings.sample(n, generator(2)).double().norm(dim=1)
    high = rings.bounds[0][1]
    counts = torch.histc(rho, bins, 0, high)
    edges = torch.linspace(0, high, bins * 10 + 1, dtype=torch.float64)
    centres = (edges[1:] + edges[:-1]) / 2
    expected = n * (radial_density(centres) * (edges[1] - edges[0])).view(bins, 10).sum(1)
    z = (counts - expected) / (expected + 1).sqrt()
    assert z.abs().max() < 5
    # The same radial density follows from log_prob: p(x) * 2 pi |x| along a ray.
    ray = torch.stack([centres * math.cos(0.7), centres * math.sin(0.7)], 1)
    torch.testing.assert_close(rings.log_prob(ray).exp() * 2 * math.pi * centres, radial_density(centres))


def test_rings_finite_at_origin():
    rings = Rings(**NEAR_ORIGIN)
    for dtype in (torch.float32, torch.float64):
        lp = rings.log_prob(torch.zeros(3, 2, dtype=dtype))
        assert torch.isfinite(lp).all() and lp.dtype == dtype


@pytest.mark.parametrize("kwargs", [{}, BENT_DOWN], ids=["default", "bent_down"])
def test_banana_is_a_product_of_two_gaussians(kwargs):
    banana = Banana(**kwargs)
    s1, s2, b = banana.std1, banana.std2, banana.curvature
    x = 2 * torch.randn(1000, 2, generator=generator(), dtype=torch.float64)
    x1, x2 = x[:, 0], x[:, 1]
    expected = D.Normal(0.0, s1).log_prob(x1) + D.Normal(b * (x1**2 - s1**2), s2).log_prob(x2)
    torch.testing.assert_close(banana.log_prob(x), expected)
    # Unnormalised: the Gaussians' constants left out, log Z = log(2 pi s1 s2).
    bare = -0.5 * (x1 / s1) ** 2 - 0.5 * ((x2 - b * (x1**2 - s1**2)) / s2) ** 2
    torch.testing.assert_close(banana.unnormalized_log_prob(x), bare)
    assert banana.log_normalizer == pytest.approx(math.log(2 * math.pi * s1 * s2))
    assert banana.entropy() == pytest.approx(math.log(2 * math.pi * math.e * s1 * s2))


def test_banana_samples_follow_the_bend():
    banana = Banana()
    x = banana.sample(200_000, generator(6)).double()
    x1, x2 = x[:, 0], x[:, 1]
    residual = x2 - banana.curvature * (x1**2 - banana.std1**2)  # N(0, s2^2), independent of x1
    assert x1.std().item() == pytest.approx(banana.std1, rel=0.01)
    assert residual.std().item() == pytest.approx(banana.std2, rel=0.01)
    assert abs(x2.mean().item()) < 0.01  # the shift by s1^2 centres x2
    assert abs(torch.corrcoef(torch.stack([x1**2, residual]))[0, 1].item()) < 0.01
    # Curved: x2 grows with x1^2, so a banana is far from its best Gaussian fit.
    assert torch.corrcoef(torch.stack([x1**2, x2]))[0, 1].item() > 0.5


def test_banana_rejects_bad_parameters():
    for kwargs in ({"std1": 0.0}, {"std2": -1.0}, {"curvature": math.inf}):
        with pytest.raises(ValueError, match="std1 and std2 must be positive|curvature must be a finite"):
            Banana(**kwargs)


@pytest.mark.parametrize("name", SAMPLE_ONLY_NAMES)
def test_sample_only_raise_with_explanation(name):
    distribution = toy(name)
    x = distribution.sample(10)
    with pytest.raises(NotImplementedError, match="no closed-form density.*sample\\(\\).*KL"):
        distribution.log_prob(x)
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        distribution.entropy()
    with pytest.raises(ValueError, match="sample-only"):
        kl_divergence(lambda x: torch.zeros(len(x)), distribution)


def test_two_moons_matches_sklearn():
    ours = TwoMoons(noise=0.05).sample(100_000, generator()).double().numpy()
    theirs, _ = make_moons(100_000, noise=0.05, random_state=0)
    theirs = 2 * (theirs - np.array([0.5, 0.25]))
    assert np.abs(ours.mean(0)).max() < 0.02
    q = np.linspace(0.01, 0.99, 25)
    for d in range(2):
        np.testing.assert_allclose(np.quantile(ours[:, d], q), np.quantile(theirs[:, d], q), atol=0.03)


def test_two_moons_density_against_adaptive_quadrature_and_without_noise():
    # An independent evaluation of the arc integral: scipy's adaptive quadrature, point by point.
    from scipy.integrate import quad

    moons = TwoMoons(noise=0.05)
    x = torch.cat([moons.sample(20, generator(2)), torch.tensor([[3.2, -0.4], [-2.6, 0.6], [0.0, 0.0]])])
    sigma = 0.1

    def arc_density(point, k):
        def integrand(t):
            on_arc = (np.cos(t), np.sin(t)) if k == 0 else (1 - np.cos(t), 0.5 - np.sin(t))
            centre = 2 * (np.array(on_arc) - np.array([0.5, 0.25]))
            return np.exp(-0.5 * np.sum((point - centre) ** 2) / sigma**2) / (2 * np.pi * sigma**2)

        return quad(integrand, 0, np.pi, epsabs=0, epsrel=1e-11, limit=500)[0] / np.pi

    expected = [np.log(0.5 * (arc_density(p, 0) + arc_density(p, 1))) for p in x.double().numpy()]
    np.testing.assert_allclose(moons.log_prob(x.double()).numpy(), expected, rtol=1e-8)
    assert moons.log_prob(x).dtype == torch.float32
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        TwoMoons(noise=0.0).log_prob(x)


def test_spirals_lie_on_their_curves():
    x = Spirals(noise=0.0).sample(2_000, generator()).double()
    rho = x.norm(dim=1)
    t = 3 * rho
    first = torch.stack([-t * t.cos(), t * t.sin()], 1) / 3
    distance = torch.minimum((x - first).norm(dim=1), (x + first).norm(dim=1))
    assert distance.max() < 1e-5
    assert rho.max() <= math.pi + 1e-5
    # Evenly spread along the arc, whose length grows like t^2: t^2 is uniform on [0, (3 pi)^2].
    assert (t / (3 * math.pi)).square().mean().item() == pytest.approx(0.5, abs=0.03)
    # Both spirals are used about equally.
    on_first = (x - first).norm(dim=1) < 1e-5
    assert 0.45 < on_first.double().mean() < 0.55


@pytest.mark.parametrize("name", DENSITY_NAMES)
def test_kl_to_itself_is_zero(name):
    target = toy(name)
    result = kl_divergence(target.log_prob, target, num_samples=20_000)
    assert set(result) == {"nll", "entropy", "kl"}
    assert abs(result["kl"]) < 1e-5
    assert result["nll"] - result["entropy"] == pytest.approx(result["kl"])
    assert result["entropy"] == pytest.approx(target.entropy(), abs=3e-2)


def test_kl_of_wrong_density_matches_closed_form():
    # KL(N(0, s1^2 I) || N(0, s2^2 I)) = D [log(s2 / s1) + s1^2 / (2 s2^2) - 1/2].
    s1, s2 = 0.5, 1.0
    target = GaussianMixture([[0.0, 0.0]], s1)
    model = GaussianMixture([[0.0, 0.0]], s2)
    expected = 2 * (math.log(s2 / s1) + s1**2 / (2 * s2**2) - 0.5)
    result = kl_divergence(model.log_prob, target, batch_size=7_000)
    assert result["kl"] > 0.1
    assert result["kl"] == pytest.approx(expected, abs=1e-2)
    assert result["entropy"] == pytest.approx(target.entropy(), abs=1e-2)


def test_kl_with_module_uses_eval_mode_and_its_dtype():
    flow = NormalizingFlow(Compose(ActNorm(2)), StandardNormal(2)).double()
    seen = []
    original = flow.log_prob

    def spy(x):
        seen.append(x.dtype)
        return original(x)

    flow.log_prob = spy
    target = GaussianMixture([[0.0, 0.0]], 1.0)
    result = kl_divergence(flow, target, num_samples=5_000)
    assert seen and all(dtype == torch.float64 for dtype in seen)
    # Evaluation must not trigger ActNorm's data-dependent initialisation.
    assert flow.training and not flow.transform[0].initialized
    assert abs(result["kl"]) < 1e-6


def test_kl_is_infinite_where_model_has_no_mass():
    target = toy("eight_gaussians")
    result = kl_divergence(Checkerboard().log_prob, target, num_samples=5_000)
    assert result["kl"] == math.inf
