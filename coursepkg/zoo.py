r"""Every family of the course side by side (chapter 8): the configurations, the clocks and the scores.

The comparison puts each family on the same data with the same training time
(``train(..., max_seconds=...)``) and measures, for each trained model,

- its quality: the KL divergence from a 2D toy with an exact density
  (:func:`coursepkg.data.kl_divergence`, nats), or the test bits per dimension of images
  (:meth:`~coursepkg.NormalizingFlow.bits_per_dim`);
- its size: the number of parameters;
- its speed in each direction: the seconds to evaluate the log-density of 1000 points
  (data to latent, ``log_prob``) and to draw 1000 samples (latent to data, ``sample``), each
  the best of a few repeats after a warm-up call, without gradients, at a batch of 1000 and
  with torch's current number of threads (:func:`time_per_1000`);
- how well its inverse undoes its forward map: :math:`\max |x - f^{-1}(f(x))|`
  (:func:`invertibility_error`), by default in float64 so that the number shows the inverse
  algorithm (closed form, bisection, fixed-point iteration) rather than float32 rounding.

:data:`FAMILIES` holds the vector families, :data:`IMAGE_FAMILIES` the image ones; :func:`build`
builds any of them by name. :func:`compare_on_toy` and :func:`compare_on_digits` train and
measure a list of families and return one row (a dict) per family.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import models, runtime
from .core import Compose, NormalizingFlow
from .data import DIGITS_LEVELS, Dequantize, dequantize, kl_divergence
from .distributions import StandardNormal
from .layers import InvertibleResidual, Logit, Planar
from .training import train

__all__ = [
    "FAMILIES",
    "IMAGE_FAMILIES",
    "Family",
    "build",
    "compare_on_digits",
    "compare_on_toy",
    "family_names",
    "invertibility_error",
    "num_parameters",
    "planar_flow",
    "time_per_1000",
]


@dataclass(frozen=True)
class Family:
    """One family of flows as the comparison uses it.

    Attributes:
        name: the name shown in tables, e.g. ``"MAF"``.
        builder: ``builder(dim_or_shape, logit) -> NormalizingFlow``; ``logit`` (vectors only)
            puts a :class:`~coursepkg.layers.Logit` layer first, for data in ``[0, 1]``.
        reference: the BibTeX key of the paper that introduced the family.
        inverse: how the sampling direction (latent to data) is computed, in words.
        exact_inverse: whether that inverse is a formula (``True``) or a numerical solution
            stopped at a tolerance (``False``: bisection, fixed-point iteration).
        lr: Adam's learning rate in the comparison (the same for every data set).
        images: whether ``builder`` takes an image shape ``(C, H, W)`` instead of a dimension.
    """

    name: str
    builder: Callable[..., NormalizingFlow]
    reference: str
    inverse: str
    exact_inverse: bool
    lr: float = 3e-3
    images: bool = False


def _positive_int(value, name: str, minimum: int) -> int:
    """``value`` as an int of at least ``minimum``; an error naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _with_logit(flow: NormalizingFlow, logit: bool, alpha: float = 1e-3) -> NormalizingFlow:
    """``flow`` with a :class:`~coursepkg.layers.Logit` layer in front when ``logit`` is true."""
    if not logit:
        return flow
    return NormalizingFlow(Compose(Logit(alpha), flow.transform), flow.base)


def planar_flow(dim: int, num_layers: int = 16) -> NormalizingFlow:
    """``num_layers`` :class:`~coursepkg.layers.Planar` layers and a standard normal base.

    Used in the density direction (data to latent, as in chapter 2's maximum-likelihood fit):
    ``log_prob`` is one pass with the matrix determinant lemma, ``sample`` inverts every layer by
    bisection. Each layer has ``2 dim + 1`` parameters.
    """
    dim = _positive_int(dim, "dim", 1)
    num_layers = _positive_int(num_layers, "num_layers", 1)
    return NormalizingFlow(Compose([Planar(dim) for _ in range(num_layers)]), StandardNormal(dim))


def _width(dim: int, least: int) -> int:
    """Hidden width: ``least``, or ``dim`` when larger (a MADE needs at least ``dim - 1`` units)."""
    return max(least, dim)


# The configurations. At D = 2 the networked families have 10k to 18k parameters (planar layers
# have 5 each: no width to match); at D = 64 the counts differ more, as each family's parameters
# grow with D in its own way (the spline MAF's conditioner outputs 3 K - 1 numbers per coordinate).


def _planar(dim, logit=False):
    return _with_logit(planar_flow(dim, num_layers=16), logit)


