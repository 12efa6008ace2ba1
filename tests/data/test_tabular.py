"""Tabular data: the seeded split, the dropped features, standardisation with training statistics only."""

import subprocess
import sys

import numpy as np
import pytest
import sklearn.datasets
import torch

from coursepkg.data import TABULAR_NAMES, TabularData, load_tabular


@pytest.fixture(scope="module")
def cancer():
    return load_tabular("breast_cancer")


@pytest.fixture(scope="module")
def cancer_table():
    bunch = sklearn.datasets.load_breast_cancer()
    return bunch.data, list(bunch.feature_names)


def raw_rows(data, split):
    return data.to_raw(getattr(data, split)).numpy()


def row_index(table, rows):
    """For each row, the index of the table's row that it reproduces (to float32 precision)."""
    scale = table.std(0)  # (D,)
    distance = np.abs((rows[:, None, :] - table[None, :, :]) / scale).max(-1)  # (N_rows, N_table)
    index = distance.argmin(1)
    assert (distance[np.arange(len(rows)), index] < 1e-5).all(), "a row is not in the table"
    return index


def test_shapes_dtype_and_sizes(cancer):
    assert isinstance(cancer, TabularData)
    assert cancer.dim == len(cancer.features) == 20
    assert [len(cancer.train), len(cancer.val), len(cancer.test)] == [398, 85, 86]
    for split in (cancer.train, cancer.val, cancer.test):
        assert split.dtype == torch.get_default_dtype()
        assert split.shape[1] == 20
        assert torch.isfinite(split).all()
    assert cancer.mean.shape == cancer.std.shape == (20,)
    assert cancer.mean.dtype == cancer.std.dtype == torch.float64
    assert "breast_cancer" in TABULAR_NAMES and "D=20" in repr(cancer)


def test_splits_are_disjoint_cover_the_table_and_keep_its_columns(cancer, cancer_table):
    table, columns = cancer_table
    kept = [columns.index(feature) for feature in cancer.features]
    indices = [row_index(table[:, kept], raw_rows(cancer, split)) for split in ("train", "val", "test")]
    together = np.concatenate(indices)
    assert len(together) == len(set(together.tolist())) == len(table)
    for index, split in zip(indices, ("train", "val", "test"), strict=True):
        assert (np.diff(index) > 0).all(), f"{split}: rows in the table's order"
        np.testing.assert_allclose(raw_rows(cancer, split), table[index][:, kept], rtol=1e-6, atol=1e-9)


def test_the_split_follows_the_seed():
    a, b, c = load_tabular(seed=0), load_tabular(seed=0), load_tabular(seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.to_raw(a.test)[:5], c.to_raw(c.test)[:5])


def test_standardised_with_the_training_statistics_only(cancer, cancer_table):
    table, columns = cancer_table
    kept = [columns.index(feature) for feature in cancer.features]
    train_raw = raw_rows(cancer, "train")
    # Independent computation: the training rows' own mean and (ddof = 0) standard deviation.
    np.testing.assert_allclose(cancer.mean.numpy(), train_raw.mean(0), rtol=1e-6)
    np.testing.assert_allclose(cancer.std.numpy(), train_raw.std(0), rtol=1e-5)
    assert cancer.train.double().mean(0).abs().max() < 1e-5
    assert (cancer.train.double().std(0, unbiased=False) - 1).abs().max() < 1e-5
    # The test rows use the training statistics, not their own: their mean is not zero.
    test_index = row_index(table[:, kept], raw_rows(cancer, "test"))
    expected = (table[test_index][:, kept] - train_raw.mean(0)) / train_raw.std(0)
    np.testing.assert_allclose(cancer.test.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert cancer.test.double().mean(0).abs().max() > 0.05


def test_atoms_and_collinear_pairs_are_dropped(cancer, cancer_table):
    table, columns = cancer_table
    reasons = dict(cancer.dropped)
    zero_columns = [name for j, name in enumerate(columns) if (table[:, j] == 0).sum() > 0]
    assert len(zero_columns) == 6
    for name in zero_columns:
        assert reasons[name].startswith("atom")
    for name in ("mean perimeter", "mean area", "worst perimeter", "worst area"):
        assert reasons[name].startswith("correlation")
    assert set(cancer.features) | set(reasons) == set(columns)
    correlation = np.corrcoef(raw_rows(cancer, "train"), rowvar=False)
    off_diagonal = np.abs(correlation[~np.eye(cancer.dim, dtype=bool)])
    assert off_diagonal.max() <= 0.98
    everything = load_tabular(max_correlation=None, max_tied_fraction=None)
    assert everything.dim == 30 and everything.dropped == ()


def test_wine_needs_its_ties_kept():
    with pytest.raises(ValueError, match="every feature of 'wine' was dropped"):
        load_tabular("wine")
    wine = load_tabular("wine", max_tied_fraction=None)
    assert wine.dim == 13 and len(wine.train) + len(wine.val) + len(wine.test) == 178


def test_to_raw_rejects_other_shapes(cancer):
    with pytest.raises(ValueError, match=r"\(B, 20\)"):
        cancer.to_raw(torch.zeros(3, 7))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "iris"}, ValueError, "unknown table 'iris'; valid names are: breast_cancer, wine"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"seed": True}, TypeError, "seed must be an int"),
        ({"fractions": (0.7, 0.3)}, ValueError, "three positive numbers adding up to 1"),
        ({"fractions": (0.8, 0.3, -0.1)}, ValueError, "three positive numbers adding up to 1"),
        ({"fractions": (0.5, 0.25, 0.2)}, ValueError, "adding up to 1"),
        ({"fractions": "abc"}, TypeError, "fractions must be three numbers"),
        ({"fractions": (0.998, 0.001, 0.001)}, ValueError, "too few rows"),
        ({"max_correlation": 0.0}, ValueError, r"max_correlation must be a number in \(0, 1\]"),
        ({"max_correlation": 1.5}, ValueError, "max_correlation must be"),
        ({"max_tied_fraction": -0.1}, ValueError, "max_tied_fraction must be"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, error, match):
    with pytest.raises(error, match=match):
        load_tabular(**kwargs)


def test_importing_the_data_module_does_no_work():
    code = "import sys, coursepkg.data; print('sklearn' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
