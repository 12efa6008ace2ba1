"""MAF against IAF: density and sampling time as the dimension grows, and (``--kl``) fit on 2D toys.

A MAF (``models.maf``) evaluates a density in one MADE pass per layer and samples in ``D``
passes; an IAF (``models.iaf``, the same layers inverted) does the opposite. For each dimension
``D`` in ``--dims`` both get 5 layers (``--num-layers``) of MADEs with two hidden layers of
``max(64, D)`` units (at least ``D - 1`` are needed for every dimension to see all the ones before
it; at ``D = 64`` this is the usual ``hidden=(64, 64)``), and the script times, on a batch of
``--batch`` points or samples, in eval mode:

- ``density``: ``log_prob(x)`` without gradients;
- ``train``: ``log_prob(x).mean()`` forward and backward (a maximum-likelihood step without the
  optimizer), MAF only: the IAF's density pass is the slow one and nobody trains it that way;
- ``sample``: ``sample(n)``.

Each time is the best of ``--rounds`` rounds, every round calling each function as often as fits
in ``--budget`` seconds (at least once), the functions of one dimension taking turns so that a
change of the machine's load hits them alike. The report prints, at ``D = --ratio-dim`` (64), how
many times faster the IAF samples than the MAF and the MAF evaluates densities than the IAF.

If ``zuko`` or ``nflows`` is installed (both optional, not dependencies of the course), its MAF
of the same architecture and parameter count is timed alongside, and up to ``D = 64`` its MAF's
sampling and the density of its IAF (the same transform inverted), the ``D``-pass directions; the
ratios *library time / course time* are printed: above 1, the course's model is faster.

- zuko: ``zuko.flows.MAF(D, transforms=5, hidden_features=(H, H))``, affine, alternating orders;
- nflows: 5 ``MaskedAffineAutoregressiveTransform(D, H, num_blocks=1, use_residual_blocks=False)``
  (a MADE ``D -> H -> H -> 2D``, the course's) with a ``ReversePermutation`` between them.

``--kl`` instead trains, 5 layers of hidden ``(64, 64)`` each, ``models.maf(2)`` (affine),
``models.maf(2, transformer="spline")`` and, when installed, zuko's MAF, zuko's neural spline
flow (``zuko.flows.NSF(2, transforms=5, hidden_features=(64, 64))``: 8 bins on ``[-5, 5]``) and
nflows' MAF (``--models`` picks some), with ``coursepkg.training.train`` (Adam, ``--steps`` 2000
steps, learning rate 1e-3, batch 512) on the eight Gaussians and the checkerboard (``--toys``;
``ffjord_eight_gaussians`` is FFJORD's wider version), ``--seeds`` seeds each, and reports the
forward KL divergence (``coursepkg.data.kl_divergence``, in nats) and its median over the seeds.

Usage::

    .venv/bin/python benchmarks/maf_iaf.py                   # timings, D = 2, 4, ..., 256, 1 thread
    .venv/bin/python benchmarks/maf_iaf.py --threads 2 --dims 2,8,64
    .venv/bin/python benchmarks/maf_iaf.py --kl              # KL after 2000 steps, 3 seeds
    .venv/bin/python benchmarks/maf_iaf.py --kl --models maf-spline,zuko-nsf --toys ffjord_eight_gaussians

Results go to ``benchmarks/results/maf_iaf.json`` (``maf_iaf_kl.json`` with ``--kl``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from coursepkg import models
from coursepkg.data import kl_divergence, toy
from coursepkg.training import train

RESULTS = Path(__file__).resolve().parent / "results"
TOYS = ("eight_gaussians", "checkerboard")
# FFJORD's own eight Gaussians (radius 2 sqrt 2, std 0.5 / sqrt 2: wider modes than the course's
# default radius 2, std 0.2); the reference numbers for zuko were measured on it.
EXTRA_TOYS = {
    "ffjord_eight_gaussians": {"name": "eight_gaussians", "radius": 2 * 2**0.5, "std": 0.5 / 2**0.5}
}


def make_toy(name: str):
    """``coursepkg.data.toy(name)``, or one of ``EXTRA_TOYS``."""
    if name in EXTRA_TOYS:
        kwargs = dict(EXTRA_TOYS[name])
        return toy(kwargs.pop("name"), **kwargs)
    return toy(name)


def _optional(name: str):
    """The module ``name`` if it is installed (zuko and nflows are optional), else ``None``."""
    try:
        return __import__(name)
    except ImportError:
        return None


def _zuko():
    return _optional("zuko")


def _nflows():
    return _optional("nflows")


class ZukoModel(nn.Module):
    """A zuko flow behind the course's ``log_prob`` / ``sample`` interface (for train and timing)."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.flow().sample((n,))


