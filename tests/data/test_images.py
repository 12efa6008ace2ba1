"""Image data: digits splits, (de)quantization, and the MNIST / CIFAR-10 readers on tiny files."""

import gzip
import pickle
import sys
import types

import numpy as np
import pytest
import sklearn.datasets
import torch

from coursepkg.data import (
    CIFAR10_LEVELS,
    DIGITS_LEVELS,
    MNIST_LEVELS,
    Dequantize,
    dequantize,
    image_shape,
    load_cifar10,
    load_digits,
    load_mnist,
    quantize,
)


def rows(images, labels):
    """Each image flattened, its label appended, as a sorted array (a multiset of rows)."""
    table = np.concatenate([images.reshape(len(images), -1).numpy(), labels.numpy()[:, None]], 1)
    return table[np.lexsort(table.T[::-1])]


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------


def test_digits_all_matches_sklearn():
    images, labels = load_digits("all", return_labels=True)
    reference = sklearn.datasets.load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    np.testing.assert_array_equal(images[:, 0].numpy(), reference.images)
    np.testing.assert_array_equal(labels.numpy(), reference.target)
    assert images.min() == 0 and images.max() == DIGITS_LEVELS - 1


def test_digits_splits_disjoint_covering_and_deterministic():
    parts = {split: load_digits(split, return_labels=True) for split in ("train", "val", "test")}
    sizes = {split: len(images) for split, (images, _) in parts.items()}
    assert sizes == {"train": 1258, "val": 270, "test": 269}
    for images, labels in parts.values():
        assert images.shape[1:] == (1, 8, 8) and images.dtype == torch.uint8
        assert len(labels) == len(images)
    # As multisets of (pixels, label) rows, the three parts add up to the whole data set.
    union = rows(
        torch.cat([images for images, _ in parts.values()]),
        torch.cat([labels for _, labels in parts.values()]),
    )
    np.testing.assert_array_equal(union, rows(*load_digits("all", return_labels=True)))
    assert torch.equal(load_digits("val"), parts["val"][0])
    assert not torch.equal(load_digits("val", seed=1), parts["val"][0])


def test_digits_returned_tensor_is_a_copy():
    first = load_digits("test")
    first.zero_()
    assert load_digits("test").max() == DIGITS_LEVELS - 1


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'validation'.*train, val, test, all"):
        load_digits("validation")


def test_image_shape():
    assert image_shape("digits") == (1, 8, 8)
    assert image_shape("mnist") == (1, 28, 28)
    assert image_shape("cifar10") == (3, 32, 32)
    assert MNIST_LEVELS == CIFAR10_LEVELS == 256
    with pytest.raises(ValueError, match="valid names are: digits, mnist, cifar10"):
        image_shape("svhn")


# ----------------------------------------------------------------------------------------------
# dequantization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_levels", [DIGITS_LEVELS, 256])
def test_dequantize_stays_in_its_bin(num_levels):
    levels = torch.randint(0, num_levels, (200_000,), generator=torch.Generator().manual_seed(0))  # int64
    x = dequantize(levels, num_levels, torch.Generator().manual_seed(1))
    assert x.dtype == torch.float32 and x.shape == levels.shape
    assert x.min() >= 0 and x.max() < 1
    assert (x >= levels / num_levels).all()
    assert (x < (levels + 1) / num_levels).all()
    assert torch.equal(quantize(x, num_levels), levels.to(torch.uint8))


@pytest.mark.parametrize("u", [0.0, 1 - 2**-24])
@pytest.mark.parametrize("num_levels", [DIGITS_LEVELS, 256])
def test_dequantize_edges_of_the_noise(monkeypatch, u, num_levels):
    # The extreme noise values round (k + u) / L onto the edge of a neighbouring bin in float32.
    monkeypatch.setattr(torch, "rand", lambda shape, **kw: torch.full(shape, u, device=kw.get("device")))
    levels = torch.arange(num_levels, dtype=torch.uint8)
    x = dequantize(levels, num_levels)
    assert x.max() < 1
    assert torch.equal(quantize(x, num_levels), levels)
    assert ((x - (levels + u) / num_levels).abs() < 1e-6).all()


def test_dequantize_noise_is_uniform_and_reproducible():
    levels = torch.full((100_000,), 5, dtype=torch.uint8)
    x = dequantize(levels, DIGITS_LEVELS, torch.Generator().manual_seed(1))
    u = x * DIGITS_LEVELS - 5
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.005)
    assert torch.equal(x, dequantize(levels, DIGITS_LEVELS, torch.Generator().manual_seed(1)))


def test_dequantize_rejects_bad_input():
    with pytest.raises(TypeError, match="integer levels.*float32"):
        dequantize(torch.rand(3), DIGITS_LEVELS)
    with pytest.raises(ValueError, match=r"0 \.\. 16.*from 0 to 17"):
        dequantize(torch.tensor([0, 3, 17]), DIGITS_LEVELS)
    with pytest.raises(ValueError, match=r"from -1 to 2"):
        dequantize(torch.tensor([-1, 2]), DIGITS_LEVELS)
    with pytest.raises(ValueError, match="num_levels"):
        dequantize(torch.tensor([0]), 1)
    assert dequantize(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), 17).shape == (0, 1, 8, 8)


def test_dequantize_module_draws_fresh_noise():
    batch = load_digits("val")[:16]
    preprocess = Dequantize(DIGITS_LEVELS)
    first, second = preprocess(batch), preprocess(batch)
    assert first.shape == batch.shape and not torch.equal(first, second)
    assert torch.equal(quantize(first, DIGITS_LEVELS), batch)
    labels = torch.arange(16)
    x, y = preprocess((batch, labels))
    assert x.dtype == torch.float32 and y is labels
    assert "17" in repr(preprocess)