def _nice(dim, logit=False):
    return models.nice(dim, num_layers=4, hidden=(_width(dim, 64),) * 2, logit=logit)


def _realnvp(dim, logit=False):
    return models.realnvp(dim, num_layers=6, hidden=(48, 48), logit=logit)


def _maf(dim, logit=False):
    return _with_logit(models.maf(dim, num_layers=5, hidden=(_width(dim, 48),) * 2), logit)


def _iaf(dim, logit=False):
    return _with_logit(models.iaf(dim, num_layers=5, hidden=(_width(dim, 48),) * 2), logit)


def _spline_maf(dim, logit=False):
    # The spline is the identity outside [-bound, bound]: it must hold the data, whose logits
    # (alpha = 1e-3) reach about +-7.
    bound = 8.0 if logit else 5.0
    flow = models.maf(
        dim, num_layers=4, hidden=(_width(dim, 32),) * 2, transformer="spline", spline_bound=bound
    )
    return _with_logit(flow, logit)


def _iresnet(dim, logit=False):
    return _with_logit(models.iresnet(dim, num_layers=4, hidden=(48, 48)), logit)


def _glow(shape, logit=True):
    return models.glow(shape)


def _image_realnvp(shape, logit=True):
    return models.realnvp(shape)


#: The vector families, by name, in the order of the course's chapters.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("planar", _planar, "rezende2015variational", "bisection per layer", False, lr=1e-2),
        Family("NICE", _nice, "dinh2015nice", "closed form, one pass", True),
        Family("RealNVP", _realnvp, "dinh2017realnvp", "closed form, one pass", True),
        Family("MAF", _maf, "papamakarios2017maf", "closed form, D passes per layer", True),
        Family("IAF", _iaf, "kingma2016iaf", "closed form, one pass", True),
        Family("spline MAF", _spline_maf, "durkan2019nsf", "closed form, D passes per layer", True),
        Family("i-ResNet", _iresnet, "behrmann2019iresnet", "fixed-point iteration", False),
    )
}

#: The image families (convolutional, multi-scale), by name.
IMAGE_FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "RealNVP (image)",
            _image_realnvp,
            "dinh2017realnvp",
            "closed form, one pass",
            True,
            lr=4e-3,
            images=True,
        ),
        Family("Glow", _glow, "kingma2018glow", "closed form, one pass", True, lr=4e-3, images=True),
    )
}


def family_names() -> list[str]:
    """Every name :func:`build` accepts: the vector families, then the image ones."""
    return [*FAMILIES, *IMAGE_FAMILIES]


def _family(name: str) -> Family:
    if not isinstance(name, str):
        raise TypeError(f"a family is named by a string, got {type(name).__name__} {name!r}")
    family = FAMILIES.get(name) or IMAGE_FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown family {name!r}; choose one of {', '.join(map(repr, family_names()))}")
    return family


def build(name: str, dim_or_shape: int | Sequence[int], *, logit: bool = False) -> NormalizingFlow:
    """The model of family ``name`` for data of dimension ``dim_or_shape`` (or image shape ``(C, H, W)``).

    Args:
        name: a key of :data:`FAMILIES` (vectors) or :data:`IMAGE_FAMILIES` (images).
        dim_or_shape: an int for a vector family, ``(C, H, W)`` for an image family.
        logit: vector families only: put a :class:`~coursepkg.layers.Logit` layer first, for
            data in ``[0, 1]`` such as flattened dequantized images (image families always have one).

    Raises:
        ValueError: an unknown name (the message lists the known ones), an image shape for a
            vector family (flatten the images) or a dimension for an image family.
    """
    family = _family(name)
    shape = models.data_shape(dim_or_shape)
    if family.images and len(shape) != 3:
        raise ValueError(
            f"{name} works on images: give their shape (C, H, W), got {dim_or_shape!r}; "
            f"for vectors choose one of {', '.join(map(repr, FAMILIES))}"
        )
    if not family.images and len(shape) != 1:
        raise ValueError(
            f"{name} works on vectors: give the dimension (an int), got {dim_or_shape!r}; "
            f"flatten images first (dimension {math.prod(shape)}) or choose one of "
            f"{', '.join(map(repr, IMAGE_FAMILIES))}"
        )
    if family.images:
        return family.builder(shape)
    return family.builder(shape[0], logit=bool(logit))


