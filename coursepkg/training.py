r"""The training loop shared by every chapter, for data and for targets known only by their density.

**Maximum likelihood** (the default): a density model :math:`q_\theta` is fitted to data. Each
step draws a minibatch :math:`x_1, \dots, x_B` and takes one optimizer step on the negative
log-likelihood

.. math:: \mathcal{L}(\theta) = -\frac{1}{B} \sum_{b=1}^{B} \log q_\theta(x_b),

measured in nats per sample. Its expectation over the data is
:math:`H(p_\mathrm{data}) + \mathrm{KL}(p_\mathrm{data} \,\|\, q_\theta)`, so the loss can fall to
the entropy of the data and no lower; the gap that remains is the KL divergence.

**Reverse KL** (variational inference, no data): a flow is fitted to a target known up to its
normaliser, :math:`\tilde p = Z p`, by drawing its own samples :math:`x_b = f_\theta^{-1}(z_b)`,
:math:`z_b \sim p_Z`, and minimising

.. math:: \mathcal{L}(\theta) = \frac{1}{B} \sum_{b=1}^{B} \big[\log q_\theta(x_b) - \log \tilde p(x_b)\big],

whose expectation is :math:`\mathrm{KL}(q_\theta \,\|\, p) - \log Z` (:class:`ReverseKL`;
``train(flow, None, loss_fn=ReverseKL(log_target))``).

:func:`train` runs either loop with the extras that a notebook needs: validation and early
stopping, a guard that names the layer where a NaN appeared, checkpoints that resume bit for
bit after a crash, a time budget and a progress bar. Inside, a ``_Trainer`` repeats ``step``
(one optimizer update) and validates, and a ``_Checkpoint`` resumes, saves and finishes the run's
file. :func:`load_or_train` trains once and reloads the result afterwards, so that re-running a
chapter costs seconds.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import runtime

__all__ = [
    "History",
    "NonFiniteLossError",
    "ReverseKL",
    "checkpoint_file",
    "default_loss",
    "evaluate",
    "load_or_train",
    "train",
]

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


class ReverseKL:
    r"""The reverse KL divergence from a flow to an unnormalised target: a loss that needs no data.

    For a target density :math:`p(x) = \tilde p(x) / Z` known through :math:`\log \tilde p` only
    (the normaliser :math:`Z` may be unknown), one call draws ``n`` samples from the flow with
    the reparameterisation trick, :math:`x_b = f_\theta^{-1}(z_b)` with :math:`z_b \sim p_Z`, and
    returns

    .. math:: \mathcal{L}(\theta) = \frac1n \sum_{b=1}^{n} \big[\log q_\theta(x_b) - \log \tilde p(x_b)\big],

    an unbiased estimate of

    .. math:: \mathbb{E}_{x \sim q_\theta}\big[\log q_\theta(x) - \log \tilde p(x)\big]
        = \mathrm{KL}(q_\theta \,\|\, p) - \log Z \;\ge\; -\log Z.

    :math:`\log Z` does not depend on :math:`\theta`, so minimising the loss minimises the KL
    divergence, and the loss reaches :math:`-\log Z` exactly when :math:`q_\theta = p` (with a
    normalised ``log_target`` it estimates the KL divergence itself, in nats). The samples are a
    differentiable function of :math:`\theta` (the noise :math:`z` does not depend on it), so the
    gradient of the estimate is an unbiased estimate of the gradient. Reverse KL is
    *mode-seeking*: :math:`q` is punished for mass where :math:`p` has little, not for missing
    some of :math:`p`'s modes.

    Args:
        log_target: :math:`\log \tilde p`, a function from samples ``(n, *event_shape)`` to
            ``(n,)``, differentiable in its input, e.g. ``Banana().unnormalized_log_prob``.

    Use it with no data: ``train(flow, None, loss_fn=ReverseKL(log_target), batch_size=256)``
    draws ``batch_size`` samples per step. Calling it, ``loss(flow, n)``, needs a model with
    ``sample_with_log_prob(n)``, such as a :class:`~coursepkg.NormalizingFlow`.
    """

    # train() calls a loss that draws its own samples as loss_fn(model, n), with data=None.
    needs_data = False

    def __init__(self, log_target: Callable[[torch.Tensor], torch.Tensor]):
        if not callable(log_target):
            raise TypeError(
                f"log_target must be a function from samples (n, ...) to log-densities (n,), "
                f"got {type(log_target).__name__}"
            )
        self.log_target = log_target

    def __call__(self, model: nn.Module, n: int) -> torch.Tensor:
        """The loss of ``n`` fresh samples from ``model``, a scalar tensor."""
        sample_with_log_prob = getattr(model, "sample_with_log_prob", None)
        if not callable(sample_with_log_prob):
            raise TypeError(
                f"ReverseKL samples from the model, but {type(model).__name__} has no "
                "sample_with_log_prob(n) -> (x, log_q); use a coursepkg.NormalizingFlow"
            )
        x, log_q = sample_with_log_prob(n)  # (n, ...), (n,)
        log_p = self.log_target(x)  # (n,)
        if not isinstance(log_p, torch.Tensor) or log_p.shape != log_q.shape:
            shape = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
            raise ValueError(
                f"log_target must return one log-density per sample, shape {tuple(log_q.shape)}, got {shape}"
            )
        return (log_q - log_p).mean()

    def __repr__(self) -> str:
        return f"ReverseKL({getattr(self.log_target, '__qualname__', self.log_target)!r})"


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
    _check_samples(data, "data", preprocess, check_finite=False, caller="evaluate")
    _check_integers(batch_size=(batch_size, 1))
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
    clip_grad: float | None = 10.0,
    val_data: torch.Tensor | None = None,
    eval_every: int = 100,
    patience: int | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_fn: Callable | None = None,
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
    r"""Fit ``model`` to ``data`` by minimizing the mean negative log-likelihood (in nats), or a loss of your own.

    Each step draws a batch, computes :math:`\mathcal{L} = -\frac1B \sum_b \log p_\theta(x_b)`
    (or ``loss_fn(model, x)``), clips the gradient to total norm ``clip_grad`` and takes one
    optimizer step. With ``data=None`` the loss draws its own samples, e.g.
    ``train(flow, None, loss_fn=ReverseKL(log_target))`` fits a flow to an unnormalised density.

    Args:
        model: a module with ``log_prob(x) -> (B,)``, such as a :class:`~coursepkg.NormalizingFlow`;
            any module if ``loss_fn`` is given. It is moved to ``device`` and is in train mode
            during the steps.
        data: one of

            - a tensor of samples ``(N, ...)``: batches follow a fresh random permutation each
              epoch; an epoch ends when fewer than ``batch_size`` unseen samples remain (a batch
              larger than ``N`` becomes the whole data set). Floating point, finite; integers
              (such as pixel levels) only with a ``preprocess`` that turns them into floats;
            - an object with ``sample(n)``, such as a toy distribution: fresh samples every step;
              if ``sample`` accepts ``generator=``, it gets the loop's seeded generator;
            - a function ``data(n) -> Tensor``, handled like ``sample``;
            - ``None``: no data; ``loss_fn(model, n)`` draws ``n = batch_size`` samples itself
              (:class:`ReverseKL`). ``val_data``, ``patience`` and ``preprocess`` need data.

            Floating-point batches are cast to the model's dtype.
        steps: number of optimizer updates; ``None`` for no limit (``max_seconds`` must be set).
        max_seconds: a wall-clock budget in seconds (validations included, summed over resumed
            runs): training stops after the first step that reaches it. Use it to compare
            models of different speeds fairly ("what does each reach in a minute?"). A run with
            a budget depends on the machine's speed, so it is not reproducible step for step.
        batch_size: samples per step.
        lr: learning rate of the default Adam optimizer.
        clip_grad: largest total gradient norm (``torch.nn.utils.clip_grad_norm_``); ``None``
            turns clipping off.
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
        loss_fn: ``loss_fn(model, x) -> scalar`` replacing :func:`default_loss`; with
            ``data=None``, ``loss_fn(model, n) -> scalar``, which draws ``n`` samples itself.
        device: default :func:`coursepkg.device`.
        seed: seeds torch's global generator at the start (``torch.manual_seed``), from which the
            data order is also drawn, so a run is reproducible; ``None`` does not reseed, and
            the run depends on the generators' current state.
        optimizer: an optimizer already built on ``model.parameters()``, replacing Adam (e.g.
            ``torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)``).
        scheduler: ``None`` (constant learning rate) or ``"cosine"``: the rate of step :math:`k`
            is :math:`\eta_0 \frac{1 + \cos(\pi t)}{2}`, annealing the optimizer's rate
            :math:`\eta_0` to 0, where :math:`t = k / \mathrm{steps}`; with ``max_seconds``,
            :math:`t` is the larger of that and the fraction of the time budget spent, so the
            cosine follows whichever runs out first.
        checkpoint: a file that receives the whole training state every ``checkpoint_every``
            steps and at the end (written atomically). With ``resume=True`` an existing file is
            picked up: training continues at its step and ends with the same parameters and
            history (but ``elapsed``), bit for bit on the CPU, as a run that was never
            interrupted. A checkpoint that is already at ``steps`` (or stopped early, or out of
            time) returns its history without training; one made with a smaller ``steps`` trains
            on to the new ``steps`` (a cosine then follows the new ``steps``). Its optimizer and
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
        TypeError, ValueError: before any step, for unusable arguments or data (empty, integer
            without ``preprocess``, NaN or inf in a data tensor), or at the first step when the
            model cannot score a batch of the data's shape; the message says what to change.
    """
    steps, max_seconds = _check_budget(steps, max_seconds)
    _check_integers(
        batch_size=(batch_size, 1),
        eval_every=(eval_every, 1),
        log_every=(log_every, 1),
        checkpoint_every=(checkpoint_every, 1),
    )
    # Plain ints (not NumPy's) keep the checkpoint loadable with weights_only=True.
    batch_size, eval_every, log_every = int(batch_size), int(eval_every), int(log_every)
    if patience is not None:
        _check_integers(patience=(patience, 1))
        patience = int(patience)
    if clip_grad is not None and not clip_grad > 0:
        raise ValueError(f"clip_grad must be positive or None (no clipping), got {clip_grad}")
    if scheduler not in (None, "cosine"):
        raise ValueError(f"scheduler must be None or 'cosine', got {scheduler!r}")
    loss_fn = _choose_loss(model, data, loss_fn, val_data, patience, preprocess)

    device = runtime.device() if device is None else torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    # The data order has a generator of its own: noise drawn elsewhere (dequantization, dropout)
    # then leaves the sequence of batches unchanged.
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    batches = _batches(data, batch_size, generator, preprocess)

    model.to(device)
    dtype = _float_dtype(model)
    if optimizer is None:
        # foreach: batched updates instead of a Python loop over the parameter tensors (torch
        # picks it by default on GPUs only); a Glow of ~90 tensors has many small ones.
        optimizer = torch.optim.Adam(model.parameters(), lr=float(lr), foreach=True)
    val = None
    if val_data is not None:
        _check_samples(val_data, "val_data", preprocess)
        if preprocess is None:
            val = _to_model(val_data, device, dtype)
        else:
            val = _preprocess_once(val_data, preprocess, 1024, device, dtype)

    config = dict(
        steps=steps,
        max_seconds=max_seconds,
        batch_size=batch_size,
        lr=float(lr),
        clip_grad=None if clip_grad is None else float(clip_grad),
        eval_every=eval_every,
        patience=patience,
        seed=None if seed is None else int(seed),
        scheduler=scheduler,
        log_every=log_every,
    )
    trainer = _Trainer(
        model,
        batches,
        loss_fn,
        optimizer,
        steps=steps,
        max_seconds=max_seconds,
        clip_grad=clip_grad,
        cosine=scheduler == "cosine",
        preprocess=preprocess,
        val=val,
        eval_every=eval_every,
        patience=patience,
        log_every=log_every,
        device=device,
        dtype=dtype,
        progress=_progress_enabled(progress),
        desc=desc,
    )
    return trainer.fit(_Checkpoint(checkpoint, int(checkpoint_every), config, resume))


def checkpoint_file(*run: str, folder: str | os.PathLike = "checkpoints") -> str | None:
    """Where a chapter's training run saves itself: a file in ``folder`` in full mode, ``None``
    (no file) in quick mode.

    Pass the result as ``train(..., checkpoint=...)``: a full-mode run, which may take many
    minutes on Colab, then resumes where it stopped after a disconnection, while the short
    quick-mode runs of the CPU build never read a checkpoint left by another version of the code.

    Args:
        run: words that name the run, e.g. ``("ch04", "digits", "image RealNVP")``; the file is
            ``folder/ch04_digits_image_realnvp.pt``.
        folder: relative to the working directory (a notebook's own folder).
    """
    words = [word for part in run for word in str(part).lower().split()]
    slug = "_".join("".join(ch for ch in word if ch.isalnum()) for word in words).strip("_")
    if not slug:
        raise ValueError("checkpoint_file needs words that name the run, e.g. ('ch04', 'digits')")
    return runtime.by_mode(None, os.path.join(folder, f"{slug}.pt"))


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


# ---------------------------------------------------------------------------------------------
# The loop: a trainer that steps, logs and validates; a checkpoint that saves and resumes it.


class _Trainer:
    """One training run: :meth:`fit` repeats :meth:`step` (one optimizer update) until the steps,
    the time budget or the patience run out, logging and validating along the way.

    Its state lives in attributes, which :meth:`state_dict` gathers for a checkpoint: the model
    and optimizer, ``batches`` (where the data order stands), ``tracker`` (logs, validations,
    best parameters), ``steps_done`` and the random generators.
    """

    def __init__(
        self,
        model: nn.Module,
        batches,
        loss_fn: Callable,
        optimizer: torch.optim.Optimizer,
        *,
        steps: int | None,
        max_seconds: float | None,
        clip_grad: float | None,
        cosine: bool,
        preprocess: Callable | None,
        val: torch.Tensor | None,
        eval_every: int,
        patience: int | None,
        log_every: int,
        device: torch.device,
        dtype: torch.dtype | None,
        progress: bool,
        desc: str | None,
    ):
        self.model = model
        self.batches = batches
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_steps = math.inf if steps is None else steps
        self.max_seconds = max_seconds
        self.clip_grad = math.inf if clip_grad is None else float(clip_grad)
        self.cosine = cosine
        self.preprocess = preprocess
        self.val = val
        self.eval_every = eval_every
        self.log_every = log_every
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.desc = desc
        self.data_free = isinstance(batches, _SelfSampled)
        self.tracker = _Tracker(patience)
        self.steps_done = 0
        self.last_lr = _lr(optimizer)
        self.out_of_time = False
        self.checked_first_batch = False
        self.clock_start = time.perf_counter()
        self.elapsed_before = 0.0  # seconds spent by the runs this one resumes
        if cosine:
            # The peaks, kept where torch's schedulers keep theirs: a checkpoint's optimizer state
            # then carries them, and a resumed run anneals from the same peaks.
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])

    # -- the loop -----------------------------------------------------------------------------

    def fit(self, checkpoint: _Checkpoint) -> History:
        """Train until done; the model ends in eval mode with its best validation parameters."""
        finished = checkpoint.resume(self)
        if finished is None:
            history = self._run(checkpoint)
        else:
            history = finished
        if self.tracker.best_state is not None:
            self.model.load_state_dict(self.tracker.best_state)
        self.model.eval()
        return history

    def _run(self, checkpoint: _Checkpoint) -> History:
        self.clock_start = time.perf_counter()
        self.elapsed_before = self.tracker.history.elapsed
        self.out_of_time = self._past_budget()
        self.model.train()
        with self._progress_bar() as self.bar:
            while not self._done():
                loss = self.step()
                self.bar.update()
                self.tracker.add(loss)
                if self.steps_done % self.log_every == 0:
                    self._log()
                if self.val is not None and self.steps_done % self.eval_every == 0:
                    self.validate()
                self.out_of_time = self._past_budget()
                # The last step is saved below, with the final history.
                if checkpoint.due(self.steps_done) and not self._done():
                    checkpoint.save(self.state_dict())
            # The end-of-run extras (a last partial log entry, a last validation) are not part
            # of the regular schedule: the checkpoint resumes from the state before them, so
            # that a run stopped here and continued later matches one that never stopped.
            resumable = self.state_dict()
            history = self._finish()
            checkpoint.finish(resumable, history, self.tracker.best_state)
        return history

    def step(self) -> float:
        """One update: a batch, its loss, the gradient (clipped), an optimizer step; returns the loss.

        Raises:
            NonFiniteLossError: the loss or the gradient is NaN or infinite. The parameters are
                left as they were before this step.
        """
        raw = self.batches.next()
        batch = self._prepare(raw)
        # A data-free loss draws its samples inside: remember torch's generators, so that a NaN
        # can be explained on the very samples that produced it.
        replay = runtime.rng_state(torch_only=True) if self.data_free else None
        loss = self._loss(batch)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise self._explain(f"loss became {loss_value}", raw, batch, replay)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._clip_gradients(loss_value, raw, batch, replay)
        if self.cosine:
            self._anneal()
        self.last_lr = _lr(self.optimizer)
        self.optimizer.step()
        self.steps_done += 1
        return loss_value

    def validate(self) -> None:
        """Score the validation set; keep the parameters if they are the best so far."""
        loss = evaluate(self.model, self.val, loss_fn=self.loss_fn, device=self.device)
        self.tracker.validate(self.steps_done, loss, self.model)
        self.bar.set_postfix(self.tracker.postfix(), refresh=False)

    # -- the parts of a step --------------------------------------------------------------------

    def _prepare(self, raw):
        """The batch the loss sees: on the device, in the model's dtype, preprocessed."""
        if self.data_free:
            return raw  # the number of samples the loss draws
        x = _to_model(raw, self.device, self.dtype)
        if self.preprocess is not None:
            x = _to_model(self.preprocess(x), self.device, self.dtype)
        return x

    def _loss(self, batch) -> torch.Tensor:
        if self.checked_first_batch or self.data_free:
            return _check_scalar(self.loss_fn(self.model, batch))
        # A model built for samples of another shape fails in its first forward pass, with a
        # message about matrices or sizes; say which data shape it was given.
        try:
            loss = self.loss_fn(self.model, batch)
        except (RuntimeError, ValueError, IndexError) as error:
            if type(error) not in (RuntimeError, ValueError, IndexError):  # e.g. out of memory
                raise
            raise _shape_error(error, batch, self.batches) from error
        self.checked_first_batch = True
        return _check_scalar(loss)

    def _clip_gradients(self, loss_value: float, raw, batch, replay) -> None:
        try:
            # Rescales the gradient to total norm clip_grad at most (math.inf: no clipping); it
            # raises, before touching the gradients, if their norm is NaN or infinite.
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad, error_if_nonfinite=True)
        except RuntimeError:
            if not _non_finite_gradients(self.model, self.params):
                raise
            norm = _gradient_norm(self.params)
            detail = f", although the loss ({loss_value:.4g}) was finite"
            raise self._explain(
                f"gradient norm became {norm}", raw, batch, replay, detail, gradients=True
            ) from None

    def _anneal(self) -> None:
        r"""Cosine schedule: lr = peak (1 + cos(pi t)) / 2, t the fraction of the run done."""
        t = self.steps_done / self.max_steps  # 0 without a step limit
        if self.max_seconds is not None:
            t = max(t, self._seconds_spent() / self.max_seconds)
        factor = 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def _explain(
        self, what: str, raw, batch, replay, detail: str = "", gradients: bool = False
    ) -> NonFiniteLossError:
        def rerun():
            if replay is None:
                self.loss_fn(self.model, batch)
                return
            with runtime.fork_rng():
                runtime.set_rng_state(replay)
                self.loss_fn(self.model, batch)

        return _non_finite_error(
            f"{what} at step {self.steps_done + 1} ({self.batches.where()}){detail}",
            self.steps_done + 1,
            self.model,
            rerun,
            raw=None if self.data_free else raw,
            batch=None if self.data_free else batch,
            params=self.params if gradients else None,
        )

    # -- bookkeeping ----------------------------------------------------------------------------

    def _log(self) -> None:
        self.tracker.log(self.steps_done, self.last_lr)
        self.bar.set_postfix(self.tracker.postfix(), refresh=False)

    def _seconds_spent(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock_start

    def _past_budget(self) -> bool:
        return self.max_seconds is not None and self._seconds_spent() >= self.max_seconds

    def _done(self) -> bool:
        return self.steps_done >= self.max_steps or self.tracker.stopped or self.out_of_time

    def _finish(self) -> History:
        """The end-of-run extras: log the steps since the last entry, validate the last step."""
        if self.tracker.unlogged:
            self.tracker.log(self.steps_done, self.last_lr)
        if self.val is not None and self.tracker.last_eval_step != self.steps_done:
            self.validate()
        self.tracker.history.elapsed = self._seconds_spent()
        history = self.tracker.finish()
        history.out_of_time = bool(
            self.out_of_time and self.steps_done < self.max_steps and not self.tracker.stopped
        )
        return history

    def _progress_bar(self) -> tqdm:
        total = None if self.max_steps == math.inf else self.max_steps
        return tqdm(
            total=total,
            initial=self.steps_done if total is None else min(self.steps_done, total),
            unit="step",
            leave=True,
            mininterval=1.0,
            dynamic_ncols=True,
            desc=self.desc,
            disable=not self.progress,
        )

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue bit for bit."""
        self.tracker.history.elapsed = self._seconds_spent()
        return {
            "step": self.steps_done,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data": self.batches.state_dict(),
            "loop": self.tracker.state_dict(),
            "rng": runtime.rng_state(),
        }

    def load_state_dict(self, state: dict, path) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"the optimizer state in {path} does not fit this optimizer ({error}); "
                "pass resume=False or delete the file to start afresh"
            ) from error
        self.batches.load_state_dict(state["data"])
        self.tracker.load_state_dict(state["loop"])
        runtime.set_rng_state(state["rng"])
        self.steps_done = state["step"]


class _Checkpoint:
    """The file from which a run resumes bit for bit: :meth:`resume` reads it, :meth:`save` writes
    the state every ``every`` steps, :meth:`finish` writes the final state and history.

    With no ``path`` every method does nothing.
    """

    def __init__(self, path: str | os.PathLike | None, every: int, config: dict, resume: bool):
        self.path = path
        self.every = every
        self.config = config
        self.resume_allowed = resume

    def resume(self, trainer: _Trainer) -> History | None:
        """Load the saved state into ``trainer``; a finished run's :class:`History`, else ``None``."""
        if self.path is None or not self.resume_allowed or not os.path.exists(self.path):
            return None
        saved = _read(self.path, _CHECKPOINT_FORMAT, "checkpoint")
        _load_model(trainer.model, saved["model"], self.path, "pass resume=False to start afresh")
        _warn_config_changes(saved["config"], self.config, self.path)
        final = saved["final"]
        if final is not None and self._finished(saved["step"], final["history"]):
            trainer.tracker.best_state = final["best_state"]
            return History.from_dict(final["history"])
        trainer.load_state_dict(saved, self.path)
        return None

    def _finished(self, step: int, history: dict) -> bool:
        steps, max_seconds = self.config["steps"], self.config["max_seconds"]
        return (
            (steps is not None and step >= steps)
            or history["stopped_early"]
            or (max_seconds is not None and history["elapsed"] >= max_seconds)
        )

    def due(self, step: int) -> bool:
        return self.path is not None and step % self.every == 0

    def save(self, state: dict, final: dict | None = None) -> None:
        _write(self.path, {"format": _CHECKPOINT_FORMAT, "config": self.config, **state, "final": final})

    def finish(self, state: dict, history: History, best_state: dict | None) -> None:
        """Save the state before the end-of-run extras, with the history they completed."""
        if self.path is not None:
            self.save(state, final={"history": history.to_dict(), "best_state": best_state})


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


class _SelfSampled:
    """No data: each step hands the loss the number of samples to draw, ``batch_size``."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.count = 0

    def next(self) -> int:
        self.count += 1
        return self.batch_size

    def where(self) -> str:
        return f"{self.batch_size} samples drawn by the loss"

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


# ---------------------------------------------------------------------------------------------
# Checks of the arguments, all made once before the first step.


def _batches(data, batch_size: int, generator: torch.Generator, preprocess):
    accepted = (
        "a tensor of samples (N, ...), an object with a sample(n) method (e.g. a toy "
        "distribution), a function n -> tensor, or None with a loss that draws its own samples"
    )
    if data is None:
        return _SelfSampled(batch_size)
    if isinstance(data, torch.Tensor):
        _check_samples(data, "data", preprocess)
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


def _check_samples(x, name: str, preprocess, check_finite: bool = True, caller: str = "train") -> None:
    """A data tensor must hold samples the model can score: at least one, real-valued, finite."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{caller} expects {name} as a tensor of samples (N, ...), got {type(x).__name__}")
    if x.dim() == 0 or len(x) == 0:
        raise ValueError(
            f"{name} must hold at least one sample, a tensor of shape (N, ...); got shape {tuple(x.shape)}"
        )
    if preprocess is None and not x.is_floating_point():
        raise TypeError(
            f"{name} holds {x.dtype} values, such as the integer levels of images, but a density "
            f"model needs real-valued samples. Convert them to floats scaled to [0, 1] (e.g. "
            f"{name}.float() / 255 for 8-bit images), or pass preprocess=coursepkg.data.Dequantize("
            "num_levels), which also adds the dequantization noise afresh at every step."
        )
    if check_finite and x.is_floating_point():
        finite = torch.isfinite(x)
        if not finite.all():
            bad_samples = (~finite).reshape(len(x), -1).any(1).nonzero().flatten()
            raise ValueError(
                f"{name} holds NaN or infinite values ({_count_bad(x)}), in {len(bad_samples)} of "
                f"its {len(x)} samples, the first at index {bad_samples[0].item()}; training on them "
                f"gives a NaN loss. Find where they come from, or drop those samples: "
                f"{name} = {name}[torch.isfinite({name}).reshape(len({name}), -1).all(1)]"
            )


