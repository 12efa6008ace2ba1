"""One builder per model family, each returning a :class:`~coursepkg.NormalizingFlow`.

Conventions shared by every builder:

- the first argument is the data dimension (an ``int``) for vectors, or the image shape
  ``(C, H, W)`` for images;
- keyword options ``num_layers`` (how many flow steps) and ``hidden`` (an ``int`` or a tuple of
  hidden sizes for the conditioner networks) mean the same everywhere;
- the base is a standard normal over the data's shape, and the result's ``transform`` maps data
  to latent; image models expect dequantized pixels in ``[0, 1]`` (their first layer, a
  :class:`~coursepkg.layers.Logit`, rejects unscaled pixel levels and gives ``log_prob = -inf``
  outside its domain; :meth:`~coursepkg.NormalizingFlow.log_prob` lists every check of the data);
- defaults are good enough to train on the book's data without tuning;
- a bad option is an error that names the argument and the constraint.

The families arrive with their chapters: ``nice`` and ``realnvp`` (chapters 3-4), ``maf`` and
``iaf`` (5), ``glow`` (6), ``iresnet`` (7).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from . import layers as L
from .core import Compose, Flow, Inverse, NormalizingFlow
from .distributions import StandardLogistic, StandardNormal

__all__ = ["data_shape", "glow", "iaf", "iresnet", "maf", "nice", "realnvp", "standard_normal_base"]

_PLANNED: dict[str, str] = {}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int; a ``TypeError`` or ``ValueError`` naming ``name`` and the constraint."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def data_shape(dim_or_shape: int | Sequence[int], name: str = "dim_or_shape") -> tuple[int, ...]:
    """Normalize a builder's first argument: ``2 -> (2,)``, ``(1, 8, 8)`` kept; checks it.

    A data dimension is a positive int; an image shape has three positive ints ``(C, H, W)``.
    Anything else is an error naming the argument ``name`` and, for the usual slips (an image
    shape without channels, with a batch axis), the fix.
    """
    if _is_int(dim_or_shape):
        shape = (int(dim_or_shape),)
    elif isinstance(dim_or_shape, Sequence) and not isinstance(dim_or_shape, (str, bytes)):
        shape = tuple(dim_or_shape)
        if not all(_is_int(s) for s in shape):
            raise TypeError(f"{name} must hold ints, got {dim_or_shape!r}")
    else:
        raise TypeError(
            f"{name} must be a data dimension (int) or an image shape (C, H, W), "
            f"got {type(dim_or_shape).__name__} {dim_or_shape!r}"
        )
    if len(shape) not in (1, 3) or any(s <= 0 for s in shape):
        if len(shape) == 2:
            hint = f"; for an image without channels, give (1, {shape[0]}, {shape[1]})"
        elif len(shape) == 4:
            hint = f"; without the batch axis: {shape[1:]}"
        else:
            hint = "; every entry must be positive" if len(shape) in (1, 3) else ""
        raise ValueError(
            f"{name} must be a data dimension (int) or an image shape (C, H, W), got {dim_or_shape!r}{hint}"
        )
    return tuple(int(s) for s in shape)


def standard_normal_base(dim_or_shape: int | Sequence[int]) -> StandardNormal:
    """The default base of every builder."""
    return StandardNormal(data_shape(dim_or_shape))


def _vector_dim(dim_or_shape, family: str, name: str) -> int:
    shape = data_shape(dim_or_shape, name)
    if len(shape) != 1:
        raise ValueError(
            f"{family} works on vectors: pass the dimension (an int) as {name}; flatten images first "
            f"(x.flatten(1), dimension {math.prod(shape)})"
        )
    if shape[0] < 2:
        raise ValueError(
            f"{name} must be at least 2 for a coupling flow (one part conditions the other), got {shape[0]}"
        )
    return shape[0]


def _check_hidden(hidden) -> None:
    """``hidden``: a positive int or a non-empty sequence of positive ints."""
    sizes = (hidden,) if _is_int(hidden) else hidden
    if (
        not isinstance(sizes, Sequence)
        or isinstance(sizes, str)
        or not sizes
        or not all(_is_int(h) and h > 0 for h in sizes)
    ):
        raise ValueError(
            f"hidden must be a positive int or a non-empty tuple of positive ints, got {hidden!r}"
        )


def _check_scale_bound(scale_bound) -> None:
    if scale_bound is not None and (
        isinstance(scale_bound, bool)
        or not isinstance(scale_bound, numbers.Real)
        or not (math.isfinite(scale_bound) and scale_bound > 0)
    ):
        raise ValueError(f"scale_bound must be a finite number > 0 or None (unbounded), got {scale_bound!r}")


def _check_logit(logit, logit_alpha) -> None:
    if logit is not None and not isinstance(logit, bool):
        raise TypeError(f"logit must be True or False, got {logit!r}")
    if (
        isinstance(logit_alpha, bool)
        or not isinstance(logit_alpha, numbers.Real)
        or not 0 <= logit_alpha < 0.5
    ):
        raise ValueError(f"logit_alpha must be a number in [0, 0.5), got {logit_alpha!r}")


def _vector_mask(kind: str, dim: int, index: int, generator) -> torch.Tensor:
    """The mask of coupling number ``index``; fixed kinds alternate with their complement."""
    if kind == "alternating":
        return L.alternating_mask(dim, index % 2)
    if kind == "halves":
        return L.halves_mask(dim, index % 2)
    if kind == "random":
        return L.random_mask(dim, generator)
    raise ValueError(f"mask must be 'alternating', 'halves' or 'random', got {kind!r}")


def _norm_layer(norm: str | None, num_features: int) -> list[nn.Module]:
    if norm is None:
        return []
    if norm == "actnorm":
        return [L.ActNorm(num_features)]
    if norm == "batchnorm":
        return [L.BatchNormFlow(num_features)]
    raise ValueError(f"norm must be 'actnorm', 'batchnorm' or None, got {norm!r}")


def _logit(logit: bool, alpha: float) -> list[Flow]:
    return [L.Logit(alpha)] if logit else []


def nice(
    dim: int,
    num_layers: int = 4,
    hidden: int | Sequence[int] = (256, 256),
    prior: str = "normal",
    mask: str = "alternating",
    logit: bool = False,
    logit_alpha: float = 1e-3,
) -> NormalizingFlow:
    """NICE (Dinh et al., 2015): additive couplings, then a diagonal :class:`~coursepkg.layers.Scaling`.

    Args:
        dim: the data dimension (NICE works on vectors; flatten images).
        num_layers: additive coupling layers; the mask alternates with its complement, so use an
            even number of at least 2 (the paper uses 4) to transform every coordinate.
        hidden: hidden sizes of each coupling's MLP.
        prior: ``"normal"`` (the default of every builder) or ``"logistic"`` (the paper's).
        mask: ``"alternating"`` (even/odd coordinates, the paper's), ``"halves"`` or ``"random"``.
        logit, logit_alpha: put a :class:`~coursepkg.layers.Logit` layer with this ``alpha``
            first, for data in ``[0, 1]`` such as flattened dequantized images.
    """
    dim = _vector_dim(dim, "nice", "dim")
    num_layers = _check_int(num_layers, "num_layers", 1)
    _check_hidden(hidden)
    _check_logit(logit, logit_alpha)
    if prior not in ("normal", "logistic"):
        raise ValueError(f"prior must be 'normal' or 'logistic', got {prior!r}")
    generator = torch.Generator().manual_seed(0)
    steps: list[Flow] = _logit(logit, logit_alpha)
    for i in range(num_layers):
        steps.append(L.AdditiveCoupling(_vector_mask(mask, dim, i, generator), hidden))
    steps.append(L.Scaling(dim))
    base = StandardNormal(dim) if prior == "normal" else StandardLogistic(dim)
    return NormalizingFlow(Compose(*steps), base)


def realnvp(
    dim_or_shape: int | Sequence[int],
    num_layers: int | None = None,
    hidden: int | Sequence[int] | None = None,
    *,
    scale_bound: float | None = 3.0,
    norm: str | None = "auto",
    mask: str = "alternating",
    num_scales: int = 2,
    num_blocks: int = 1,
    logit: bool | None = None,
    logit_alpha: float = 1e-3,
) -> NormalizingFlow:
    """RealNVP (Dinh et al., 2017): affine couplings; multi-scale and convolutional for images.

    **Vectors** (``dim_or_shape`` an int): ``num_layers`` (default 8)
    :class:`~coursepkg.layers.AffineCoupling` layers with MLP conditioners of sizes ``hidden``
    (default ``(128, 128)``), each preceded by a ``norm`` layer (default ActNorm); the mask
    (``mask``) alternates with its complement from one coupling to the next.

    **Images** (``dim_or_shape = (C, H, W)``): the paper's architecture, scaled down. A
    :class:`~coursepkg.layers.Logit` layer first (the model expects dequantized pixels in
    ``[0, 1]``), then ``num_scales`` nested :class:`~coursepkg.layers.MultiScale` scales, each

    - ``num_layers`` (default 3) couplings with checkerboard masks of alternating parity,
    - a :class:`~coursepkg.layers.Squeeze` to ``(4C, H/2, W/2)``,
    - ``num_layers`` couplings with channel masks of alternating parity,
    - the factor-out of half of the channels (the other half goes on to the next scale),

    and at the smallest scale ``num_layers + 1`` checkerboard couplings. Every coupling is a
    :class:`~coursepkg.layers.ConvAffineCoupling` whose conditioner has ``hidden`` channels
    (default 24) and ``num_blocks`` residual blocks, and is preceded by a ``norm`` layer (default
    :class:`~coursepkg.layers.BatchNormFlow`, as in the paper). ``H`` and ``W`` must be divisible
    by ``2 ** num_scales``. The defaults suit the 8 x 8 digits on a CPU (about 0.2M parameters,
    tuned for the best test bits/dim after a minute of training on two cores); for MNIST or
    CIFAR-10 on a GPU, give the conditioners more room (e.g. ``hidden=64, num_blocks=2``).

    Args:
        dim_or_shape: the data dimension or the image shape ``(C, H, W)``.
        num_layers: couplings per group (see above).
        hidden: MLP sizes (vectors) or conditioner channels, an int (images).
        scale_bound: bound of each log-scale (:func:`~coursepkg.layers.soft_clamp`); ``None``
            for unbounded scales.
        norm: ``"actnorm"`` (:class:`~coursepkg.layers.ActNorm`, data-dependent initialisation),
            ``"batchnorm"`` (:class:`~coursepkg.layers.BatchNormFlow`) or ``None``; ``"auto"``:
            ActNorm for vectors (the better of the two on the 2D toys) and batch norm for images
            (the better on the digits).
        mask: for vectors, ``"alternating"``, ``"halves"`` or ``"random"``.
        num_scales, num_blocks: for images, see above.
        logit: put a :class:`~coursepkg.layers.Logit` layer first; default ``True`` for images
            (pixels in ``[0, 1]``) and ``False`` for vectors.
        logit_alpha: its ``alpha``. RealNVP used 0.05 on natural images; images whose background
            is one level (the digits, MNIST) fit better with a small one (MAF used 1e-6 on MNIST),
            as it spreads the background's bin over a wider range of logits.
    """
    shape = data_shape(dim_or_shape)
    if num_layers is not None:
        num_layers = _check_int(num_layers, "num_layers", 1)
    if hidden is not None:
        _check_hidden(hidden)
    _check_logit(logit, logit_alpha)
    _check_scale_bound(scale_bound)
    if len(shape) == 1:
        dim = _vector_dim(shape[0], "realnvp", "dim_or_shape")
        hidden = (128, 128) if hidden is None else hidden
        num_layers = 8 if num_layers is None else num_layers
        norm = "actnorm" if norm == "auto" else norm
        generator = torch.Generator().manual_seed(0)
        steps: list[Flow] = _logit(bool(logit), logit_alpha)
        for i in range(num_layers):
            steps += _norm_layer(norm, dim)
            steps.append(L.AffineCoupling(_vector_mask(mask, dim, i, generator), hidden, scale_bound))
        return NormalizingFlow(Compose(*steps), StandardNormal(dim))

    c, h, w = shape
    hidden = 24 if hidden is None else hidden
    if isinstance(hidden, bool) or not isinstance(hidden, int):
        raise ValueError(f"for images, hidden is the number of conditioner channels (an int), got {hidden!r}")
    num_layers = 3 if num_layers is None else num_layers
    norm = "batchnorm" if norm == "auto" else norm
    _norm_layer(norm, 1)  # checks the name before anything is built
    num_scales = _check_int(num_scales, "num_scales", 0)
    num_blocks = _check_int(num_blocks, "num_blocks", 0)
    if h % 2**num_scales or w % 2**num_scales:
        raise ValueError(
            f"num_scales={num_scales} halves the image {num_scales} times: H and W of dim_or_shape must be "
            f"divisible by {2**num_scales}, got {h} x {w}; lower num_scales or crop/pad the images"
        )
    if (h >> num_scales) * (w >> num_scales) < 2:
        raise ValueError(
            f"after {num_scales} scales a {h} x {w} image is a single pixel, too small for a "
            "checkerboard coupling; lower num_scales"
        )

    def coupling(channels, mask):
        return L.ConvAffineCoupling(channels, mask, hidden, num_blocks, scale_bound)

    def checkerboards(channels, height, width, count):
        steps = []
        for i in range(count):
            steps += _norm_layer(norm, channels)
            steps.append(coupling(channels, L.checkerboard_mask(height, width, i % 2)))
        return steps

    def scale(channels, height, width, level):
        if level == num_scales:
            return Compose(*checkerboards(channels, height, width, num_layers + 1))
        steps = checkerboards(channels, height, width, num_layers)
        steps.append(L.Squeeze(2))
        for i in range(num_layers):
            steps += _norm_layer(norm, 4 * channels)
            steps.append(coupling(4 * channels, L.channel_mask(4 * channels, i % 2)))
        inner = scale(2 * channels, height // 2, width // 2, level + 1)
        return L.MultiScale(Compose(*steps), inner)

    transform = Compose(*_logit(logit is None or logit, logit_alpha), scale(c, h, w, 0))
    return NormalizingFlow(transform, StandardNormal(shape))


_AUTOREGRESSIVE_ORDERS = ("alternating", "random")


def _check_positive(value, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (math.isfinite(value) and value > 0)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _autoregressive_steps(
    family: str,
    dim,
    num_layers,
    hidden,
    *,
    transformer,
    order,
    norm,
    scale_bound,
    num_bins,
    spline_bound,
) -> list[Flow]:
    """The layers of a MAF, data to latent: ``num_layers`` x [``norm`` layer, autoregressive layer].

    Checks every argument of :func:`maf` and :func:`iaf` (``family`` names the builder).
    """
    shape = data_shape(dim, "dim")
    if len(shape) != 1:
        raise ValueError(
            f"{family} works on vectors: pass the dimension (an int) as dim; flatten images first "
            f"(x.flatten(1), dimension {math.prod(shape)})"
        )
    dim = shape[0]
    num_layers = _check_int(num_layers, "num_layers", 1)
    _check_hidden(hidden)
    _check_scale_bound(scale_bound)
    num_bins = _check_int(num_bins, "num_bins", 1)
    spline_bound = _check_positive(spline_bound, "spline_bound")
    if transformer not in ("affine", "spline"):
        raise ValueError(f"transformer must be 'affine' or 'spline', got {transformer!r}")
    if order not in _AUTOREGRESSIVE_ORDERS:
        raise ValueError(f"order must be 'alternating' or 'random', got {order!r}")
    _norm_layer(norm, 1)  # checks the name before anything is built

    def make_transformer():
        if transformer == "spline":
            return L.RationalQuadraticSpline(num_bins, spline_bound)
        return L.AffineTransformer(scale_bound)

    generator = torch.Generator().manual_seed(0)  # a "random" order is the same in every build
    steps: list[Flow] = []
    for i in range(num_layers):
        steps += _norm_layer(norm, dim)
        layer_order = ("natural", "reversed")[i % 2] if order == "alternating" else "random"
        steps.append(
            L.MaskedAutoregressive(dim, hidden, make_transformer(), layer_order, generator=generator)
        )
    return steps


def maf(
    dim: int,
    num_layers: int = 5,
    hidden: int | Sequence[int] = (64, 64),
    *,
    transformer: str = "affine",
    order: str = "alternating",
    norm: str | None = None,
    scale_bound: float | None = 3.0,
    num_bins: int = 8,
    spline_bound: float = 5.0,
) -> NormalizingFlow:
    r"""MAF (Papamakarios et al., 2017): ``num_layers`` :class:`~coursepkg.layers.MaskedAutoregressive` layers.

    Each layer transforms every dimension given the ones before it in its order, with parameters
    from a MADE; the log-density is one network pass per layer (``log_prob``), sampling ``dim``
    passes per layer. Use :func:`iaf` for the opposite trade.

    Args:
        dim: the data dimension (flatten images first).
        num_layers: autoregressive layers.
        hidden: hidden sizes of each MADE, an int (two layers) or a tuple; keep them at least
            ``dim - 1`` wide.
        transformer: ``"affine"`` (:class:`~coursepkg.layers.AffineTransformer`,
            ``z = x e^{s} + t``, the paper's) or ``"spline"``
            (:class:`~coursepkg.layers.RationalQuadraticSpline`: a neural spline flow).
        order: ``"alternating"`` (natural order, then reversed, and so on: the paper's) or
            ``"random"`` (a random order per layer, drawn from a fixed seed).
        norm: ``None``, ``"batchnorm"`` (:class:`~coursepkg.layers.BatchNormFlow` before each
            layer, as in the paper) or ``"actnorm"``. On the 2D toys both made the fit worse.
        scale_bound: affine only: bound of the log-scales (:func:`~coursepkg.layers.soft_clamp`);
            ``None`` for unbounded scales.
        num_bins, spline_bound: spline only: bins per dimension and the interval
            ``[-spline_bound, spline_bound]`` outside which each spline is the identity. It must
            hold the data: with 3 instead of 5 a spline MAF fits the checkerboard on
            ``[-4, 4]^2`` 30 times worse (KL 2.2 nats against 0.07).
    """
    steps = _autoregressive_steps(
        "maf", dim, num_layers, hidden, transformer=transformer, order=order, norm=norm,
        scale_bound=scale_bound, num_bins=num_bins, spline_bound=spline_bound,
    )  # fmt: skip
    return NormalizingFlow(Compose(*steps), standard_normal_base(steps[-1].features))


def iaf(
    dim: int,
    num_layers: int = 5,
    hidden: int | Sequence[int] = (64, 64),
    *,
    transformer: str = "affine",
    order: str = "alternating",
    norm: str | None = None,
    scale_bound: float | None = 3.0,
    num_bins: int = 8,
    spline_bound: float = 5.0,
) -> NormalizingFlow:
    r"""IAF (Kingma et al., 2016): the layers of :func:`maf`, used in the sampling direction.

    The transform is the inverse of a MAF's, ``Compose`` of :class:`~coursepkg.Inverse` of each
    of its layers in reverse order: a sample (``sample``, ``rsample``, ``sample_with_log_prob``)
    costs one MADE pass per layer, the density of a given point (``log_prob``) ``dim`` passes.
    This is the model to fit by reverse KL (``coursepkg.training.ReverseKL``), which only samples.
    The arguments are :func:`maf`'s.
    """
    steps = _autoregressive_steps(
        "iaf", dim, num_layers, hidden, transformer=transformer, order=order, norm=norm,
        scale_bound=scale_bound, num_bins=num_bins, spline_bound=spline_bound,
    )  # fmt: skip
    transform = Compose(*(Inverse(step) for step in reversed(steps)))
    return NormalizingFlow(transform, standard_normal_base(steps[-1].features))


_CONV1X1 = {"lu": L.LUConv1x1, "plain": L.Conv1x1}


def glow(
    shape: Sequence[int],
    num_layers: int = 4,
    hidden: int = 64,
    num_levels: int = 2,
    *,
    conv1x1: str = "lu",
    split_prior: bool = True,
    scale_bound: float | None = 3.0,
    logit: bool = True,
    logit_alpha: float = 1e-3,
    histogram_bins: int | None = 16,
    dropout: float = 0.3,
) -> NormalizingFlow:
    r"""Glow (Kingma and Dhariwal, 2018): ActNorm, invertible 1x1 convolution and affine coupling, multi-scale.

    A :class:`~coursepkg.layers.HistogramCDF` (a learned histogram per pixel, ``histogram_bins``
    bins) and a :class:`~coursepkg.layers.Logit` layer first (the model expects dequantized
    pixels in ``[0, 1]``), then ``num_levels`` nested :class:`~coursepkg.layers.MultiScale`
    levels, each

    - a :class:`~coursepkg.layers.Squeeze` to ``(4C, H/2, W/2)``,
    - ``num_layers`` steps of flow: :class:`~coursepkg.layers.ActNorm` (data-dependent
      initialisation), an invertible 1x1 convolution (:class:`~coursepkg.layers.LUConv1x1`, or
      :class:`~coursepkg.layers.Conv1x1` for ``conv1x1="plain"``) and a
      :class:`~coursepkg.layers.ChannelAffineCoupling` whose conditioner
      (:class:`~coursepkg.nets.GlowNet`, ``hidden`` channels, last layer zero) reads only the
      kept half of the channels,
    - except at the last level, a :class:`~coursepkg.layers.SplitPrior` and the factor-out of
      half of the channels; the other half goes on to the next level.

    **The learned prior and the base.** Glow gives each factored-out half a Gaussian prior whose
    mean and log-standard deviation a zero-initialised convolution predicts from the kept half.
    Here that prior is the :class:`~coursepkg.layers.SplitPrior` layer, the change of variables
    :math:`\varepsilon = (y_{out} - \mu(y_{keep})) e^{-\log\sigma(y_{keep})}` with
    ``log_det`` :math:`-\sum \log\sigma`, so the base stays ``StandardNormal((C, H, W))`` and
    ``log_prob`` equals Glow's (the Gaussian log-density of the standardised latent plus that
    ``log_det`` is the learned prior's log-density, exactly). Like :func:`realnvp`'s, the latent
    has the data's shape, the factored-out values sitting where :class:`~coursepkg.layers.MultiScale`
    puts them, and ``sample(n, temperature=T)`` draws every latent from
    :math:`\mathcal N(0, T^2)`, i.e. each factored-out half from :math:`\mathcal N(\mu,
    T^2\sigma^2)`: Glow's reduced-temperature sampling. ``split_prior=False`` uses RealNVP's
    standard-normal prior instead. (Glow's learned prior of the last level's latent,
    unconditional, is left out: it would be one more per-channel affine layer, and every step
    already starts with one, its ActNorm.)

    **Two additions to the paper's model**, both on by default and both measured on the 8 x 8
    digits (``benchmarks/digits_bpd.py``), where the paper's Glow (``histogram_bins=None,
    dropout=0``) overfits within a few hundred steps and stops at about 2.02 test bits per
    dimension, behind the image :func:`realnvp` (about 1.95):

    - the :class:`~coursepkg.layers.HistogramCDF` in front of the Logit gives each pixel its own
      learned marginal. Glow's layers are the same at every position (convolutions, per-channel
      ActNorm), so without it the couplings must learn from the zero padding at the image's
      edges that the leftmost and rightmost columns of a digit are almost always background;
    - dropout of whole hidden channels in every coupling's conditioner (``dropout``, training
      mode only, see :class:`~coursepkg.nets.GlowNet`), the regulariser of Flow++.

    With both (77k parameters), the digits reach 1.92-1.94 test bits/dim in a minute of
    ``coursepkg.training.train`` and 1.92-1.95 with a plain Adam loop at a constant learning rate
    of 1e-3 (three seeds, two cores; ``benchmarks/README.md``). Because of the dropout, a model
    in training mode is a different function at every call: evaluate, sample and check it in
    eval mode (``coursepkg.training`` does).
    ``H`` and ``W`` must be divisible by ``2 ** num_levels``.

    Args:
        shape: the image shape ``(C, H, W)``.
        num_layers: steps of flow per level (Glow's ``K``).
        hidden: channels of each coupling's conditioner.
        num_levels: levels (Glow's ``L``); every level but the last factors out half.
        conv1x1: ``"lu"`` (:math:`O(C)` log-determinant) or ``"plain"`` (``slogdet``).
        split_prior: learn the conditional prior of the factored-out halves.
        scale_bound: bound of each coupling's (and prior's) log-scale
            (:func:`~coursepkg.layers.soft_clamp`); ``None`` for unbounded scales.
        logit: put the :class:`~coursepkg.layers.Logit` layer first (``False``: the model takes
            unbounded data, and has neither the Logit nor the histogram layer).
        logit_alpha: its ``alpha`` (see :func:`realnvp`).
        histogram_bins: bins of the :class:`~coursepkg.layers.HistogramCDF` before the Logit;
            ``None`` leaves it out. Used with ``logit=True`` only, like ``logit_alpha``.
        dropout: the probability of dropping each hidden channel of every coupling's
            conditioner, in training mode only (see :class:`~coursepkg.nets.GlowNet`); 0 for
            none, as in the paper.
    """
    shape = data_shape(shape, "shape")
    if len(shape) != 3:
        raise ValueError(
            f"glow works on images: pass their shape (C, H, W) as shape, got {shape}; "
            "for vectors use realnvp, maf or nice"
        )
    c, h, w = shape
    num_layers = _check_int(num_layers, "num_layers", 1)
    hidden = _check_int(hidden, "hidden", 1)
    num_levels = _check_int(num_levels, "num_levels", 1)
    if not isinstance(logit, bool):
        raise TypeError(f"logit must be True or False, got {logit!r}")
    _check_logit(logit, logit_alpha)
    if histogram_bins is not None:
        histogram_bins = _check_int(histogram_bins, "histogram_bins", 1)
    _check_scale_bound(scale_bound)
    if conv1x1 not in _CONV1X1:
        raise ValueError(f"conv1x1 must be 'lu' or 'plain', got {conv1x1!r}")
    if not isinstance(split_prior, bool):
        raise TypeError(f"split_prior must be True or False, got {split_prior!r}")
    if h % 2**num_levels or w % 2**num_levels:
        raise ValueError(
            f"num_levels={num_levels} squeezes the image {num_levels} times: H and W of shape must be "
            f"divisible by {2**num_levels}, got {h} x {w}; lower num_levels or crop/pad the images"
        )

    def level(channels: int, index: int) -> L.MultiScale:
        squeezed = 4 * channels
        steps: list[Flow] = [L.Squeeze(2)]
        for _ in range(num_layers):
            steps += [
                L.ActNorm(squeezed),
                _CONV1X1[conv1x1](squeezed),
                L.ChannelAffineCoupling(squeezed, hidden, scale_bound=scale_bound, dropout=dropout),
            ]
        if index == num_levels - 1:
            return L.MultiScale(Compose(*steps), None)
        if split_prior:
            steps.append(L.SplitPrior(squeezed, squeezed // 2, scale_bound))
        return L.MultiScale(Compose(*steps), level(squeezed // 2, index + 1), keep=squeezed // 2)

    front = [L.HistogramCDF(shape, histogram_bins)] if logit and histogram_bins is not None else []
    transform = Compose(*front, *_logit(logit, logit_alpha), level(c, 0))
    return NormalizingFlow(transform, StandardNormal(shape))


def iresnet(
    dim: int,
    num_layers: int = 8,
    hidden: int | Sequence[int] = (64, 64),
    *,
    coefficient: float = 0.9,
    activation: str = "lipswish",
    log_det: str | None = None,
    num_terms: int = 5,
    roulette_p: float = 0.5,
    num_probes: int = 1,
    probe: str = "rademacher",
    tol: float | None = None,
    max_iter: int = 200,
    power_iterations: int | None = None,
    norm: str | None = None,
) -> NormalizingFlow:
    r"""i-ResNet (Behrmann et al., 2019): ``num_layers`` :class:`~coursepkg.layers.InvertibleResidual` blocks.

    Each block is ``x + g(x)`` with ``g`` an MLP whose linear maps are spectrally normalised to a
    norm of at most ``coefficient``; it is inverted by fixed-point iteration (``sample``,
    ``inverse``) and its log-determinant is exact or a power-series estimate.

    Args:
        dim: the data dimension (flatten images first).
        num_layers: residual blocks.
        hidden: hidden sizes of each block's network, an int (two layers) or a tuple.
        coefficient: the bound ``c`` in ``(0, 1)`` on each linear map's spectral norm.
        activation: ``"lipswish"`` (Residual Flows' choice, the default: its learned slope gave
            lower KL divergences on the 2D toys than ``"elu"``, ``benchmarks/peers.py --kl``) or
            ``"elu"``; both 1-Lipschitz.
        log_det: ``"exact"`` (brute-force ``slogdet``, exact ``log_prob``), ``"series"``
            (truncated power series with Hutchinson's estimator: ``log_prob`` is then a random
            estimate, biased by the truncation), ``"roulette"`` (Residual Flows' unbiased
            Russian-roulette estimate) or ``None``: exact for ``dim <= 16``, series above.
        num_terms, roulette_p, num_probes, probe: the estimators' options (see
            :class:`~coursepkg.layers.InvertibleResidual`).
        tol, max_iter: the fixed-point inverse's stopping rule and its limit.
        power_iterations: ``None``: exact spectral norms in training; an int: that many
            power-method steps per training step (see :class:`~coursepkg.layers.SpectralLinear`).
        norm: ``None``, ``"actnorm"`` or ``"batchnorm"``: a normalisation layer before each block.
    """
    shape = data_shape(dim, "dim")
    if len(shape) != 1:
        raise ValueError(
            f"iresnet works on vectors: pass the dimension (an int) as dim; flatten images first "
            f"(x.flatten(1), dimension {math.prod(shape)})"
        )
    dim = shape[0]
    num_layers = _check_int(num_layers, "num_layers", 1)
    _check_hidden(hidden)
    _norm_layer(norm, 1)  # checks the name before anything is built
    steps: list[Flow] = []
    for _ in range(num_layers):
        steps += _norm_layer(norm, dim)
        steps.append(
            L.InvertibleResidual(
                dim,
                hidden,
                coefficient=coefficient,
                activation=activation,
                log_det=log_det,
                num_terms=num_terms,
                roulette_p=roulette_p,
                num_probes=num_probes,
                probe=probe,
                tol=tol,
                max_iter=max_iter,
                power_iterations=power_iterations,
            )  # fmt: skip
        )
    return NormalizingFlow(Compose(*steps), standard_normal_base(dim))


def __getattr__(name: str):
    if name in _PLANNED:
        raise NotImplementedError(
            f"coursepkg.models.{name} is not written yet: it arrives with {_PLANNED[name]}."
        )
    raise AttributeError(f"module 'coursepkg.models' has no attribute {name!r}")
