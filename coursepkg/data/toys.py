r"""Toy distributions in one and two dimensions, to fit flows to and to measure them against.

Each is a :class:`ToyDistribution`: ``sample(n)`` draws an ``(n, dim)`` tensor and, where a
closed form exists, ``log_prob(x)`` gives the exact log-density, so that the fit of a model
:math:`q` can be scored by the forward KL divergence

.. math:: \mathrm{KL}(p \,\|\, q) = \mathbb{E}_{x \sim p}[-\log q(x)] - H(p),

a negative log-likelihood minus the entropy of the target (:func:`kl_divergence`). The two moons
and the spirals have no closed-form density: they can only be sampled. The :class:`Banana` also
offers its density without the normaliser, the starting point of variational inference
(:class:`coursepkg.training.ReverseKL`).

Get one by name with :func:`toy`, e.g. ``toy("checkerboard")``; :data:`TOY_NAMES` lists them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "ToyDistribution",
    "GaussianMixture",
    "EightGaussians",
    "Checkerboard",
    "Rings",
    "TwoMoons",
    "Spirals",
    "Banana",
    "toy",
    "TOY_NAMES",
    "kl_divergence",
]

_LOG_2PI = math.log(2 * math.pi)

# The seed of the Monte-Carlo estimates when no generator is given, so that the same call
# returns the same number every time (and two models are scored on the same samples).
_DEFAULT_SEED = 0


def _round_out(lo: float, hi: float, step: float = 0.5) -> tuple[float, float]:
    return (math.floor(lo / step) * step, math.ceil(hi / step) * step)


def _choose(weights: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` indices drawn with probabilities ``weights`` (normalised), by inverting the CDF."""
    # A comparison count instead of torch.searchsorted, which was measured 100x slower when it
    # shares the cores with a training loop; the number of components is small.
    cdf = weights.cumsum(0)
    u = torch.rand(n, generator=generator, dtype=cdf.dtype) * cdf[-1]
    return (u.unsqueeze(1) >= cdf[:-1]).sum(1)


