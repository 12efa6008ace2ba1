import torch


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)`` (an empty batch included)."""
    return t.flatten(1).sum(1) if t.dim() > 1 else t