def zuko_maf(dim: int, num_layers: int, hidden: tuple[int, ...]) -> ZukoModel:
    """zuko's MAF: affine, natural and reversed orders alternating, the course's parameter count."""
    return ZukoModel(_zuko().flows.MAF(dim, transforms=num_layers, hidden_features=hidden))


def zuko_iaf(dim: int, num_layers: int, hidden: tuple[int, ...]) -> ZukoModel:
    """zuko's MAF with its transform inverted (``LazyInverse``): an IAF, like ``models.iaf``."""
    flow = _zuko().flows.MAF(dim, transforms=num_layers, hidden_features=hidden)
    flow.transform = flow.transform.inv
    return ZukoModel(flow)


def zuko_nsf(dim: int, num_layers: int, hidden: tuple[int, ...]) -> ZukoModel:
    """zuko's neural spline flow: its MAF with rational-quadratic splines (defaults: 8 bins on [-5, 5])."""
    return ZukoModel(_zuko().flows.NSF(dim, transforms=num_layers, hidden_features=hidden))


class NflowsModel(nn.Module):
    """An nflows ``Flow`` behind the course's ``log_prob`` / ``sample`` interface."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.flow.sample(n)


def nflows_maf(dim: int, num_layers: int, hidden: tuple[int, ...], inverse: bool = False) -> NflowsModel:
    """nflows' MAF of the course's architecture and parameter count.

    ``MaskedAffineAutoregressiveTransform(D, H, num_blocks=len(hidden) - 1,
    use_residual_blocks=False)`` is a MADE ``D -> H -> ... -> H -> 2D`` (its first masked layer,
    then ``num_blocks`` masked ``H -> H`` layers, each followed by a ReLU): with ``hidden = (H, H)``
    exactly the course's MADE. nflows' MADEs always use the natural order, so a
    ``ReversePermutation`` between layers gives the alternating orders (no parameters; nflows'
    own ``MaskedAutoregressiveFlow`` also adds batch norm, left out here as in ``models.maf``).
    ``inverse=True`` wraps the whole transform in an ``InverseTransform``: the IAF.
    """
    if len(set(hidden)) != 1:
        raise ValueError(f"nflows' MADE has hidden layers of one width, got {hidden}")
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform, InverseTransform
    from nflows.transforms.permutations import ReversePermutation

    layers = []
    for i in range(num_layers):
        if i:
            layers.append(ReversePermutation(dim))
        layers.append(
            MaskedAffineAutoregressiveTransform(
                dim, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False
            )
        )
    transform = CompositeTransform(layers)
    if inverse:
        transform = InverseTransform(transform)
    return NflowsModel(Flow(transform, StandardNormal([dim])))


def nflows_iaf(dim: int, num_layers: int, hidden: tuple[int, ...]) -> NflowsModel:
    return nflows_maf(dim, num_layers, hidden, inverse=True)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hidden_for(dim: int) -> tuple[int, int]:
    """Two hidden layers of ``max(64, D)`` units: at least ``D - 1``, so that no dependency is lost."""
    return (max(64, dim),) * 2


def _run(fn: Callable[[], object], budget: float) -> float:
    """Seconds per call of ``fn``: as many calls as fit in ``budget`` (at least one), averaged."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= budget:
            return elapsed / calls


def time_together(functions: dict[str, Callable[[], object]], rounds: int, budget: float) -> dict[str, float]:
    """Best seconds per call of each function over ``rounds`` rounds in which they take turns."""
    for fn in functions.values():
        fn()  # warm-up: first-call allocations, lazy initialisation
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(rounds):
        for name, fn in functions.items():
            best[name] = min(best[name], _run(fn, budget))
    return best


def _training_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step():
        model.zero_grad(set_to_none=True)
        (-model.log_prob(x).mean()).backward()

    return step


