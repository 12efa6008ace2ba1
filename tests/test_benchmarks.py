"""The benchmark scripts still run (a few steps each); their measurements are not tests."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_digits_bpd_runs_and_reports(tmp_path, keep_threads, capsys):
    bench = _load("digits_bpd")
    out = tmp_path / "result.json"
    report = bench.main(
        ["--seconds", "60", "--max-steps", "3", "--eval-every", "2", "--threads", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    image, vector = report["results"]
    assert (image["model"], vector["model"]) == ("image", "vector")
    # The vector model is sized to the image model's parameter count.
    assert abs(vector["params"] - image["params"]) / image["params"] < 0.02
    for result in report["results"]:
        assert result["steps"] == 3 and result["curve"]["step"] == [2, 3]
        assert 0 < result["test_bpd"] < 8  # 17 levels: uniform noise would score log2(17) = 4.09
    assert "test bpd" in capsys.readouterr().out


def test_maf_iaf_runs_and_reports(tmp_path, keep_threads, capsys):
    bench = _load("maf_iaf")
    out = tmp_path / "timings.json"
    common = ["--threads", "1", "--no-zuko"]  # zuko is optional: the test must not depend on it
    report = bench.main(
        [
            "--dims",
            "2,3",
            "--batch",
            "8",
            "--rounds",
            "1",
            "--budget",
            "0",
            "--ratio-dim",
            "3",
            "--out",
            str(out),
        ]
        + common
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [row["dim"] for row in report["rows"]] == [2, 3]
    assert set(report["rows"][1]["ms"]) == {
        "maf density",
        "iaf density",
        "maf train",
        "maf sample",
        "iaf sample",
    }
    assert report["ratio_dim"] == 3
    assert set(report["ratios"]) == {"iaf_sampling_speedup", "maf_density_speedup"}
    assert "IAF samples" in capsys.readouterr().out

    out = tmp_path / "kl.json"
    report = bench.main(
        ["--kl", "--steps", "2", "--seeds", "1", "--kl-samples", "500", "--out", str(out)] + common
    )
    runs = [(r["model"], r["toy"]) for r in report["kl"]]
    assert runs == [(m, t) for m in ("maf-affine", "maf-spline") for t in ("eight_gaussians", "checkerboard")]
    assert all(0 < r["median_kl"] < 10 for r in report["kl"])  # two steps from the identity: far, finite
    assert "median" in capsys.readouterr().out
