r"""The flow interface shared by every chapter.

Direction: ``forward`` maps **data to latent**, the direction in which a density is evaluated,

.. math:: \log p_X(x) = \log p_Z(f(x)) + \log \left| \det \frac{\partial f(x)}{\partial x} \right|,

and ``inverse`` maps latent to data, the direction in which samples are drawn. Both return the
pair ``(output, log_det)`` where ``log_det`` is :math:`\log|\det \partial\,\mathrm{output} /
\partial\,\mathrm{input}|` for each sample: shape ``(B,)``, on the input's device and dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .distributions import _check_num_samples, _check_temperature

__all__ = ["Flow", "Compose", "Inverse", "NormalizingFlow", "nats_to_bits_per_dim"]


class Flow(nn.Module):
    """A bijective layer: ``forward(x) -> (z, log_det)`` and ``inverse(z) -> (x, log_det)``.

    Subclasses implement both directions. ``log_det`` has shape ``(B,)``: one value per sample,
    already summed over every non-batch dimension.
    """

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x) -> (z, log_det)")

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement inverse(z) -> (x, log_det)")


class Compose(Flow):
    """Layers applied one after the other; itself a flow, whose ``log_det`` is the sum of theirs.

    ``Compose(f1, f2, f3)`` computes ``f3(f2(f1(x)))`` in ``forward`` and undoes it in reverse
    order in ``inverse``. Index it, iterate it or take ``len`` like a list.
    """

    def __init__(self, *layers: Flow | Iterable[Flow]):
        super().__init__()
        if len(layers) == 1 and not isinstance(layers[0], nn.Module):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not (hasattr(layer, "forward") and hasattr(layer, "inverse")):
                raise TypeError(
                    f"layer {i} ({type(layer).__name__}) is not a flow: it needs forward(x) and "
                    "inverse(z), each returning (output, log_det)"
                )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[0])
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z, log_det

    def trajectory(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x, f1(x), f2(f1(x)), ...]``: the input after each layer (for layer-by-layer plots)."""
        states = [x]
        for layer in self.layers:
            x, _ = layer(x)
            states.append(x)
        return states

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Compose(*self.layers[index])
        return self.layers[index]

    def __iter__(self):
        return iter(self.layers)


class Inverse(Flow):
    """The inverse of a flow: its ``forward`` is the wrapped flow's ``inverse`` and vice versa.

    This is how one layer serves both directions, e.g. an IAF is an inverted MAF.
    """

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow.inverse(x)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(z)


