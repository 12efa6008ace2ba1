import pytest
import torch

import coursepkg


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
