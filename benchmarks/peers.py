"""coursepkg against zuko, nflows and normflows: training and sampling throughput on identical models.

Rows (``--rows``), each built with the same architecture in every library that has the model:

- ``maf-8``, ``maf-64``: MAF, 5 affine autoregressive layers whose MADEs have hidden layers
  ``(H, H)`` (``--hidden``, 128), alternating natural and reversed orders, standard normal base.
  coursepkg ``models.maf(D, 5, (H, H))``; zuko ``flows.MAF``; nflows
  ``MaskedAffineAutoregressiveTransform`` with a ``ReversePermutation`` between layers (the
  builders of ``maf_iaf.py``). normflows is left out: its ``MaskedAffineAutoregressive`` inside
  a ``NormalizingFlow`` evaluates densities in ``D`` passes (the IAF direction), another model's
  cost.
- ``realnvp-2``, ``realnvp-64``: RealNVP, 8 affine couplings of vectors whose conditioners are
  MLPs ``kept -> H -> H -> 2 changed`` with ReLU, alternating masks, no normalisation layers.
  coursepkg ``models.realnvp(D, 8, (H, H), norm=None)``; zuko ``flows.RealNVP``; nflows
  ``AffineCouplingTransform`` with alternating masks; normflows ``AffineCouplingBlock`` and
  ``Permute(D, "swap")`` (its couplings split into halves; the swap alternates them).
- ``glow``: Glow on ``1x8x8`` images, 2 levels of 4 steps (ActNorm, LU 1x1 convolution, affine
  coupling with a 3x3-1x1-3x3 conditioner of ``--glow-hidden`` (64) channels), dequantized
  digits (the builders of ``glow_throughput.py``). zuko has no Glow.

Each library's scale function is its own (coursepkg a soft clamp of the log-scale, zuko a
soft clamp too, nflows ``sigmoid(u + 2) + 1e-3``, normflows ``exp``): the element-wise work is
the same but for one cheap function. What is timed, on batches of ``--batch`` (512):

- ``train``: ``zero_grad``, the batch's mean negative log-likelihood, ``backward`` and a step of
  ``torch.optim.Adam`` (its default implementation, the same for every library), in train mode;
- ``sample``: drawing ``--batch`` samples without gradients, in eval mode.

In each of ``--rounds`` rounds every library of a row runs each measurement for ``--budget``
seconds, taking turns; the best round is kept (other jobs only ever slow a measurement down).
Rates are examples per second of wall clock; the JSON also holds them per second of the
process's CPU time. Each row reports the parameter counts (equal within 10%, or the row's note
says why not) and coursepkg's rate divided by the fastest peer's. With ``--floor``, the vector
rows also time their conditioner networks alone (no flow around them), in the same rounds: no
library's training step can be faster than that.

Usage::

    .venv/bin/python benchmarks/peers.py                          # every row, 1 thread, 3 rounds of 1 s
    .venv/bin/python benchmarks/peers.py --rows realnvp-2,realnvp-64 --rounds 5 --floor
    .venv/bin/python benchmarks/peers.py --libraries coursepkg,zuko --threads 2

The peers are optional (``pip install -e .[peers]``); a library that is not installed is
skipped. Results go to ``benchmarks/results/peers.json`` and ``peers.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when loaded by path

import glow_throughput  # noqa: E402
import maf_iaf  # noqa: E402

from coursepkg import models  # noqa: E402
from coursepkg.data import DIGITS_LEVELS, dequantize, load_digits  # noqa: E402
from coursepkg.nets import MADE, MLP  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("coursepkg", "zuko", "nflows", "normflows")
ROWS = ("maf-8", "maf-64", "realnvp-2", "realnvp-64", "glow")
MAF_LAYERS = 5
COUPLINGS = 8
GLOW_LEVELS, GLOW_STEPS = 2, 4
# A model: (module, batch -> mean negative log-likelihood, n -> n samples).
Built = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor], Callable[[int], torch.Tensor]]


def available(name: str) -> bool:
    return glow_throughput.available(name)


# ----------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------


def _built(model) -> Built:
    """A model with the course's ``log_prob`` and ``sample`` (coursepkg's, or ``maf_iaf``'s wrappers)."""
    return model, (lambda x: -model.log_prob(x).mean()), model.sample