class NormalizingFlow(nn.Module):
    """A density model ``p(x) = p_base(f(x)) |det df/dx|`` made of a flow ``f`` and a base.

    Args:
        transform: a :class:`Flow` mapping data to latent.
        base: a distribution module with ``log_prob(z) -> (B,)`` and ``sample(n)``, such as
            :class:`coursepkg.distributions.StandardNormal`.
        event_shape: the shape of one data point, e.g. ``(2,)`` or ``(1, 8, 8)``; by default the
            base's ``event_shape`` (right whenever ``transform`` keeps the shape, as every
            builder's does; pass it for a flow that reshapes). ``None`` when neither is known:
            then inputs are not checked against a shape.

    ``log_prob(x)`` has shape ``(B,)``; ``sample(n)`` draws ``n`` data points by pushing base
    samples through ``transform.inverse``. For images, ``bits_per_dim`` converts the density of
    dequantized pixels in ``[0, 1]`` to bits per dimension of the discrete image.

    Bad input gets an error that says what to do, never a silent NaN (:meth:`log_prob` lists the
    rules). ``transform(x)`` is the bare flow: it skips the checks of the batch shape, but a
    :class:`~coursepkg.layers.Logit` first layer still checks its pixels.
    """

    def __init__(self, transform: Flow, base: nn.Module, event_shape: Sequence[int] | None = None):
        super().__init__()
        # A transform without inverse (or a base without sample) still gives densities; sampling
        # then says what is missing.
        if not callable(transform):
            raise TypeError(
                f"transform must be a flow, forward(x) -> (z, log_det), got {type(transform).__name__}"
            )
        if not callable(getattr(base, "log_prob", None)):
            raise TypeError(
                f"base must be a distribution with log_prob(z) (and sample(n)), got {type(base).__name__}"
            )
        self.transform = transform
        self.base = base
        if event_shape is None:
            event_shape = getattr(base, "event_shape", None)
        self.event_shape: tuple[int, ...] | None = None if event_shape is None else _shape_tuple(event_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` for each sample, shape ``(B,)``.

        Bad input, in the order it is checked:

        - not a tensor, or an integer, boolean or complex dtype: ``TypeError`` (convert to float
          and, for pixel levels, scale them to ``[0, 1]``);
        - not of shape ``(B, *event_shape)``: ``ValueError`` naming both shapes and the fix
          (``x.unsqueeze(0)`` for one sample, ``x.unsqueeze(1)`` for images without their
          channel axis, ``x.reshape(...)`` for another layout);
        - NaN or infinite values: ``ValueError`` with their count and first sample;
        - an empty batch ``(0, *event_shape)``: an empty ``(0,)`` result;
        - with a :class:`~coursepkg.layers.Logit` first layer (image models), a batch of
          non-negative integers above 1 (unscaled pixel levels): ``ValueError``; any other point
          outside the Logit's domain, which contains ``[0, 1]``: ``-inf``, its density being 0.
        """
        self._check_data(x, "log_prob")
        if x.shape[0] == 0:
            # Layers with batch statistics (ActNorm, batch norm) would turn an empty batch into NaN.
            return x.new_zeros(0)
        z, log_det = self.transform(x)
        return self.base.log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """``n`` samples from the model, shape ``(n, *event_shape)``; no gradients are tracked.

        ``n`` is a non-negative int (``n = 0`` gives an empty batch); ``temperature``, a positive
        number, scales the base samples. Use :meth:`rsample` for samples that carry gradients
        (e.g. variational inference).
        """
        return self.rsample(n, temperature)

    def rsample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Like :meth:`sample`, but differentiable with respect to the parameters."""
        n = _check_num_samples(n)
        temperature = _check_temperature(temperature)
        self._check_can_sample()
        z = self.base.sample(n, temperature)
        if n == 0 and self.event_shape is not None:
            return z.new_zeros((0, *self.event_shape))
        x, _ = self.transform.inverse(z)
        return x

    def sample_with_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their log-density in one pass through the inverse (the IAF's fast path)."""
        n = _check_num_samples(n)
        self._check_can_sample()
        z = self.base.sample(n)
        if n == 0 and self.event_shape is not None:
            return z.new_zeros((0, *self.event_shape)), z.new_zeros(0)
        x, log_det_inverse = self.transform.inverse(z)
        # log|det dx/dz| = -log|det dz/dx| at the same point.
        return x, self.base.log_prob(z) - log_det_inverse

    def bits_per_dim(self, x: torch.Tensor, num_levels: int = 256) -> torch.Tensor:
        """Bits per dimension of images whose pixels take ``num_levels`` values, shape ``(B,)``.

        ``x`` holds dequantized pixels scaled to ``[0, 1]``: ``x = (k + u) / num_levels`` for the
        integer level ``k`` and uniform noise ``u``. A bin of width ``1 / num_levels`` per
        dimension turns the density into a probability, so
        ``bpd = (-log p(x) + D log num_levels) / (D log 2)``. A batch of unscaled pixel levels
        (non-negative integers above 1) is a ``ValueError``, whatever the model's first layer;
        :meth:`log_prob` lists the other checks.
        """
        if isinstance(num_levels, bool) or not isinstance(num_levels, numbers.Integral) or num_levels < 2:
            raise ValueError(
                "num_levels must be an int of at least 2 (17 for the digits, 256 for 8-bit images), "
                f"got {num_levels!r}"
            )
        self._check_data(x, "bits_per_dim")
        _check_pixel_scale(x, "bits_per_dim")
        return nats_to_bits_per_dim(-self.log_prob(x), math.prod(x.shape[1:]), int(num_levels))

    def _check_can_sample(self) -> None:
        if not callable(getattr(self.base, "sample", None)):
            raise TypeError(
                f"the base {type(self.base).__name__} has no sample(n), so this model cannot sample"
            )
        if not callable(getattr(self.transform, "inverse", None)):
            raise TypeError(
                f"the transform {type(self.transform).__name__} has no inverse(z), "
                "so this model cannot sample"
            )

    def _check_data(self, x, what: str) -> None:
        """Type, dtype and shape (free), then one min/max reduction for NaN and infinity."""
        _check_float_tensor(x, what)
        if x.dim() == 0:
            expected = "(B, ...)" if self.event_shape is None else _batch_shape(self.event_shape)
            raise ValueError(f"{what} expects a batch of shape {expected}, got a scalar tensor")
        if self.event_shape is not None and tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(_shape_message(tuple(x.shape), self.event_shape, what))
        _finite_range(x, what)

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}"


def _shape_tuple(shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    shape = tuple(shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0 for s in shape):
        raise ValueError(f"event_shape must be a tuple of positive ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _batch_shape(event_shape: tuple[int, ...]) -> str:
    return "(B, " + ", ".join(map(str, event_shape)) + ")"


def _check_float_tensor(x, what: str) -> None:
    """``TypeError`` unless ``x`` is a floating-point tensor (pixel levels are the usual culprit)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{what} expects a torch.Tensor, got {type(x).__module__}.{type(x).__name__}: "
            "convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{what} expects floating-point data, got a {x.dtype} tensor: convert it with x.float(); "
            "pixel levels (uint8 images, 0..16 digits) must also be dequantized and scaled to [0, 1], "
            "e.g. coursepkg.data.dequantize(x, num_levels)"
        )


def _shape_message(shape: tuple[int, ...], event_shape: tuple[int, ...], what: str) -> str:
    """What the model expects, what came, and the likely fix."""
    dims = math.prod(event_shape)
    target = ", ".join(map(str, event_shape))
    message = (
        f"{what} expects a batch of shape {_batch_shape(event_shape)} (this model's data points have "
        f"shape {event_shape}), got {shape}"
    )
    if shape == event_shape:
        hint = "a single data point without its batch axis: use x.unsqueeze(0)"
    elif len(event_shape) == 3 and event_shape[0] == 1 and shape[1:] == event_shape[1:]:
        hint = "images without their channel axis: use x.unsqueeze(1)"
    elif len(event_shape) == 3 and len(shape) == 4 and shape[1:] == (*event_shape[1:], event_shape[0]):
        hint = "channels-last images (B, H, W, C): use x.permute(0, 3, 1, 2)"
    elif len(shape) >= 2 and math.prod(shape[1:]) == dims:
        hint = (
            f"each data point has the right number of values ({dims}) in another layout: "
            f"use x.reshape(-1, {target})"
        )
    elif len(shape) >= 1 and math.prod(shape) == dims:
        hint = f"a single data point without its batch axis: use x.reshape(1, {target})"
    else:
        hint = (
            f"a data point of this model has {dims} values; build the model for your data's shape or "
            "check which data you passed"
        )
    return f"{message}: {hint}"


def _under_function_transform(x: torch.Tensor) -> bool:
    """True inside ``torch.func`` transforms (``vmap``, ``jacrev``...), where the values of a
    tensor cannot be read: the checks on values are skipped there, so that brute-force
    Jacobians by ``torch.func`` work on every model."""
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


def _finite_range(x: torch.Tensor, what: str) -> tuple[float, float]:
    """``(min, max)`` of ``x`` with one reduction and one device sync; ``ValueError`` for NaN or infinity.

    Cheaper than ``torch.isfinite(x).all()``, which builds a boolean copy of ``x``: the minimum and
    maximum are NaN when any value is, and infinite when any value is.
    """
    if x.numel() == 0 or _under_function_transform(x):
        return math.inf, -math.inf
    low, high = torch.stack(torch.aminmax(x.detach())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(_non_finite_message(x, what))
    return low, high


def _non_finite_message(x: torch.Tensor, what: str) -> str:
    bad = ~torch.isfinite(x)
    num_nan = int(torch.isnan(x).sum())
    num_inf = int(bad.sum()) - num_nan
    first = int(bad.reshape(x.shape[0], -1).any(1).nonzero()[0]) if x.dim() > 0 else 0
    return (
        f"{what}: the input holds {num_nan} NaN and {num_inf} infinite values (first in sample "
        f"{first}); the log-density of such points is undefined: remove them (keep = "
        "torch.isfinite(x).flatten(1).all(1); x = x[keep]) or fix what produced them"
    )


def _check_pixel_scale(x: torch.Tensor, what: str) -> None:
    """``ValueError`` for NaN, infinity, or a batch that looks like unscaled pixel levels.

    For models of pixels in ``[0, 1]``. Unscaled levels: every value is a non-negative integer and
    some value exceeds 1, as for the digits (0..16) or bytes (0..255) not divided by the number of
    levels. The check costs one min/max reduction and one device sync (the comparison with the
    rounded values runs only when the maximum is above 1); an empty batch passes.
    """
    if x.numel() == 0 or _under_function_transform(x):
        return
    low, high = _finite_range(x, what)
    if high > 1 and low >= 0 and torch.equal(x, torch.round(x)):
        raise ValueError(
            f"{what}: the batch holds integers from {low:g} to {high:g}, which look like unscaled pixel "
            "levels (0..16 for the 8 x 8 digits, 0..255 for MNIST or CIFAR-10 bytes), but the model "
            "expects dequantized pixels in [0, 1]: x = (levels + uniform noise) / num_levels, e.g. "
            "coursepkg.data.dequantize(levels, num_levels) with num_levels = 17 for the digits or 256 "
            "for 8-bit images"
        )


def nats_to_bits_per_dim(nats, dims: int, num_levels: int | None = None):
    r"""A negative log-likelihood in nats per example, as bits per dimension.

    ``nats / (dims log 2)``; with ``num_levels``, for images whose ``num_levels`` pixel values were
    dequantized and scaled to ``[0, 1]``, plus ``log2(num_levels)``: the bits per dimension of the
    discrete images, as :meth:`NormalizingFlow.bits_per_dim` reports them. Works on numbers,
    arrays and tensors alike, e.g. on the losses of a :class:`~coursepkg.training.History`.

    Args:
        nats: mean :math:`-\log p(x)` per example (a training or validation loss).
        dims: the dimensions of one example (64 for the 8 x 8 digits).
        num_levels: the pixel levels of the images (17 for the digits, 256 for 8-bit images), or
            ``None`` for continuous data.
    """
    if dims <= 0:
        raise ValueError(f"dims must be the number of dimensions of one example, got {dims}")
    return nats / (dims * math.log(2)) + (math.log2(num_levels) if num_levels else 0.0)