def _check_budget(steps, max_seconds) -> tuple[int | None, float | None]:
    """``steps`` as an int (or None) and ``max_seconds`` as a float (or None); one must be set."""
    if steps is not None:
        _check_integers(steps=(steps, 0))
        steps = int(steps)  # plain ints keep a checkpoint loadable with weights_only=True
    if max_seconds is not None:
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, numbers.Real):
            raise TypeError(
                f"max_seconds must be a number of seconds or None, got {type(max_seconds).__name__} "
                f"{max_seconds!r}"
            )
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
        max_seconds = float(max_seconds)
    elif steps is None:
        raise ValueError("steps=None trains without a step limit: give max_seconds, a time budget")
    return steps, max_seconds


def _check_integers(**values: tuple) -> None:
    """Each keyword is ``name=(value, minimum)``: an integer (not a bool, not a float) at least ``minimum``."""
    for name, (value, minimum) in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            hint = ""
            if isinstance(value, float) and value.is_integer():
                hint = f": write {name}={int(value):_} (1e3 and 1000.0 are floats)"
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}{hint}")
        if value < minimum:
            raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def _choose_loss(model, data, loss_fn, val_data, patience, preprocess) -> Callable:
    """The loss of a step, once it is clear that it fits the data (or the absence of data)."""
    if patience is not None and val_data is None:
        raise ValueError("patience needs val_data: early stopping watches the validation loss")
    if data is None:
        if loss_fn is None:
            raise TypeError(
                "data=None trains without data, so the loss must draw its own samples: pass "
                "loss_fn=ReverseKL(log_target) (from coursepkg.training), or a function "
                "loss_fn(model, n) -> scalar loss"
            )
        for name, value in (("val_data", val_data), ("preprocess", preprocess)):
            if value is not None:
                raise ValueError(
                    f"{name} needs data, but data=None: a loss that draws its own samples has no data "
                    "to validate on or to preprocess"
                )
        return loss_fn
    if getattr(loss_fn, "needs_data", True) is False:
        raise ValueError(
            f"{loss_fn!r} draws its own samples from the model and takes no data: call "
            "train(model, None, loss_fn=...)"
        )
    if loss_fn is not None:
        return loss_fn
    if not callable(getattr(model, "log_prob", None)):
        raise TypeError(
            f"{type(model).__name__} has no log_prob(x); pass loss_fn=lambda model, x: ... "
            "returning the scalar loss of a batch"
        )
    return default_loss


