r"""Coupling layers (NICE, RealNVP): half of the coordinates, chosen by a mask, condition the rest.

A binary mask :math:`m` splits the input. The masked part :math:`x_m` passes unchanged and is
fed to a network (the *conditioner*); the other part is transformed element-wise with
parameters that the network computes from :math:`x_m` alone:

.. math::

    \text{additive (NICE):}\quad & z = x_m + (1 - m) \odot \bigl(x + t(x_m)\bigr), \\
    \text{affine (RealNVP):}\quad & z = x_m + (1 - m) \odot \bigl(x \, e^{s(x_m)} + t(x_m)\bigr),

with :math:`x_m = m \odot x`. Ordered as (masked, transformed), the Jacobian is block
triangular with the identity and :math:`\mathrm{diag}(e^{s})` on its diagonal, so
:math:`\log|\det J| = \sum_{i:\, m_i = 0} s_i(x_m)` (zero for the additive layer), whatever the
network. The inverse needs no inverse of the network either: :math:`x_m = z_m` is known, so
:math:`s` and :math:`t` can be recomputed and the affine map undone.

Masks are ``bool`` tensors, ``True`` where a coordinate passes unchanged: :func:`halves_mask`,
:func:`alternating_mask` and :func:`random_mask` for vectors; :func:`checkerboard_mask` (spatial)
and :func:`channel_mask` for images. Alternate a mask with its complement (``~mask``, or the
other ``parity``) from one layer to the next so that every coordinate gets transformed.

The vector couplings (:class:`AdditiveCoupling`, :class:`AffineCoupling`) work as the
definition reads: their conditioner gets the kept coordinates ``x[:, mask]`` alone and returns
the parameters of the changed coordinates only, so that its input and output are each about half
as wide as ``x``. The image couplings with a spatial mask (:class:`ConvAdditiveCoupling`,
:class:`ConvAffineCoupling`) multiply by the mask instead, since a checkerboard is no block of
channels: their conditioner reads the whole image with the changed values set to zero, and the
parameters it computes for the kept values are ignored. :class:`ChannelAffineCoupling` (Glow's
coupling) splits the channels into two contiguous halves, so its conditioner reads only the kept
half and writes only the parameters of the other.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import Flow
from ..nets import MLP, ConvNet, GlowNet
from ._utils import sum_except_batch
from .elementwise import ElementwiseAffine

__all__ = [
    "halves_mask",
    "alternating_mask",
    "random_mask",
    "checkerboard_mask",
    "channel_mask",
    "soft_clamp",
    "AdditiveCoupling",
    "AffineCoupling",
    "ConvAdditiveCoupling",
    "ConvAffineCoupling",
    "ChannelAffineCoupling",
    "Scaling",
]


# ----------------------------------------------------------------------------------------------
# Masks: True = passes unchanged and conditions the others
# ----------------------------------------------------------------------------------------------


def _check_parity(parity: int) -> None:
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")


def halves_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """``(dim,)`` bool: the first ``dim // 2`` coordinates (``parity=0``) or the others (``parity=1``)."""
    _check_parity(parity)
    mask = torch.arange(dim) < dim // 2
    return mask if parity == 0 else ~mask


def alternating_mask(dim: int, parity: int = 0) -> torch.Tensor:
    """``(dim,)`` bool: ``True`` at the even indices (``parity=0``) or at the odd ones (``parity=1``)."""
    _check_parity(parity)
    return torch.arange(dim) % 2 == parity


