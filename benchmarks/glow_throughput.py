"""Training-step throughput of a small Glow on 1x8x8 images: coursepkg against normflows and nflows.

The model: 2 levels of 4 steps (ActNorm, LU-decomposed invertible 1x1 convolution, affine
coupling whose conditioner has 64 hidden channels, 3x3-1x1-3x3 convolutions), a Logit layer
first, batch 64 of dequantized 8x8 digits. Each library builds the same architecture with its
own layers:

- ``coursepkg``: ``models.glow((1, 8, 8), num_layers=4, hidden=64, num_levels=2,
  histogram_bins=None, dropout=0.0)``: the paper's Glow, without the builder's two additions
  (a per-pixel histogram layer and conditioner dropout), which the peers do not have;
- ``normflows`` (optional): ``MultiscaleFlow`` of ``GlowBlock(channels, 64)`` and ``Squeeze``
  per level, a ``GlowBase`` prior per level, ``transforms.Logit`` (the library's Glow example);
- ``nflows`` (optional): ``MultiscaleCompositeTransform`` of ``SqueezeTransform`` and
  ``ActNorm``, ``OneByOneConvolution``, ``AffineCouplingTransform`` with a channel mask per
  step, after ``Logit``.

The peers are optional (``pip install -e .[peers]``, or ``pip install --no-deps normflows
nflows``); the ones not importable are skipped. What is timed, in one process, in rounds in
which the models take turns (each measurement repeated for ``--budget`` seconds; the best round
is kept, as other jobs on the machine only ever slow a measurement down):

- ``train``: ``zero_grad``, the mean negative log-likelihood of the batch, ``backward`` (the
  protocol of the measurements in ``shared/notes``);
- ``adam``: the same plus ``Adam.step()`` (for-loop implementation, the same for everyone);
- ``sample``: drawing a batch of 64 images without gradients, in eval mode.

Usage::

    .venv/bin/python benchmarks/glow_throughput.py                  # 2 threads, 3 rounds of 2 s
    .venv/bin/python benchmarks/glow_throughput.py --threads 1 --rounds 5

It prints images per second, the parameter counts, the ratio coursepkg / fastest peer and the
load average, and writes ``benchmarks/results/glow_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from coursepkg import models
from coursepkg.data import DIGITS_LEVELS, dequantize, load_digits

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (1, 8, 8)
LOGIT_ALPHA = 1e-3


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# The three models, each with a loss (mean negative log-likelihood) and a sampler
# ----------------------------------------------------------------------------------------------


def build_coursepkg(levels: int, steps: int, hidden: int):
    model = models.glow(
        SHAPE,
        num_layers=steps,
        hidden=hidden,
        num_levels=levels,
        logit_alpha=LOGIT_ALPHA,
        histogram_bins=None,  # the peers' architecture: the paper's Glow
        dropout=0.0,
    )
    return model, (lambda x: -model.log_prob(x).mean()), (lambda n: model.sample(n))


def build_normflows(levels: int, steps: int, hidden: int):
    import normflows as nf

    c, h, w = SHAPE
    flows, priors, merges = [], [], []
    # normflows runs from the latent to the data: level 0 is the deepest (smallest) one.
    for i in range(levels):
        channels = c * 2 ** (levels + 1 - i)
        level = [nf.flows.GlowBlock(channels, hidden, split_mode="channel", scale=True) for _ in range(steps)]
        flows.append(level + [nf.flows.Squeeze()])
        if i == 0:
            latent = (c * 2 ** (levels + 1), h // 2**levels, w // 2**levels)
        else:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        priors.append(nf.distributions.GlowBase(latent))
    model = nf.MultiscaleFlow(
        priors, flows, merges, transform=nf.transforms.Logit(alpha=LOGIT_ALPHA), class_cond=False
    )
    return model, (lambda x: -model.log_prob(x, None).mean()), (lambda n: model.sample(n)[0])


def _nflows_conditioner(hidden: int):
    """nflows calls a coupling's network as ``net(x, context)``: Glow's 3x3-1x1-3x3 network that takes it."""
    from torch import nn

    class Net(nn.Sequential):
        def forward(self, x, context=None):
            return super().forward(x)

    def make(in_channels: int, out_channels: int) -> nn.Module:
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return Net(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            last,
        )

    return make


def build_nflows(levels: int, steps: int, hidden: int):
    from nflows import distributions, flows, transforms

    c, h, w = SHAPE
    multiscale = transforms.MultiscaleCompositeTransform(num_transforms=levels)
    shape = (c, h, w)
    for _ in range(levels):
        channels = shape[0] * 4
        layers = [transforms.SqueezeTransform()]
        for _ in range(steps):
            mask = torch.ones(channels)
            mask[: channels // 2] = -1  # the first half is kept and conditions the second
            layers += [
                transforms.ActNorm(channels),
                transforms.OneByOneConvolution(channels),
                transforms.AffineCouplingTransform(mask, _nflows_conditioner(hidden)),
            ]
        shape = multiscale.add_transform(
            transforms.CompositeTransform(layers), (channels, shape[1] // 2, shape[2] // 2)
        )
    transform = transforms.CompositeTransform([transforms.Logit(eps=LOGIT_ALPHA), multiscale])
    model = flows.Flow(transform, distributions.StandardNormal([c * h * w]))
    return model, (lambda x: -model.log_prob(x).mean()), (lambda n: model.sample(n))


BUILDERS = {"coursepkg": build_coursepkg, "normflows": build_normflows, "nflows": build_nflows}


def available(name: str) -> bool:
    if name == "coursepkg":
        return True
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def images_per_second(step, batch: int, budget: float) -> tuple[float, float]:
    """Calls ``step`` for ``budget`` seconds (at least 3 times): images per second of wall clock
    and per second of the process's CPU time (all its threads), which other jobs on the machine
    disturb less."""
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        step()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= budget:
            cpu = max(time.process_time() - cpu_start, 1e-9)
            return calls * batch / elapsed, calls * batch / cpu


def measurements(model, loss_fn, sample_fn, x: torch.Tensor) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=False)

    def train():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(x).backward()

    def adam():
        train()
        optimizer.step()

    def sample():
        model.eval()
        with torch.no_grad():
            sample_fn(x.shape[0])

    return {"train": train, "adam": adam, "sample": sample}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the course's machine)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps of flow per level")
    parser.add_argument("--hidden", type=int, default=64, help="conditioner channels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per measurement and round")
    parser.add_argument("--libraries", default="coursepkg,normflows,nflows", help="comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS / "glow_throughput.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # The peers call torch functions that torch has deprecated; say it once here, not every step.
    for deprecated in ("torch.lu is deprecated", "torch.triangular_solve is deprecated"):
        warnings.filterwarnings("ignore", message=deprecated, category=UserWarning)

    names = []
    for name in args.libraries.split(","):
        if name not in BUILDERS:
            parser.error(f"unknown library {name!r}; choose among {', '.join(BUILDERS)}")
        if available(name):
            names.append(name)
        else:
            print(f"{name} is not installed: skipped (pip install -e .[peers])")
    torch.manual_seed(0)
    digits = load_digits("train")[: args.batch]
    x = dequantize(digits, DIGITS_LEVELS)  # (B, 1, 8, 8) in [0, 1]
    load_before = os.getloadavg()

    runs, params = {}, {}
    for name in names:
        torch.manual_seed(0)
        model, loss_fn, sample_fn = BUILDERS[name](args.levels, args.steps, args.hidden)
        model.train()
        loss_fn(x).backward()  # the data-dependent initialisation of ActNorm, outside the timing
        params[name] = num_params(model)
        runs[name] = measurements(model, loss_fn, sample_fn, x)

    whats = ("train", "adam", "sample")
    best = {clock: {name: dict.fromkeys(whats, 0.0) for name in names} for clock in ("wall", "cpu")}
    for _ in range(args.rounds):
        for what in whats:
            for name in names:
                rates = images_per_second(runs[name][what], args.batch, args.budget)
                for clock, rate in zip(("wall", "cpu"), rates, strict=True):
                    best[clock][name][what] = max(best[clock][name][what], rate)
    load_after = os.getloadavg()

    peers = [name for name in names if name != "coursepkg"]
    ratios = {}
    for clock in ("wall", "cpu"):
        print(
            f"\nimages per second of {'wall clock' if clock == 'wall' else 'CPU time'} (best of {args.rounds} rounds)"
        )
        print(f"{'library':10s} {'params':>8s} {'train':>8s} {'adam':>8s} {'sample':>8s}")
        for name in names:
            b = best[clock][name]
            print(f"{name:10s} {params[name]:8d} {b['train']:8.0f} {b['adam']:8.0f} {b['sample']:8.0f}")
        if "coursepkg" in names and peers:
            ratios[clock] = {}
            for what in whats:
                fastest = max(peers, key=lambda name, w=what, c=clock: best[c][name][w])
                ratio = best[clock]["coursepkg"][what] / best[clock][fastest][what]
                ratios[clock][what] = {"peer": fastest, "ratio": round(ratio, 3)}
            print(
                "coursepkg / fastest peer: "
                + ", ".join(f"{w} {r['ratio']:.2f}x ({r['peer']})" for w, r in ratios[clock].items())
            )
    print(
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            *load_before, *load_after
        )
    )
    report = {
        "benchmark": "glow_throughput",
        "command": "benchmarks/glow_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "params": params,
        "images_per_second": {
            clock: {name: {k: round(v, 1) for k, v in b.items()} for name, b in per_name.items()}
            for clock, per_name in best.items()
        },
        "ratios": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
