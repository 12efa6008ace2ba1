import random

import numpy as np
import pytest
import torch

import coursepkg
from coursepkg.runtime import fork_rng, rng_state, set_rng_state


def test_device_defaults_to_best_available(monkeypatch):
    monkeypatch.delenv("COURSEPKG_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert coursepkg.device().type == expected


def test_device_and_mode_follow_environment(monkeypatch):
    monkeypatch.setenv("COURSEPKG_DEVICE", "cpu")
    monkeypatch.delenv("COURSEPKG_MODE", raising=False)
    assert coursepkg.device() == torch.device("cpu")
    assert coursepkg.mode() == "quick"
    monkeypatch.setenv("COURSEPKG_MODE", "FULL")
    assert coursepkg.mode() == "full"
    assert coursepkg.by_mode(1, 2) == 2
    monkeypatch.setenv("COURSEPKG_MODE", "quick")
    assert coursepkg.by_mode(1, 2) == 1


def test_cuda_mode_is_full_when_a_gpu_is_seen(monkeypatch):
    monkeypatch.delenv("COURSEPKG_MODE", raising=False)
    monkeypatch.setattr(coursepkg.runtime, "device", lambda: torch.device("cuda"))
    assert coursepkg.mode() == "full"


def test_bad_values_are_explained(monkeypatch):
    monkeypatch.setenv("COURSEPKG_MODE", "fast")
    with pytest.raises(ValueError, match="'quick'.*'full'"):
        coursepkg.mode()
    monkeypatch.setenv("COURSEPKG_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="not a torch device"):
        coursepkg.device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("COURSEPKG_DEVICE", "cuda")
        with pytest.raises(ValueError, match="no CUDA"):
            coursepkg.device()


def test_import_is_cheap_and_lazy():
    import subprocess
    import sys

    code = "import sys, coursepkg; print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def draws():
    """One draw from each global generator (NumPy's Gaussian pairs exercise its cached value)."""
    return torch.rand(3).tolist(), random.random(), np.random.randn(3).tolist()  # noqa: NPY002


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    seed_everything(1)
    np.random.randn()  # noqa: NPY002  # leaves a cached Gaussian in NumPy's state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected = draws()
    draws()
    set_rng_state(torch.load(path, weights_only=True))
    assert draws() == expected


def test_torch_only_state_leaves_python_and_numpy_alone():
    seed_everything(2)
    state = rng_state(torch_only=True)
    assert "python" not in state and "numpy" not in state and "torch" in state
    first = draws()
    set_rng_state(state)
    again = draws()
    assert again[0] == first[0]  # torch replays
    assert again[1:] != first[1:]  # the others went on


def test_fork_rng_leaves_no_trace_and_seeds_the_block():
    seed_everything(3)
    with fork_rng(seed=5):
        inside = torch.rand(4)
        draws()
    after = draws()
    seed_everything(3)
    assert after == draws()
    torch.manual_seed(5)
    assert torch.equal(inside, torch.rand(4))

    seed_everything(3)
    with pytest.raises(KeyboardInterrupt), fork_rng():
        draws()
        raise KeyboardInterrupt  # restored on the way out of a failing block too
    after = draws()
    seed_everything(3)
    assert after == draws()
