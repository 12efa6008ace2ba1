r"""Brute-force Jacobians, the independent check for every layer's ``log_det``.

For a map ``f`` applied to a batch, ``jacobian(f, x)[b]`` is the matrix
:math:`\partial f(x_b) / \partial x_b` of the sample ``b`` alone, with the input and output
flattened: shape ``(B, D_out, D_in)``. Computing it costs ``D`` backward passes (or one
vectorized pass with ``torch.func``) and its determinant :math:`O(D^3)`: fine for checking a
layer, far too slow for training, which is why flows are designed with cheap determinants.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import func

__all__ = ["jacobian", "log_abs_det_jacobian"]


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def jacobian(fn: Callable, x: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Per-sample Jacobian of ``fn`` at each row of ``x``, shape ``(B, D_out, D_in)``.

    Args:
        fn: maps a batch ``(B, ...)`` to a batch ``(B, ...)``, or to ``(output, log_det)`` as a
            flow layer does (only the output is differentiated). Samples must not interact,
            so put layers with batch statistics in ``eval()`` mode first.
        x: the points, shape ``(B, ...)``.
        method: ``"vmap"`` (``torch.func.vmap`` over ``jacrev``, fast), ``"loop"``
            (``torch.autograd.functional.jacobian`` one sample at a time, works for any code),
            or ``"auto"``: vmap, falling back to the loop when the code cannot be vmapped.
    """
    if method not in ("auto", "vmap", "loop"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch of shape (B, ...), got shape {tuple(x.shape)}")
    x = x.detach()
    sample_shape = x.shape[1:]

    def single(flat_sample):  # (D_in,) -> (D_out,)
        out = _first(fn(flat_sample.reshape(1, *sample_shape)))
        return out.reshape(-1)

    flat = x.reshape(x.shape[0], -1)
    if method in ("auto", "vmap"):
        try:
            return func.vmap(func.jacrev(single))(flat)
        except (RuntimeError, NotImplementedError, ValueError):
            if method == "vmap":
                raise
    return torch.stack([torch.autograd.functional.jacobian(single, row) for row in flat])


def log_abs_det_jacobian(fn: Callable, x: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """``log|det J|`` of ``fn`` at each sample of ``x``, shape ``(B,)``, by brute force.

    The Jacobian must be square (a bijection keeps the dimension). Use float64 inputs when the
    result is compared with a layer's own ``log_det``.
    """
    jac = jacobian(fn, x, method)
    if jac.shape[-1] != jac.shape[-2]:
        raise ValueError(
            f"the Jacobian is not square: {tuple(jac.shape[1:])}; a bijection keeps the dimension"
        )
    return torch.linalg.slogdet(jac)[1]
