r"""Image data sets, kept as the integer levels they are stored in, and their dequantization.

Convention: a data set is a ``uint8`` tensor of integer levels, shape ``(N, C, H, W)``, each
pixel one of ``num_levels`` values ``0 .. num_levels - 1``. A flow is a density on continuous
values, so it trains on *dequantized* images

.. math:: x = \frac{k + u}{L}, \qquad u \sim U[0, 1)^D,

which spread each level :math:`k` uniformly over its bin :math:`[k/L, (k+1)/L)` of
:math:`[0, 1)`. The likelihood of the dequantized data is then a lower bound on the probability
of the discrete data (Theis et al., 2016), which is what bits per dimension report. Draw fresh
noise every time a batch is used (:class:`Dequantize`), or the model learns the noise.

Data sets: the 8 x 8 digits that ship with scikit-learn (:func:`load_digits`, 17 levels, no
download), MNIST (:func:`load_mnist`) and CIFAR-10 (:func:`load_cifar10`), both 256 levels, read
from the files torchvision downloads.
"""

from __future__ import annotations

import functools
import gzip
import math
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DIGITS_LEVELS",
    "MNIST_LEVELS",
    "CIFAR10_LEVELS",
    "load_digits",
    "load_mnist",
    "load_cifar10",
    "dequantize",
    "Dequantize",
    "quantize",
    "image_shape",
]

DIGITS_LEVELS = 17
"""The sklearn digits take the values 0 .. 16."""
MNIST_LEVELS = 256
CIFAR10_LEVELS = 256

_IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

# Validation images held out of each training file: as many as the test set of the papers
# that report validation scores, fewer for small files.
_VAL_SIZE = 5000


