"""Test bits/dim on the 8x8 digits after a fixed wall-clock budget: image RealNVP, a vector flow, Glow.

The models train on the digits' train split (1,258 images) with fresh uniform dequantization
noise in every batch, are validated every ``--eval-every`` steps on the validation split (one
fixed draw of the noise, as ``coursepkg.training`` does) and keep the parameters of their best
validation score. Training stops when ``--seconds`` of wall clock are spent (validations
included) or, with ``--patience``, after that many validations without a new best. The learning
rate follows a cosine from ``--lr`` to 0 over the time budget. The test bits/dim are then
measured on the test split with ``num_levels = 17``, as ``NormalizingFlow.bits_per_dim`` does.

Models (same optimiser, batch size, schedule and budget):

- ``image``: ``models.realnvp((1, 8, 8))`` with its defaults: Logit, convolutional couplings
  with checkerboard and channel masks, squeeze, two scales with factor-out, batch norm;
- ``vector``: ``models.realnvp(64, logit=True)`` on the flattened images (MLP couplings with
  alternating masks; the same Logit and norm layer as the image model), its MLP width chosen so
  that it has about as many parameters as the image model;
- ``glow``: ``models.glow((1, 8, 8))`` with its defaults (``--glow-*`` options change them):
  a per-pixel histogram layer (``HistogramCDF``, 16 bins) and Logit, two levels of squeeze and 4
  steps of ActNorm, LU 1x1 convolution and channel coupling (conditioners with dropout 0.3 of
  their hidden channels), with the learned prior of the factored-out half.
  ``--glow-histogram-bins 0 --glow-dropout 0`` gives the paper's Glow.

Usage::

    .venv/bin/python benchmarks/digits_bpd.py                  # 60 s per model, 2 threads
    .venv/bin/python benchmarks/digits_bpd.py --threads 1      # on a busy machine
    .venv/bin/python benchmarks/digits_bpd.py --models image,glow

A table is printed and the results, with the validation curves, go to
``benchmarks/results/digits_bpd.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from coursepkg import models, nats_to_bits_per_dim, training
from coursepkg.data import DIGITS_LEVELS, Dequantize, load_digits
from coursepkg.training import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (1, 8, 8)
DIMS = 64


def nats_to_bpd(nats_per_sample: float) -> float:
    """Mean negative log-density of dequantized images in [0, 1] -> bits/dim of the discrete images."""
    return nats_to_bits_per_dim(nats_per_sample, DIMS, DIGITS_LEVELS)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _options(args) -> dict:
    """The builder options given on the command line (the others keep the builder's defaults)."""
    names = ("num_layers", "hidden", "num_blocks", "num_scales", "norm", "scale_bound", "logit_alpha")
    options = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if options.get("norm") == "none":
        options["norm"] = None
    return options


def image_model(args) -> torch.nn.Module:
    return models.realnvp(SHAPE, **_options(args))


def glow_model(args) -> torch.nn.Module:
    """``models.glow((1, 8, 8))``: its defaults, or the ``--glow-*`` options given."""
    names = {"glow_layers": "num_layers", "glow_hidden": "hidden", "glow_levels": "num_levels"}
    options = {
        option: getattr(args, name) for name, option in names.items() if getattr(args, name) is not None
    }
    if args.logit_alpha is not None:
        options["logit_alpha"] = args.logit_alpha
    if args.scale_bound is not None:
        options["scale_bound"] = args.scale_bound
    if args.glow_dropout is not None:
        options["dropout"] = args.glow_dropout
    if args.glow_histogram_bins is not None:
        options["histogram_bins"] = args.glow_histogram_bins or None  # 0: no histogram layer
    return models.glow(SHAPE, **options)


def vector_model(args, target_params: int) -> torch.nn.Module:
    """``realnvp(64)``, two hidden layers per coupling, as wide as needed to match ``target_params``."""
    options = {k: v for k, v in _options(args).items() if k in ("norm", "scale_bound", "logit_alpha")}
    norm = options.pop("norm", "batchnorm")  # the image model's default norm

    def build(width: int) -> torch.nn.Module:
        return models.realnvp(
            DIMS, num_layers=args.vector_layers, hidden=(width, width), norm=norm, logit=True, **options
        )

    if args.vector_hidden is not None:
        return build(args.vector_hidden)
    low, high = 1, 4096  # the parameter count grows with the width: bisect
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if num_params(build(mid)) <= target_params else (low, mid)
    best = min((low, high), key=lambda w: abs(num_params(build(w)) - target_params))
    return build(best)


def train(model, name: str, data: dict, args) -> dict:
    """``coursepkg.training.train`` within the time budget; scores the best validation parameters."""
    deq = Dequantize(DIGITS_LEVELS)
    reshape = (lambda x: x.flatten(1)) if name == "vector" else (lambda x: x)
    train_x, val_x, test_x = (reshape(data[k]) for k in ("train", "val", "test"))
    history = training.train(
        model,
        train_x,
        steps=args.max_steps,
        max_seconds=args.seconds,
        batch_size=args.batch_size,
        lr=args.lr,
        clip_grad=args.clip_grad,
        scheduler="cosine",  # annealed over the time budget (or the steps, if they run out first)
        val_data=val_x,
        eval_every=args.eval_every,
        patience=args.patience,
        preprocess=deq,
        seed=args.seed,
        device="cpu",
        progress=args.verbose,
        log_every=args.eval_every,
    )
    # The best validation parameters are back in the model, in eval mode.
    test_bpd = nats_to_bpd(evaluate(model, test_x, preprocess=deq))
    steps = max(history.steps[-1:] + history.val_steps[-1:])
    return {
        "model": name,
        "params": num_params(model),
        "steps": steps,
        "seconds": round(history.elapsed, 1),
        "steps_per_second": round(steps / history.elapsed, 2),
        "best_step": history.best_step,
        "best_val_bpd": round(nats_to_bpd(history.best_val_loss), 4),
        "test_bpd": round(test_bpd, 4),
        "stopped_early": history.stopped_early,
        "curve": {
            "step": history.val_steps,
            "train_bpd": [round(nats_to_bpd(v), 4) for v in history.train_loss],
            "train_step": history.steps,
            "val_bpd": [round(nats_to_bpd(v), 4) for v in history.val_loss],
        },
    }


def train_plain(model, name: str, data: dict, args) -> dict:
    """The loop a reader writes first: Adam at a constant ``--plain-lr``, no clipping, no schedule,
    no validation; the parameters after ``--seconds`` of training are the ones scored."""
    deq = Dequantize(DIGITS_LEVELS)
    reshape = (lambda x: x.flatten(1)) if name == "vector" else (lambda x: x)
    train_x, test_x = reshape(data["train"]), reshape(data["test"])
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.plain_lr)
    model.train()
    steps, start = 0, time.perf_counter()

    def more() -> bool:
        return time.perf_counter() - start < args.seconds and (
            args.max_steps is None or steps < args.max_steps
        )

    while more():
        for index in torch.randperm(len(train_x), generator=generator).split(args.batch_size):
            if len(index) < args.batch_size or not more():
                break
            loss = -model.log_prob(deq(train_x[index])).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
    elapsed = time.perf_counter() - start
    test_bpd = nats_to_bpd(evaluate(model, test_x, preprocess=deq))
    return {
        "model": name,
        "loop": "plain",
        "params": num_params(model),
        "steps": steps,
        "seconds": round(elapsed, 1),
        "steps_per_second": round(steps / elapsed, 2),
        "best_step": steps,
        "best_val_bpd": None,  # no validation in this loop
        "test_bpd": round(test_bpd, 4),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 = the course's machine)")
    parser.add_argument("--models", default="image,vector,glow", help="comma-separated: image, vector, glow")
    parser.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=4e-3, help="peak of the cosine schedule")
    parser.add_argument("--clip-grad", type=float, default=10.0)
    parser.add_argument(
        "--loop",
        default="course",
        choices=("course", "plain", "both"),
        help="coursepkg.training.train (cosine, clipping, best validation), a plain Adam loop, or both",
    )
    parser.add_argument("--plain-lr", type=float, default=1e-3, help="plain loop: constant learning rate")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between validations")
    parser.add_argument("--patience", type=int, default=None, help="validations without a new best")
    # Builder options; unset ones keep models.realnvp's defaults.
    parser.add_argument("--hidden", type=int, default=None, help="image model: conditioner channels")
    parser.add_argument("--num-layers", type=int, default=None, help="image model: couplings per group")
    parser.add_argument("--num-blocks", type=int, default=None, help="image model: residual blocks")
    parser.add_argument("--num-scales", type=int, default=None, help="image model: scales")
    parser.add_argument("--norm", default=None, help="actnorm, batchnorm or none (both models)")
    parser.add_argument("--scale-bound", type=float, default=None, help="both models")
    parser.add_argument("--logit-alpha", type=float, default=None, help="both models")
    parser.add_argument("--glow-layers", type=int, default=None, help="glow: steps per level")
    parser.add_argument("--glow-hidden", type=int, default=None, help="glow: conditioner channels")
    parser.add_argument("--glow-levels", type=int, default=None, help="glow: levels")
    parser.add_argument("--glow-dropout", type=float, default=None, help="glow: conditioner dropout")
    parser.add_argument(
        "--glow-histogram-bins",
        type=int,
        default=None,
        help="glow: bins of the per-pixel histogram (0: none)",
    )
    parser.add_argument("--vector-layers", type=int, default=8, help="vector model: couplings")
    parser.add_argument("--vector-hidden", type=int, default=None, help="default: match the parameters")
    parser.add_argument("--out", type=Path, default=RESULTS / "digits_bpd.json")
    parser.add_argument("--verbose", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = {split: load_digits(split) for split in ("train", "val", "test")}
    target = num_params(image_model(args))
    results = []
    for name in args.models.split(","):
        if name not in ("image", "vector", "glow"):
            parser.error(f"unknown model {name!r}; choose among image, vector, glow")
        for loop in ("course", "plain") if args.loop == "both" else (args.loop,):
            torch.manual_seed(args.seed)
            if name == "image":
                model = image_model(args)
            elif name == "glow":
                model = glow_model(args)
            else:
                model = vector_model(args, target)
            if loop == "course":
                results.append(dict(train(model, name, data, args), loop="course"))
            else:
                results.append(train_plain(model, name, data, args))

    print(
        f"\n{'model':8s} {'loop':6s} {'params':>9s} {'steps':>6s} {'seconds':>8s} {'best step':>9s} "
        f"{'val bpd':>8s} {'test bpd':>8s}"
    )
    for r in results:
        val = "-" if r["best_val_bpd"] is None else f"{r['best_val_bpd']:.3f}"
        print(
            f"{r['model']:8s} {r['loop']:6s} {r['params']:9d} {r['steps']:6d} {r['seconds']:8.1f} "
            f"{r['best_step']:9d} {val:>8s} {r['test_bpd']:8.3f}"
        )
    report = {
        "benchmark": "digits_bpd",
        "command": "benchmarks/digits_bpd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"written to {args.out}")
    return report


if __name__ == "__main__":
    main()
