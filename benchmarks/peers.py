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
- ``iresnet-2``: i-ResNet, ``IRESNET_BLOCKS`` (4) residual blocks ``x + g(x)`` whose ``g`` is
  ``D -> H -> H -> D`` with LipSwish and every linear map's spectral norm bounded by 0.9, exact
  log-determinants (a ``2 x 2`` Jacobian per point) in training and evaluation, sampling by
  fixed-point iteration. coursepkg ``models.iresnet(2, 4, (H, H), activation="lipswish")``
  (exact spectral norms); normflows ``Residual(LipschitzMLP([2, H, H, 2]), brute_force=True)``
  (5 power-method steps per training step through ``normflows.utils.update_lipschitz``, as its
  examples do; its net also applies a LipSwish to its input). zuko and nflows have no i-ResNet.
  No ``D = 16`` row: there normflows' training takes Russian-roulette estimates whose evaluation
  adds 20 exact terms, coursepkg exact log-determinants, different work.
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

``--kl`` measures quality instead: each kind of ``--kinds`` (RealNVP, MAF, spline MAF, i-ResNet,
the models above with hidden ``(64, 64)``, ``--hidden``, and 2D data) is trained on the eight
Gaussians and the checkerboard (``coursepkg.data.toy``) by ``coursepkg.training.train`` (Adam,
``--steps`` 2000 at lr 1e-3, batch 512, gradients clipped at norm 10, the library's own
``log_prob``), from seeds ``0..--seeds-1``, and scored by ``coursepkg.data.kl_divergence``
(``KL(p || q)`` in nats, 50,000 points of the target, the same for every model). coursepkg's
defaults are trained too where they differ from the peers' architecture (RealNVP with ActNorm,
i-ResNet with ELU). The table gives each model's median KL and coursepkg's median divided by the
best peer's of the same kind (the issue's goal: at most 0.8). ``--jobs`` runs that many trainings
at once, in processes of one thread; the runs are deterministic, so the KL does not depend on it.
A run whose loss becomes NaN or infinite (``NonFiniteLossError``) scores an infinite KL and is
named in the table; the others go on.

Usage::

    .venv/bin/python benchmarks/peers.py                          # every row, 1 thread, 3 rounds of 1 s
    .venv/bin/python benchmarks/peers.py --rows realnvp-2,realnvp-64 --rounds 5 --floor
    .venv/bin/python benchmarks/peers.py --libraries coursepkg,zuko --threads 2
    .venv/bin/python benchmarks/peers.py --kl --jobs 2            # KL, 4 kinds x 2 toys x 3 seeds
    .venv/bin/python benchmarks/peers.py --kl --kinds realnvp --seeds 2

The peers are optional (``pip install -e .[peers]``); a library that is not installed is
skipped. Results go to ``benchmarks/results/peers.json`` and ``peers.md`` (``--out``), with
``--kl`` to ``peers_kl.json`` and ``peers_kl.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when loaded by path

import glow_throughput  # noqa: E402
import maf_iaf  # noqa: E402

from coursepkg import models  # noqa: E402
from coursepkg.data import DIGITS_LEVELS, dequantize, kl_divergence, load_digits  # noqa: E402
from coursepkg.nets import MADE, MLP  # noqa: E402
from coursepkg.training import NonFiniteLossError, train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LIBRARIES = ("coursepkg", "zuko", "nflows", "normflows")
ROWS = ("maf-8", "maf-64", "realnvp-2", "realnvp-64", "iresnet-2", "glow")
MAF_LAYERS = 5
COUPLINGS = 8
# i-ResNet: residual blocks, the bound on each linear map's spectral norm, and the power-method
# steps normflows takes on each weight per training step (residual flows' own setting).
IRESNET_BLOCKS = 4
IRESNET_COEFFICIENT = 0.9
NORMFLOWS_LIPSCHITZ_STEPS = 5
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


def iresnet_coursepkg(dim: int, hidden: tuple[int, ...]) -> Built:
    """``models.iresnet`` with LipSwish, normflows' activation (the course's default too)."""
    return _built(
        models.iresnet(dim, IRESNET_BLOCKS, hidden, coefficient=IRESNET_COEFFICIENT, activation="lipswish")
    )