def image_shape(name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images of a data set: ``"digits"``, ``"mnist"`` or ``"cifar10"``."""
    if name not in _IMAGE_SHAPES:
        raise ValueError(f"unknown image data set {name!r}; valid names are: {', '.join(_IMAGE_SHAPES)}")
    return _IMAGE_SHAPES[name]


def _check_split(split: str, valid: tuple[str, ...]) -> None:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(valid)}")


def _permutation(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# sklearn digits
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    images = bunch.images.astype(np.uint8)  # (1797, 8, 8), values 0..16 stored as floats
    return images, bunch.target.astype(np.int64)


def load_digits(split: str = "train", seed: int = 0, return_labels: bool = False):
    """The 1,797 handwritten digits of scikit-learn, 8 x 8 pixels with 17 grey levels.

    Args:
        split: ``"train"`` (70%), ``"val"`` (15%), ``"test"`` (15%) or ``"all"``. The three
            parts are disjoint and together hold every image; they come from a permutation seeded
            by ``seed``, so every call with the same seed returns the same images, in data-set
            order.
        seed: the seed of that permutation.
        return_labels: also return the digit of each image.

    Returns:
        ``uint8`` levels of shape ``(N, 1, 8, 8)`` with values in ``0 .. 16``
        (:data:`DIGITS_LEVELS` levels), and with ``return_labels`` the labels, ``int64`` of shape
        ``(N,)``, as a pair.
    """
    _check_split(split, ("train", "val", "test", "all"))
    images, labels = _digits_arrays()
    n = len(images)
    if split == "all":
        index = np.arange(n)
    else:
        n_train, n_val = round(0.7 * n), round(0.15 * n)
        permutation = _permutation(n, seed)
        part = {
            "train": permutation[:n_train],
            "val": permutation[n_train : n_train + n_val],
            "test": permutation[n_train + n_val :],
        }[split]
        index = part.sort().values.numpy()
    # Fancy indexing copies, so the cached arrays are never handed out.
    x = torch.from_numpy(images[index]).unsqueeze(1)  # (N, 1, 8, 8)
    if return_labels:
        return x, torch.from_numpy(labels[index])
    return x


# ----------------------------------------------------------------------------------------------
# MNIST and CIFAR-10, from the files torchvision downloads
# ----------------------------------------------------------------------------------------------


def _holdout(n: int, split: str, seed: int) -> torch.Tensor:
    """Indices of ``split`` ("train" or "val") among the ``n`` images of the training files."""
    n_val = min(_VAL_SIZE, n // 6)
    permutation = _permutation(n, seed)
    part = permutation[n - n_val :] if split == "val" else permutation[: n - n_val]
    return part.sort().values


def _select(images: torch.Tensor, labels: torch.Tensor, split: str, seed: int, return_labels: bool):
    if split != "test":
        index = _holdout(len(images), split, seed)
        images, labels = images[index], labels[index]
    return (images, labels) if return_labels else images


def _download(dataset: str, root: Path, train: bool, expected: list[Path]) -> None:
    try:
        from torchvision import datasets
    except ImportError as error:
        raise ImportError(
            f"download=True fetches {dataset} with torchvision, which is not installed: "
            f"`pip install torchvision`, or put these files in place yourself: "
            f"{', '.join(map(str, expected))}"
        ) from error
    getattr(datasets, dataset)(str(root), train=train, download=True)


def _missing(dataset: str, expected: list[Path]) -> FileNotFoundError:
    return FileNotFoundError(
        f"{dataset} files not found; expected {', '.join(map(str, expected))}. Pass download=True to "
        "fetch them with torchvision, or point root at the folder that holds them."
    )


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (the format of MNIST), plain or gzipped, as a numpy array.

    Layout: a big-endian int32 magic number whose third byte is the type (``0x08``, unsigned
    byte) and whose last byte is the number of dimensions, one big-endian int32 per dimension,
    then the data in C order.
    """
    kind = "images" if magic == 2051 else "labels"
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            raw = file.read()
    except (OSError, EOFError) as error:  # a damaged gzip stream raises either
        raise ValueError(
            f"cannot read {path}: {error}; the file is corrupt, delete it and fetch it again"
        ) from error
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, fewer than its {header}-byte header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(
            f"{path} has magic number {found}, expected {magic} (an IDX file of MNIST {kind}); the file "
            "is corrupt or not what its name says"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise ValueError(
            f"{path} holds {len(raw) - header} bytes of data but its header announces shape {shape}, "
            f"{size} bytes; the file is truncated or corrupt"
        )
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    # torchvision keeps both the archive and its extraction; either will do.
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def load_mnist(
    root: str | Path = "data",
    split: str = "train",
    download: bool = False,
    return_labels: bool = False,
    seed: int = 0,
):
    """MNIST handwritten digits, 28 x 28 pixels with 256 grey levels.

    Reads the raw IDX files where ``torchvision.datasets.MNIST(root)`` keeps them,
    ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or the same with ``.gz``).

    Args:
        root: the folder that holds ``MNIST/``.
        split: ``"train"``, ``"val"`` or ``"test"``. ``"train"`` is the 60,000 training images
            minus a validation set, ``"val"`` that set: 5,000 images chosen by a permutation
            seeded by ``seed`` (``N // 6`` if the training files hold only ``N < 30,000``).
            ``"test"`` is the test file.
        download: fetch missing files with torchvision (which must then be installed).
        return_labels: also return the digit of each image.
        seed: the seed of the validation permutation.

    Returns:
        ``uint8`` levels of shape ``(N, 1, 28, 28)`` (:data:`MNIST_LEVELS` levels), and with
        ``return_labels`` the labels, ``int64`` of shape ``(N,)``, as a pair.
    """
    _check_split(split, ("train", "val", "test"))
    root = Path(root)
    folder = root / "MNIST" / "raw"
    prefix = "t10k" if split == "test" else "train"
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    expected = [folder / name for name in names]
    paths = [_find(folder, name) for name in names]
    if None in paths:
        if not download:
            raise _missing("MNIST", expected)
        _download("MNIST", root, split != "test", expected)
        paths = [_find(folder, name) for name in names]
        if None in paths:
            raise _missing("MNIST", expected)
    images = _read_idx(paths[0], 2051)
    labels = _read_idx(paths[1], 2049)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]} holds images of shape {images.shape[1:]}, expected (28, 28)")
    if len(labels) != len(images):
        raise ValueError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels")
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28)
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return _select(x, y, split, seed, return_labels)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
    except Exception as error:  # unpickling a damaged file can raise almost anything
        raise ValueError(
            f"cannot unpickle {path}: {error!r}; the file is corrupt, delete it and fetch it again"
        ) from error
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels', got {found}"
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' should be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise ValueError(f"{path} holds {len(data)} images but {labels.size} labels")
    return data, labels


def load_cifar10(
    root: str | Path = "data",
    split: str = "train",
    download: bool = False,
    return_labels: bool = False,
    seed: int = 0,
):
    """CIFAR-10 colour images, 32 x 32 pixels, 3 channels of 256 levels.

    Reads the python pickles where ``torchvision.datasets.CIFAR10(root)`` keeps them,
    ``root/cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a dict
    with ``b"data"`` (``N x 3072`` bytes, channel-major) and ``b"labels"``. Unpickling can run
    code, so only read files from the official archive.

    Args:
        root: the folder that holds ``cifar-10-batches-py/``.
        split: ``"train"``, ``"val"`` or ``"test"``. ``"train"`` is the 50,000 training images
            minus a validation set, ``"val"`` that set: 5,000 images chosen by a permutation
            seeded by ``seed`` (``N // 6`` if the training files hold only ``N < 30,000``).
            ``"test"`` is the test file.
        download: fetch missing files with torchvision (which must then be installed).
        return_labels: also return the class of each image.
        seed: the seed of the validation permutation.

    Returns:
        ``uint8`` levels of shape ``(N, 3, 32, 32)`` (:data:`CIFAR10_LEVELS` levels), and with
        ``return_labels`` the labels, ``int64`` of shape ``(N,)``, as a pair.
    """
    _check_split(split, ("train", "val", "test"))
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    names = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    expected = [folder / name for name in names]
    if not all(path.is_file() for path in expected):
        if not download:
            raise _missing("CIFAR-10", expected)
        _download("CIFAR10", root, split != "test", expected)
        if not all(path.is_file() for path in expected):
            raise _missing("CIFAR-10", expected)
    batches = [_read_cifar_batch(path) for path in expected]
    data = np.concatenate([b[0] for b in batches])  # (N, 3072)
    labels = np.concatenate([b[1] for b in batches])  # (N,)
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32))  # (N, 3, 32, 32)
    return _select(x, torch.from_numpy(labels), split, seed, return_labels)


