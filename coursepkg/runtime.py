"""Where and how big the course's computations run, and the random state they draw from.

``device()`` picks the accelerator and ``mode()`` picks how much training a notebook does:
``"quick"`` executes the whole book on a laptop CPU in minutes, ``"full"`` trains the larger
models of the papers on a GPU. Both read an environment variable first, so a reader can force
either choice (``COURSEPKG_DEVICE=cpu``, ``COURSEPKG_MODE=full``).

``rng_state()``, ``set_rng_state()`` and ``fork_rng()`` save, restore and fence off the random
generators (torch on the CPU and accelerators, Python's ``random``, NumPy's global generator):
for checkpoints that resume bit for bit, and for code that must leave a reader's random state
alone.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["device", "mode", "by_mode", "MODES", "rng_state", "set_rng_state", "fork_rng"]

MODES = ("quick", "full")


def device() -> torch.device:
    """The device to compute on: ``$COURSEPKG_DEVICE`` if set, else cuda, else mps, else cpu."""
    requested = os.environ.get("COURSEPKG_DEVICE", "").strip()
    if requested:
        try:
            chosen = torch.device(requested)
        except RuntimeError as error:
            raise ValueError(
                f"COURSEPKG_DEVICE={requested!r} is not a torch device; use e.g. 'cpu', 'cuda', "
                "'cuda:1' or 'mps', or unset it to choose automatically."
            ) from error
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"COURSEPKG_DEVICE={requested!r} asks for CUDA, but torch sees no CUDA device; "
                "unset it or use 'cpu'."
            )
        if chosen.type == "mps" and not _mps_available():
            raise ValueError(
                f"COURSEPKG_DEVICE={requested!r} asks for MPS, which this machine lacks; "
                "unset it or use 'cpu'."
            )
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def mode() -> str:
    """``"quick"`` on a CPU, ``"full"`` on a GPU; ``$COURSEPKG_MODE`` overrides."""
    requested = os.environ.get("COURSEPKG_MODE", "").strip().lower()
    if requested:
        if requested not in MODES:
            raise ValueError(
                f"COURSEPKG_MODE={requested!r} is not a mode; use 'quick' (CPU-sized runs) or "
                "'full' (GPU-sized runs), or unset it to choose from the device."
            )
        return requested
    return "quick" if device().type == "cpu" else "full"


def by_mode(quick, full):
    """Return ``quick`` or ``full`` according to :func:`mode`, e.g. ``steps = by_mode(500, 20_000)``."""
    return quick if mode() == "quick" else full


def rng_state(torch_only: bool = False) -> dict:
    """The state of every random generator a computation may draw from, to give to :func:`set_rng_state`.

    Keys: ``"torch"`` (the CPU generator), ``"cuda"`` (one state per GPU, only once CUDA is in
    use, so that asking never initialises it), ``"mps"``, ``"python"`` and ``"numpy"``. The values
    are tensors, lists and numbers, so the dict goes into a checkpoint that
    ``torch.load(..., weights_only=True)`` reads back.

    Args:
        torch_only: only torch's generators: about a microsecond instead of tens (Python's and
            NumPy's states are 624 numbers each), enough to replay draws made with torch.
    """
    states: dict = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if _mps_available():
        states["mps"] = torch.mps.get_rng_state()
    if not torch_only:
        states["python"] = random.getstate()
        name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
        states["numpy"] = [name, keys.tolist(), position, has_gauss, cached]
    return states


def set_rng_state(state: dict) -> None:
    """Put back the generators saved by :func:`rng_state`; those missing from ``state`` are left alone.

    CUDA states are restored only on a machine with as many GPUs as the one that saved them.
    """
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "mps" in state and _mps_available():
        torch.mps.set_rng_state(state["mps"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))  # a checkpoint may hold a list
    if "numpy" in state:
        name, keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))  # noqa: NPY002


@contextlib.contextmanager
def fork_rng(seed: int | None = None) -> Iterator[None]:
    """A block whose random draws leave no trace: every generator of :func:`rng_state` is put back on exit.

    Like ``torch.random.fork_rng``, but Python's ``random`` and NumPy's global generator are
    restored too, and CUDA is never initialised just to save its state.

    Args:
        seed: if given, the block starts from ``torch.manual_seed(seed)`` (torch's generators
            only), so that what it draws is the same every time.
    """
    saved = rng_state()
    try:
        if seed is not None:
            torch.manual_seed(seed)
        yield
    finally:
        set_rng_state(saved)
