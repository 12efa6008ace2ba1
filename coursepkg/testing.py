"""Checks that any flow layer must pass; used by the test-suite, the grader and the chapters.

Each function raises ``AssertionError`` with a message that says what was expected, what came
out and where.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .jacobian import jacobian, log_abs_det_jacobian

__all__ = [
    "assert_close",
    "check_log_det",
    "check_inverse",
    "check_gradients",
    "check_state_dict",
    "check_dtype_device",
    "check_flow",
    "check_autoregressive",
]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol=1e-6, rtol=1e-5):
    """Like ``torch.testing.assert_close`` but names the quantity and the first bad index."""
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(actual.shape)}")
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if not torch.isfinite(a).all():
        bad = torch.nonzero(~torch.isfinite(a))[0].tolist()
        raise AssertionError(f"{what}: non-finite value {a[tuple(bad)].item()} at index {bad}")
    error = (a - e).abs()
    tolerance = atol + rtol * e.abs()
    if (error > tolerance).any():
        bad = torch.nonzero(error > tolerance)[0].tolist()
        raise AssertionError(
            f"{what}: max abs error {error.max().item():.3g} (tolerance {atol:g} + {rtol:g}*|expected|); "
            f"first mismatch at index {bad}: expected {e[tuple(bad)].item():.6g}, got {a[tuple(bad)].item():.6g}"
        )


def _double(layer: nn.Module) -> nn.Module:
    return copy.deepcopy(layer).double()


def check_log_det(layer: nn.Module, x: torch.Tensor, direction: str = "forward", atol=1e-6) -> None:
    """``log_det`` of ``forward`` (or ``inverse``) equals the brute-force ``log|det J|`` in float64."""
    layer64 = _double(layer).eval()
    x64 = x.detach().double()
    fn = layer64 if direction == "forward" else layer64.inverse
    with torch.no_grad():
        _, log_det = fn(x64)
    expected = log_abs_det_jacobian(fn, x64)
    assert_close(
        log_det, expected, f"{type(layer).__name__}.{direction} log_det vs brute-force Jacobian", atol, 1e-6
    )


def check_inverse(layer: nn.Module, x: torch.Tensor, atol=1e-6) -> None:
    """``inverse(forward(x)) == x`` and the two ``log_det`` are opposite (in float64)."""
    layer64 = _double(layer).eval()
    x64 = x.detach().double()
    with torch.no_grad():
        z, log_det = layer64(x64)
        x_back, log_det_back = layer64.inverse(z)
    name = type(layer).__name__
    assert_close(x_back, x64, f"{name}: inverse(forward(x)) vs x", atol, 1e-6)
    assert_close(log_det_back, -log_det, f"{name}: inverse log_det vs -forward log_det", atol, 1e-6)


def check_gradients(layer: nn.Module, x: torch.Tensor) -> None:
    """Every parameter, and the input, receives a finite gradient from ``forward`` and ``inverse``."""
    name = type(layer).__name__
    for direction in ("forward", "inverse"):
        trial = copy.deepcopy(layer).train()
        fn = trial if direction == "forward" else trial.inverse
        inputs = x.detach().clone().requires_grad_(True)
        out, log_det = fn(inputs)
        # Random weights make a zero gradient by cancellation unlikely.
        weights = torch.randn_like(out)
        (out * weights).sum().add(log_det.sum()).backward()
        if inputs.grad is None or not torch.isfinite(inputs.grad).all():
            raise AssertionError(f"{name}.{direction}: the input received no finite gradient")
        for pname, p in trial.named_parameters():
            if p.grad is None:
                raise AssertionError(f"{name}.{direction}: parameter {pname!r} received no gradient")
            if not torch.isfinite(p.grad).all():
                raise AssertionError(f"{name}.{direction}: parameter {pname!r} has a non-finite gradient")


def check_state_dict(layer: nn.Module, make_layer: Callable[[], nn.Module], x: torch.Tensor) -> None:
    """A fresh layer loading ``layer``'s saved ``state_dict`` computes the same outputs."""
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    restored = make_layer()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    layer.eval()
    restored.eval()
    with torch.no_grad():
        z1, ld1 = layer(x)
        z2, ld2 = restored(x)
    name = type(layer).__name__
    assert_close(z2, z1, f"{name}: output after state_dict round trip", 0, 0)
    assert_close(ld2, ld1, f"{name}: log_det after state_dict round trip", 0, 0)


