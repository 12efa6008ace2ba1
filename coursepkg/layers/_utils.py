import torch


def sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: ``(B, ...) -> (B,)``."""
    return t.reshape(t.shape[0], -1).sum(1)