def time_dimension(dim: int, args) -> dict:
    hidden = hidden_for(dim)
    torch.manual_seed(args.seed)
    maf = models.maf(dim, args.num_layers, hidden).eval()
    iaf = models.iaf(dim, args.num_layers, hidden).eval()
    with torch.no_grad():  # non-trivial parameters, so that no pass is a no-op
        for p in [*maf.parameters(), *iaf.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
    x = torch.randn(args.batch, dim)
    functions = {
        "maf density": torch.no_grad()(lambda: maf.log_prob(x)),
        "iaf density": torch.no_grad()(lambda: iaf.log_prob(x)),
        "maf train": _training_step(maf, x),
        "maf sample": lambda: maf.sample(args.batch),
        "iaf sample": lambda: iaf.sample(args.batch),
    }
    result = {"dim": dim, "hidden": list(hidden), "params": num_params(maf)}
    for library, (build_maf, build_iaf) in external_mafs(args).items():
        torch.manual_seed(args.seed)
        model = build_maf(dim, args.num_layers, hidden).eval()
        functions[f"{library} density"] = torch.no_grad()(lambda model=model: model.log_prob(x))
        functions[f"{library} train"] = _training_step(model, x)
        if dim <= 64:  # their sampling and IAF densities are D passes too, minutes at D = 256
            functions[f"{library} sample"] = lambda model=model: model.sample(args.batch)
            inverted = build_iaf(dim, args.num_layers, hidden).eval()
            functions[f"{library} iaf density"] = torch.no_grad()(lambda model=inverted: model.log_prob(x))
        result[f"{library}_params"] = num_params(model)
    seconds = time_together(functions, args.rounds, args.budget)
    result["ms"] = {name: round(1e3 * s, 4) for name, s in seconds.items()}
    return result


Builder = Callable[[int, int, tuple[int, ...]], nn.Module]


def external_mafs(args) -> dict[str, tuple[Builder, Builder]]:
    """The other libraries' (MAF, IAF) builders to time alongside the course's: those installed
    and not skipped."""
    out = {}
    if not args.no_zuko and _zuko() is not None:
        out["zuko"] = (zuko_maf, zuko_iaf)
    if not args.no_nflows and _nflows() is not None:
        out["nflows"] = (nflows_maf, nflows_iaf)
    return out


LIBRARIES = ("zuko", "nflows")


def ratios(row: dict) -> dict[str, float]:
    ms = row["ms"]
    out = {
        "iaf_sampling_speedup": ms["maf sample"] / ms["iaf sample"],
        "maf_density_speedup": ms["iaf density"] / ms["maf density"],
    }
    for library in LIBRARIES:
        for what in ("density", "train", "sample"):
            if f"{library} {what}" in ms:
                out[f"{library}_over_maf_{what}"] = ms[f"{library} {what}"] / ms[f"maf {what}"]
        if f"{library} iaf density" in ms:
            out[f"{library}_over_iaf_density"] = ms[f"{library} iaf density"] / ms["iaf density"]
    return {k: round(v, 2) for k, v in out.items()}


def run_timings(args) -> dict:
    rows = []
    columns = ["maf density", "iaf density", "maf train", "maf sample", "iaf sample"]
    columns += [
        f"{library} {what}"
        for library in external_mafs(args)
        for what in ("density", "train", "sample", "iaf density")
    ]
    width = max(12, *map(len, columns))
    header = f"{'D':>4s} {'hidden':>7s} " + " ".join(f"{c:>{width}s}" for c in columns)
    # The two ratios of the issue, at every D: IAF density / MAF density, MAF sample / IAF sample.
    header += f" {'MAF dens. x':>12s} {'IAF sample x':>12s}"
    print(f"milliseconds per call, batch {args.batch}, {torch.get_num_threads()} threads")
    print(header)
    for dim in args.dims:
        row = time_dimension(dim, args)
        rows.append(row)
        cells = [f"{row['ms'][c]:{width}.3f}" if c in row["ms"] else f"{'-':>{width}s}" for c in columns]
        speedups = ratios(row)
        cells += [f"{speedups['maf_density_speedup']:12.1f}", f"{speedups['iaf_sampling_speedup']:12.1f}"]
        print(f"{dim:4d} {row['hidden'][0]:7d} " + " ".join(cells), flush=True)
    at = next((r for r in rows if r["dim"] == args.ratio_dim), rows[-1])
    summary = ratios(at)
    print(f"\nat D = {at['dim']}:")
    print(
        f"  IAF samples {summary['iaf_sampling_speedup']:.1f}x faster than MAF (target >= 20x), "
        f"MAF densities {summary['maf_density_speedup']:.1f}x faster than IAF (target >= 20x)"
    )
    for library in LIBRARIES:
        if f"{library}_over_maf_density" in summary:
            line = (
                f"  {library} time / coursepkg time: MAF density {summary[f'{library}_over_maf_density']:.2f}, "
                f"training step {summary[f'{library}_over_maf_train']:.2f}"
            )
            if f"{library}_over_maf_sample" in summary:
                line += f", sampling {summary[f'{library}_over_maf_sample']:.2f}"
            if f"{library}_over_iaf_density" in summary:
                line += f"; IAF density {summary[f'{library}_over_iaf_density']:.2f}"
            print(line + " (above 1: coursepkg is faster)")
        elif not getattr(args, f"no_{library}"):
            print(f"  {library} is not installed: no comparison (pip install {library} to add it)")
    return {"rows": rows, "ratio_dim": at["dim"], "ratios": summary, "all_ratios": [ratios(r) for r in rows]}


KL_MODELS = ("maf-affine", "maf-spline", "zuko-maf", "zuko-nsf", "nflows-maf")


def kl_models(args) -> dict[str, Callable[[], nn.Module]]:
    """The models of ``--kl`` (``--models``, all by default), those of missing libraries left out."""
    builders = {
        "maf-affine": lambda: models.maf(2, num_layers=5, hidden=(64, 64)),
        "maf-spline": lambda: models.maf(2, num_layers=5, hidden=(64, 64), transformer="spline"),
    }
    external = external_mafs(args)
    if "zuko" in external:
        builders["zuko-maf"] = lambda: zuko_maf(2, 5, (64, 64))
        builders["zuko-nsf"] = lambda: zuko_nsf(2, 5, (64, 64))
    if "nflows" in external:
        builders["nflows-maf"] = lambda: nflows_maf(2, 5, (64, 64))
    wanted = KL_MODELS if args.models is None else args.models
    return {name: builders[name] for name in wanted if name in builders}


def run_kl(args) -> dict:
    results = []
    print(f"KL(p || q) in nats after {args.steps} steps (lr {args.lr}, batch {args.batch})")
    print(
        f"{'model':12s} {'toy':22s} "
        + " ".join(f"{'seed ' + str(s):>8s}" for s in range(args.seeds))
        + "   median"
    )
    for name, build in kl_models(args).items():
        for toy_name in args.toys:
            kls, seconds = [], []
            for seed in range(args.seeds):
                torch.manual_seed(seed)
                model = build()
                start = time.perf_counter()
                train(
                    model, make_toy(toy_name), steps=args.steps, batch_size=args.batch, lr=args.lr,
                    seed=seed, progress=False, device="cpu",
                )  # fmt: skip
                seconds.append(time.perf_counter() - start)
                kls.append(kl_divergence(model, make_toy(toy_name), num_samples=args.kl_samples)["kl"])
            median = statistics.median(kls)
            results.append(
                {
                    "model": name,
                    "toy": toy_name,
                    "kl": [round(k, 4) for k in kls],
                    "median_kl": round(median, 4),
                    "train_seconds": [round(s, 1) for s in seconds],
                }
            )
            print(
                f"{name:12s} {toy_name:22s} " + " ".join(f"{k:8.3f}" for k in kls) + f" {median:8.3f}",
                flush=True,
            )
    return {"kl": results}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="2,4,8,16,32,64,128,256", help="comma-separated dimensions")
    parser.add_argument("--num-layers", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="points or samples per call (default 512)")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds; the best is kept")
    parser.add_argument("--budget", type=float, default=0.3, help="seconds of calls per function per round")
    parser.add_argument("--ratio-dim", type=int, default=64, help="the dimension of the printed ratios")
    # One thread: these are small operations, and two threads on two cores shared with other jobs
    # made some calls 10-100x slower (waiting threads), which one thread never showed.
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-zuko", action="store_true", help="skip zuko even if it is installed")
    parser.add_argument("--no-nflows", action="store_true", help="skip nflows even if it is installed")
    parser.add_argument("--kl", action="store_true", help="train on the 2D toys and report KL instead")
    parser.add_argument("--steps", type=int, default=2000, help="--kl: Adam steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="--kl: learning rate")
    parser.add_argument("--seeds", type=int, default=3, help="--kl: runs per model and toy")
    parser.add_argument("--kl-samples", type=int, default=50_000, help="--kl: samples of the KL estimate")
    parser.add_argument(
        "--models", default=None, help=f"--kl: comma-separated subset of {','.join(KL_MODELS)} (default: all)"
    )
    parser.add_argument(
        "--toys",
        default=",".join(TOYS),
        help=f"--kl: comma-separated toys (coursepkg.data.toy names or {','.join(EXTRA_TOYS)})",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.dims = [int(d) for d in args.dims.split(",")]
    args.batch = 512 if args.batch is None else args.batch
    args.toys = args.toys.split(",")
    if args.models is not None:
        args.models = args.models.split(",")
        unknown = sorted(set(args.models) - set(KL_MODELS))
        if unknown:
            parser.error(f"--models: unknown {unknown}; choose from {','.join(KL_MODELS)}")
    torch.set_num_threads(args.threads)

    report = run_kl(args) if args.kl else run_timings(args)
    zuko, nflows = _zuko(), _nflows()
    report = {
        "benchmark": "maf_iaf" + ("_kl" if args.kl else ""),
        "command": "benchmarks/maf_iaf.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "zuko": None if zuko is None else zuko.__version__,
        "nflows": None if nflows is None else importlib.metadata.version("nflows"),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        **report,
    }
    out = args.out or RESULTS / ("maf_iaf_kl.json" if args.kl else "maf_iaf.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"written to {out}")
    return report


if __name__ == "__main__":
    main()