def test_quantize_clamps_and_checks():
    x = torch.tensor([-0.3, 0.0, 0.49, 0.5, 0.999, 1.0, 7.0, float("nan")])
    assert quantize(x, 2).tolist() == [0, 0, 0, 1, 1, 1, 1, 0]
    assert quantize(x, 2).dtype == torch.uint8
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.tensor([1, 2]), 256)
    with pytest.raises(ValueError, match="at most 256"):
        quantize(x, 257)


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------


def write_idx(path, array, gz=False):
    array = np.asarray(array, dtype=np.uint8)
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(f"{path}.gz", "wb") as file:
            file.write(payload)
    else:
        path.write_bytes(payload)


def fake_mnist(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # a tag that identifies each image
    return images, rng.integers(0, 10, size=n, dtype=np.uint8)


def write_mnist(root, prefix, n, seed, gz=False):
    images, labels = fake_mnist(n, seed)
    raw = root / "MNIST" / "raw"
    write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_mnist_round_trip(tmp_path, gz):
    train_images, train_labels = write_mnist(tmp_path, "train", 36, seed=0, gz=gz)
    test_images, test_labels = write_mnist(tmp_path, "t10k", 10, seed=1, gz=gz)

    x, y = load_mnist(tmp_path, "test", return_labels=True)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    np.testing.assert_array_equal(x[:, 0].numpy(), test_images)
    np.testing.assert_array_equal(y.numpy(), test_labels)

    train, train_y = load_mnist(str(tmp_path), "train", return_labels=True)
    val, val_y = load_mnist(tmp_path, "val", return_labels=True)
    assert len(val) == 36 // 6 and len(train) == 36 - 36 // 6
    tags = torch.cat([train[:, 0, 0, 0], val[:, 0, 0, 0]]).long()
    assert sorted(tags.tolist()) == list(range(36))
    np.testing.assert_array_equal(torch.cat([train, val])[:, 0].numpy(), train_images[tags.numpy()])
    np.testing.assert_array_equal(torch.cat([train_y, val_y]).numpy(), train_labels[tags.numpy()])
    assert torch.equal(load_mnist(tmp_path, "val"), val)
    assert not torch.equal(load_mnist(tmp_path, "val", seed=3), val)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MNIST.*raw.*train-images-idx3-ubyte.*download=True"):
        load_mnist(tmp_path, "train")


def test_mnist_corrupt_files(tmp_path):
    images, labels = write_mnist(tmp_path, "t10k", 4, seed=0)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    good = path.read_bytes()

    path.write_bytes((2049).to_bytes(4, "big") + good[4:])
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_mnist(tmp_path, "test")

    path.write_bytes(good[:-100])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path, "test")

    path.write_bytes(good[:6])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path, "test")

    path.unlink()
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="cannot read.*corrupt"):
        load_mnist(tmp_path, "test")

    write_idx(path, images)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels[:3])
    with pytest.raises(ValueError, match="4 images but.*3 labels"):
        load_mnist(tmp_path, "test")


def test_download_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ImportError, match=r"pip install torchvision.*train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train", download=True)
    with pytest.raises(ImportError, match=r"pip install torchvision.*test_batch"):
        load_cifar10(tmp_path, "test", download=True)


def test_download_calls_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_dataset(root, train, download):
        calls.append((root, train, download))
        write_mnist(tmp_path, "train" if train else "t10k", 12, seed=0)

    datasets = types.SimpleNamespace(MNIST=fake_dataset)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))
    x = load_mnist(tmp_path, "test", download=True)
    assert calls == [(str(tmp_path), False, True)]
    np.testing.assert_array_equal(x[:, 0].numpy(), fake_mnist(12, seed=0)[0])
    load_mnist(tmp_path, "test", download=True)
    assert len(calls) == 1  # files present: no second download


# ----------------------------------------------------------------------------------------------
# CIFAR-10
# ----------------------------------------------------------------------------------------------


def write_cifar(root, n_per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as file:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, file)
        written[name] = (data, labels)
    return written


def test_cifar_round_trip(tmp_path):
    written = write_cifar(tmp_path)
    x, y = load_cifar10(tmp_path, "test", return_labels=True)
    data, labels = written["test_batch"]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == labels
    # Rows are channel-major: 1024 red values, then green, then blue, each row by row.
    for c, h, w in [(0, 0, 0), (1, 2, 3), (2, 31, 30)]:
        np.testing.assert_array_equal(x[:, c, h, w].numpy(), data[:, c * 1024 + h * 32 + w])

    train, train_y = load_cifar10(tmp_path, "train", return_labels=True)
    val, val_y = load_cifar10(tmp_path, "val", return_labels=True)
    assert len(val) == 20 // 6 and len(train) == 20 - 20 // 6
    all_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    all_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    union = rows(torch.cat([train, val]), torch.cat([train_y, val_y]))
    expected = rows(torch.from_numpy(all_data), torch.tensor(all_labels))
    np.testing.assert_array_equal(union, expected)


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_1.*download=True"):
        load_cifar10(tmp_path, "train")
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path, "val")

    test_batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    test_batch.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="cannot unpickle.*corrupt"):
        load_cifar10(tmp_path, "test")
    with open(test_batch, "wb") as file:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, file)
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar10(tmp_path, "test")
    with open(test_batch, "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, file)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        load_cifar10(tmp_path, "test")