def iresnet_normflows(dim: int, hidden: tuple[int, ...]) -> Built:
    """normflows' residual flow: ``Residual`` blocks around ``LipschitzMLP([D, *hidden, D])``.

    ``brute_force=True``: exact log-determinants in training too (normflows computes them only at
    ``D = 2``), as ``models.iresnet`` does up to ``D = 16``; normflows' default is the Russian
    roulette estimate. Its spectral norms are power-method estimates that only advance when
    ``normflows.utils.update_lipschitz`` is called, which its examples do after every optimizer
    step: the loss does it first, so every training step (timed or not) pays for it.
    """
    import normflows as nf

    flows = [
        nf.flows.Residual(
            nf.nets.LipschitzMLP(
                [dim, *hidden, dim],
                lipschitz_const=IRESNET_COEFFICIENT,
                max_lipschitz_iter=NORMFLOWS_LIPSCHITZ_STEPS,
            ),
            brute_force=True,
        )
        for _ in range(IRESNET_BLOCKS)
    ]
    # Its roulette's parameters (unused here) are float64, and listed first: training loops
    # that take the model's dtype from its first parameter would cast the data to float64.
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows).float()

    def loss(x: torch.Tensor) -> torch.Tensor:
        nf.utils.update_lipschitz(model, NORMFLOWS_LIPSCHITZ_STEPS)
        return -model.log_prob(x).mean()

    return model, loss, (lambda n: model.sample(n)[0])


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
    if kind == "iresnet":
        return {
            "coursepkg": lambda: iresnet_coursepkg(dim, widths),
            "normflows": lambda: iresnet_normflows(dim, widths),
        }
    if kind == "glow":
        return {
            name: (lambda build=build: build(GLOW_LEVELS, GLOW_STEPS, glow_hidden))
            for name, build in glow_throughput.BUILDERS.items()
        }
    raise ValueError(f"unknown row {row!r}; choose among {', '.join(ROWS)}")