def _alternating(dim: int, index: int) -> torch.Tensor:
    return torch.arange(dim) % 2 == index % 2


class _NflowsMLP(nn.Sequential):
    """``in -> H -> ... -> out`` with ReLU and a zero last layer; nflows calls it as ``net(x, context)``."""

    def __init__(self, in_features: int, out_features: int, hidden: tuple[int, ...]):
        sizes = (in_features, *hidden, out_features)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        super().__init__(*layers[:-1])
        nn.init.zeros_(self[-1].weight)
        nn.init.zeros_(self[-1].bias)

    def forward(self, x, context=None):
        return super().forward(x)


def realnvp_zuko(dim: int, hidden: tuple[int, ...]) -> Built:
    import zuko

    return _built(maf_iaf.ZukoModel(zuko.flows.RealNVP(dim, transforms=COUPLINGS, hidden_features=hidden)))


def realnvp_nflows(dim: int, hidden: tuple[int, ...]) -> Built:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform

    layers = []
    for i in range(COUPLINGS):
        mask = torch.where(_alternating(dim, i), -1, 1)  # nflows transforms the entries > 0
        layers.append(AffineCouplingTransform(mask, lambda a, b: _NflowsMLP(a, b, hidden)))
    return _built(maf_iaf.NflowsModel(Flow(CompositeTransform(layers), StandardNormal([dim]))))