# ----------------------------------------------------------------------------------------------
# Dequantization
# ----------------------------------------------------------------------------------------------


def _check_levels(num_levels: int, upper: int | None = None) -> None:
    if int(num_levels) != num_levels or num_levels < 2 or (upper is not None and num_levels > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise ValueError(f"num_levels must be an integer at least 2{bound}, got {num_levels!r}")


def dequantize(
    levels: torch.Tensor,
    num_levels: int,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Uniform dequantization: :math:`x = (k + u) / L` with :math:`u \sim U[0, 1)`, per pixel.

    Args:
        levels: integer levels :math:`k` in ``0 .. num_levels - 1``, any shape and integer dtype
            (e.g. ``uint8`` from :func:`load_digits`).
        num_levels: :math:`L`, the number of levels (:data:`DIGITS_LEVELS`, :data:`MNIST_LEVELS`).
        generator: for reproducible noise; on the device of ``levels``.
        noise: the uniform draws :math:`u \in [0, 1)` themselves, of the shape of ``levels``
            (instead of drawing them here): for noise that must not depend on how a batch is
            split, as in :mod:`coursepkg.fullmode`.

    Returns:
        float32 values in ``[0, 1)`` of the shape of ``levels``, on its device, each in the bin of
        its level: ``quantize(dequantize(k, L), L) == k``.
    """
    _check_levels(num_levels)
    if levels.is_floating_point() or levels.is_complex() or levels.dtype == torch.bool:
        raise TypeError(
            f"dequantize expects integer levels (e.g. uint8 images from load_digits), got {levels.dtype}; "
            "images already scaled to [0, 1] can be turned back into levels with quantize(x, num_levels)"
        )
    if levels.numel() > 0:
        low, high = levels.min().item(), levels.max().item()
        if low < 0 or high >= num_levels:
            raise ValueError(
                f"levels must lie in 0 .. {num_levels - 1} for num_levels={num_levels}, found values from "
                f"{low} to {high}; is num_levels right ({DIGITS_LEVELS} for digits, 256 for MNIST and CIFAR-10)?"
            )
    k = levels.to(torch.float32)
    if noise is None:
        u = torch.rand(levels.shape, generator=generator, device=levels.device)
    else:
        if noise.shape != levels.shape or not noise.is_floating_point():
            raise ValueError(
                f"noise must be floats of the levels' shape {tuple(levels.shape)}, got {noise.dtype} "
                f"of shape {tuple(noise.shape)}"
            )
        if noise.numel() and not (noise.min() >= 0 and noise.max() < 1):
            raise ValueError("noise must lie in [0, 1), like torch.rand's draws")
        u = noise.to(device=levels.device, dtype=torch.float32)
    x = (k + u) / num_levels
    # Rounding to float32 can push x onto the edge of the next bin (u close to 1) or just below
    # its own (u = 0): nudge those by one representable step at a time until they are back in.
    for _ in range(8):
        q = torch.floor(x * num_levels)
        below, above = q < k, q > k
        if not (below.any() or above.any()):
            break
        x = torch.where(below, torch.nextafter(x, torch.ones_like(x)), x)
        x = torch.where(above, torch.nextafter(x, torch.zeros_like(x)), x)
    return x


class Dequantize:
    """``Dequantize(num_levels)(batch)``: :func:`dequantize` as a per-batch preprocess, fresh noise per call.

    ``batch`` is a tensor of levels, or a tuple or list whose first item is (e.g. ``(images,
    labels)``): then the first item is dequantized and the rest passed through unchanged.
    """

    def __init__(self, num_levels: int):
        _check_levels(num_levels)
        self.num_levels = int(num_levels)

    def __call__(self, batch, generator: torch.Generator | None = None):
        if isinstance(batch, (tuple, list)):
            return type(batch)([dequantize(batch[0], self.num_levels, generator), *batch[1:]])
        return dequantize(batch, self.num_levels, generator)

    def __repr__(self) -> str:
        return f"Dequantize(num_levels={self.num_levels})"


def quantize(x: torch.Tensor, num_levels: int) -> torch.Tensor:
    r"""The level of each value, :math:`k = \min(\lfloor L x \rfloor, L - 1)` clamped at 0, as ``uint8``.

    The inverse of :func:`dequantize`, for displaying samples: values outside ``[0, 1)`` (a
    model's samples may stray) go to the nearest end level.
    """
    _check_levels(num_levels, upper=256)
    if not x.is_floating_point():
        raise TypeError(f"quantize expects floating-point values in [0, 1], got {x.dtype}")
    # NaN has no level; casting it to uint8 would be undefined, so it shows as black.
    x = torch.nan_to_num(x, nan=0.0)
    return torch.floor(x * num_levels).clamp(0, num_levels - 1).to(torch.uint8)
