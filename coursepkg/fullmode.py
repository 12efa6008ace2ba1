r"""Full-mode training of the image chapters' models as a script: a CPU, one GPU, or many.

The chapters train small models in the notebook (quick mode). Their large runs, RealNVP and
Glow on MNIST and CIFAR-10, take hours on a GPU, so they run as a script that writes checkpoints
and, at the end, a row of the results file that the chapters read::

    python -m coursepkg.fullmode --model glow --data mnist            # a CPU or one GPU
    torchrun --standalone --nproc_per_node 4 -m coursepkg.fullmode --model glow --data cifar10

Under ``torchrun`` every process trains a replica of the model wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` (NCCL on GPUs, gloo on CPUs) on its share of
each batch, drawn by a :class:`~torch.utils.data.DistributedSampler`. The run is laid out so that
the number of processes changes nothing but the speed:

- ``--batch-size`` is the **global** batch; each of the ``W`` processes takes ``B / W`` of it.
  The sampler deals the global batch of step ``t`` out to the processes, so the ``W`` shares of
  a step are exactly the batch a single process would draw, and averaging the gradients (what
  DDP does) gives the single-process gradient.
- The dequantization noise of step ``t`` is drawn for the whole global batch from a generator
  seeded by ``(seed, t)``; each process keeps the rows of its share. So the noise, too, does not
  depend on ``W``, and resuming needs no random state.
- Data-dependent initialisation (ActNorm) sees the same first global batch in every process,
  before DDP starts, so the replicas start identical.

Batch normalisation (RealNVP on images) is the exception: its statistics are per process, so a
run on ``W`` processes differs from one process by that noise.

Only the first process writes: a checkpoint every ``--checkpoint-every`` steps (atomically, to
``checkpoints/fullmode-<model>-<data>.pt``) and the results file. Run the same command again to
resume from the last checkpoint (with any number of processes that divides the batch).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["RUNS", "PUBLISHED", "RESULTS_FILE", "read_results", "result_rows", "run", "main"]

#: The results file the chapters read (shipped with the package, rewritten by :func:`run`).
RESULTS_FILE = Path(__file__).with_name("full_mode_results.json")

#: Per (model, data): the builder's options and the training recipe. ``digits`` is for testing
#: the script on a CPU; the others are the chapters' full-mode runs.
RUNS: dict[tuple[str, str], dict] = {
    ("realnvp", "digits"): {"builder": {"hidden": 16}, "batch_size": 64, "lr": 1e-3},
    # No dropout in the CPU test run: its tests compare runs (resumed, several processes) bit for bit.
    ("glow", "digits"): {
        "builder": {"num_layers": 2, "hidden": 16, "dropout": 0.0},
        "batch_size": 64,
        "lr": 1e-3,
    },
    ("realnvp", "mnist"): {"builder": {"hidden": 64, "num_blocks": 2}, "batch_size": 64, "lr": 1e-3},
    ("realnvp", "cifar10"): {"builder": {"hidden": 64, "num_blocks": 4}, "batch_size": 64, "lr": 1e-3},
    # The large Glows are the paper's model (no histogram layer, no dropout): their bits/dim sit
    # beside the paper's. The builder's two additions are for the small digits (chapter 6).
    ("glow", "mnist"): {
        "builder": {"num_layers": 8, "hidden": 128, "num_levels": 2, "histogram_bins": None, "dropout": 0.0},
        "batch_size": 64,
        "lr": 1e-3,
    },
    ("glow", "cifar10"): {
        "builder": {"num_layers": 16, "hidden": 256, "num_levels": 3, "histogram_bins": None, "dropout": 0.0},
        "batch_size": 64,
        "lr": 1e-3,
    },
}

#: Test bits/dim published for the papers' (much larger) models, with where they come from.
PUBLISHED: dict[tuple[str, str], tuple[float, str]] = {
    ("realnvp", "cifar10"): (3.49, "dinh2017realnvp"),
    ("glow", "cifar10"): (3.35, "kingma2018glow"),
    ("realnvp", "mnist"): (1.06, "grathwohl2019ffjord"),
    ("glow", "mnist"): (1.05, "grathwohl2019ffjord"),
}


def _levels(data: str) -> int:
    from .data import CIFAR10_LEVELS, DIGITS_LEVELS, MNIST_LEVELS

    return {"digits": DIGITS_LEVELS, "mnist": MNIST_LEVELS, "cifar10": CIFAR10_LEVELS}[data]


def _load(data: str, split: str, root: str, download: bool) -> torch.Tensor:
    from .data import load_cifar10, load_digits, load_mnist

    if data == "digits":
        return load_digits(split)
    loader = load_mnist if data == "mnist" else load_cifar10
    return loader(root, split=split, download=download)


def _build(model: str, data: str, options: dict) -> nn.Module:
    from . import models
    from .data import image_shape

    builder = models.glow if model == "glow" else models.realnvp
    return builder(image_shape(data), **options)


# -- the results file -------------------------------------------------------------------------


def read_results(path: str | os.PathLike | None = None) -> dict:
    """The results file as a dict ``"model/data" -> row``; a row without ``"test_bits_per_dim"``
    has not been measured yet (its ``"note"`` says why)."""
    path = RESULTS_FILE if path is None else Path(path)
    return json.loads(path.read_text())


def result_rows(model: str, path: str | os.PathLike | None = None) -> list[dict]:
    """One row per full-mode data set of ``model`` for a chapter's table: the data set, the
    published bits/dim and its source, and the measured bits/dim (``None`` if not measured yet)
    with the run's steps, time, device and number of processes."""
    results = read_results(path)
    rows = []
    for (name, data), (published, source) in PUBLISHED.items():
        if name != model:
            continue
        row = results.get(f"{model}/{data}", {})
        rows.append(
            {
                "data": data,
                "published": published,
                "source": source,
                "measured": row.get("test_bits_per_dim"),
                **{k: row.get(k) for k in ("steps", "hours", "device", "world_size", "note")},
            }
        )
    return rows