def realnvp_normflows(dim: int, hidden: tuple[int, ...]) -> Built:
    import normflows as nf

    flows = []
    for _ in range(COUPLINGS):
        net = nf.nets.MLP([dim // 2, *hidden, 2 * (dim - dim // 2)], init_zeros=True)
        flows += [nf.flows.AffineCouplingBlock(net, split_mode="channel"), nf.flows.Permute(dim, mode="swap")]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
    return model, (lambda x: -model.log_prob(x).mean()), (lambda n: model.sample(n)[0])


def builders(row: str, hidden: int, glow_hidden: int) -> dict[str, Callable[[], Built]]:
    """The libraries that have the row's model, each with a function that builds it."""
    kind, _, size = row.partition("-")
    dim = int(size) if size else 0
    widths = (hidden, hidden)
    if kind == "maf":
        return {
            "coursepkg": lambda: _built(models.maf(dim, MAF_LAYERS, widths)),
            "zuko": lambda: _built(maf_iaf.zuko_maf(dim, MAF_LAYERS, widths)),
            "nflows": lambda: _built(maf_iaf.nflows_maf(dim, MAF_LAYERS, widths)),
        }
    if kind == "realnvp":
        return {
            "coursepkg": lambda: _built(models.realnvp(dim, COUPLINGS, widths, norm=None)),
            "zuko": lambda: realnvp_zuko(dim, widths),
            "nflows": lambda: realnvp_nflows(dim, widths),
            "normflows": lambda: realnvp_normflows(dim, widths),
        }
    if kind == "glow":
        return {
            name: (lambda build=build: build(GLOW_LEVELS, GLOW_STEPS, glow_hidden))
            for name, build in glow_throughput.BUILDERS.items()
        }
    raise ValueError(f"unknown row {row!r}; choose among {', '.join(ROWS)}")


MISSING = {
    "maf": {"normflows": "its MAF evaluates densities in D passes (IAF direction)"},
    "glow": {"zuko": "no Glow"},
}


class _NetworksAlone(nn.Module):
    """A row's conditioner networks with no flow around them: the floor of any library's step.

    The same networks as the row's model (MADEs ``D -> (H, H) -> 2D`` for a MAF, MLPs ``kept ->
    (H, H) -> 2 changed`` for a RealNVP), each applied to the batch, the loss the sum of their
    squared outputs. What a training step of the model costs beyond this (gathers, the
    element-wise maps, log-determinants, the base density) is the overhead a library can cut.
    """

    def __init__(self, row: str, hidden: int):
        super().__init__()
        kind, _, size = row.partition("-")
        dim, widths = int(size), (hidden, hidden)
        if kind == "maf":
            self.inputs = slice(None)
            self.nets = nn.ModuleList(MADE(dim, widths, zero_last=False) for _ in range(MAF_LAYERS))
        else:
            self.inputs = slice(dim // 2)
            self.nets = nn.ModuleList(
                MLP(dim // 2, 2 * (dim - dim // 2), widths, zero_last=False) for _ in range(COUPLINGS)
            )

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return sum(net(x[:, self.inputs]).square().sum() for net in self.nets)


def row_data(row: str, batch: int) -> torch.Tensor:
    if row == "glow":
        digits = load_digits("train")
        digits = digits[torch.arange(batch) % len(digits)]
        return dequantize(digits, DIGITS_LEVELS)  # (B, 1, 8, 8) in [0, 1]
    return torch.randn(batch, int(row.partition("-")[2]))


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def measurements(model: nn.Module, loss_fn, sample_fn, x: torch.Tensor) -> dict[str, Callable[[], None]]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x).backward()
        optimizer.step()

    def sample():
        model.eval()
        with torch.no_grad():
            sample_fn(x.shape[0])

    return {"train": train, "sample": sample}


def run_row(row: str, names: list[str], args) -> dict:
    x = row_data(row, args.batch)
    makers = builders(row, args.hidden, args.glow_hidden)
    runs, params = {}, {}
    for name in names:
        if name not in makers:
            continue
        torch.manual_seed(0)
        model, loss_fn, sample_fn = makers[name]()
        model.train()
        loss_fn(x).backward()  # data-dependent initialisations (ActNorm), outside the timing
        model.zero_grad(set_to_none=True)
        params[name] = sum(p.numel() for p in model.parameters())
        runs[name] = measurements(model, loss_fn, sample_fn, x)
    floor_step, floor = None, {}
    if args.floor and row != "glow":
        torch.manual_seed(0)
        networks = _NetworksAlone(row, args.hidden)
        floor_step, floor = measurements(networks, networks.loss, None, x)["train"], {"wall": 0.0, "cpu": 0.0}
    whats = ("train", "sample")
    best = {clock: {name: dict.fromkeys(whats, 0.0) for name in runs} for clock in ("wall", "cpu")}
    for _ in range(args.rounds):
        for what in whats:
            for name in runs:
                rates = glow_throughput.images_per_second(runs[name][what], args.batch, args.budget)
                for clock, rate in zip(("wall", "cpu"), rates, strict=True):
                    best[clock][name][what] = max(best[clock][name][what], rate)
            if what == "train" and floor_step is not None:  # in the same rounds, for the same load
                rates = glow_throughput.images_per_second(floor_step, args.batch, args.budget)
                for clock, rate in zip(("wall", "cpu"), rates, strict=True):
                    floor[clock] = max(floor[clock], rate)
    peers = [name for name in runs if name != "coursepkg"]
    ratios = {}
    if "coursepkg" in runs and peers:
        for clock, per in best.items():
            ratios[clock] = {}
            for what in whats:
                fastest = max(peers, key=lambda name, w=what, per=per: per[name][w])
                ratios[clock][what] = {
                    "peer": fastest,
                    "ratio": round(per["coursepkg"][what] / per[fastest][what], 3),
                }
    notes = [
        f"{name}: {why}" for name, why in MISSING.get(row.partition("-")[0], {}).items() if name in names
    ]
    reference = params.get("coursepkg") or next(iter(params.values()), 0)
    unequal = [name for name, n in params.items() if abs(n - reference) > 0.1 * reference]
    if unequal:
        notes.append("parameter counts differ by more than 10%: " + ", ".join(unequal))
    return {
        "row": row,
        "params": params,
        "examples_per_second": {
            clock: {name: {k: round(v, 1) for k, v in b.items()} for name, b in per.items()}
            for clock, per in best.items()
        },
        "ratios": ratios,
        "notes": notes,
        "networks_alone": floor,
    }


def markdown(report: dict) -> str:
    lines = [
        f"Examples per second (batch {report['config']['batch']}, {report['threads']} thread(s), best of "
        f"{report['config']['rounds']} rounds; load average {report['load_average_before'][0]:.1f} before, "
        f"{report['load_average_after'][0]:.1f} after), of wall clock; ratio: coursepkg / fastest peer, "
        "of wall clock and (in brackets) of CPU time.",
        "",
        "| row | library | params | train | sample | train ratio | sample ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in report["rows"]:
        rates = result["examples_per_second"]["wall"]
        ratios = result["ratios"]
        for i, name in enumerate(rates):
            cells = [result["row"] if i == 0 else "", name, f"{result['params'][name]:,}"]
            cells += [f"{rates[name]['train']:,.0f}", f"{rates[name]['sample']:,.0f}"]
            if name == "coursepkg" and ratios:
                cells += [
                    f"**{ratios['wall'][w]['ratio']:.2f}x** ({ratios['cpu'][w]['ratio']:.2f}x), "
                    f"{ratios['wall'][w]['peer']}"
                    for w in ("train", "sample")
                ]
            else:
                cells += ["", ""]
            lines.append("| " + " | ".join(cells) + " |")
        if result.get("networks_alone"):
            floor = result["networks_alone"]
            lines.append(f"| | networks alone (floor) | | {floor['wall']:,.0f} | | | |")
        if result["notes"]:
            lines.append(f"| | {'; '.join(result['notes'])} | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, among {', '.join(ROWS)}")
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 while other jobs share the cores)"
    )
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128, help="MLP / MADE hidden width")
    parser.add_argument("--glow-hidden", type=int, default=64, help="Glow conditioner channels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement and round")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time each vector row's networks alone (the floor of a step)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "peers.json", help="JSON; the table goes next to it (.md)"
    )
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    for row in rows:
        if row not in ROWS:
            parser.error(f"unknown row {row!r}; choose among {', '.join(ROWS)}")
    names = []
    for name in args.libraries.split(","):
        if name not in LIBRARIES:
            parser.error(f"unknown library {name!r}; choose among {', '.join(LIBRARIES)}")
        if available(name):
            names.append(name)
        else:
            print(f"{name} is not installed: skipped (pip install -e .[peers])")
    torch.set_num_threads(args.threads)
    # The peers call torch functions that torch has deprecated; say it once here, not every step.
    for deprecated in ("torch.lu is deprecated", "torch.triangular_solve is deprecated"):
        warnings.filterwarnings("ignore", message=deprecated, category=UserWarning)

    load_before = os.getloadavg()
    results = []
    for row in rows:
        result = run_row(row, names, args)
        results.append(result)
        rates = result["examples_per_second"]["wall"]
        print(
            f"{row}: "
            + ", ".join(f"{n} {r['train']:,.0f} / {r['sample']:,.0f}" for n, r in rates.items())
            + "".join(
                f"; {w} {r['ratio']:.2f}x ({r['peer']})" for w, r in result["ratios"].get("wall", {}).items()
            ),
            flush=True,
        )
    report = {
        "benchmark": "peers",
        "command": "benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "versions": {name: _version(name) for name in names},
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "rows": results,
    }
    table = markdown(report)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(table)
    print(f"written to {args.out} and {args.out.with_suffix('.md')}")
    return report


def _version(name: str) -> str:
    if name == "coursepkg":
        return "this checkout"
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    main()
