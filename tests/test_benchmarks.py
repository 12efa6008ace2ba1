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
    image, vector, glow = report["results"]
    assert (image["model"], vector["model"], glow["model"]) == ("image", "vector", "glow")
    # The vector model is sized to the image model's parameter count.
    assert abs(vector["params"] - image["params"]) / image["params"] < 0.02
    for result in report["results"]:
        assert result["steps"] == 3 and result["curve"]["step"] == [2, 3]
        assert 0 < result["test_bpd"] < 8  # 17 levels: uniform noise would score log2(17) = 4.09
    assert "test bpd" in capsys.readouterr().out


def test_digits_bpd_plain_loop_runs_without_validation(tmp_path, keep_threads, capsys):
    bench = _load("digits_bpd")
    out = tmp_path / "plain.json"
    args = ["--models", "glow", "--loop", "both", "--max-steps", "2", "--threads", "1", "--eval-every", "1"]
    report = bench.main(args + ["--glow-hidden", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    course, plain = report["results"]
    assert (course["loop"], plain["loop"]) == ("course", "plain")
    assert plain["steps"] == 2 and plain["best_val_bpd"] is None and "curve" not in plain
    assert course["params"] == plain["params"]
    assert 0 < plain["test_bpd"] < 8
    printed = capsys.readouterr().out
    assert "plain" in printed and "course" in printed


def test_digits_bpd_glow_options_reach_the_builder():
    import argparse

    from coursepkg import layers as L
    from coursepkg.nets import GlowNet

    bench = _load("digits_bpd")
    names = ("glow_layers", "glow_hidden", "glow_levels", "glow_dropout", "glow_histogram_bins")
    names += ("logit_alpha", "scale_bound")
    defaults = dict.fromkeys(names)
    default = bench.glow_model(argparse.Namespace(**defaults))
    assert isinstance(default.transform[0], L.HistogramCDF)
    paper = bench.glow_model(argparse.Namespace(**dict(defaults, glow_histogram_bins=0, glow_dropout=0.0)))
    assert isinstance(paper.transform[0], L.Logit)
    assert all(net.dropout == 0 for net in paper.modules() if isinstance(net, GlowNet))
    assert sum(p.numel() for p in paper.parameters()) == 76_172  # the paper's Glow of the peers' table
    wider = bench.glow_model(argparse.Namespace(**dict(defaults, glow_histogram_bins=32)))
    assert wider.transform[0].num_bins == 32


def test_glow_throughput_runs_and_reports(tmp_path, keep_threads, capsys):
    bench = _load("glow_throughput")
    out = tmp_path / "glow.json"
    # The peers are optional: time only the ones installed (coursepkg alone when none is).
    libraries = ["coursepkg"] + [name for name in ("normflows", "nflows") if bench.available(name)]
    args = ["--threads", "1", "--rounds", "1", "--budget", "0", "--batch", "4", "--hidden", "8"]
    args += ["--steps", "1", "--libraries", ",".join(libraries), "--out", str(out)]
    report = bench.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rates = report["images_per_second"]["wall"]
    assert set(rates) == set(libraries)
    assert all(rate > 0 for per_library in rates.values() for rate in per_library.values())
    params = report["params"]
    # The same architecture in every library; only the priors of the factored-out halves differ
    # (coursepkg's is predicted by a convolution: 76 of these 1,740 parameters).
    assert all(abs(n - params["coursepkg"]) / params["coursepkg"] < 0.1 for n in params.values())
    assert bool(report["ratios"]) == (len(libraries) > 1)
    assert "load average" in capsys.readouterr().out


def test_glow_throughput_skips_missing_peers(tmp_path, keep_threads, monkeypatch, capsys):
    bench = _load("glow_throughput")
    monkeypatch.setattr(bench, "available", lambda name: name == "coursepkg")
    report = bench.main(
        ["--threads", "1", "--rounds", "1", "--budget", "0", "--batch", "2", "--hidden", "4", "--steps", "1"]
        + ["--out", str(tmp_path / "glow.json")]
    )
    assert set(report["params"]) == {"coursepkg"} and report["ratios"] == {}
    assert "normflows is not installed: skipped" in capsys.readouterr().out


def test_maf_iaf_runs_and_reports(tmp_path, keep_threads, capsys):
    bench = _load("maf_iaf")
    out = tmp_path / "timings.json"
    # zuko and nflows are optional: the test must not depend on them
    common = ["--threads", "1", "--no-zuko", "--no-nflows"]
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


def test_maf_iaf_kl_picks_models_and_toys(tmp_path, keep_threads):
    bench = _load("maf_iaf")
    report = bench.main(
        ["--kl", "--models", "maf-spline", "--toys", "ffjord_eight_gaussians", "--steps", "1", "--seeds", "1"]
        + ["--kl-samples", "200", "--threads", "1", "--out", str(tmp_path / "kl.json")]
    )
    assert [(r["model"], r["toy"]) for r in report["kl"]] == [("maf-spline", "ffjord_eight_gaussians")]
    ffjord = bench.make_toy("ffjord_eight_gaussians")
    assert (ffjord.radius, ffjord.std) == pytest.approx((2 * 2**0.5, 0.5 / 2**0.5))
    with pytest.raises(SystemExit):
        bench.main(["--kl", "--models", "maf-splines", "--out", str(tmp_path / "never.json")])


@pytest.mark.parametrize("library", ["zuko", "nflows"])
def test_maf_iaf_compares_with_an_installed_library(library, tmp_path, keep_threads, capsys):
    pytest.importorskip(library)
    bench = _load("maf_iaf")
    from coursepkg import models

    # The same architecture: equal parameter counts, and a density for every point.
    build = {"zuko": bench.zuko_maf, "nflows": bench.nflows_maf}[library]
    model = build(3, 5, (16, 16))
    assert bench.num_params(model) == bench.num_params(models.maf(3, 5, (16, 16)))
    assert model.log_prob(torch.randn(4, 3)).shape == (4,)
    assert model.sample(5).shape == (5, 3)
    # Its IAF is the same transform inverted: a density for every point too.
    inverted = {"zuko": bench.zuko_iaf, "nflows": bench.nflows_iaf}[library](3, 5, (16, 16))
    assert bench.num_params(inverted) == bench.num_params(model)
    assert torch.isfinite(inverted.log_prob(torch.randn(4, 3))).all()
    if library == "zuko":
        spline = bench.zuko_nsf(2, 5, (64, 64))
        assert bench.num_params(spline) == bench.num_params(models.maf(2, transformer="spline"))

    other = {"zuko": "--no-nflows", "nflows": "--no-zuko"}[library]
    report = bench.main(
        [
            "--dims",
            "3",
            "--batch",
            "8",
            "--rounds",
            "1",
            "--budget",
            "0",
            "--ratio-dim",
            "3",
            "--threads",
            "1",
        ]
        + [other, "--out", str(tmp_path / "timings.json")]
    )
    row = report["rows"][0]
    assert {f"{library} {what}" for what in ("density", "train", "sample", "iaf density")} <= set(row["ms"])
    assert row[f"{library}_params"] == row["params"]
    assert {f"{library}_over_maf_density", f"{library}_over_iaf_density"} <= set(report["ratios"])
    assert f"{library} time / coursepkg time" in capsys.readouterr().out


def test_peers_runs_every_row_with_the_installed_libraries(tmp_path, keep_threads, capsys):
    bench = _load("peers")
    installed = [name for name in bench.LIBRARIES if bench.available(name)]
    out = tmp_path / "peers.json"
    report = bench.main(
        ["--threads", "1", "--rounds", "1", "--budget", "0", "--batch", "6", "--hidden", "8"]
        + ["--glow-hidden", "4", "--floor", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    table = out.with_suffix(".md").read_text()
    assert [row["row"] for row in report["rows"]] == list(bench.ROWS)
    for row in report["rows"]:
        assert row["row"] in table
        expected = {name for name in installed if name in bench.builders(row["row"], 8, 4)}
        assert set(row["params"]) == expected and "coursepkg" in expected
        rates = row["examples_per_second"]["wall"]
        assert all(rate > 0 for per_library in rates.values() for rate in per_library.values())
        assert bool(row["ratios"]) == (len(expected) > 1)
        if row["ratios"]:
            assert set(row["ratios"]) == {"wall", "cpu"} and set(row["ratios"]["cpu"]) == {"train", "sample"}
        if row["row"].startswith(("maf", "realnvp")):  # the same architecture, the same parameter count
            assert len(set(row["params"].values())) == 1, row["params"]
            assert row["networks_alone"]["wall"] > 0 and row["networks_alone"]["cpu"] > 0
            assert "networks alone" in table
        elif row["row"].startswith("iresnet"):  # normflows adds a LipSwish on the input of each block
            assert max(row["params"].values()) <= 1.1 * min(row["params"].values()), row["params"]
            assert not row["networks_alone"]
    maf = report["rows"][0]
    assert any("normflows" in note for note in maf["notes"]) == ("normflows" in installed)
    assert "coursepkg / fastest peer" in capsys.readouterr().out


def test_peers_skips_missing_libraries(tmp_path, keep_threads, monkeypatch, capsys):
    bench = _load("peers")
    monkeypatch.setattr(bench, "available", lambda name: name == "coursepkg")
    report = bench.main(
        ["--rows", "realnvp-2", "--threads", "1", "--rounds", "1", "--budget", "0", "--batch", "4"]
        + ["--hidden", "4", "--out", str(tmp_path / "peers.json")]
    )
    (row,) = report["rows"]
    assert set(row["params"]) == {"coursepkg"} and row["ratios"] == {}
    assert "zuko is not installed: skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--rows", "realnvp-3", "--out", str(tmp_path / "never.json")])


def test_peers_kl_trains_every_kind_and_compares_with_the_best_peer(tmp_path, keep_threads, capsys):
    bench = _load("peers")
    installed = [name for name in bench.LIBRARIES if bench.available(name)]
    out = tmp_path / "kl.json"
    report = bench.main(
        ["--kl", "--steps", "2", "--seeds", "2", "--batch", "16", "--hidden", "8", "--kl-samples", "200"]
        + ["--out", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    table = out.with_suffix(".md").read_text()
    rows = report["kl"]
    assert {row["kind"] for row in rows} == set(bench.KL_KINDS)
    entries = bench.kl_entries(8)
    for kind in bench.KL_KINDS:
        mine = [row for row in rows if row["kind"] == kind]
        assert [row["label"] for row in mine] == [
            label for label, (library, _) in entries[kind].items() if library in installed
        ]
        peers = [row for row in mine if row["library"] != "coursepkg"]
        for row in mine:
            assert row["label"] in table
            for toy_name in bench.KL_TOYS:
                result = row["toys"][toy_name]
                assert len(result["kl"]) == 2 and all(0 < kl < 20 for kl in result["kl"])
                assert result["median"] == pytest.approx(sum(result["kl"]) / 2)
            if row["library"] != "coursepkg":
                assert "ratios" not in row
            elif not peers:
                assert "ratios" not in row
            else:  # the ratio to the best (lowest) median of the peers of the same kind
                for toy_name, ratio in row["ratios"].items():
                    best = min(peer["toys"][toy_name]["median"] for peer in peers)
                    assert ratio["ratio"] == pytest.approx(row["toys"][toy_name]["median"] / best, abs=1e-3)
                    assert ratio["meets"] == (ratio["ratio"] <= bench.GOAL)
    # The peers' models have the course's architecture: parameter counts within 10%.
    for kind in bench.KL_KINDS:
        counts = [row["params"] for row in rows if row["kind"] == kind and row["label"] != "coursepkg"]
        if counts:  # none where no peer is installed and coursepkg has one variant of the kind
            assert max(counts) <= 1.1 * min(counts), (kind, counts)
    assert "best peer" in capsys.readouterr().out


def test_peers_kl_skips_missing_libraries_and_rejects_unknown_kinds(tmp_path, keep_threads, monkeypatch):
    bench = _load("peers")
    monkeypatch.setattr(bench, "available", lambda name: name == "coursepkg")
    report = bench.main(
        ["--kl", "--kinds", "maf", "--toys", "checkerboard", "--steps", "1", "--seeds", "1", "--batch", "8"]
        + ["--hidden", "4", "--kl-samples", "100", "--out", str(tmp_path / "kl.json")]
    )
    (row,) = report["kl"]
    assert (row["kind"], row["library"], list(row["toys"])) == ("maf", "coursepkg", ["checkerboard"])
    assert "ratios" not in row and "failed" not in row

    # A run that diverges scores infinity and is named in the table; the benchmark goes on.
    def diverge(*args, **kwargs):
        raise bench.NonFiniteLossError("loss became nan at step 3", step=3)

    monkeypatch.setattr(bench, "train", diverge)
    out = tmp_path / "diverged.json"
    (row,) = bench.main(
        ["--kl", "--kinds", "maf", "--toys", "checkerboard", "--steps", "1", "--seeds", "1", "--batch", "8"]
        + ["--hidden", "4", "--kl-samples", "100", "--out", str(out)]
    )["kl"]
    assert row["toys"]["checkerboard"]["median"] == float("inf")
    assert row["failed"] == ["checkerboard seed 0: loss became nan at step 3"]
    assert "diverged (KL counted as infinite): checkerboard seed 0" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--kl", "--kinds", "glow", "--out", str(tmp_path / "never.json")])
