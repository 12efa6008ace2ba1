r"""The training loop shared by every chapter.

A density model :math:`p_\theta` is fitted by maximum likelihood: each step draws a minibatch
:math:`x_1, \dots, x_B` and takes one optimizer step on the negative log-likelihood

.. math:: \mathcal{L}(\theta) = -\frac{1}{B} \sum_{b=1}^{B} \log p_\theta(x_b),

measured in nats per sample. Its expectation over the data is
:math:`H(p_\mathrm{data}) + \mathrm{KL}(p_\mathrm{data} \,\|\, p_\theta)`, so the loss can fall to
the entropy of the data and no lower; the gap that remains is the KL divergence.

:func:`train` runs the loop with the extras that a notebook needs: validation and early stopping,
a guard that names the layer where a NaN appeared, checkpoints that resume bit for bit after a
crash, and a progress bar. :func:`load_or_train` trains once and reloads the result afterwards,
so that re-running a chapter costs seconds.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import pickle
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import runtime

__all__ = ["History", "NonFiniteLossError", "default_loss", "evaluate", "load_or_train", "train"]

# Validation noise (e.g. dequantization) is drawn once from this seed, so that every evaluation,
# every run and a later call to evaluate(..., preprocess=...) score the same points.
_VALIDATION_SEED = 0
_CHECKPOINT_FORMAT = "coursepkg.training.checkpoint/1"
_MODEL_FORMAT = "coursepkg.training.model/1"


@dataclass
class History:
    """What happened during training; ``to_dict`` gives plain lists that pickle and save anywhere.

    Attributes:
        steps: the step (number of optimizer updates so far) of each log entry.
        train_loss: the mean training loss over the steps since the previous entry.
        val_steps: the step of each evaluation on the validation data.
        val_loss: the mean validation loss at each of ``val_steps``.
        best_step: the step with the lowest validation loss (``None`` without validation data).
        best_val_loss: that lowest validation loss.
        stopped_early: whether ``patience`` ended training before ``steps``.
        out_of_time: whether the ``max_seconds`` budget ended training before ``steps``.
        elapsed: seconds spent training, summed over resumed runs.
        lr: the learning rate of the last step before each log entry.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_step: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False
    out_of_time: bool = False
    elapsed: float = 0.0
    lr: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A dict of plain Python lists and numbers (a copy)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        """The inverse of :meth:`to_dict`; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: list(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def __repr__(self) -> str:
        if not self.steps and not self.val_steps:
            return "History(no steps)"
        parts = [f"{max(self.steps[-1:] + self.val_steps[-1:])} steps"]
        if self.train_loss:
            parts.append(f"train loss {self.train_loss[-1]:.4g}")
        if self.best_val_loss is not None:
            parts.append(f"best val loss {self.best_val_loss:.4g} at step {self.best_step}")
        if self.stopped_early:
            parts.append("stopped early")
        if self.out_of_time:
            parts.append("out of time")
        parts.append(f"{self.elapsed:.1f} s")
        return f"History({', '.join(parts)})"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite during :func:`train`.

    Attributes:
        step: the step that failed (1 for the first update).
        layer: qualified name of the first module whose output was not finite, such as
            ``"transform.layers.3"``, or ``None`` when no single layer is to blame.
        message: the full explanation, also ``str(error)``.
    """

    def __init__(self, message: str, step: int | None = None, layer: str | None = None):
        super().__init__(message)
        self.message = message
        self.step = step
        self.layer = layer

    def __reduce__(self):
        return type(self), (self.message, self.step, self.layer)


