import numbers

import torch


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)`` (an empty batch included)."""
    return t.flatten(1).sum(1) if t.dim() > 1 else t


def _check_count(value, name: str) -> int:
    """``value`` as an int of at least 1, or a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