def _seeded(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(_DEFAULT_SEED)


class ToyDistribution:
    """A distribution over :math:`\\mathbb{R}^{dim}` that can be sampled, and scored if it has a density.

    Attributes:
        name: the name :func:`toy` knows it by.
        dim: the dimension of a sample.
        bounds: one ``(low, high)`` per dimension, a plotting window that holds nearly all the mass.
        has_log_prob: whether :meth:`log_prob` (and so :meth:`entropy` and
            :func:`kl_divergence`) is available.

    Subclasses implement ``_sample(n, generator)`` returning float64 ``(n, dim)`` and, when they
    have a density, ``_log_prob(x)`` for ``x`` of shape ``(n, dim)`` in any floating dtype.
    """

    name: str = "toy"
    dim: int = 2
    bounds: tuple[tuple[float, float], ...] = ((-4.0, 4.0), (-4.0, 4.0))
    has_log_prob: bool = True

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` independent samples, shape ``(n, dim)``, in the default dtype (float32), on the CPU.

        Pass a CPU ``torch.Generator`` to make the draw reproducible; without one, torch's global
        random state is used.
        """
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        x = self._sample(int(n), generator)  # (n, dim), float64
        return x.to(torch.get_default_dtype())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log-density at each row of ``x``, shape ``(n,)``.

        Args:
            x: points of shape ``(n, dim)`` (or ``(n,)`` when ``dim == 1``). The result has the
                dtype and device of ``x``; integer inputs are converted to the default dtype.
        """
        if not self.has_log_prob:
            raise NotImplementedError(self._no_density("log_prob"))
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        if self.dim == 1 and x.dim() == 1:
            x = x.unsqueeze(1)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"{self.name} is a distribution over R^{self.dim}: log_prob expects points of shape "
                f"(n, {self.dim}), got {tuple(x.shape)}"
            )
        return self._log_prob(x)

    def entropy(self, num_samples: int = 200_000, generator: torch.Generator | None = None) -> float:
        r"""The differential entropy :math:`H(p) = -\mathbb{E}_p[\log p(x)]`, in nats.

        Exact where a closed form exists; otherwise the Monte-Carlo mean of :math:`-\log p` over
        ``num_samples`` samples (standard error about :math:`\mathrm{std}(\log p) /
        \sqrt{\mathrm{num\_samples}}`, a few thousandths of a nat by default). Without a
        ``generator`` the estimate uses a fixed seed and is the same on every call.
        """
        if not self.has_log_prob:
            raise NotImplementedError(self._no_density("entropy"))
        exact = self._exact_entropy()
        if exact is not None:
            return exact
        x = self.sample(num_samples, _seeded(generator)).double()
        return -self.log_prob(x).mean().item()

    def _no_density(self, what: str) -> str:
        return (
            f"{self.name} has no closed-form density, so {what}() is not available: use sample() to "
            "draw points from it. The KL divergence to it cannot be computed exactly either; compare "
            "samples instead (e.g. by eye, or with a two-sample test)."
        )

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _exact_entropy(self) -> float | None:
        return None

    def _params(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params()})"


class GaussianMixture(ToyDistribution):
    r"""A mixture of isotropic Gaussians, :math:`p(x) = \sum_k w_k\, \mathcal{N}(x; \mu_k, \sigma_k^2 I)`.

    .. math:: \log p(x) = \operatorname{logsumexp}_k \Big[\log w_k - \frac{\|x - \mu_k\|^2}{2\sigma_k^2}
        - D \log \sigma_k - \frac{D}{2} \log 2\pi\Big]

    Args:
        means: component means, shape ``(K, D)``, or ``(K,)`` for a mixture on the line.
        stds: the standard deviation of each component (the same along every axis), a scalar
            shared by all components or shape ``(K,)``.
        weights: mixing weights, shape ``(K,)``, positive; normalised to sum to one. Uniform if
            omitted.

    ``bounds`` extends 4.5 standard deviations beyond the outermost components.
    """

    name = "gaussian_mixture"

    def __init__(self, means, stds, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() == 1:
            means = means.unsqueeze(1)
        if means.dim() != 2 or means.shape[0] == 0:
            raise ValueError(f"means must have shape (K, D) or (K,), got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.dim() == 0:
            stds = stds.expand(k)
        if stds.shape != (k,) or not (stds > 0).all():
            raise ValueError(f"stds must be positive, a scalar or of shape ({k},), got {stds.tolist()}")
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not (weights > 0).all():
            raise ValueError(f"weights must be positive and of shape ({k},), got {weights.tolist()}")
        self.means = means  # (K, D)
        self.stds = stds.clone()  # (K,)
        self.weights = weights / weights.sum()  # (K,)
        self.dim = d
        reach = 4.5 * self.stds[:, None]  # (K, 1)
        low = (self.means - reach).min(0).values  # (D,)
        high = (self.means + reach).max(0).values  # (D,)
        self.bounds = tuple(_round_out(lo, hi) for lo, hi in zip(low.tolist(), high.tolist(), strict=True))

    def _sample(self, n, generator):
        component = _choose(self.weights, n, generator)  # (n,)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)  # (n, D)
        return self.means[component] + self.stds[component, None] * eps

    def _log_prob(self, x):
        means = self.means.to(x)  # (K, D)
        stds = self.stds.to(x)  # (K,)
        sq_dist = (x[:, None, :] - means).square().sum(-1)  # (n, K)
        log_normal = -0.5 * sq_dist / stds.square() - self.dim * (stds.log() + 0.5 * _LOG_2PI)
        return torch.logsumexp(self.weights.to(x).log() + log_normal, dim=1)

    def _exact_entropy(self):
        # Only a single Gaussian has a closed form; a mixture's entropy has none.
        if len(self.weights) == 1:
            return self.dim * (math.log(self.stds[0].item()) + 0.5 * (_LOG_2PI + 1))
        return None

    def _params(self):
        return (
            f"means={self.means.squeeze(1).tolist() if self.dim == 1 else self.means.tolist()}, "
            f"stds={self.stds.tolist()}, weights={[round(w, 6) for w in self.weights.tolist()]}"
        )


class EightGaussians(GaussianMixture):
    r"""Eight equally weighted isotropic Gaussians on a circle, the "8gaussians" of FFJORD.

    Centres :math:`\mu_k = r(\cos\frac{k\pi}{4}, \sin\frac{k\pi}{4})` for :math:`k = 0..7` and
    standard deviation ``std``. FFJORD's own version puts the centres at radius
    :math:`2\sqrt2` with standard deviation :math:`0.5/\sqrt2`; the defaults here (radius 2,
    std 0.2) give narrower, better separated modes inside the same window.
    """

    name = "eight_gaussians"

    def __init__(self, radius: float = 2.0, std: float = 0.2):
        if radius <= 0:
            raise ValueError(f"radius must be positive, got {radius}")
        angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        super().__init__(radius * torch.stack([angles.cos(), angles.sin()], 1), std)
        self.radius = float(radius)
        self.std = float(std)

    def _params(self):
        return f"radius={self.radius}, std={self.std}"


class Checkerboard(ToyDistribution):
    r"""Uniform on the black squares of a 4 x 4 checkerboard covering :math:`[-4, 4]^2`.

    The squares have side 2; square :math:`(i, j)`, with :math:`i, j \in \{0, 1, 2, 3\}` counted
    from the lower left corner, is black when :math:`i + j` is even (FFJORD's layout). Eight
    black squares of area 4 make a support of area 32, so

    .. math:: \log p(x) = -\log 32 \text{ on the black squares}, \quad -\infty \text{ elsewhere},

    and the entropy is exactly :math:`\log 32`. A model with a smooth density can only approach
    the sharp edges, which is what makes this target hard.
    """

    name = "checkerboard"
    dim = 2
    bounds = ((-4.0, 4.0), (-4.0, 4.0))

    def _sample(self, n, generator):
        column = torch.randint(0, 4, (n,), generator=generator)  # (n,)
        # Rows of the same parity as the column: the two black squares of that column.
        row = 2 * torch.randint(0, 2, (n,), generator=generator) + column % 2  # (n,)
        cell = torch.stack([column, row], 1).double()  # (n, 2)
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
        return -4.0 + 2.0 * (cell + u)

    def _log_prob(self, x):
        cell = torch.floor((x + 4.0) / 2.0)  # (n, 2)
        inside = ((cell >= 0) & (cell <= 3)).all(1)
        black = inside & (cell.sum(1) % 2 == 0)
        return x.new_full((x.shape[0],), -math.log(32.0)).masked_fill(~black, -math.inf)

    def _exact_entropy(self):
        return math.log(32.0)


class Rings(ToyDistribution):
    r"""Concentric rings: a radius drawn around one of ``radii``, an angle drawn uniformly.

    Sampling picks ring :math:`k` with probability :math:`w_k`, a radius
    :math:`r = r_k + \sigma\varepsilon` with :math:`\varepsilon \sim \mathcal{N}(0, 1)` and an
    angle :math:`\theta \sim U[0, 2\pi)`, and returns :math:`r(\cos\theta, \sin\theta)`. Its exact
    density is

    .. math:: p(x) = \sum_k w_k \frac{\mathcal{N}(|x|; r_k, \sigma^2)
        + \mathcal{N}(-|x|; r_k, \sigma^2)}{2\pi |x|}.

    Args:
        radii: the ring radii :math:`r_k`, positive.
        std: the radial standard deviation :math:`\sigma` shared by the rings.
        weights: ring probabilities :math:`w_k`, normalised; uniform if omitted (then each ring
            holds the same mass, so the outer ones look fainter).

    At the origin the density grows like :math:`1/|x|`: integrable, since the mass within
    distance :math:`\delta` is :math:`2\delta \sum_k w_k \mathcal{N}(0; r_k, \sigma^2)`, and for
    rings well away from the origin negligible. ``log_prob`` evaluates :math:`|x|` no closer to
    zero than the machine epsilon of the dtype, so it stays finite there.
    """

    name = "rings"
    dim = 2

    def __init__(self, radii: Sequence[float] = (1.0, 2.0, 3.0), std: float = 0.1, weights=None):
        radii = torch.as_tensor(radii, dtype=torch.float64).flatten()
        if radii.numel() == 0 or not (radii > 0).all():
            raise ValueError(f"radii must be positive, got {radii.tolist()}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        k = radii.numel()
        if weights is None:
            weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or not (weights > 0).all():
            raise ValueError(f"weights must be positive and of shape ({k},), got {weights.tolist()}")
        self.radii = radii  # (K,)
        self.std = float(std)
        self.weights = weights / weights.sum()  # (K,)
        reach = _round_out(0.0, radii.max().item() + 4.5 * self.std)[1]
        self.bounds = ((-reach, reach), (-reach, reach))

    def _sample(self, n, generator):
        ring = _choose(self.weights, n, generator)  # (n,)
        r = self.radii[ring] + self.std * torch.randn(n, generator=generator, dtype=torch.float64)
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([r * theta.cos(), r * theta.sin()], 1)

    def _log_prob(self, x):
        # A point at distance rho and angle phi is reached two ways: by r = rho at theta = phi,
        # and by a negative draw r = -rho at theta = phi + pi, which lands on the opposite side.
        # Both angles have density 1 / (2 pi), so the density of (rho, phi) is
        # sum_k w_k [N(rho; r_k) + N(-rho; r_k)] / (2 pi), and the polar Jacobian divides by rho.
        rho = torch.linalg.vector_norm(x, dim=1).clamp_min(torch.finfo(x.dtype).eps)  # (n,)
        radii = self.radii.to(x)  # (K,)
        log_norm = math.log(self.std) + 0.5 * _LOG_2PI

        def log_normal(r):  # (n,) -> (n, K)
            return -0.5 * ((r[:, None] - radii) / self.std).square() - log_norm

        log_radial = torch.logsumexp(
            self.weights.to(x).log() + torch.logaddexp(log_normal(rho), log_normal(-rho)), dim=1
        )  # (n,)
        return log_radial - torch.log(2 * math.pi * rho)

    def _params(self):
        return f"radii={self.radii.tolist()}, std={self.std}, weights={[round(w, 6) for w in self.weights.tolist()]}"


class TwoMoons(ToyDistribution):
    r"""Two interleaved half circles, as ``sklearn.datasets.make_moons``, centred and scaled by 2.

    A point of the upper moon is :math:`(\cos t, \sin t)` and one of the lower moon
    :math:`(1 - \cos t, \tfrac12 - \sin t)` with :math:`t \sim U[0, \pi]`, each moon drawn with
    probability 1/2; Gaussian noise of standard deviation ``noise`` is added (in these units),
    and the result is shifted by :math:`-(\tfrac12, \tfrac14)` and multiplied by 2 so that it is
    centred at the origin with a spread comparable to a standard normal's.

    The density is a Gaussian blurred along each arc,

    .. math::

        p(x) = \frac{1}{2} \sum_{k=1}^{2} \frac{1}{\pi} \int_0^\pi
        \mathcal{N}\bigl(x;\ \mu_k(t),\ \sigma^2 I\bigr)\, dt, \qquad \sigma = 2\,\text{noise},

    with :math:`\mu_k(t)` the scaled and shifted arc points. The integral has no closed form;
    :meth:`log_prob` evaluates it by Gauss-Legendre quadrature with ``num_nodes`` nodes per arc,
    which converges exponentially fast once the nodes are closer than :math:`\sigma` along the
    arc (for the default noise, 128 nodes already agree with 8192 to 1e-10 in log p; the default
    has room for noise down to about 0.02).

    Args:
        noise: the standard deviation of the noise before scaling; ``log_prob`` needs it positive.
        num_nodes: quadrature nodes per arc for ``log_prob``.
    """

    name = "two_moons"
    dim = 2
    bounds = ((-3.5, 3.5), (-2.0, 2.0))

    def __init__(self, noise: float = 0.05, num_nodes: int = 256):
        if noise < 0:
            raise ValueError(f"noise must be non-negative, got {noise}")
        if int(num_nodes) != num_nodes or num_nodes < 1:
            raise ValueError(f"num_nodes must be a positive integer, got {num_nodes!r}")
        self.noise = float(noise)
        self.num_nodes = int(num_nodes)
        # Noise-free moons are curves: they have no density.
        self.has_log_prob = self.noise > 0

    def _sample(self, n, generator):
        upper = torch.rand(n, generator=generator) < 0.5  # (n,)
        t = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        cos, sin = t.cos(), t.sin()
        x = torch.where(upper, cos, 1 - cos)
        y = torch.where(upper, sin, 0.5 - sin)
        points = torch.stack([x, y], 1)  # (n, 2)
        points = points + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return 2 * (points - torch.tensor([0.5, 0.25], dtype=torch.float64))

    def _quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodes on both arcs, in the samples' units, ``(2K, 2)``, and their log-weights ``(2K,)``.

        The weights average over ``t`` in ``[0, pi]`` and over the two moons: they sum to 1.
        """
        u, w = np.polynomial.legendre.leggauss(self.num_nodes)  # nodes and weights on [-1, 1]
        t = torch.from_numpy((u + 1) * math.pi / 2)
        upper = torch.stack([t.cos(), t.sin()], dim=1)
        lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
        nodes = 2 * (torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64))
        log_weights = torch.from_numpy(np.log(w / 4)).repeat(2)
        return nodes, log_weights

    def _log_prob(self, x):
        nodes, log_weights = (t.to(x.device) for t in self._quadrature())  # (2K, 2), (2K,)
        sigma = 2 * self.noise
        out = []
        for chunk in x.double().split(8192):  # bounds the (chunk, 2K) matrix of distances
            squared = torch.cdist(chunk, nodes).square()  # (n, 2K)
            out.append(torch.logsumexp(log_weights - 0.5 * squared / sigma**2, dim=1))
        log_p = torch.cat(out) if out else x.new_zeros(0, dtype=torch.float64)
        return (log_p - math.log(2 * math.pi * sigma**2)).to(x.dtype)

    def _params(self):
        return f"noise={self.noise}"


class Spirals(ToyDistribution):
    r"""Two interleaved spirals, the "2spirals" of FFJORD with Gaussian noise only.

    A point of the first spiral is :math:`\frac{t}{3}(-\cos t, \sin t)` with
    :math:`t = 2\pi \cdot \mathrm{turns} \cdot \sqrt{u}`, :math:`u \sim U[0, 1]` (the square root
    spreads the points evenly along the arc, whose length grows like :math:`t^2`); the second
    spiral is its reflection through the origin. Gaussian noise of standard deviation ``noise``
    is added. Sample-only.

    Args:
        noise: the standard deviation of the noise.
        turns: how many turns each spiral makes (1.5 in FFJORD, reaching radius :math:`\pi`).
    """

    name = "spirals"
    dim = 2
    has_log_prob = False

    def __init__(self, noise: float = 0.1, turns: float = 1.5):
        if noise < 0:
            raise ValueError(f"noise must be non-negative, got {noise}")
        if turns <= 0:
            raise ValueError(f"turns must be positive, got {turns}")
        self.noise = float(noise)
        self.turns = float(turns)
        reach = _round_out(0.0, 2 * math.pi * self.turns / 3 + 4.5 * self.noise)[1]
        self.bounds = ((-reach, reach), (-reach, reach))

    def _sample(self, n, generator):
        t = 2 * math.pi * self.turns * torch.rand(n, generator=generator, dtype=torch.float64).sqrt()
        points = torch.stack([-t * t.cos(), t * t.sin()], 1) / 3  # (n, 2)
        second = torch.rand(n, generator=generator) < 0.5
        points = torch.where(second[:, None], -points, points)
        return points + self.noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)

    def _params(self):
        return f"noise={self.noise}, turns={self.turns}"


class Banana(ToyDistribution):
    r"""A Gaussian bent into a parabola: unimodal, curved, with an exact normaliser.

    .. math:: x_1 \sim \mathcal{N}(0, s_1^2), \qquad
        x_2 \mid x_1 \sim \mathcal{N}\big(b\,(x_1^2 - s_1^2),\ s_2^2\big),

    so the log-density is the sum of two Gaussian log-densities,

    .. math:: \log p(x) = \log \mathcal{N}(x_1; 0, s_1^2)
        + \log \mathcal{N}\big(x_2; b\,(x_1^2 - s_1^2), s_2^2\big).

    The bend :math:`(x_1, x_2) \mapsto (x_1, x_2 - b(x_1^2 - s_1^2))` has Jacobian determinant 1,
    so the entropy is that of :math:`\mathcal{N}(0, \mathrm{diag}(s_1^2, s_2^2))`, exactly
    :math:`\log(2\pi e\, s_1 s_2)`; the shift by :math:`s_1^2` makes :math:`\mathbb{E}[x_2] = 0`.

    :meth:`unnormalized_log_prob` leaves out the Gaussians' normalising constants,

    .. math:: \log \tilde p(x) = -\frac{x_1^2}{2 s_1^2}
        - \frac{\big(x_2 - b(x_1^2 - s_1^2)\big)^2}{2 s_2^2} = \log p(x) + \log Z,
        \qquad Z = 2\pi s_1 s_2,

    the kind of density that variational inference starts from: known up to a constant
    (:class:`coursepkg.training.ReverseKL` fits a flow to it); :attr:`log_normalizer` is
    :math:`\log Z`, to check the fit.

    Args:
        std1: :math:`s_1`, the standard deviation of :math:`x_1` (the banana's length).
        std2: :math:`s_2`, the standard deviation of :math:`x_2` given :math:`x_1` (its thickness).
        curvature: :math:`b`; 0 gives an axis-aligned Gaussian, a negative value bends the
            banana downwards.
    """

    name = "banana"
    dim = 2

    def __init__(self, std1: float = 1.0, std2: float = 0.5, curvature: float = 0.5):
        if not (std1 > 0 and std2 > 0):
            raise ValueError(f"std1 and std2 must be positive, got {std1} and {std2}")
        if not math.isfinite(curvature):
            raise ValueError(f"curvature must be a finite number, got {curvature}")
        self.std1, self.std2, self.curvature = float(std1), float(std2), float(curvature)
        # The mean of x2 over |x1| <= 3 s1 (all but 0.3% of the mass), widened by 4.5 s2.
        bends = (-self.curvature * self.std1**2, 8 * self.curvature * self.std1**2)
        self.bounds = (
            _round_out(-4.5 * self.std1, 4.5 * self.std1),
            _round_out(min(bends) - 4.5 * self.std2, max(bends) + 4.5 * self.std2),
        )

    @property
    def log_normalizer(self) -> float:
        r""":math:`\log Z = \log(2\pi s_1 s_2)`, the gap between :meth:`unnormalized_log_prob` and :meth:`log_prob`."""
        return _LOG_2PI + math.log(self.std1) + math.log(self.std2)

    def unnormalized_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`log_prob` plus :attr:`log_normalizer`, shape ``(n,)``: the density known only up to a constant.

        Differentiable in ``x``, so that samples of a flow can be scored by it during training.
        """
        return self.log_prob(x) + self.log_normalizer

    def _sample(self, n, generator):
        x1 = self.std1 * torch.randn(n, generator=generator, dtype=torch.float64)
        x2 = self.curvature * (x1.square() - self.std1**2)
        x2 = x2 + self.std2 * torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.stack([x1, x2], 1)  # (n, 2)

    def _log_prob(self, x):
        x1, x2 = x[:, 0], x[:, 1]  # (n,), (n,)
        bent = x2 - self.curvature * (x1.square() - self.std1**2)
        return -0.5 * ((x1 / self.std1).square() + (bent / self.std2).square()) - self.log_normalizer

    def _exact_entropy(self):
        return self.log_normalizer + 1.0

    def _params(self):
        return f"std1={self.std1}, std2={self.std2}, curvature={self.curvature}"


_PRESETS: dict[str, Callable[..., ToyDistribution]] = {
    "gaussian_mixture_1d": lambda **kw: GaussianMixture(
        **{"means": (-1.5, 1.0), "stds": (0.5, 0.3), "weights": (0.4, 0.6), **kw}
    ),
    "gaussian_mixture_2d": lambda **kw: GaussianMixture(
        **{
            "means": ((-2.0, -1.0), (2.0, -1.0), (0.0, 2.0)),
            "stds": (0.6, 0.4, 0.8),
            "weights": (0.3, 0.3, 0.4),
            **kw,
        }
    ),
    "eight_gaussians": EightGaussians,
    "checkerboard": Checkerboard,
    "rings": Rings,
    "two_moons": TwoMoons,
    "spirals": Spirals,
    "banana": Banana,
}

TOY_NAMES: tuple[str, ...] = tuple(_PRESETS)
"""The names :func:`toy` accepts."""


def toy(name: str, **kwargs) -> ToyDistribution:
    """The toy distribution called ``name``; ``kwargs`` override its constructor's defaults.

    ``"gaussian_mixture_1d"`` is a bimodal mixture on the line (means -1.5 and 1, standard
    deviations 0.5 and 0.3, weights 0.4 and 0.6); ``"gaussian_mixture_2d"`` has three components
    in the plane. The others are :class:`EightGaussians`, :class:`Checkerboard`, :class:`Rings`,
    :class:`TwoMoons`, :class:`Spirals` and :class:`Banana` with their default arguments.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown toy distribution {name!r}; valid names are: {', '.join(TOY_NAMES)}")
    distribution = _PRESETS[name](**kwargs)
    distribution.name = name
    return distribution


def kl_divergence(
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    target: ToyDistribution,
    num_samples: int = 50_000,
    generator: torch.Generator | None = None,
    batch_size: int = 10_000,
) -> dict[str, float]:
    r"""Monte-Carlo forward KL divergence :math:`\mathrm{KL}(p \,\|\, q)` from a target to a model, in nats.

    With :math:`x_i \sim p` (``num_samples`` draws from ``target``),

    .. math:: \mathrm{nll} = -\frac1N \sum_i \log q(x_i), \quad
        \mathrm{entropy} = -\frac1N \sum_i \log p(x_i), \quad
        \mathrm{kl} = \mathrm{nll} - \mathrm{entropy}.

    The entropy is estimated on the same samples as the NLL, so that their sampling errors largely
    cancel in the KL (for ``q = p`` it is 0 up to rounding); for the checkerboard it equals the exact
    :math:`\log 32`. Without a ``generator`` the samples come from a fixed seed, so every model is
    scored on the same points.

    Args:
        log_prob_fn: the model's log-density, a function from ``(B, dim)`` to ``(B,)``, or an
            ``nn.Module`` such as :class:`~coursepkg.core.NormalizingFlow`, whose ``log_prob`` is
            used (its ``forward`` if it has none). A module gets the samples on the device and in
            the floating dtype of its parameters, and is evaluated in eval mode (its modes are
            restored afterwards); a plain function gets them on the CPU in float32.
        target: a :class:`ToyDistribution` with a density.
        num_samples: how many samples to average over.
        batch_size: how many samples to score at once.

    Returns:
        ``{"nll": ..., "entropy": ..., "kl": ...}`` as Python floats. ``kl`` is ``inf`` if the
        model gives zero density to a sample.
    """
    if not target.has_log_prob:
        raise ValueError(
            f"kl_divergence needs a target with an exact density, but {target.name} is sample-only "
            "(no closed-form log_prob); compare samples instead."
        )
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples} and {batch_size}")
    x = target.sample(num_samples, _seeded(generator))  # (N, dim)
    entropy = -target.log_prob(x.double()).mean().item()

    fn = log_prob_fn
    device, dtype = torch.device("cpu"), x.dtype
    modes = None
    if isinstance(log_prob_fn, nn.Module):
        fn = getattr(log_prob_fn, "log_prob", log_prob_fn)
        tensor = next(iter(log_prob_fn.parameters()), None)
        if tensor is None:
            tensor = next(iter(log_prob_fn.buffers()), None)
        if tensor is not None:
            device = tensor.device
            dtype = tensor.dtype if tensor.is_floating_point() else dtype
        # Eval mode keeps the evaluation from changing the model, e.g. an uninitialised ActNorm.
        modes = [(m, m.training) for m in log_prob_fn.modules()]
        log_prob_fn.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for batch in x.split(batch_size):
                log_q = fn(batch.to(device=device, dtype=dtype))  # (B,)
                if log_q.shape != (batch.shape[0],):
                    raise ValueError(
                        f"log_prob_fn must return one value per sample, shape ({batch.shape[0]},), "
                        f"got {tuple(log_q.shape)}"
                    )
                total += log_q.double().sum().item()
    finally:
        for module, training in modes or ():
            module.training = training
    nll = -total / num_samples
    return {"nll": nll, "entropy": entropy, "kl": nll - entropy}