def num_parameters(model: torch.nn.Module) -> int:
    """The number of trainable numbers in ``model``."""
    return sum(p.numel() for p in model.parameters())


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_1000(
    fn: Callable[[], object], num_points: int = 1000, repeats: int = 3, device=None, max_seconds: float = 0.5
) -> float:
    """Seconds that ``fn()`` takes per 1000 points: the best of ``repeats`` calls after a warm-up call.

    ``fn`` handles ``num_points`` points per call (e.g. ``lambda: model.log_prob(x)`` with
    ``x`` of shape ``(num_points, D)``); it runs under ``torch.no_grad()``. The best of several
    calls is the least disturbed by other work on the machine; the warm-up call pays one-off
    costs (memory allocation, lazy initialisation). On a GPU (``device`` of type ``cuda``) the
    clock waits for the queued kernels. The repeats stop early once the timed calls have taken
    ``max_seconds`` in all (a slow direction, such as a MAF's sampling in 64 dimensions, then
    keeps fewer repeats). Returns a positive float.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function of no arguments, got {type(fn).__name__}")
    num_points = _positive_int(num_points, "num_points", 1)
    repeats = _positive_int(repeats, "repeats", 1)
    device = None if device is None else torch.device(device)
    best = math.inf
    with torch.no_grad():
        fn()
        _synchronize(device)
        spent = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            seconds = time.perf_counter() - start
            best, spent = min(best, seconds), spent + seconds
            if spent >= max_seconds:
                break
    # perf_counter can return the same value twice around a very fast call: keep the result positive.
    return max(best, 1e-9) * 1000 / num_points


def invertibility_error(
    model: NormalizingFlow | torch.nn.Module, x: torch.Tensor, dtype=torch.float64
) -> float:
    r""":math:`\max |x - f^{-1}(f(x))|` over the batch ``x`` (shape ``(B, *event_shape)``), a float.

    ``model`` is a :class:`~coursepkg.NormalizingFlow` (its ``transform`` is used) or a flow with
    ``forward`` and ``inverse``. The round trip runs on a copy of the model in evaluation mode,
    without gradients, in ``dtype``: float64 by default, where a closed-form inverse comes back to
    about ``1e-15`` and an iterative one to its stopping tolerance; ``None`` keeps the model's
    dtype (float32 adds rounding of about ``1e-6`` to either). The model itself is not changed.
    """
    transform = getattr(model, "transform", model)
    if not callable(getattr(transform, "inverse", None)):
        raise TypeError(f"{type(transform).__name__} has no inverse(z): there is no round trip to measure")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ValueError("x must be a non-empty floating-point batch of shape (B, *event_shape)")
    transform = copy.deepcopy(transform).eval()
    parameter = next(iter(transform.parameters()), None)
    device = parameter.device if parameter is not None else x.device
    if dtype is not None:
        transform = transform.to(dtype)
    x = x.to(device=device, dtype=dtype or (parameter.dtype if parameter is not None else x.dtype))
    with torch.no_grad():
        z, _ = transform(x)
        x_back, _ = transform.inverse(z)
    return (x_back - x).abs().max().item()


def _measure(model, points, sample_count, device) -> dict:
    """Timings and the round-trip error of a trained model on ``points`` (data it was fitted to)."""
    model.eval()
    return {
        "density_seconds": time_per_1000(lambda: model.log_prob(points), len(points), device=device),
        "sample_seconds": time_per_1000(lambda: model.sample(sample_count), sample_count, device=device),
        "inverse_error": invertibility_error(model, points),
    }


def compare_on_toy(
    target,
    names: Sequence[str] | None = None,
    *,
    seconds: float,
    batch_size: int = 256,
    num_samples: int = 20_000,
    timing_points: int = 1000,
    device=None,
    seed: int = 0,
) -> list[dict]:
    """Train each family on the 2D toy ``target`` for ``seconds`` and measure it.

    Every model gets the same budget, batch size and seed, fresh samples of ``target`` at each
    step, Adam at its family's ``lr`` with a cosine schedule over the budget.

    Args:
        target: a toy with an exact density, e.g. ``coursepkg.data.toy("checkerboard")``.
        names: keys of :data:`FAMILIES`; default all of them.
        seconds: the training budget per model (wall clock, ``train``'s ``max_seconds``).
        batch_size: samples per training step.
        num_samples: target samples for the KL divergence (the same fixed-seed points for every model).
        timing_points: the batch of the timings, whose results are given per 1000 points.
        device: default :func:`coursepkg.device`.
        seed: seeds each model's initialisation and its training.

    Returns:
        One dict per family, in the order of ``names``: ``family``, ``model`` (trained, in eval
        mode), ``history``, ``parameters``, ``steps``, ``kl`` (nats), ``density_seconds`` and
        ``sample_seconds`` (per 1000 points), ``inverse_error`` (on ``timing_points`` target samples).
    """
    names = list(FAMILIES) if names is None else list(names)
    for name in names:
        if _family(name).images:
            raise ValueError(f"{name} is an image family; the toys are 2D vectors")
    device = runtime.device() if device is None else torch.device(device)
    points = target.sample(timing_points, torch.Generator().manual_seed(seed + 1)).to(device)
    rows = []
    for name in names:
        torch.manual_seed(seed)
        model = build(name, points.shape[1]).to(device)
        history = train(
            model,
            target,
            steps=None,
            max_seconds=seconds,
            batch_size=batch_size,
            lr=FAMILIES[name].lr,
            scheduler="cosine",
            device=device,
            seed=seed,
            progress=False,
        )
        score = kl_divergence(model, target, num_samples=num_samples)
        rows.append(
            {
                "family": name,
                "model": model,
                "history": history,
                "parameters": num_parameters(model),
                "steps": history.steps[-1] if history.steps else 0,
                "kl": score["kl"],
                **_measure(model, points, timing_points, device),
            }
        )
    return rows


def _use_exact_log_det(model: torch.nn.Module) -> None:
    """Switch every i-ResNet block of ``model`` to the exact log-determinant (for scoring)."""
    for module in model.modules():
        if isinstance(module, InvertibleResidual):
            module.log_det = "exact"


def compare_on_digits(
    digits: dict,
    names: Sequence[str],
    *,
    seconds: float,
    num_levels: int = DIGITS_LEVELS,
    batch_size: int = 128,
    timing_points: int = 1000,
    device=None,
    seed: int = 0,
) -> list[dict]:
    """Train each family on images (the 8 x 8 digits) for ``seconds`` and measure it.

    Vector families see the images flattened, with a Logit layer first; image families see
    ``(C, H, W)``. Each trains on freshly dequantized batches of ``digits["train"]`` with a cosine
    schedule, is validated on ``digits["val"]`` every 25 steps and keeps its best parameters
    (chapter 4's recipe). An i-ResNet trains with its default log-determinant (a power-series
    estimate above 16 dimensions) and is scored with the exact one.

    Args:
        digits: ``{"train", "val", "test"}`` -> integer images ``(N, C, H, W)``, as from
            :func:`coursepkg.data.load_digits`.
        names: keys of :data:`FAMILIES` or :data:`IMAGE_FAMILIES`.
        seconds: the training budget per model.
        num_levels: pixel levels of the images.
        batch_size: images per step.
        timing_points: the batch of the timings (training images, dequantized with a fixed seed).
        device, seed: as in :func:`compare_on_toy`.

    Returns:
        One dict per family: ``family``, ``model``, ``history``, ``parameters``, ``steps``,
        ``bits_per_dim`` (mean over the test images, dequantized with a fixed seed),
        ``density_seconds``, ``sample_seconds`` (per 1000 images) and ``inverse_error``.
    """
    device = runtime.device() if device is None else torch.device(device)
    shape = tuple(digits["train"].shape[1:])
    test = dequantize(digits["test"], num_levels, generator=torch.Generator().manual_seed(seed))
    timing = dequantize(
        digits["train"][:timing_points], num_levels, generator=torch.Generator().manual_seed(seed + 1)
    )
    rows = []
    for name in names:
        family = _family(name)

        def reshape(x, images=family.images):
            return x if images else x.flatten(1)

        torch.manual_seed(seed)
        model = build(name, shape if family.images else math.prod(shape), logit=True).to(device)
        history = train(
            model,
            reshape(digits["train"]),
            steps=None,
            max_seconds=seconds,
            batch_size=batch_size,
            lr=family.lr,
            scheduler="cosine",
            eval_every=25,
            val_data=reshape(digits["val"]),
            preprocess=Dequantize(num_levels),
            device=device,
            seed=seed,
            progress=False,
        )
        _use_exact_log_det(model)
        model.eval()
        with torch.no_grad():
            bpd = torch.cat(
                [model.bits_per_dim(reshape(chunk).to(device), num_levels) for chunk in test.split(500)]
            )
        points = reshape(timing).to(device)
        rows.append(
            {
                "family": name,
                "model": model,
                "history": history,
                "parameters": num_parameters(model),
                "steps": history.steps[-1] if history.steps else 0,
                "bits_per_dim": bpd.mean().item(),
                **_measure(model, points, len(points), device),
            }
        )
    return rows