MISSING = {
    "maf": {"normflows": "its MAF evaluates densities in D passes (IAF direction)"},
    "iresnet": {"zuko": "no i-ResNet", "nflows": "no i-ResNet"},
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
    if args.floor and row.partition("-")[0] in ("maf", "realnvp"):
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


# ----------------------------------------------------------------------------------------------
# Quality: KL(p || q) on the 2D toys (--kl)
# ----------------------------------------------------------------------------------------------

KL_KINDS = ("realnvp", "maf", "spline", "iresnet")
KL_TOYS = ("eight_gaussians", "checkerboard")
GOAL = 0.8  # the issue's goal: each coursepkg family's KL at most 0.8x the best peer's


def kl_entries(hidden: int) -> dict[str, dict[str, tuple[str, Callable[[], Built]]]]:
    """For each kind of ``--kl``: label -> (library, builder), the same models as the speed rows.

    ``coursepkg`` is the course's model with its defaults, with two variants that have exactly
    the peers' architecture: the RealNVP with ``norm=None`` (the default has ActNorm before each
    coupling) and the i-ResNet with LipSwish (the default is ELU). The MAFs and the spline flows
    are ``maf_iaf.py``'s.
    """
    widths = (hidden, hidden)
    realnvp = builders("realnvp-2", hidden, 0)
    iresnet = builders("iresnet-2", hidden, 0)
    return {
        "realnvp": {
            "coursepkg": ("coursepkg", lambda: _built(models.realnvp(2, COUPLINGS, widths))),
            "coursepkg norm=None": ("coursepkg", realnvp["coursepkg"]),
            **{name: (name, realnvp[name]) for name in ("zuko", "nflows", "normflows")},
        },
        "maf": {
            "coursepkg": ("coursepkg", lambda: _built(models.maf(2, MAF_LAYERS, widths))),
            "zuko": ("zuko", lambda: _built(maf_iaf.zuko_maf(2, MAF_LAYERS, widths))),
            "nflows": ("nflows", lambda: _built(maf_iaf.nflows_maf(2, MAF_LAYERS, widths))),
        },
        "spline": {
            "coursepkg": (
                "coursepkg",
                lambda: _built(models.maf(2, MAF_LAYERS, widths, transformer="spline")),
            ),
            "zuko": ("zuko", lambda: _built(maf_iaf.zuko_nsf(2, MAF_LAYERS, widths))),
        },
        "iresnet": {
            "coursepkg": (
                "coursepkg",
                lambda: _built(models.iresnet(2, IRESNET_BLOCKS, widths, coefficient=IRESNET_COEFFICIENT)),
            ),
            "coursepkg elu": (
                "coursepkg",
                lambda: _built(
                    models.iresnet(
                        2, IRESNET_BLOCKS, widths, coefficient=IRESNET_COEFFICIENT, activation="elu"
                    )
                ),
            ),
            "normflows": ("normflows", iresnet["normflows"]),
        },
    }


def kl_run(task: dict) -> dict:
    """Train one model on one toy from one seed, as ``maf_iaf.py --kl`` does, and score it.

    ``coursepkg.training.train`` for every library (Adam, gradients clipped at norm 10), with the
    model's own loss (normflows' residual flow updates its spectral norms in it), fresh samples
    of ``coursepkg.data.toy`` each step; then ``coursepkg.data.kl_divergence`` (the same
    ``kl_samples`` points from a fixed seed for every model), in eval mode.
    """
    torch.set_num_threads(1)
    _library, build = kl_entries(task["hidden"])[task["kind"]][task["label"]]
    torch.manual_seed(task["seed"])
    model, loss_fn, _ = build()
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    try:
        train(
            model, maf_iaf.make_toy(task["toy"]), steps=task["steps"], batch_size=task["batch"],
            lr=task["lr"], loss_fn=lambda _model, x: loss_fn(x), seed=task["seed"], progress=False,
            device="cpu",
        )  # fmt: skip
    except NonFiniteLossError as error:  # a run that diverges scores infinity; the others go on
        return {
            **task,
            "kl": math.inf,
            "seconds": time.perf_counter() - start,
            "params": params,
            "failed": str(error),
        }
    seconds = time.perf_counter() - start
    kl = kl_divergence(model, maf_iaf.make_toy(task["toy"]), num_samples=task["kl_samples"])["kl"]
    return {**task, "kl": kl, "seconds": seconds, "params": params}


def run_kl(args, names: list[str]) -> list[dict]:
    """Every (kind, model, toy, seed) of ``--kinds`` and ``--toys``, ``--jobs`` at a time; the rows."""
    entries = kl_entries(args.hidden)
    tasks = [
        {
            "kind": kind,
            "label": label,
            "toy": toy_name,
            "seed": seed,
            "hidden": args.hidden,
            "steps": args.steps,
            "lr": args.lr,
            "batch": args.batch,
            "kl_samples": args.kl_samples,
        }
        for kind in args.kinds
        for label, (library, _) in entries[kind].items()
        if library in names
        for toy_name in args.toys
        for seed in range(args.seeds)
    ]
    runs = []

    def report(run: dict) -> None:
        runs.append(run)
        print(
            f"  {run['kind']:8s} {run['label']:20s} {run['toy']:16s} seed {run['seed']}: "
            f"KL {run['kl']:.4f} ({run['seconds']:.0f} s)",
            flush=True,
        )

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for run in pool.map(kl_run, tasks):
                report(run)
    else:
        for task in tasks:
            report(kl_run(task))

    rows = []
    for kind in args.kinds:
        for label, (library, _) in entries[kind].items():
            mine = [r for r in runs if r["kind"] == kind and r["label"] == label]
            if not mine:
                continue
            row = {"kind": kind, "label": label, "library": library, "params": mine[0]["params"], "toys": {}}
            for toy_name in args.toys:
                kls = [
                    round(r["kl"], 4) for r in sorted(mine, key=lambda r: r["seed"]) if r["toy"] == toy_name
                ]
                row["toys"][toy_name] = {"kl": kls, "median": statistics.median(kls)}
            row["seconds"] = [round(min(r["seconds"] for r in mine)), round(max(r["seconds"] for r in mine))]
            failed = [
                f"{r['toy']} seed {r['seed']}: {r['failed'].split('. ')[0]}" for r in mine if "failed" in r
            ]
            if failed:
                row["failed"] = failed
            rows.append(row)
    for kind in args.kinds:
        peers = [r for r in rows if r["kind"] == kind and r["library"] != "coursepkg"]
        for row in rows:
            if row["kind"] != kind or row["library"] != "coursepkg" or not peers:
                continue
            row["ratios"] = {}
            for toy_name in args.toys:
                best = min(peers, key=lambda r, t=toy_name: r["toys"][t]["median"])
                ratio = row["toys"][toy_name]["median"] / best["toys"][toy_name]["median"]
                row["ratios"][toy_name] = {
                    "peer": best["label"],
                    "ratio": round(ratio, 3),
                    "meets": ratio <= GOAL,
                }
    return rows


def kl_markdown(report: dict) -> str:
    config = report["config"]
    toys = config["toys"]
    lines = [
        f"KL(p || q) in nats after {config['steps']} Adam steps (lr {config['lr']}, batch {config['batch']}, "
        f"hidden ({config['hidden']}, {config['hidden']})), median over seeds 0..{config['seeds'] - 1} "
        f"(all seeds in brackets); ratio: coursepkg / best peer of the kind, goal <= {GOAL}.",
        "",
        "| kind | library | params | "
        + " | ".join(toys)
        + " | "
        + " | ".join(f"ratio {t}" for t in toys)
        + " | seconds per run |",
        "|---|---|---:|" + "---|" * len(toys) + "---|" * len(toys) + "---:|",
    ]
    for row in report["kl"]:
        cells = [row["kind"], row["label"], f"{row['params']:,}"]
        for toy_name in toys:
            result = row["toys"][toy_name]
            seeds = ", ".join(f"{k:.3f}" for k in result["kl"])
            cells.append(f"**{result['median']:.3f}** ({seeds})")
        for toy_name in toys:
            ratio = row.get("ratios", {}).get(toy_name)
            cells.append(
                ""
                if ratio is None
                else f"{ratio['ratio']:.2f}x {ratio['peer']}: {'meets' if ratio['meets'] else 'misses'}"
            )
        cells.append(f"{row['seconds'][0]}-{row['seconds'][1]}")
        lines.append("| " + " | ".join(cells) + " |")
        if row.get("failed"):
            lines.append(
                f"| | diverged (KL counted as infinite): {'; '.join(row['failed'])} |"
                + " |" * (2 + 2 * len(toys))
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, among {', '.join(ROWS)}")
    parser.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 while other jobs share the cores)"
    )
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument(
        "--hidden", type=int, default=None, help="MLP / MADE hidden width (128; with --kl, 64)"
    )
    parser.add_argument("--glow-hidden", type=int, default=64, help="Glow conditioner channels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per measurement and round")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time each vector row's networks alone (the floor of a step)",
    )
    parser.add_argument(
        "--kl", action="store_true", help="train on the 2D toys and report KL(p || q) instead of speed"
    )
    parser.add_argument(
        "--kinds", default=",".join(KL_KINDS), help=f"--kl: comma-separated, among {', '.join(KL_KINDS)}"
    )
    parser.add_argument("--toys", default=",".join(KL_TOYS), help="--kl: comma-separated toys")
    parser.add_argument("--steps", type=int, default=2000, help="--kl: Adam steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="--kl: learning rate")
    parser.add_argument("--seeds", type=int, default=3, help="--kl: seeds 0..N-1, the median reported")
    parser.add_argument("--kl-samples", type=int, default=50_000, help="--kl: samples of the KL estimate")
    parser.add_argument(
        "--jobs", type=int, default=1, help="--kl: runs at once, in processes of one thread each"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON (default results/peers.json, with --kl peers_kl.json); the table goes next to it (.md)",
    )
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = 64 if args.kl else 128
    if args.out is None:
        args.out = RESULTS / ("peers_kl.json" if args.kl else "peers.json")
    rows = args.rows.split(",")
    for row in rows:
        if row not in ROWS:
            parser.error(f"unknown row {row!r}; choose among {', '.join(ROWS)}")
    args.kinds, args.toys = args.kinds.split(","), args.toys.split(",")
    for kind in args.kinds:
        if kind not in KL_KINDS:
            parser.error(f"unknown kind {kind!r}; choose among {', '.join(KL_KINDS)}")
    for toy_name in args.toys:
        if toy_name not in KL_TOYS and toy_name not in maf_iaf.EXTRA_TOYS:
            parser.error(
                f"unknown toy {toy_name!r}; choose among {', '.join((*KL_TOYS, *maf_iaf.EXTRA_TOYS))}"
            )
    if args.seeds < 1 or args.jobs < 1 or args.steps < 1:
        parser.error("--seeds, --jobs and --steps must be at least 1")
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
    if args.kl:
        return _kl_main(args, argv, names, load_before)
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
        **_provenance("peers", args, argv, names, load_before),
        "threads": torch.get_num_threads(),
        "rows": results,
    }
    return _write(report, markdown(report), args.out)


def _kl_main(args, argv, names: list[str], load_before) -> dict:
    start = time.perf_counter()
    print(
        f"KL after {args.steps} steps, {args.seeds} seed(s), {', '.join(args.kinds)} on {', '.join(args.toys)}, "
        f"{args.jobs} job(s)",
        flush=True,
    )
    rows = run_kl(args, names)
    report = {
        **_provenance("peers_kl", args, argv, names, load_before),
        "wall_seconds": round(time.perf_counter() - start),
        "kl": rows,
    }
    return _write(report, kl_markdown(report), args.out)


def _provenance(benchmark: str, args, argv, names: list[str], load_before) -> dict:
    """What a report records about its run: command, options, versions, machine and load."""
    return {
        "benchmark": benchmark,
        "command": "benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "versions": {name: _version(name) for name in names},
        "machine": platform.processor() or platform.machine(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }


def _write(report: dict, table: str, out: Path) -> dict:
    """Print the Markdown table and write it beside the JSON report."""
    print("\n" + table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(table)
    print(f"written to {out} and {out.with_suffix('.md')}")
    return report


def _version(name: str) -> str:
    if name == "coursepkg":
        return "this checkout"
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    main()
