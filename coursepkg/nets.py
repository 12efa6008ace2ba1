"""Small networks used inside flow layers (conditioners)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["MLP", "as_hidden"]


def as_hidden(hidden: int | Sequence[int], default_depth: int = 2) -> tuple[int, ...]:
    """Normalize the ``hidden`` option of the builders: ``64 -> (64, 64)``, ``(128, 64)`` kept."""
    if isinstance(hidden, int):
        hidden = (hidden,) * default_depth
    hidden = tuple(int(h) for h in hidden)
    if not hidden or any(h <= 0 for h in hidden):
        raise ValueError(f"hidden must be a positive int or a non-empty tuple of them, got {hidden}")
    return hidden


class MLP(nn.Sequential):
    """``Linear -> activation -> ... -> Linear``, shape ``(B, in_features) -> (B, out_features)``.

    Args:
        in_features, out_features: input and output sizes.
        hidden: hidden sizes, an int (two layers of that size) or a tuple.
        activation: module class used between layers.
        zero_last: start the last layer at zero, so a coupling layer built on this network
            starts as the identity map (stable first steps of training).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int | Sequence[int] = 64,
        activation: type[nn.Module] = nn.ReLU,
        zero_last: bool = True,
    ):
        sizes = (in_features, *as_hidden(hidden), out_features)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