def check_dtype_device(layer: nn.Module, x: torch.Tensor) -> None:
    """Outputs and ``log_det`` follow the input's dtype and device, in both directions."""
    name = type(layer).__name__
    for dtype in (torch.float32, torch.float64):
        trial = copy.deepcopy(layer).to(x.device, dtype).eval()
        xt = x.detach().to(dtype)
        with torch.no_grad():
            z, log_det = trial(xt)
            x_back, log_det_back = trial.inverse(z)
        for label, t in (
            ("z", z),
            ("log_det", log_det),
            ("inverse x", x_back),
            ("inverse log_det", log_det_back),
        ):
            if t.dtype != dtype or t.device != x.device:
                raise AssertionError(
                    f"{name}: {label} is {t.dtype} on {t.device}, expected {dtype} on {x.device}"
                )
        if log_det.shape != (x.shape[0],) or log_det_back.shape != (x.shape[0],):
            raise AssertionError(
                f"{name}: log_det must have shape ({x.shape[0]},) (one value per sample), "
                f"got {tuple(log_det.shape)} forward and {tuple(log_det_back.shape)} inverse"
            )


def check_flow(
    layer: nn.Module, x: torch.Tensor, make_layer: Callable[[], nn.Module] | None = None, atol=1e-6
):
    """All of the above: log_det in both directions, inverse, gradients, dtype/device, state_dict."""
    check_dtype_device(layer, x)
    check_log_det(layer, x, "forward", atol)
    with torch.no_grad():
        z, _ = copy.deepcopy(layer).eval()(x)
    check_log_det(layer, z, "inverse", atol)
    check_inverse(layer, x, atol)
    check_gradients(layer, x)
    if make_layer is not None:
        check_state_dict(layer, make_layer, x)


def _in_float64(fn: Callable) -> Callable:
    """``fn`` computing in float64: a copy of a module (or of the module of a bound method) in eval mode."""
    if isinstance(fn, nn.Module):
        return _double(fn).eval()
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        return getattr(_double(owner).eval(), fn.__name__)
    return fn