def default_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""Negative log-likelihood in nats, averaged over the batch: :math:`-\frac1B\sum_b \log p(x_b)`.

    Args:
        model: a module with ``log_prob(x) -> (B,)``, e.g. a :class:`~coursepkg.NormalizingFlow`.
        x: a batch of shape ``(B, ...)``.

    Returns:
        A scalar tensor.
    """
    return -model.log_prob(x).mean()


def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    *,
    batch_size: int = 1024,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> float:
    r"""The mean loss over a whole data set, without gradients.

    With the default loss this is :math:`-\frac1N\sum_{n=1}^N \log p(x_n)` in nats: the loss of
    each batch is weighted by its size, which gives the exact mean over the ``N`` samples whenever
    ``loss_fn`` averages over its batch.

    Args:
        data: a tensor of shape ``(N, ...)``.
        batch_size: samples per forward pass; affects memory only.
        preprocess: applied to each batch, with noise drawn from a fixed seed, so repeated calls
            agree with each other and with the validation losses that :func:`train` reports. The
            global random state is left as it was.
        loss_fn: ``loss_fn(model, x) -> scalar``; default :func:`default_loss`.
        device: where to compute; default the device the model's parameters are on. The model
            is moved there.

    The model is in eval mode during the evaluation and every submodule gets its previous mode
    back afterwards. A model that needs autograd inside ``log_prob`` (e.g. for a trace
    estimator) must wrap that part in ``torch.enable_grad()``.
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"evaluate expects a tensor of samples (N, ...), got {type(data).__name__}")
    if data.dim() == 0 or len(data) == 0:
        raise ValueError(f"evaluate needs at least one sample, got a tensor of shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    loss_fn = default_loss if loss_fn is None else loss_fn
    device = _device_of(model) if device is None else torch.device(device)
    model.to(device)
    dtype = _float_dtype(model)
    if preprocess is not None:
        data = _preprocess_once(data, preprocess, batch_size, device, dtype)

    modes = {module: module.training for module in model.modules()}
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                x = _to_model(data[start : start + batch_size], device, dtype)
                loss = _check_scalar(loss_fn(model, x))
                total += loss.double() * len(x)
    finally:
        for module, training in modes.items():
            module.train(training)
    return total.item() / len(data)


def train(
    model: nn.Module,
    data,
    *,
    steps: int | None = 1000,
    max_seconds: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    clip_grad: float | None = 10.0,
    val_data: torch.Tensor | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    resume: bool = True,
    progress: bool = True,
    log_every: int = 10,
    desc: str | None = None,
) -> History:
    r"""Fit ``model`` to ``data`` by minimizing the mean negative log-likelihood (in nats).

    Each step draws a batch, computes :math:`\mathcal{L} = -\frac1B \sum_b \log p_\theta(x_b)`
    (or ``loss_fn(model, x)``), clips the gradient to total norm ``clip_grad`` and takes one
    optimizer step.

    Args:
        model: a module with ``log_prob(x) -> (B,)``, such as a :class:`~coursepkg.NormalizingFlow`;
            any module if ``loss_fn`` is given. It is moved to ``device`` and is in train mode
            during the steps.
        data: one of

            - a tensor of samples ``(N, ...)``: batches follow a fresh random permutation each
              epoch; an epoch ends when fewer than ``batch_size`` unseen samples remain (a batch
              larger than ``N`` becomes the whole data set);
            - an object with ``sample(n)``, such as a toy distribution: fresh samples every step;
              if ``sample`` accepts ``generator=``, it gets the loop's seeded generator;
            - a function ``data(n) -> Tensor``, handled like ``sample``.

            Floating-point batches are cast to the model's dtype.
        steps: number of optimizer updates; ``None`` for no limit (``max_seconds`` must be set).
        max_seconds: a wall-clock budget in seconds (validations included, summed over resumed
            runs): training stops after the first step that reaches it. Use it to compare
            models of different speeds fairly ("what does each reach in a minute?"). A run with
            a budget depends on the machine's speed, so it is not reproducible step for step.
        batch_size: samples per step.
        lr, weight_decay: of the default Adam optimizer.
        clip_grad: largest total gradient norm; ``None`` turns clipping off.
        val_data: a tensor ``(M, ...)`` scored every ``eval_every`` steps and at the end. The best
            parameters seen are kept (on the CPU) and **always put back into the model at the
            end**, so the model returned is the one with the lowest validation loss.
        eval_every: steps between validations.
        patience: stop after this many validations in a row without a new best; ``None`` never
            stops early. Needs ``val_data``.
        preprocess: ``preprocess(batch) -> batch`` on the device, e.g. dequantization noise. It is
            applied to every training batch afresh, but to ``val_data`` only once, at the start,
            with a fixed seed: every validation then scores the same points, so their losses are
            comparable, and ``evaluate(model, val_data, preprocess=preprocess)`` reproduces them.
        loss_fn: ``loss_fn(model, x) -> scalar`` replacing :func:`default_loss`.
        device: default :func:`coursepkg.device`.
        seed: seeds torch's global generator at the start (``torch.manual_seed``), from which the
            data order is also drawn, so a run is reproducible; ``None`` does not reseed, and
            the run depends on the generators' current state.
        optimizer: an optimizer already built on ``model.parameters()``, replacing Adam.
        scheduler: ``None`` (constant learning rate) or ``"cosine"``: cosine annealing from the
            optimizer's learning rate down to 0 at ``steps``. With ``max_seconds`` the cosine
            follows whichever runs out first: its phase is the larger of the fraction of the
            steps done and the fraction of the time budget spent.
        checkpoint: a file that receives the whole training state every ``checkpoint_every``
            steps and at the end (written atomically). With ``resume=True`` an existing file is
            picked up: training continues at its step and ends with the same parameters and
            history (but ``elapsed``), bit for bit on the CPU, as a run that was never interrupted. A checkpoint
            that is already at ``steps`` (or stopped early) returns its history without training;
            one made with a smaller ``steps`` trains on to the new ``steps``. Its optimizer and
            data state win over the arguments given now.
        checkpoint_every: steps between checkpoints.
        resume: whether to continue from an existing ``checkpoint``; ``False`` starts afresh and
            overwrites it.
        progress: show a tqdm bar (a widget in notebooks) with the latest train and validation
            loss. The environment variable ``COURSEPKG_PROGRESS=0`` turns it off everywhere (set it
            when building the book). The bar redraws at most once a second, so a saved notebook
            holds few updates, and stays after training as a one-line record.
        log_every: steps between entries in ``History.train_loss``, each the mean since the last;
            a final entry at the last step averages whatever steps remain.
        desc: label of the progress bar.

    Returns:
        The :class:`History`. The model ends in eval mode, with the best validation parameters if
        ``val_data`` was given and the last ones otherwise.

    Raises:
        NonFiniteLossError: the loss or gradient became NaN or infinite. The message names the
            step and the first layer whose output was not finite; the model keeps the parameters
            it had before that step.
    """
    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0
    ):
        raise ValueError(f"steps must be an integer of at least 0 or None, got {steps!r}")
    if max_seconds is not None:
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, numbers.Real) or not max_seconds > 0:
            raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
        max_seconds = float(max_seconds)
    elif steps is None:
        raise ValueError("steps=None trains without a step limit: give max_seconds, a time budget")
    _check_positive(
        batch_size=batch_size, eval_every=eval_every, log_every=log_every, checkpoint_every=checkpoint_every
    )
    if patience is not None:
        _check_positive(patience=patience)
        if val_data is None:
            raise ValueError("patience needs val_data: early stopping watches the validation loss")
    # Plain ints (not NumPy's) keep the checkpoint loadable with weights_only=True.
    steps = None if steps is None else int(steps)
    batch_size, eval_every, log_every = int(batch_size), int(eval_every), int(log_every)
    checkpoint_every = int(checkpoint_every)
    patience = None if patience is None else int(patience)
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be positive or None (no clipping), got {clip_grad}")
    if val_data is not None and not isinstance(val_data, torch.Tensor):
        raise TypeError(
            f"val_data must be a tensor of samples (M, ...) or None, got {type(val_data).__name__}"
        )
    if loss_fn is None:
        if not callable(getattr(model, "log_prob", None)):
            raise TypeError(
                f"{type(model).__name__} has no log_prob(x); pass loss_fn=lambda model, x: ... "
                "returning the scalar loss of a batch"
            )
        loss_fn = default_loss

    device = runtime.device() if device is None else torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    # The data order has a generator of its own: noise drawn elsewhere (dequantization, dropout)
    # then leaves the sequence of batches unchanged.
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    batches = _batches(data, batch_size, generator)

    model.to(device)
    dtype = _float_dtype(model)
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scheduler not in (None, "cosine"):
        raise ValueError(f"scheduler must be None or 'cosine', got {scheduler!r}")
    schedule = None
    timed_cosine = scheduler == "cosine" and max_seconds is not None
    if scheduler == "cosine" and not timed_cosine:
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))

    val = None
    if val_data is not None:
        if val_data.dim() == 0 or len(val_data) == 0:
            raise ValueError(f"val_data needs at least one sample, got shape {tuple(val_data.shape)}")
        if preprocess is None:
            val = _to_model(val_data, device, dtype)
        else:
            val = _preprocess_once(val_data, preprocess, 1024, device, dtype)

    config = dict(
        steps=steps,
        max_seconds=max_seconds,
        batch_size=batch_size,
        lr=float(lr),
        weight_decay=float(weight_decay),
        clip_grad=None if clip_grad is None else float(clip_grad),
        eval_every=eval_every,
        patience=patience,
        seed=None if seed is None else int(seed),
        scheduler=scheduler,
        log_every=log_every,
    )
    tracker = _Tracker(patience)
    step = 0
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = _read(checkpoint, _CHECKPOINT_FORMAT, "checkpoint")
        _load_model(model, saved["model"], checkpoint, "pass resume=False to start afresh")
        _warn_config_changes(saved["config"], config, checkpoint)
        final = saved["final"]
        finished = final is not None and (
            (steps is not None and saved["step"] >= steps)
            or final["history"]["stopped_early"]
            or (max_seconds is not None and final["history"]["elapsed"] >= max_seconds)
        )
        if finished:
            if final["best_state"] is not None:
                model.load_state_dict(final["best_state"])
            model.eval()
            return History.from_dict(final["history"])
        try:
            optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"the optimizer state in {checkpoint} does not fit this optimizer ({error}); "
                "pass resume=False or delete the file to start afresh"
            ) from error
        if schedule is not None and saved["scheduler"] is not None:
            schedule.load_state_dict(saved["scheduler"])
            # A longer run anneals to 0 at its own end, continuing from the current rate.
            schedule.T_max = max(steps, 1)
        batches.load_state_dict(saved["data"])
        tracker.load_state_dict(saved["loop"])
        _set_rng_states(saved["rng"])
        step = saved["step"]

    def save(loop: dict, rng: dict, final: dict | None = None) -> None:
        state = {
            "format": _CHECKPOINT_FORMAT,
            "step": step,
            "config": config,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if schedule is None else schedule.state_dict(),
            "data": batches.state_dict(),
            "loop": loop,
            "rng": rng,
            "final": final,
        }
        _write(checkpoint, state)

    def validate():
        tracker.validate(step, evaluate(model, val, loss_fn=loss_fn, device=device), model)
        bar.set_postfix(tracker.postfix(), refresh=False)

    bar = tqdm(
        total=steps,
        initial=step if steps is None else min(step, steps),
        desc=desc,
        unit="step",
        leave=True,
        mininterval=1.0,
        dynamic_ncols=True,
        disable=not _progress_enabled(progress),
    )
    started = time.perf_counter()
    elapsed_before = tracker.history.elapsed
    lr_now = _lr(optimizer)
    max_steps = math.inf if steps is None else steps
    # The peaks of a time-based cosine, kept where torch's schedulers keep theirs (so that a
    # resumed run, whose optimizer state holds them, anneals from the same peaks).
    peaks = (
        [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        if timed_cosine
        else []
    )

    def spent() -> float:
        return elapsed_before + time.perf_counter() - started

    out_of_time = max_seconds is not None and spent() >= max_seconds
    model.train()
    try:
        while step < max_steps and not tracker.stopped and not out_of_time:
            raw = batches.next()
            x = _to_model(raw, device, dtype)
            if preprocess is not None:
                x = _to_model(preprocess(x), device, dtype)
            loss = _check_scalar(loss_fn(model, x))
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                what = f"loss became {loss_value} at step {step + 1} ({batches.where()})"
                raise _non_finite_error(what, step + 1, model, loss_fn, raw, x)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            norm = _total_norm(grads)
            if not torch.isfinite(norm):
                what = (
                    f"gradient norm became {norm.item()} at step {step + 1} ({batches.where()}), "
                    f"although the loss ({loss_value:.4g}) was finite"
                )
                raise _non_finite_error(what, step + 1, model, loss_fn, raw, x, params)
            if clip_grad is not None and norm > clip_grad:
                # The same rescaling as torch.nn.utils.clip_grad_norm_, whose norm we already have.
                for g in grads:
                    g.mul_(clip_grad / (norm + 1e-6))
            if timed_cosine:
                phase = min(1.0, max(step / max_steps, spent() / max_seconds))
                for group, peak in zip(optimizer.param_groups, peaks, strict=True):
                    group["lr"] = peak * 0.5 * (1.0 + math.cos(math.pi * phase))
            lr_now = _lr(optimizer)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            step += 1
            bar.update()

            tracker.add(loss_value)
            if step % log_every == 0:
                tracker.log(step, lr_now)
                bar.set_postfix(tracker.postfix(), refresh=False)
            if val is not None and step % eval_every == 0:
                validate()
            out_of_time = max_seconds is not None and spent() >= max_seconds
            # The last step saves below, after the end-of-run extras.
            finishing = step == max_steps or tracker.stopped or out_of_time
            if checkpoint is not None and step % checkpoint_every == 0 and not finishing:
                tracker.history.elapsed = spent()
                save(tracker.state_dict(), _rng_states())

        # The end-of-run extras below (a last partial log entry, a last validation) are not part
        # of the regular schedule: the checkpoint resumes from the state before them, so that a
        # run stopped at this step and continued later matches one that never stopped.
        tracker.history.elapsed = spent()
        resumable = tracker.state_dict()
        rng = _rng_states()
        if tracker.unlogged:
            tracker.log(step, lr_now)
        if val is not None and tracker.last_eval_step != step:
            validate()
        tracker.history.elapsed = spent()
        history = tracker.finish()
        history.out_of_time = bool(out_of_time and step < max_steps and not tracker.stopped)
        if checkpoint is not None:
            save(resumable, rng, final={"history": history.to_dict(), "best_state": tracker.best_state})
    finally:
        bar.close()
    if tracker.best_state is not None:
        model.load_state_dict(tracker.best_state)
    model.eval()
    return history


def load_or_train(path: str | os.PathLike, model: nn.Module, data, **train_kwargs) -> History:
    """Load a trained model from ``path`` if the file exists, else train it and save it there.

    The file holds ``{"model": state_dict, "history": dict, "config": dict}``. Training goes
    through :func:`train` with ``checkpoint=path + ".ckpt"`` unless a ``checkpoint`` is given, so
    a session that dies mid-way (on Colab, say) resumes where it stopped; that checkpoint is
    deleted once the model file is written. Delete the model file to train again.

    Args:
        path: the model file; missing parent folders are created.
        model: the module to fill, built exactly as the one that was saved.
        data, train_kwargs: passed to :func:`train`.

    Returns:
        The :class:`History` of the training, saved with the model. The model ends in eval mode
        on ``train_kwargs["device"]`` (default :func:`coursepkg.device`) either way.
    """
    path = os.fspath(path)
    device = train_kwargs.get("device")
    device = runtime.device() if device is None else torch.device(device)
    model.to(device)
    if os.path.exists(path):
        saved = _read(path, _MODEL_FORMAT, "model file", map_location=device)
        _load_model(model, saved["model"], path, "build the model with the settings it was trained with")
        model.eval()
        print(f"loaded trained model from {path} (delete the file to train again)")
        return History.from_dict(saved["history"])

    own_checkpoint = "checkpoint" not in train_kwargs
    if own_checkpoint:
        train_kwargs["checkpoint"] = path + ".ckpt"
    history = train(model, data, **train_kwargs)
    plain = (bool, int, float, str, type(None))
    # The settings that shaped the model, for the record; not where or how it was shown.
    incidental = {"checkpoint", "device", "progress", "desc", "resume"}
    config = {k: v for k, v in train_kwargs.items() if isinstance(v, plain) and k not in incidental}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _write(path, {"format": _MODEL_FORMAT, "model": state, "history": history.to_dict(), "config": config})
    if own_checkpoint and os.path.exists(train_kwargs["checkpoint"]):
        # Left behind, a finished checkpoint would make the next run skip training even after
        # the model file is deleted.
        os.remove(train_kwargs["checkpoint"])
    return history


class _Tracker:
    """The bookkeeping of a run: loss logs, validations, best parameters, early stopping."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.history = History()
        self.loss_sum = 0.0  # training losses since the last log entry
        self.unlogged = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0  # validations in a row without a new best
        self.last_eval_step: int | None = None
        self.stopped = False

    def add(self, loss: float) -> None:
        self.loss_sum += loss
        self.unlogged += 1

    def log(self, step: int, lr: float) -> None:
        self.history.steps.append(step)
        self.history.train_loss.append(self.loss_sum / self.unlogged)
        self.history.lr.append(lr)
        self.loss_sum, self.unlogged = 0.0, 0

    def validate(self, step: int, loss: float, model: nn.Module) -> None:
        h = self.history
        h.val_steps.append(step)
        h.val_loss.append(loss)
        self.last_eval_step = step
        # NaN and inf compare false here, so they never become the best.
        if loss < (math.inf if h.best_val_loss is None else h.best_val_loss):
            h.best_step, h.best_val_loss = step, loss
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            self.stopped = self.patience is not None and self.bad_evals >= self.patience

    def postfix(self) -> dict[str, str]:
        h = self.history
        shown = {}
        if h.train_loss:
            shown["loss"] = f"{h.train_loss[-1]:.4g}"
        if h.val_loss:
            shown["val"] = f"{h.val_loss[-1]:.4g}"
        return shown

    def finish(self) -> History:
        self.history.stopped_early = self.stopped
        return History.from_dict(self.history.to_dict())

    def state_dict(self) -> dict:
        return {
            "history": self.history.to_dict(),
            "loss_sum": self.loss_sum,
            "unlogged": self.unlogged,
            "best_state": self.best_state,
            "bad_evals": self.bad_evals,
            "last_eval_step": self.last_eval_step,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = History.from_dict(state["history"])
        self.loss_sum = state["loss_sum"]
        self.unlogged = state["unlogged"]
        self.best_state = state["best_state"]
        self.bad_evals = state["bad_evals"]
        self.last_eval_step = state["last_eval_step"]
        self.stopped = state["stopped"]


class _TensorBatches:
    """Batches of a tensor data set: one random permutation per epoch, no sample twice in one."""

    def __init__(self, data: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.data = data
        self.batch_size = min(batch_size, len(data))
        self.generator = generator
        self.order: torch.Tensor | None = None
        self.position = 0
        self.epoch = 0

    def next(self) -> torch.Tensor:
        if self.order is None or self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.data), generator=self.generator)
            self.position = 0
            self.epoch += 1
        index = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.data[index.to(self.data.device)]

    def where(self) -> str:
        per_epoch = len(self.data) // self.batch_size
        return f"epoch {self.epoch}, batch {self.position // self.batch_size} of {per_epoch}"

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "order": self.order,
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"]
        self.position = state["position"]
        self.epoch = state["epoch"]


class _SampledBatches:
    """Fresh batches from ``draw(n)`` every step (a toy distribution's ``sample`` or a function)."""

    def __init__(self, draw: Callable, name: str, batch_size: int, generator: torch.Generator):
        self.draw = draw
        self.name = name
        self.batch_size = batch_size
        self.generator = generator
        self.pass_generator = _accepts_generator(draw)
        self.count = 0

    def next(self) -> torch.Tensor:
        n = self.batch_size
        x = self.draw(n, generator=self.generator) if self.pass_generator else self.draw(n)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}({n}) returned {type(x).__name__}; it must return a tensor (n, ...)")
        if x.dim() == 0 or len(x) != n:
            raise ValueError(f"{self.name}({n}) returned shape {tuple(x.shape)}; expected ({n}, ...)")
        self.count += 1
        return x.detach()

    def where(self) -> str:
        return f"batch {self.count}"

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.count = state["count"]


def _batches(data, batch_size: int, generator: torch.Generator):
    accepted = (
        "a tensor of samples (N, ...), an object with a sample(n) method (e.g. a toy "
        "distribution) or a function n -> tensor"
    )
    if isinstance(data, torch.Tensor):
        if data.dim() == 0 or len(data) == 0:
            raise ValueError(f"data must hold at least one sample, got a tensor of shape {tuple(data.shape)}")
        return _TensorBatches(data, batch_size, generator)
    if isinstance(data, type):
        raise TypeError(
            f"data must be {accepted}; got the class {data.__name__} itself: did you mean {data.__name__}()?"
        )
    sample = getattr(data, "sample", None)
    if callable(sample):
        return _SampledBatches(sample, f"{type(data).__name__}.sample", batch_size, generator)
    if callable(data):
        return _SampledBatches(data, getattr(data, "__name__", type(data).__name__), batch_size, generator)
    if isinstance(data, np.ndarray):
        hint = " Convert it with torch.as_tensor(data, dtype=torch.float32)."
    elif isinstance(data, (list, tuple)):
        hint = " Stack the samples into one tensor with torch.stack or torch.as_tensor."
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        hint = " For a Dataset, stack its samples into one tensor first."
    else:
        hint = ""
    raise TypeError(f"data must be {accepted}; got {type(data).__name__}.{hint}")


def _accepts_generator(fn: Callable) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def _non_finite_error(what, step, model, loss_fn, raw, batch, params=None) -> NonFiniteLossError:
    """Explain a NaN or inf: bad input, the first layer that produced it, or a bad gradient.

    ``raw`` is the batch as drawn, ``batch`` the one after ``preprocess``; ``params`` is given
    when the gradient, not the loss, went wrong.
    """
    layer = None
    if raw.is_floating_point() and not torch.isfinite(raw).all():
        cause = f"The training batch itself contains non-finite values ({_count_bad(raw)}): check the data."
    elif not torch.isfinite(batch).all():
        cause = (
            f"preprocess(batch) returned non-finite values ({_count_bad(batch)}): check the preprocessing."
        )
    else:
        found = _first_non_finite_layer(model, loss_fn, batch)
        bad_grads = [] if params is None else _non_finite_gradients(model, params)
        if found is not None:
            layer, kind = found
            cause = f"First layer with a non-finite output: {layer} ({kind})."
        elif bad_grads:
            layer = bad_grads[0].rpartition(".")[0] or None
            shown = ", ".join(bad_grads[:5]) + (", ..." if len(bad_grads) > 5 else "")
            cause = f"No layer output was non-finite; parameters with non-finite gradients: {shown}."
        else:
            cause = "No layer produced a non-finite output, so the loss itself overflowed."
    message = (
        f"{what}. {cause} Try a lower learning rate, gradient "
        "clipping, or check the data for NaN/inf. The model keeps its parameters from before this step."
    )
    return NonFiniteLossError(message, step=step, layer=layer)


def _first_non_finite_layer(
    model: nn.Module, loss_fn: Callable, batch: torch.Tensor
) -> tuple[str, str] | None:
    """Re-run the batch with a forward hook on every module; the first non-finite output wins."""
    found: list[tuple[str, str]] = []

    def watch(name: str):
        def hook(module, inputs, output):
            if not found and _has_non_finite(output):
                found.append((name or "(the whole model)", type(module).__name__))

        return hook

    # Running statistics (batch norm, say) must not move because of this diagnostic pass.
    buffers = [(b, b.clone()) for b in model.buffers()]
    handles = [module.register_forward_hook(watch(name)) for name, module in model.named_modules()]
    try:
        loss_fn(model, batch)
    except Exception:  # the diagnosis must never hide the error it explains
        pass
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return found[0] if found else None


def _has_non_finite(output) -> bool:
    if isinstance(output, torch.Tensor):
        return (output.is_floating_point() or output.is_complex()) and not torch.isfinite(output).all().item()
    if isinstance(output, (tuple, list)):
        return any(_has_non_finite(o) for o in output)
    if isinstance(output, dict):
        return any(_has_non_finite(o) for o in output.values())
    return False


def _non_finite_gradients(model: nn.Module, params: list[torch.Tensor]) -> list[str]:
    ids = {id(p) for p in params if p.grad is not None and not torch.isfinite(p.grad).all()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The Euclidean norm of all gradients together, as if concatenated into one vector."""
    if not grads:
        return torch.zeros(())
    fused = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6: one kernel per device
    if fused is not None:
        return fused(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _count_bad(t: torch.Tensor) -> str:
    bad = (~torch.isfinite(t)).sum().item()
    return f"{bad} of {t.numel()} entries are NaN or inf"


def _check_scalar(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar (the mean loss of the batch), got shape {tuple(loss.shape)}; "
            "did you forget .mean()?"
        )
    return loss.reshape(())


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


def _progress_enabled(progress: bool) -> bool:
    switch = os.environ.get("COURSEPKG_PROGRESS", "").strip().lower()
    return bool(progress) and switch not in {"0", "false", "no", "off"}


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return runtime.device()


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    for t in model.parameters():
        if t.is_floating_point():
            return t.dtype
    return None


def _to_model(x: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    """``x`` on the device, floating point cast to the model's dtype (integers are left to preprocess)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"preprocess must return a tensor, got {type(x).__name__}")
    x = x.to(device)
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x


def _preprocess_once(data, preprocess, batch_size, device, dtype) -> torch.Tensor:
    """``preprocess`` applied batch by batch with noise from a fixed seed; global RNG untouched."""
    states = _rng_states()
    torch.manual_seed(_VALIDATION_SEED)
    try:
        chunks = [
            _to_model(preprocess(_to_model(data[i : i + batch_size], device, dtype)), device, dtype)
            for i in range(0, len(data), batch_size)
        ]
    finally:
        _set_rng_states(states)
    return torch.cat(chunks)


def _rng_states() -> dict:
    """Every random state a run may draw from: torch (CPU and accelerators), Python and NumPy."""
    name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # As lists, so that the checkpoint loads with torch.load(weights_only=True).
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if runtime._mps_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))  # noqa: NPY002
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and runtime._mps_available():
        torch.mps.set_rng_state(states["mps"])


def _write(path: str | os.PathLike, obj: dict) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _read(path, expected_format: str, what: str, map_location="cpu") -> dict:
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # A custom optimizer's state may hold types the safe loader refuses; the file is our own.
        saved = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(saved, dict) or saved.get("format") != expected_format:
        raise ValueError(
            f"{path} is not a {what} written by coursepkg.training ({expected_format}); "
            "delete it or choose another path"
        )
    return saved


def _load_model(model: nn.Module, state: dict, path, advice: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RuntimeError(
            f"{path} holds a model that does not match this {type(model).__name__} ({first}). "
            f"Delete the file to train again, or {advice}.\n{error}"
        ) from error


def _warn_config_changes(saved: dict, now: dict, path) -> None:
    changed = [
        f"{k}={saved[k]!r} -> {now[k]!r}" for k in now if k != "steps" and k in saved and saved[k] != now[k]
    ]
    if changed:
        warnings.warn(
            f"{path} was written with other settings ({', '.join(changed)}); its saved state wins "
            "(optimizer, data order, finished history). Pass resume=False to start afresh.",
            stacklevel=3,
        )