def random_mask(dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(dim,)`` bool with exactly ``dim // 2`` entries ``True``, chosen uniformly at random."""
    mask = torch.zeros(dim, dtype=torch.bool)
    mask[torch.randperm(dim, generator=generator)[: dim // 2]] = True
    return mask


def checkerboard_mask(height: int, width: int, parity: int = 0) -> torch.Tensor:
    """``(H, W)`` bool: ``True`` at pixel ``(i, j)`` when ``(i + j) % 2 == parity``, for every channel."""
    _check_parity(parity)
    i = torch.arange(height).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    return (i + j) % 2 == parity


def channel_mask(channels: int, parity: int = 0) -> torch.Tensor:
    """``(C,)`` bool: the first ``C // 2`` channels (``parity=0``) or the others (``parity=1``), at every pixel."""
    return halves_mask(channels, parity)


def soft_clamp(s: torch.Tensor, bound: float | None) -> torch.Tensor:
    r"""``bound * tanh(s / bound)``: the identity near 0, smoothly limited to ``(-bound, bound)``.

    Used on the log-scale of affine couplings. A scale ``exp(s)`` with an unbounded ``s`` can
    blow up early in training (one huge scale is enough for an overflow, and NaN); a scale
    squeezed into a one-sided range such as ``sigmoid(u + 2)`` in ``(0, 1)`` can only shrink,
    which caps the density the flow can reach. The clamp is symmetric, so each layer may
    stretch or shrink by up to ``exp(bound)``, and its slope is 1 at 0, so small log-scales are
    left as the network computed them. ``bound=None`` leaves ``s`` unbounded.
    """
    if bound is None:
        return s
    return bound * torch.tanh(s / bound)


# ----------------------------------------------------------------------------------------------
# Coupling layers
# ----------------------------------------------------------------------------------------------


def _count_kept(mask: torch.Tensor) -> int:
    """The number of ``True`` (or 1) entries of a coupling's mask, after checking that it is one."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError("a mask must hold only 0/1 (or True/False) values")
    kept = int(mask.bool().sum())
    if kept == 0 or kept == mask.numel():
        raise ValueError(
            f"the mask must keep some coordinates and transform others; got {kept} of {mask.numel()} kept"
        )
    return kept


class _Coupling(Flow):
    """What the couplings share: the mask buffer, the conditioner and the steps of the map.

    ``mask`` is stored as a float buffer in a shape that broadcasts against the input (``(D,)``
    for vectors, ``(C or 1, H or 1, W or 1)`` for images) so that it follows ``.to(dtype)`` and
    survives ``state_dict`` (a random mask must be restored, not redrawn).

    ``_Additive`` and ``_Affine`` write each map once, in terms of three steps that the two
    layouts below (``_Gathered`` for vectors, ``_Masked`` for images) implement:
    ``_conditioner_output(x)``, the conditioner's ``num_params`` tensors for the changed values
    (the shifts; or the raw log-scales and the shifts); ``_changed(x)``, those values; and
    ``_with_changed(x, new)``, ``x`` with them replaced by ``new``.
    """

    num_params = 1  # parameters per changed value: 1 (additive) or 2 (affine)

    def __init__(self, mask: torch.Tensor, net: nn.Module):
        super().__init__()
        mask = torch.as_tensor(mask)
        _count_kept(mask)
        self.register_buffer("mask", mask.to(torch.get_default_dtype()))
        self.net = net

    def _check(self, t: torch.Tensor) -> None:
        shape = self.mask.shape
        ok = t.dim() == len(shape) + 1 and all(m in (1, s) for m, s in zip(shape, t.shape[1:], strict=True))
        if not ok:
            want = "(B, D)" if len(shape) == 1 else "(B, C, H, W)"
            raise ValueError(
                f"{type(self).__name__} with a mask of shape {tuple(shape)} expects inputs {want} "
                f"that the mask broadcasts against, got {tuple(t.shape)}"
            )

    def extra_repr(self) -> str:
        return f"mask_shape={tuple(self.mask.shape)}, kept={int(self.mask.sum())}"


class _Gathered(_Coupling):
    """Vectors ``(B, D)``: the conditioner reads the kept coordinates and writes for the changed ones.

    The indices of both sets are buffers (``kept_index``, ``changed_index``) that follow the
    module's device; they are derived from ``mask``, so they are left out of ``state_dict`` and
    computed again whenever a ``mask`` is loaded.
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module, conditioner_input: str = "kept"):
        super().__init__(mask, net)
        if conditioner_input not in ("kept", "masked"):
            raise ValueError(f"conditioner_input must be 'kept' or 'masked', got {conditioner_input!r}")
        self.conditioner_input = conditioner_input
        self._index_from_mask()

    def _index_from_mask(self) -> None:
        keep = self.mask.bool()
        device = self.mask.device
        self.register_buffer("kept_index", torch.nonzero(keep).flatten(), persistent=False)
        self.register_buffer("changed_index", torch.nonzero(~keep).flatten(), persistent=False)
        # With conditioner_input="masked" the network writes num_params blocks of D columns:
        # these are the columns of the changed coordinates, block after block.
        blocks = torch.arange(self.num_params, device=device).unsqueeze(1) * keep.numel()
        self.register_buffer("_changed_columns", (blocks + self.changed_index).flatten(), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._index_from_mask()  # a loaded random mask brings its own indices

    # index_select rather than x[:, index]: the same gather, at about half the cost on a CPU
    # (forward and backward), which made a training step of a D = 64 RealNVP about 10% faster.
    def _changed(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.changed_index)

    def _with_changed(self, x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return x.index_copy(1, self.changed_index, new)

    def _conditioner_output(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check(x)
        if self.conditioner_input == "kept":
            given = x.index_select(1, self.kept_index)
        else:
            given = x * self.mask
        try:
            out = self.net(given)
        except RuntimeError as error:
            if hasattr(error, "add_note"):  # Python 3.11 and later
                error.add_note(self._conditioner_contract(tuple(given.shape)))
            raise
        written = len(self.changed_index) if self.conditioner_input == "kept" else x.shape[1]
        if tuple(out.shape) != (x.shape[0], self.num_params * written):
            raise ValueError(
                f"{self._conditioner_contract(tuple(given.shape))} It returned shape {tuple(out.shape)}."
            )
        if self.conditioner_input == "masked":
            out = out.index_select(1, self._changed_columns)
        return out.chunk(self.num_params, dim=1)

    def _conditioner_contract(self, given: tuple[int, ...]) -> str:
        """What the conditioner receives and must return, for an error message."""
        name, kept, changed = type(self).__name__, len(self.kept_index), len(self.changed_index)
        what = "shifts" if self.num_params == 1 else "raw log-scales, then shifts,"
        dim = kept + changed
        if self.conditioner_input == "kept":
            return (
                f"{name}'s conditioner reads the {kept} kept coordinates x[:, mask], shape {given}, and must "
                f"return shape (B, {self.num_params * changed}): the {what} of the {changed} changed ones. "
                f"A network written for the whole masked input mask * x, (B, {dim}) -> "
                f"(B, {self.num_params * dim}), needs conditioner_input='masked'."
            )
        return (
            f"{name}'s conditioner (conditioner_input='masked') reads mask * x, shape {given}, and must "
            f"return shape (B, {self.num_params * dim}): the {what} of all {dim} coordinates, "
            f"as {self.num_params} block(s) of {dim}."
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, conditioner_input={self.conditioner_input!r}"


class _Masked(_Coupling):
    """Images ``(B, C, H, W)``: the conditioner reads ``mask * x`` and writes for every value.

    The parameters it computes for the kept values are set to zero, which leaves those values
    unchanged (a zero shift, a zero log-scale) and out of the log-determinant.
    """

    def _changed(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _with_changed(self, x: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return new

    def _conditioner_output(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check(x)
        free = 1 - self.mask
        return tuple(p * free for p in self.net(x * self.mask).chunk(self.num_params, dim=1))


class _Additive(_Coupling):
    def forward(self, x):
        (shift,) = self._conditioner_output(x)
        z = self._with_changed(x, self._changed(x) + shift)
        return z, x.new_zeros(x.shape[0])

    def inverse(self, z):
        # The kept part of z equals that of x, so the shift is the one forward added.
        (shift,) = self._conditioner_output(z)
        x = self._with_changed(z, self._changed(z) - shift)
        return x, z.new_zeros(z.shape[0])


class _Affine(_Coupling):
    num_params = 2

    def __init__(self, mask: torch.Tensor, net: nn.Module, scale_bound: float | None, **kwargs):
        super().__init__(mask, net, **kwargs)
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.scale_bound = scale_bound

    def _scale_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Two contiguous blocks, (log-scale, shift): no interleaved (strided) columns.
        s_raw, t = self._conditioner_output(x)
        return soft_clamp(s_raw, self.scale_bound), t

    def forward(self, x):
        s, t = self._scale_shift(x)
        z = self._with_changed(x, self._changed(x) * torch.exp(s) + t)
        return z, sum_except_batch(s)

    def inverse(self, z):
        s, t = self._scale_shift(z)
        x = self._with_changed(z, (self._changed(z) - t) * torch.exp(-s))
        return x, -sum_except_batch(s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_bound={self.scale_bound}"


class AdditiveCoupling(_Additive, _Gathered):
    r"""NICE's additive coupling on ``(B, D)`` vectors: ``z_A = x_A``, ``z_B = x_B + t(x_A)``.

    ``A`` holds the coordinates where ``mask`` is ``True`` (they pass unchanged), ``B`` the
    others. The conditioner ``t`` reads the ``k`` kept coordinates, ``x[:, mask]`` of shape
    ``(B, k)``, and returns the ``D - k`` shifts, ``(B, D - k)``. Written with the mask, the same
    map is ``z = x + (1 - m) * t'(m * x)`` for a network ``t'`` of ``D`` inputs and outputs (see
    ``conditioner_input``).

    Volume preserving (``log_det = 0``): a flow made only of these layers cannot change the
    density's overall scale, which is why NICE ends with a :class:`Scaling` layer.

    Args:
        mask: ``(D,)`` bool, ``True`` where coordinates pass unchanged (see the mask functions).
        hidden: hidden sizes of the MLP conditioner ``(B, k) -> (B, D - k)``, an int or a tuple.
        conditioner: a module to use instead of the MLP, ``(B, k) -> (B, D - k)`` (or, with
            ``conditioner_input="masked"``, ``(B, D) -> (B, D)``). Start it at zero output (the
            MLP's last layer is zero) so that the layer starts as the identity.
        conditioner_input: what a ``conditioner`` of your own reads: ``"kept"`` (the default,
            as the MLP), the definition's ``x[:, mask]``; or ``"masked"``, ``mask * x`` of shape
            ``(B, D)``, the mask form, whose network returns parameters for all ``D``
            coordinates (those of the kept ones are ignored). A network of the wrong width
            raises an error that says which shapes are expected.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        hidden=64,
        conditioner: nn.Module | None = None,
        conditioner_input: str = "kept",
    ):
        if conditioner is None:
            kept = _count_kept(mask)
            conditioner = MLP(kept, torch.as_tensor(mask).numel() - kept, hidden)
        super().__init__(mask, conditioner, conditioner_input=conditioner_input)


class AffineCoupling(_Affine, _Gathered):
    r"""RealNVP's affine coupling on ``(B, D)`` vectors: ``z_A = x_A``, ``z_B = x_B * exp(s) + t``.

    ``A`` holds the coordinates where ``mask`` is ``True`` (they pass unchanged), ``B`` the
    others. The conditioner reads the ``k`` kept coordinates, ``x[:, mask]`` of shape ``(B,
    k)``, and returns ``(B, 2 (D - k))``: the raw log-scales, then the shifts, of the changed
    coordinates, as two blocks. ``log_det = sum(s)``. The log-scale is soft-clamped, ``s =
    scale_bound * tanh(s_raw / scale_bound)`` (see :func:`soft_clamp`), so that no step can scale
    by more than ``exp(scale_bound)`` either way.

    Args:
        mask: ``(D,)`` bool, ``True`` where coordinates pass unchanged.
        hidden: hidden sizes of the MLP conditioner ``(B, k) -> (B, 2 (D - k))``.
        scale_bound: bound of the log-scale; ``None`` for an unbounded ``exp`` scale.
        conditioner: a module to use instead of the MLP, ``(B, k) -> (B, 2 (D - k))`` (or, with
            ``conditioner_input="masked"``, ``(B, D) -> (B, 2 D)``: log-scales then shifts of
            every coordinate); start it at zero output.
        conditioner_input: what a ``conditioner`` of your own reads: ``"kept"`` (the default,
            as the MLP), the definition's ``x[:, mask]``; or ``"masked"``, ``mask * x`` of shape
            ``(B, D)``, the mask form, whose network returns parameters for all ``D``
            coordinates (those of the kept ones are ignored). A network of the wrong width
            raises an error that says which shapes are expected.
    """

    def __init__(
        self,
        mask: torch.Tensor,
        hidden=64,
        scale_bound: float | None = 3.0,
        conditioner: nn.Module | None = None,
        conditioner_input: str = "kept",
    ):
        if conditioner is None:
            kept = _count_kept(mask)
            conditioner = MLP(kept, 2 * (torch.as_tensor(mask).numel() - kept), hidden)
        super().__init__(mask, conditioner, scale_bound, conditioner_input=conditioner_input)


def _image_mask(mask: torch.Tensor) -> torch.Tensor:
    """A channel mask ``(C,)`` becomes ``(C, 1, 1)``, a spatial one ``(H, W)`` becomes ``(1, H, W)``."""
    mask = torch.as_tensor(mask)
    if mask.dim() == 1:
        return mask.view(-1, 1, 1)
    if mask.dim() == 2:
        return mask.unsqueeze(0)
    if mask.dim() == 3:
        return mask
    raise ValueError(
        f"an image mask is (C,) (channel-wise), (H, W) (spatial) or (C, H, W); got shape {tuple(mask.shape)}"
    )


class ConvAdditiveCoupling(_Additive, _Masked):
    r"""Additive coupling on images ``(B, C, H, W)`` with a convolutional conditioner.

    ``z = x + (1 - m) * t(m * x)``; ``log_det = 0``. The mask is spatial (``(H, W)``, e.g.
    :func:`checkerboard_mask`, the same for every channel) or channel-wise (``(C,)``, e.g.
    :func:`channel_mask`, the same at every pixel).

    Args:
        channels: ``C``.
        mask: ``(H, W)``, ``(C,)`` or ``(C, H, W)`` bool, ``True`` where values pass unchanged.
        hidden: channels of the conditioner (:class:`coursepkg.nets.ConvNet`).
        num_blocks: its residual blocks.
    """

    def __init__(self, channels: int, mask: torch.Tensor, hidden: int = 64, num_blocks: int = 2):
        super().__init__(_image_mask(mask), ConvNet(channels, channels, hidden, num_blocks))


class ConvAffineCoupling(_Affine, _Masked):
    r"""RealNVP's affine coupling on images ``(B, C, H, W)`` with a convolutional conditioner.

    The masked values (``True`` in ``mask``) pass unchanged and, with the others set to zero,
    go through the conditioner, a :class:`coursepkg.nets.ConvNet` ``(B, C, H, W) -> (B, 2C, H,
    W)`` that returns the raw log-scales and the shifts as two blocks of ``C`` channels. The
    other values become ``x * exp(s) + t``, with ``s`` soft-clamped to ``(-scale_bound,
    scale_bound)`` (see :func:`soft_clamp`); ``log_det`` is the sum of ``s`` over those values.

    Args:
        channels: ``C``.
        mask: spatial ``(H, W)`` (e.g. :func:`checkerboard_mask`), channel-wise ``(C,)`` (e.g.
            :func:`channel_mask`) or ``(C, H, W)``, bool.
        hidden: channels of the conditioner.
        num_blocks: its residual blocks.
        scale_bound: bound of the log-scale; ``None`` for an unbounded ``exp`` scale.
    """

    def __init__(
        self,
        channels: int,
        mask: torch.Tensor,
        hidden: int = 64,
        num_blocks: int = 2,
        scale_bound: float | None = 3.0,
    ):
        super().__init__(_image_mask(mask), ConvNet(channels, 2 * channels, hidden, num_blocks), scale_bound)


class ChannelAffineCoupling(Flow):
    r"""Glow's affine coupling on images ``(B, C, H, W)``: the kept channels condition the others.

    The channels are split into two contiguous blocks, ``x_a`` (kept: the first ``C // 2``
    channels for ``parity=0``, the other ``C - C // 2`` for ``parity=1``, the same sets as
    :func:`channel_mask`) and ``x_b``. The conditioner reads ``x_a`` only, and returns the raw
    log-scales and the shifts of ``x_b`` as two contiguous blocks:

    .. math:: (s_{raw}, t) = \mathrm{net}(x_a), \quad s = \mathrm{soft\_clamp}(s_{raw}), \quad
              z_a = x_a, \quad z_b = x_b\, e^{s} + t, \quad \log|\det J| = \textstyle\sum s.

    This is the map of :class:`ConvAffineCoupling` with a channel mask, but the network neither
    reads the masked-out zeros nor computes parameters that would be thrown away: with ``C``
    channels it reads ``C/2`` and writes ``C`` instead of reading ``C`` and writing ``2C``. The
    last layer of the default network is zero, so the layer starts as the identity. Glow bounds
    its scale with ``sigmoid(s + 2)``, which can only shrink; the symmetric
    :func:`soft_clamp` is used here instead.

    Args:
        channels: ``C`` (at least 2).
        hidden: channels of the default conditioner (:class:`coursepkg.nets.GlowNet`).
        parity: which half is kept (see above).
        scale_bound: bound of the log-scale; ``None`` for an unbounded ``exp`` scale.
        conditioner: a module ``(B, kept, H, W) -> (B, 2 (C - kept), H, W)`` to use instead of
            the default; start it at zero output.
        dropout: dropout in the default conditioner (see :class:`coursepkg.nets.GlowNet`),
            active in training mode only.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        parity: int = 0,
        scale_bound: float | None = 3.0,
        conditioner: nn.Module | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        _check_parity(parity)
        if channels < 2:
            raise ValueError(f"a channel coupling needs at least 2 channels, got {channels}")
        if scale_bound is not None and not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive or None, got {scale_bound}")
        self.channels = channels
        self.parity = parity
        self.kept = channels // 2 if parity == 0 else channels - channels // 2
        self.scale_bound = scale_bound
        changed = channels - self.kept
        self.net = (
            conditioner
            if conditioner is not None
            else GlowNet(self.kept, 2 * changed, hidden, dropout=dropout)
        )

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(kept, changed)`` as views of ``t``: no copy."""
        if t.dim() != 4 or t.shape[1] != self.channels:
            raise ValueError(
                f"ChannelAffineCoupling({self.channels}) expects images of shape (B, {self.channels}, H, W), "
                f"got {tuple(t.shape)}"
            )
        first = self.kept if self.parity == 0 else self.channels - self.kept
        a, b = t[:, :first], t[:, first:]
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, kept: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], dim=1)

    def _scale_shift(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_raw, t = self.net(kept).chunk(2, dim=1)  # two contiguous blocks of (C - kept) channels
        return soft_clamp(s_raw, self.scale_bound), t

    def forward(self, x):
        kept, changed = self._split(x)
        s, t = self._scale_shift(kept)
        return self._join(kept, changed * torch.exp(s) + t), sum_except_batch(s)

    def inverse(self, z):
        kept, changed = self._split(z)
        s, t = self._scale_shift(kept)
        return self._join(kept, (changed - t) * torch.exp(-s)), -sum_except_batch(s)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kept={self.kept}, parity={self.parity}, scale_bound={self.scale_bound}"


class Scaling(ElementwiseAffine):
    r"""NICE's diagonal scaling layer: ``z = x * exp(log_scale)``, ``log_det = sum(log_scale)``.

    Additive couplings preserve volume, so without this last layer a NICE model could not
    concentrate (or spread) its mass. A large ``log_scale_i`` stretches a direction in which the
    data, after the couplings, varies little.

    Args:
        shape: the shape of one sample, e.g. ``64`` or ``(1, 8, 8)``.
    """

    def __init__(self, shape: int | tuple[int, ...]):
        super().__init__(shape, shift=False)