def check_autoregressive(
    fn: Callable,
    x: torch.Tensor,
    order: Sequence[int] | torch.Tensor | None = None,
    strict: bool = False,
    layout: str = "blocks",
    atol: float = 0.0,
) -> None:
    r"""``fn`` is autoregressive in ``order``: output ``i`` depends only on the inputs before ``i``.

    With ``rank[order[k]] = k`` (the position of each dimension in ``order``), the Jacobian
    :math:`J_{ij} = \partial\,\mathrm{out}_i / \partial x_j`, computed by brute force in float64,
    must vanish wherever ``rank[j] > rank[i]``, and also on the diagonal ``j = i`` when ``strict``.
    In the identity order this is zuko's ``(torch.triu(J, diagonal=+1) == 0).all()``
    (``diagonal=0`` when strict), i.e. a lower-triangular Jacobian.

    Args:
        fn: a flow layer returning ``(z, log_det)`` (a transform: triangular, and its diagonal
            must be non-zero everywhere, or it is not invertible), or a network mapping
            ``(B, D)`` to ``(B, D)`` or ``(B, K D)``: ``K`` parameters per dimension, such as
            MADE's conditioner (use ``strict=True``: the parameters of dimension ``i`` must not
            see ``x_i``). A module, or a bound method of one, is checked on a float64 copy in
            ``eval()`` mode; any other callable is called with float64 inputs as it is.
        x: the points, shape ``(B, D)``; use several, so that no dependence vanishes by chance.
        order: the order in which the dimensions are generated, a permutation of ``range(D)``:
            ``order[0]`` depends on nothing (or only on itself), ``order[1]`` on ``order[0]``, and
            so on. Default ``range(D)``. (From MADE's degrees ``m``, where output ``i`` may see
            input ``j`` when ``m[j] < m[i]``: ``order = torch.argsort(m)``.)
        strict: forbid each output to depend on its own input (a conditioner).
        layout: for ``K`` parameters per dimension, how the ``K D`` outputs are laid out:
            ``"blocks"`` (``K`` contiguous blocks of ``D``, as ``out.chunk(K, dim=1)`` splits them)
            or ``"interleaved"`` (the ``K`` parameters of each dimension together, as
            ``out.view(B, D, K)`` reads them).
        atol: a Jacobian entry counts as a dependence when its magnitude exceeds ``atol`` at
            some point of ``x``; masked networks give exact zeros, so the default is 0.

    Raises:
        AssertionError: naming the first offending ``(output, input)`` pair (by output index,
            then input index), the largest ``|J|`` there and how many pairs are wrong.
        ValueError: for a bad ``x``, ``order`` or ``layout``, or outputs that are not ``K D``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or 0 in x.shape:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batch of points of shape (B, D) with B, D >= 1, got {shape}")
    if layout not in ("blocks", "interleaved"):
        raise ValueError(f"layout must be 'blocks' or 'interleaved', got {layout!r}")
    dim = x.shape[1]
    identity = torch.arange(dim)
    order = identity if order is None else torch.as_tensor(order).reshape(-1).cpu()
    if (
        order.dtype.is_floating_point
        or order.dtype == torch.bool
        or not torch.equal(order.sort().values, identity)
    ):
        raise ValueError(f"order must be a permutation of range({dim}), got {order.tolist()}")
    rank = torch.empty(dim, dtype=torch.long)
    rank[order.long()] = identity

    fn64 = _in_float64(fn)
    x64 = x.detach().double()
    with torch.no_grad():
        output = fn64(x64)
    is_flow = isinstance(output, (tuple, list))
    out = output[0] if is_flow else output
    if out.shape[0] != x.shape[0] or out[0].numel() % dim:
        raise ValueError(
            f"fn maps {tuple(x.shape)} to {tuple(out.shape)}: expected (B, K * {dim}) outputs, "
            "K per dimension"
        )
    num_params = out[0].numel() // dim
    jac = jacobian(fn64, x64).abs()  # (B, K D, D)
    outputs = torch.arange(num_params * dim)
    dimension = outputs % dim if layout == "blocks" else outputs // num_params  # of each output
    allowed = rank.unsqueeze(0) < rank[dimension].unsqueeze(1)  # (K D, D): input before output
    if not strict:
        allowed |= identity.unsqueeze(0) == dimension.unsqueeze(1)
    largest = jac.amax(0)  # the largest |d out / d in| over the batch
    wrong = (largest > atol) & ~allowed
    name = getattr(fn, "__qualname__", type(fn).__name__)
    in_order = "" if torch.equal(order, identity) else f" in the order {order.tolist()}"

    if wrong.any():
        o, j = (int(i) for i in wrong.nonzero()[0])
        d = int(dimension[o])
        culprit = f"output {o}"
        if num_params > 1:
            culprit += f" (parameter {o // dim if layout == 'blocks' else o % num_params} of dimension {d})"
        where = f"its own input {j}" if j == d else f"input {j}, which comes after it"
        kind = "strictly autoregressive" if strict else "autoregressive"
        raise AssertionError(
            f"{name} is not {kind}{in_order}: {culprit} depends on {where} (|d out / d in| up to "
            f"{largest[o, j].item():.3g} over the batch); {int(wrong.sum())} forbidden (output, input) "
            "pairs in all"
        )
    if is_flow and not strict and num_params == 1:
        smallest_diagonal = jac.diagonal(dim1=1, dim2=2).amin(0)  # (D,)
        if (smallest_diagonal <= atol).any():
            i = int((smallest_diagonal <= atol).nonzero()[0])
            raise AssertionError(
                f"{name}: output {i} does not depend on input {i} at some point; an autoregressive "
                "transform needs a non-zero Jacobian diagonal to be invertible"
            )
