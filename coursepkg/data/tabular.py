r"""Tabular data sets that ship with scikit-learn, split and standardised for density estimation.

:func:`load_tabular` returns the rows of a table as float tensors ``(N, D)``, split once into
training, validation and test parts by a seeded permutation, and prepared the way the MAF paper
prepared its tables (Papamakarios et al., 2017):

1. **Features with an atom are dropped.** A flow models a *density*; a value that a positive
   fraction of the samples share exactly (a point mass, such as the tumours of the breast-cancer
   table whose concavity is exactly 0) has none, and a flow rewarded for it would pile up an
   ever higher, narrower peak there. A feature counts as having an atom when one of its values
   recurs in at least ``max_tied_fraction`` of all rows (a property of how it is measured, read
   from the whole table; no split is needed).
2. **One feature of every nearly collinear pair is dropped**: when two features have a Pearson
   correlation above ``max_correlation`` on the training rows (the radius, perimeter and area of
   the same tumour), the later one goes. A pair that is almost a function of each other
   concentrates the data near a lower-dimensional set, where densities grow without bound.
3. **Standardisation with the training statistics only**: every split is mapped by
   :math:`x \mapsto (x - \mu) / \sigma`, with the mean :math:`\mu` and the standard deviation
   :math:`\sigma` (``ddof = 0``) of the training rows. Validation and test rows stay unseen until
   they are scored.

Log-likelihoods computed on these tensors are densities of the *standardised* features; add
``-sum(log(std))`` to express them per unit of the raw features (the change of variables of the
affine map).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .images import _permutation

__all__ = ["TABULAR_NAMES", "TabularData", "load_tabular"]

TABULAR_NAMES: tuple[str, ...] = ("breast_cancer", "wine")
"""The tables :func:`load_tabular` knows: scikit-learn's ``load_breast_cancer`` (569 rows, 30
features) and ``load_wine`` (178 rows, 13 features)."""


@dataclass(frozen=True)
class TabularData:
    """The three standardised splits of a table and what was done to it.

    Attributes:
        name: the table's name, one of :data:`TABULAR_NAMES`.
        train, val, test: float tensors of shape ``(N_split, D)`` (the default dtype), rows in
            the table's order within each split.
        features: the names of the ``D`` columns kept, in the table's order.
        dropped: ``(feature, reason)`` for every column left out, in the table's order.
        mean, std: float64 tensors of shape ``(D,)``, the training statistics of the raw kept
            columns; a standardised row is ``(raw - mean) / std``.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    features: tuple[str, ...]
    dropped: tuple[tuple[str, str], ...]
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def dim(self) -> int:
        """``D``, the number of features kept."""
        return len(self.features)

    def to_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the standardisation: rows ``(B, D)`` in the raw units of the table, float64."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"to_raw expects standardised rows of shape (B, {self.dim}), got {shape}")
        return x.double().cpu() * self.std + self.mean

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split} {len(getattr(self, split))}" for split in ("train", "val", "test"))
        return f"TabularData({self.name!r}, D={self.dim}, {sizes}, {len(self.dropped)} features dropped)"


def _table(name: str) -> tuple[np.ndarray, list[str]]:
    """The raw table ``(N, D_raw)`` in float64 and its column names (scikit-learn imported here)."""
    from sklearn import datasets

    bunch = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine}[name]()
    return np.asarray(bunch.data, dtype=np.float64), [str(feature) for feature in bunch.feature_names]


