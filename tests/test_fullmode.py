"""The full-mode training script: several processes under torchrun train as one, and runs resume.

Runs Glow on the 8x8 digits on the CPU with the gloo backend, for a few steps: the script's
logic is the same on GPUs (NCCL), which this machine lacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from coursepkg import fullmode
from coursepkg.data import DIGITS_LEVELS, dequantize, load_digits

STEPS = 16


def _single(tmp_path, steps, **options):
    options.setdefault("checkpoint", None)
    return fullmode.run("glow", "digits", steps=steps, results=None, device="cpu", log_every=10**9, **options)


def _torchrun(tmp_path, steps, extra=()):
    out = tmp_path / "two.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "coursepkg.fullmode",
        "--model",
        "glow",
        "--data",
        "digits",
        "--steps",
        str(steps),
        "--device",
        "cpu",
        "--results",
        "none",
        "--losses-to",
        str(out),
        *extra,
    ]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    two = _torchrun(tmp_path, STEPS, ("--checkpoint", str(checkpoint), "--checkpoint-every", "8"))
    one = _single(tmp_path, STEPS)
    assert two["world_size"] == 2 and one["world_size"] == 1
    a, b = np.array(one["losses"]), np.array(two["losses"])
    assert len(a) == len(b) == STEPS
    # Same images, same noise, same initialisation, gradients averaged: the curves differ only by
    # the order of floating-point sums (measured: 2e-3 nats after 30 steps, losses near -50).
    assert abs(a[0] - b[0]) < 1e-4, "the first step sees the same batch and parameters"
    assert np.max(np.abs(a - b)) < 0.05, f"loss curves differ: {np.abs(a - b).max():.3g} nats"
    # The first batch is the one the data-dependent layers (ActNorm, the histograms) were fitted
    # to, so it scores better than the next ones: the fall is measured from steps 2-5.
    assert a[-4:].mean() < a[1:5].mean() - 5, f"the loss falls: {a.round(1)}"  # measured: 5.5 nats
    # Only the first process writes the checkpoint, and one process can resume it.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".pt", ".tmp")) == ["ckpt.pt"]
    resumed = _single(tmp_path, STEPS + 4, checkpoint=checkpoint)
    assert len(resumed["losses"]) == 4 and resumed["steps"] == STEPS + 4


def test_resuming_gives_the_uninterrupted_run(tmp_path):
    checkpoint = tmp_path / "run.pt"
    straight = _single(tmp_path, 10)
    first = _single(tmp_path, 6, checkpoint=checkpoint, checkpoint_every=3)
    second = _single(tmp_path, 10, checkpoint=checkpoint)
    assert first["steps"] == 6 and second["steps"] == 10 and len(second["losses"]) == 4
    np.testing.assert_allclose(first["losses"] + second["losses"], straight["losses"], rtol=1e-5)
    with pytest.raises(ValueError, match="batch size"):
        _single(tmp_path, 12, checkpoint=checkpoint, batch_size=32)


def test_results_file_has_every_published_row_and_says_what_is_missing(tmp_path):
    rows = fullmode.result_rows("glow") + fullmode.result_rows("realnvp")
    assert {(r["data"]) for r in rows} == {"mnist", "cifar10"} and len(rows) == 4
    for row in rows:
        assert row["published"] > 0 and row["source"]
        assert row["measured"] is not None or "not yet measured" in row["note"]
    # A finished run records its row; the others stay as they were.
    path = tmp_path / "results.json"
    path.write_text(fullmode.RESULTS_FILE.read_text())
    fullmode._record(path, "glow/mnist", {"test_bits_per_dim": 1.234, "steps": 5})
    rows = {r["data"]: r for r in fullmode.result_rows("glow", path)}
    assert rows["mnist"]["measured"] == 1.234 and rows["cifar10"]["measured"] is None


def test_bad_requests_are_explained(tmp_path):
    with pytest.raises(ValueError, match="no run"):
        fullmode.run("maf", "digits", steps=1, results=None, checkpoint=None)
    with pytest.raises(ValueError, match="larger than"):
        _single(tmp_path, 1, batch_size=10_000)


def test_dequantize_with_given_noise():
    levels = load_digits("train")[:8]
    u = torch.rand(levels.shape, generator=torch.Generator().manual_seed(0))
    x = dequantize(levels, DIGITS_LEVELS, noise=u)
    again = dequantize(levels, DIGITS_LEVELS, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, again)
    with pytest.raises(ValueError, match="shape"):
        dequantize(levels, DIGITS_LEVELS, noise=u[:2])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dequantize(levels, DIGITS_LEVELS, noise=u + 1)