def _shape_error(error: Exception, batch: torch.Tensor, batches) -> Exception:
    """The error of the first forward pass, with the shapes of the batch and the data added."""
    if isinstance(batches, _TensorBatches):
        source = f"from data of shape {tuple(batches.data.shape)}"
    else:
        source = f"drawn by {batches.name}"
    return type(error)(
        f"the model could not compute the loss of the first batch, of shape {tuple(batch.shape)} "
        f"({source}): {error}\nIf the model expects samples of another shape than "
        f"{tuple(batch.shape[1:])}, reshape the data (e.g. images.flatten(1) for a model of "
        "vectors) or build the model for samples of this shape."
    )


def _accepts_generator(fn: Callable) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


# ---------------------------------------------------------------------------------------------
# The NaN guard's diagnosis, run only after the loss or the gradient went non-finite.


def _non_finite_error(
    what: str,
    step: int,
    model: nn.Module,
    rerun: Callable[[], None],
    *,
    raw: torch.Tensor | None,
    batch: torch.Tensor | None,
    params: list[torch.Tensor] | None = None,
) -> NonFiniteLossError:
    """Explain a NaN or inf: bad input, the first layer that produced it, or a bad gradient.

    ``rerun()`` computes the step's loss again on the same samples. ``raw`` is the batch as drawn
    and ``batch`` the one after ``preprocess`` (both ``None`` for a loss that draws its own
    samples); ``params`` is given when the gradient, not the loss, went wrong.
    """
    layer = None
    data_free = raw is None
    if not data_free and raw.is_floating_point() and not torch.isfinite(raw).all():
        cause = f"The training batch itself contains non-finite values ({_count_bad(raw)}): check the data."
    elif not data_free and not torch.isfinite(batch).all():
        cause = (
            f"preprocess(batch) returned non-finite values ({_count_bad(batch)}): check the preprocessing."
        )
    else:
        found = _first_non_finite_layer(model, rerun)
        bad_grads = [] if params is None else _non_finite_gradients(model, params)
        if found is not None:
            layer, kind = found
            cause = f"First layer with a non-finite output: {layer} ({kind})."
        elif bad_grads:
            layer = bad_grads[0].rpartition(".")[0] or None
            shown = ", ".join(bad_grads[:5]) + (", ..." if len(bad_grads) > 5 else "")
            cause = f"No layer output was non-finite; parameters with non-finite gradients: {shown}."
        elif data_free:
            cause = (
                "No layer of the model produced a non-finite output, so the loss itself is not "
                "finite: is the target log-density finite (not NaN, not -inf) wherever the model "
                "puts samples?"
            )
        else:
            cause = "No layer produced a non-finite output, so the loss itself overflowed."
    check = "the target log-density" if data_free else "the data for NaN/inf"
    message = (
        f"{what}. {cause} Try a lower learning rate, gradient clipping, or check {check}. "
        "The model keeps its parameters from before this step."
    )
    return NonFiniteLossError(message, step=step, layer=layer)


