"""Checks that any flow layer must pass; used by the test-suite, the grader and the chapters.

Each function raises ``AssertionError`` with a message that says what was expected, what came
out and where.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import torch
from torch import nn

from .jacobian import log_abs_det_jacobian

__all__ = [
    "assert_close",
    "check_log_det",
    "check_inverse",
    "check_gradients",
    "check_state_dict",
    "check_dtype_device",
    "check_flow",
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
