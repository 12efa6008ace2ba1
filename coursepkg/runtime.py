"""Where and how big the course's computations run.

``device()`` picks the accelerator and ``mode()`` picks how much training a notebook does:
``"quick"`` executes the whole book on a laptop CPU in minutes, ``"full"`` trains the larger
models of the papers on a GPU. Both read an environment variable first, so a reader can force
either choice (``COURSEPKG_DEVICE=cpu``, ``COURSEPKG_MODE=full``).
"""

from __future__ import annotations

import os

import torch

__all__ = ["device", "mode", "by_mode", "MODES"]

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