def _check_arguments(name, seed, fractions, max_correlation, max_tied_fraction) -> tuple[float, ...]:
    if name not in TABULAR_NAMES:
        raise ValueError(f"unknown table {name!r}; valid names are: {', '.join(TABULAR_NAMES)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    try:
        fractions = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TypeError(
            f"fractions must be three numbers (train, val, test), e.g. (0.7, 0.15, 0.15); got {fractions!r}"
        ) from None
    if len(fractions) != 3 or not all(f > 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"fractions must be three positive numbers adding up to 1 (train, val, test), got {fractions}"
        )
    for label, value in (("max_correlation", max_correlation), ("max_tied_fraction", max_tied_fraction)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value <= 1
        ):
            raise ValueError(
                f"{label} must be a number in (0, 1], or None to keep every feature, got {value!r}"
            )
    return fractions


def _split_rows(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Row indices of the three splits, disjoint and covering ``range(n)``, each sorted."""
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    if n_train < 2 or n_val < 1 or n - n_train - n_val < 1:
        raise ValueError(
            f"fractions {fractions} leave a split of {n} rows with too few rows "
            f"(train {n_train}, val {n_val}, test {n - n_train - n_val}); the training part needs at least 2"
        )
    permutation = _permutation(n, int(seed)).numpy()
    parts = np.split(permutation, [n_train, n_train + n_val])
    return [np.sort(part) for part in parts]


def _columns_with_an_atom(x: np.ndarray, max_tied_fraction: float) -> dict[int, str]:
    """Columns whose most frequent value covers at least ``max_tied_fraction`` of the rows."""
    atoms = {}
    for j in range(x.shape[1]):
        values, counts = np.unique(x[:, j], return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] >= max_tied_fraction * len(x):
            atoms[j] = f"atom: {counts[top]} of {len(x)} rows equal {values[top]:g}"
    return atoms


def _collinear_columns(
    x: np.ndarray, candidates: list[int], max_correlation: float, columns: list[str]
) -> dict[int, str]:
    """Greedily, in column order: a column goes when its |correlation| with a kept one exceeds the bound."""
    correlation = np.corrcoef(x[:, candidates], rowvar=False)  # (C, C)
    kept, dropped = [], {}
    for a, column in enumerate(candidates):
        partner = next((b for b in kept if abs(correlation[a, b]) > max_correlation), None)
        if partner is None:
            kept.append(a)
        else:
            dropped[column] = (
                f"correlation {correlation[a, partner]:.4f} with {columns[candidates[partner]]!r}"
            )
    return dropped


def load_tabular(
    name: str = "breast_cancer",
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    max_correlation: float | None = 0.98,
    max_tied_fraction: float | None = 0.02,
) -> TabularData:
    r"""A scikit-learn table (no download), split by a seeded permutation and standardised.

    Args:
        name: ``"breast_cancer"`` (569 tumours, 30 measurements) or ``"wine"`` (178 wines, 13
            measurements).
        seed: the seed of the permutation that splits the rows; the same seed gives the same
            splits on every call.
        fractions: the shares of the rows for training, validation and test, positive and adding
            up to 1; the first two are rounded to whole rows, the test part gets the rest.
        max_correlation: drop the later feature of every pair whose absolute Pearson correlation
            on the training rows exceeds this; ``None`` keeps every pair.
        max_tied_fraction: drop every feature in which one value recurs in at least this
            fraction of the rows (an atom, which has no density); ``None`` keeps them. The wine
            measurements are rounded to two or three digits, so every one of them has ties of 2
            to 8%: with the default every wine feature goes and the call raises; pass ``None``
            (or a larger fraction) for that table.

    Returns:
        A :class:`TabularData` whose ``train``, ``val`` and ``test`` are float tensors
        ``(N_split, D)``; for the breast-cancer table with the defaults ``D = 20`` and the splits
        hold 398, 85 and 86 rows.

    Raises:
        ValueError: an unknown ``name``, ``fractions`` that are not three positive shares adding
            up to 1 or leave a split empty, a bound outside ``(0, 1]``, or settings that drop
            every feature (or leave one constant on the training rows).
        TypeError: a ``seed`` that is not an int, ``fractions`` that are not numbers.
    """
    fractions = _check_arguments(name, seed, fractions, max_correlation, max_tied_fraction)
    x, columns = _table(name)  # (N, D_raw)
    rows = _split_rows(len(x), fractions, seed)
    train_rows = x[rows[0]]

    dropped = {} if max_tied_fraction is None else _columns_with_an_atom(x, max_tied_fraction)
    candidates = [j for j in range(x.shape[1]) if j not in dropped]
    if candidates and max_correlation is not None:
        dropped.update(_collinear_columns(train_rows, candidates, max_correlation, columns))
    kept = [j for j in range(x.shape[1]) if j not in dropped]
    if not kept:
        raise ValueError(
            f"every feature of {name!r} was dropped (max_tied_fraction={max_tied_fraction}, "
            f"max_correlation={max_correlation}); pass None for a rule, or a larger bound, to keep features"
        )

    mean = train_rows[:, kept].mean(0)  # (D,)
    std = train_rows[:, kept].std(0)  # (D,), ddof = 0
    if not (std > 0).all():
        constant = [columns[kept[j]] for j in np.flatnonzero(std == 0)]
        raise ValueError(
            f"features {constant} are constant on the training rows: they cannot be standardised"
        )
    dtype = torch.get_default_dtype()
    train, val, test = (torch.from_numpy((x[part][:, kept] - mean) / std).to(dtype) for part in rows)
    return TabularData(
        name=name,
        train=train,
        val=val,
        test=test,
        features=tuple(columns[j] for j in kept),
        dropped=tuple((columns[j], dropped[j]) for j in sorted(dropped)),
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(std),
    )