def _record(path: Path, key: str, row: dict) -> None:
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = row
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- distributed set-up ------------------------------------------------------------------------


class _Distributed:
    """The process group when started by torchrun (``WORLD_SIZE > 1``), else a single process."""

    def __init__(self, device: str | None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
        self.active = self.world > 1
        if self.active:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, rank=self.rank, world_size=self.world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.active:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active:
            dist.destroy_process_group()


class _NegativeLogLikelihood(nn.Module):
    """DDP synchronises gradients through ``forward``, so the loss is computed there."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.flow.log_prob(x).mean()


def _noise(seed: int, step: int, shape) -> torch.Tensor:
    """The uniform dequantization noise of a whole global batch at ``step``: drawn from a generator
    seeded by ``(seed, step)``, so it is the same whatever ran before (resume) and however many
    processes share the batch (each keeps its rows)."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))


def _atomic_save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def _test_bits_per_dim(
    flow, test: torch.Tensor, num_levels: int, env: _Distributed, batch: int = 500
) -> float:
    """Mean test bits/dim; each process scores every ``W``-th image, the sums are added up."""
    from .core import nats_to_bits_per_dim
    from .data import dequantize

    flow.eval()
    mine = test[env.rank :: env.world]
    total = torch.zeros(2, dtype=torch.float64, device=env.device)
    for start in range(0, len(mine), batch):
        levels = mine[start : start + batch]
        x = dequantize(levels, num_levels, noise=_noise(12345, env.rank * len(test) + start, levels.shape))
        x = x.to(env.device)
        dim = math.prod(x.shape[1:])
        bpd = nats_to_bits_per_dim(-flow.log_prob(x), dim, num_levels)
        total += torch.stack([bpd.double().sum(), torch.tensor(float(len(x)), device=env.device).double()])
    total = env.sum(total)
    flow.train()
    return (total[0] / total[1]).item()


def run(
    model: str,
    data: str,
    *,
    steps: int,
    batch_size: int | None = None,
    lr: float | None = None,
    max_seconds: float | None = None,
    clip_grad: float | None = 10.0,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = "auto",
    checkpoint_every: int = 500,
    results: str | os.PathLike | None = "auto",
    root: str = "data",
    download: bool = False,
    device: str | None = None,
    log_every: int = 100,
) -> dict:
    """Train one of :data:`RUNS` (in this process, or in each process of a torchrun group).

    Args:
        model, data: a key of :data:`RUNS`, e.g. ``("glow", "mnist")``.
        steps: optimizer updates in all (a resumed run continues up to this number).
        batch_size: the global batch (default: the run's); a multiple of the number of processes.
        lr: Adam's learning rate (default: the run's).
        max_seconds: stop after the first step past this many seconds of training (summed over
            resumed runs), whatever ``steps`` says.
        clip_grad: largest total gradient norm, ``None`` for no clipping.
        seed: initialisation, data order and noise.
        checkpoint: file to resume from and save to; ``"auto"``:
            ``checkpoints/fullmode-<model>-<data>.pt``; ``None``: no checkpoints.
        checkpoint_every: steps between checkpoints (and one at the end).
        results: the results file to record the test bits/dim in; ``"auto"``: :data:`RESULTS_FILE`
            for the chapters' data sets and nothing for the digits; ``None``: nothing.
        root, download: where MNIST/CIFAR-10 are, and whether to fetch them (torchvision).
        device: ``"cpu"``, ``"cuda"``...; default: each process's GPU if there is one.
        log_every: steps between printed losses (first process only).

    Returns:
        ``{"losses": [...], "test_bits_per_dim": float, "steps": int, "seconds": float,
        "world_size": int, "parameters": int}``; ``losses`` holds the global batch's mean
        negative log-likelihood of every step run by this call.
    """
    if (model, data) not in RUNS:
        raise ValueError(f"no run {model!r} on {data!r}; choose one of {sorted(RUNS)}")
    recipe = RUNS[(model, data)]
    batch_size = recipe["batch_size"] if batch_size is None else int(batch_size)
    lr = recipe["lr"] if lr is None else float(lr)
    env = _Distributed(device)
    try:
        if batch_size % env.world:
            raise ValueError(
                f"the global batch size {batch_size} must be a multiple of the number of processes "
                f"({env.world}); change --batch-size or --nproc_per_node"
            )
        return _run(model, data, recipe, env, steps, batch_size, lr, max_seconds, clip_grad, seed,
                    checkpoint, checkpoint_every, results, root, download, log_every)  # fmt: skip
    finally:
        env.close()


def _run(model, data, recipe, env, steps, batch_size, lr, max_seconds, clip_grad, seed,
         checkpoint, checkpoint_every, results, root, download, log_every) -> dict:  # fmt: skip
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    from .data import dequantize

    num_levels = _levels(data)
    train_levels = _load(data, "train", root, download)
    test_levels = _load(data, "test", root, download)
    local_batch = batch_size // env.world
    steps_per_epoch = len(train_levels) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"the batch size {batch_size} is larger than the {len(train_levels)} training images"
        )

    torch.manual_seed(seed)
    flow = _build(model, data, recipe["builder"]).to(env.device)
    parameters = sum(p.numel() for p in flow.parameters())
    sampler = DistributedSampler(
        range(len(train_levels)),
        num_replicas=env.world,
        rank=env.rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    share = slice(env.rank, None, env.world)  # this process's rows of a global batch
    epoch_indices: dict[int, list[int]] = {}

    def batch_of(step: int) -> torch.Tensor:
        """This process's dequantized share of the global batch of ``step``.

        The sampler deals the epoch's permutation out round-robin, so the ``B / W`` images it gives
        process ``r`` for a step are rows ``r, r + W, r + 2W, ...`` of the ``B`` images one process
        would take: the noise rows are picked the same way.
        """
        epoch, offset = divmod(step, steps_per_epoch)
        if epoch not in epoch_indices:
            sampler.set_epoch(epoch)
            epoch_indices.clear()
            epoch_indices[epoch] = list(sampler)
        levels = train_levels[epoch_indices[epoch][offset * local_batch : (offset + 1) * local_batch]]
        noise = _noise(seed, step, (batch_size, *levels.shape[1:]))[share]
        return dequantize(levels, num_levels, noise=noise)

    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    path = _checkpoint_path(checkpoint, model, data)
    state = torch.load(path, map_location=env.device, weights_only=False) if path and path.exists() else None
    if state is not None:
        if state["batch_size"] != batch_size or state["seed"] != seed:
            raise ValueError(
                f"{path} was written by a run with batch size {state['batch_size']} and seed {state['seed']}; "
                "resume with the same values, or delete the file to start afresh"
            )
        flow.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds_before = state["step"], state["seconds"]
        if env.main:
            print(f"resuming from {path} at step {step}", flush=True)
    else:
        # Data-dependent initialisation (ActNorm) on the same images in every process: the whole
        # first global batch, gathered from the shares.
        with torch.no_grad():
            first = batch_of(0).to(env.device)
            if env.active:
                shares = [torch.empty_like(first) for _ in range(env.world)]
                dist.all_gather(shares, first)
                first = torch.stack(shares, 1).flatten(0, 1)  # rows back in global order
            flow(first)
        step, seconds_before = 0, 0.0

    objective = _NegativeLogLikelihood(flow)
    if env.active:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)

    def save() -> None:
        if path is not None and env.main:
            _atomic_save(
                {
                    "model": flow.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "seconds": seconds_before + (time.monotonic() - started),
                    "batch_size": batch_size,
                    "seed": seed,
                },
                path,
            )
        env.barrier()

    losses: list[float] = []
    started = time.monotonic()
    flow.train()
    while step < steps:
        loss = objective(batch_of(step).to(env.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            nn.utils.clip_grad_norm_(flow.parameters(), clip_grad)
        optimizer.step()
        step += 1
        global_loss = env.mean(loss.detach()).item()
        if not math.isfinite(global_loss):
            raise FloatingPointError(
                f"the loss is {global_loss} at step {step}; lower --lr or keep --clip-grad on, "
                "and resume from the last checkpoint"
            )
        losses.append(global_loss)
        if env.main and (step % log_every == 0 or step == steps):
            print(f"step {step}/{steps}: loss {global_loss:.4f} nats", flush=True)
        if path is not None and step % checkpoint_every == 0:
            save()
        spent = seconds_before + (time.monotonic() - started)
        if max_seconds is not None and spent >= max_seconds:
            break
    seconds = seconds_before + (time.monotonic() - started)
    if path is not None and step % checkpoint_every:  # a last step on the period was just saved
        save()
    bpd = _test_bits_per_dim(flow, test_levels, num_levels, env)
    summary = {
        "losses": losses,
        "test_bits_per_dim": bpd,
        "steps": step,
        "seconds": seconds,
        "world_size": env.world,
        "parameters": parameters,
    }
    results_path = RESULTS_FILE if results == "auto" and data != "digits" else None
    if results not in ("auto", None):
        results_path = Path(results)
    if env.main:
        print(
            f"{model} on {data}: test bits/dim {bpd:.3f} after {step} steps, {seconds / 3600:.2f} h",
            flush=True,
        )
        if results_path is not None:
            device_name = (
                torch.cuda.get_device_name(env.device)
                if env.device.type == "cuda"
                else platform.processor() or "CPU"
            )
            _record(
                results_path,
                f"{model}/{data}",
                {
                    "test_bits_per_dim": round(bpd, 4),
                    "steps": step,
                    "hours": round(seconds / 3600, 3),
                    "device": device_name,
                    "world_size": env.world,
                    "global_batch": batch_size,
                    "parameters": parameters,
                    "torch": torch.__version__,
                    "date": datetime.date.today().isoformat(),
                },
            )
    return summary


def _checkpoint_path(checkpoint, model: str, data: str) -> Path | None:
    if checkpoint is None:
        return None
    if checkpoint == "auto":
        return Path("checkpoints") / f"fullmode-{model}-{data}.pt"
    return Path(checkpoint)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coursepkg.fullmode",
        description="Train a chapter's full-mode image model (RealNVP or Glow on MNIST or CIFAR-10); "
        "run under torchrun for several GPUs. The same command resumes from its checkpoint.",
    )
    parser.add_argument("--model", choices=("realnvp", "glow"), required=True)
    parser.add_argument("--data", choices=("digits", "mnist", "cifar10"), required=True)
    parser.add_argument("--steps", type=int, default=100_000, help="optimizer updates in all")
    parser.add_argument("--max-seconds", type=float, default=None, help="training time budget")
    parser.add_argument("--batch-size", type=int, default=None, help="the global batch")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="auto", help="'auto', a path, or 'none'")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--results", default="auto", help="'auto', a path, or 'none'")
    parser.add_argument("--root", default="data", help="folder of the MNIST/CIFAR-10 files")
    parser.add_argument("--download", action="store_true", help="fetch missing data with torchvision")
    parser.add_argument("--device", default=None)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--losses-to", default=None, help="write the per-step losses as JSON (first process)")
    args = parser.parse_args(argv)
    summary = run(
        args.model,
        args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_seconds=args.max_seconds,
        seed=args.seed,
        checkpoint=None if args.checkpoint == "none" else args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        results=None if args.results == "none" else args.results,
        root=args.root,
        download=args.download,
        device=args.device,
        log_every=args.log_every,
    )
    if args.losses_to and int(os.environ.get("RANK", "0")) == 0:
        Path(args.losses_to).write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
