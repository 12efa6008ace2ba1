"""Helpers shared by the spec modules: inputs, constants and the brute-force log-determinant."""

from __future__ import annotations

import math

import torch

__all__ = ["LOG_2PI", "points", "brute_log_det", "shapes"]

LOG_2PI = math.log(2 * math.pi)


def points(batch: int, dim: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(batch, dim)`` normal points of standard deviation 1.5, drawn in float64 from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return (1.5 * torch.randn(batch, dim, generator=generator, dtype=torch.float64)).to(dtype)


def brute_log_det(fn, x: torch.Tensor) -> torch.Tensor:
    """``log|det d fn / dx|`` at each row of ``x`` in float64: one autograd Jacobian per row.

    A row at a time works for any code (the student's included) and never trusts the layer's
    own ``log_det``. It needs :mod:`coursepkg.jacobian`, so call it outside ``SET.switched_off()``.
    """
    from coursepkg.jacobian import log_abs_det_jacobian

    return log_abs_det_jacobian(fn, x.double(), method="loop")


def shapes(*tensors) -> list:
    """``(shape, dtype)`` of each tensor, or the type of what is not one, for comparisons."""
    return [(tuple(t.shape), str(t.dtype)) if isinstance(t, torch.Tensor) else repr(type(t)) for t in tensors]


def compare_log_dets(student, reference) -> None:
    """A ``compare`` for probes returning ``{label: {"log_det": ..., "expected": ...}}``.

    The student's log-det is checked against the value the probe computed independently (a brute
    force, or minus the other direction's), named by ``"against"`` when the probe gives it.
    """
    from coursepkg.testing import assert_close

    for key, values in student.items():
        log_det = values["log_det"]
        if not isinstance(log_det, torch.Tensor):
            raise AssertionError(
                f"{key}: log_det should be a tensor of shape (B,), got {type(log_det).__name__}"
            )
        label = f"{key}: log_det vs {values['against']}" if "against" in values else key
        assert_close(log_det, values["expected"], label, 1e-9, 1e-7)