def _first_non_finite_layer(model: nn.Module, rerun: Callable[[], None]) -> tuple[str, str] | None:
    """Re-run the loss watching every module's output, forward and inverse; the first non-finite wins."""
    found: list[tuple[str, str]] = []

    def note(name: str, module: nn.Module, output, direction: str = "") -> None:
        if not found and _has_non_finite(output):
            found.append((name or "(the whole model)", type(module).__name__ + direction))

    def forward_hook(name: str):
        return lambda module, inputs, output: note(name, module, output)

    def watched(name: str, module: nn.Module, inverse: Callable):
        def inverse_and_note(*args, **kwargs):
            output = inverse(*args, **kwargs)
            note(name, module, output, ", inverse")
            return output

        return inverse_and_note

    # Sampling runs the layers' inverse, which forward hooks do not see: wrap it for this pass.
    inverses = [
        (name, module)
        for name, module in model.named_modules()
        if callable(getattr(module, "inverse", None)) and "inverse" not in vars(module)
    ]
    # Running statistics (batch norm, say) must not move because of this diagnostic pass.
    buffers = [(b, b.clone()) for b in model.buffers()]
    handles = [module.register_forward_hook(forward_hook(name)) for name, module in model.named_modules()]
    for name, module in inverses:
        vars(module)["inverse"] = watched(name, module, module.inverse)
    try:
        rerun()
    except Exception:  # the diagnosis must never hide the error it explains
        pass
    finally:
        for handle in handles:
            handle.remove()
        for _, module in inverses:
            del vars(module)["inverse"]
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


def _gradient_norm(params: list[torch.Tensor]) -> float:
    """The Euclidean norm of all gradients together (for the message of the NaN guard)."""
    return math.sqrt(sum(p.grad.double().square().sum().item() for p in params if p.grad is not None))


def _count_bad(t: torch.Tensor) -> str:
    bad = (~torch.isfinite(t)).sum().item()
    return f"{bad} of {t.numel()} entries are NaN or inf"


# ---------------------------------------------------------------------------------------------
# Small helpers: losses, devices, files.


def _check_scalar(loss) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(
            f"loss_fn must return a scalar (the mean loss of the batch), got shape {tuple(loss.shape)}; "
            "did you forget .mean()?"
        )
    return loss.reshape(())


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
    with runtime.fork_rng(seed=_VALIDATION_SEED):
        chunks = [
            _to_model(preprocess(_to_model(data[i : i + batch_size], device, dtype)), device, dtype)
            for i in range(0, len(data), batch_size)
        ]
    return torch.cat(chunks)


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
            stacklevel=5,
        )
