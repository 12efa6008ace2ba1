"""The course's figures: densities, samples, deformed grids, layer-by-layer trajectories, images
and training curves.

Every function draws on the Axes passed as ``ax`` (or creates a figure when ``ax`` is None) and
returns what it drew on, so panels compose::

    fig, axes = figure(ncols=2)
    plot_density(model, ax=axes[0], title="model")
    plot_samples(data, ax=axes[1], bounds=((-4, 4), (-4, 4)), title="data")

Inputs may be torch tensors (on any device, with or without gradients) or numpy arrays. Models
are evaluated in ``eval()`` mode under ``torch.no_grad()`` on their own device, and their
training flags are restored afterwards. Nothing here calls ``plt.show()``: a notebook displays
the figures a cell creates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from .core import NormalizingFlow, nats_to_bits_per_dim
from .jacobian import log_abs_det_jacobian

__all__ = [
    "density_grid",
    "figure",
    "plot_density",
    "plot_density_1d",
    "plot_grid_deformation",
    "plot_histogram_1d",
    "plot_history",
    "plot_samples",
    "plot_trajectory",
    "show_images",
]

Bounds2D = tuple[tuple[float, float], tuple[float, float]]


# ---------------------------------------------------------------------------------------------
# Helpers: conversions, where a model lives, evaluating it safely
# ---------------------------------------------------------------------------------------------


def _to_numpy(x) -> np.ndarray:
    """A tensor (any device, dtype, grad) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16, and half precision only loses more digits in plots.
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _module_of(obj) -> nn.Module | None:
    """The module whose device and train/eval mode matter for ``obj``, if any.

    ``obj`` is a module itself or a bound method of one (``flow.inverse``, ``model.log_prob``).
    """
    if isinstance(obj, nn.Module):
        return obj
    owner = getattr(obj, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def _placement(module: nn.Module | None, device=None) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype on which to feed inputs to ``module``.

    An explicit ``device`` wins; otherwise the module's first parameter or buffer decides, and a
    plain function gets the CPU and torch's default dtype.
    """
    dtype = torch.get_default_dtype()
    found_device = None
    if module is not None:
        for tensor in [*module.parameters(), *module.buffers()]:
            if found_device is None:
                found_device = tensor.device
            if tensor.is_floating_point():
                found_device, dtype = tensor.device, tensor.dtype
                break
    if device is not None:
        return torch.device(device), dtype
    return (found_device or torch.device("cpu")), dtype


@contextmanager
def _evaluating(module: nn.Module | None):
    """Put ``module`` in eval mode for the duration, then restore every submodule's own flag.

    Restoring per submodule (rather than ``module.train(was_training)``) keeps deliberately
    frozen parts, e.g. a BatchNorm left in eval mode during training, as the caller had them.
    """
    if module is None:
        yield
        return
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _bounds_2d(bounds) -> Bounds2D:
    try:
        (x0, x1), (y0, y1) = bounds
        x0, x1, y0, y1 = float(x0), float(x1), float(y0), float(y1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bounds must be ((xmin, xmax), (ymin, ymax)), got {bounds!r}") from error
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"bounds must satisfy xmin < xmax and ymin < ymax, got {bounds!r}")
    return (x0, x1), (y0, y1)


def _bounds_1d(bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bounds must be (min, max), got {bounds!r}") from error
    if not lo < hi:
        raise ValueError(f"bounds must satisfy min < max, got {bounds!r}")
    return lo, hi


def _points_2d(x, what: str = "x") -> np.ndarray:
    points = _to_numpy(x)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{what} must have shape (N, 2), got {tuple(points.shape)}")
    return points


def _new_ax(ax):
    if ax is None:
        _, ax = figure()
    return ax


def _log_prob_values(model_or_fn, points: np.ndarray, device=None, batch_size: int = 65536) -> np.ndarray:
    """``log p`` of each row of ``points`` (N, D) as a float64 array (N,), evaluated in batches."""
    log_prob = getattr(model_or_fn, "log_prob", model_or_fn)
    if not callable(log_prob):
        raise TypeError(
            "expected a callable on (N, D) tensors or an object with .log_prob, "
            f"got {type(model_or_fn).__name__}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    module = _module_of(model_or_fn) or _module_of(log_prob)
    dev, dtype = _placement(module, device)
    inputs = torch.as_tensor(points, dtype=dtype)
    chunks = []
    with torch.no_grad(), _evaluating(module):
        for chunk in inputs.split(batch_size):
            values = torch.as_tensor(log_prob(chunk.to(dev))).reshape(-1)
            if values.numel() != chunk.shape[0]:
                raise ValueError(
                    f"log_prob returned {values.numel()} values for {chunk.shape[0]} points; "
                    "it must return one log-density per point, shape (N,)"
                )
            chunks.append(values.detach().to("cpu", torch.float64))
    return torch.cat(chunks).numpy()


# ---------------------------------------------------------------------------------------------
# Figures and densities
# ---------------------------------------------------------------------------------------------


def figure(ncols: int = 1, nrows: int = 1, size: float = 3.2):
    """A new figure of ``nrows x ncols`` square-ish panels, ``size`` inches each, constrained layout.

    Returns ``(fig, axes)`` as :func:`matplotlib.pyplot.subplots` does: ``axes`` is a single Axes
    for one panel, a 1-D array for one row or column, a 2-D array otherwise.
    """
    if int(ncols) < 1 or int(nrows) < 1:
        raise ValueError(f"ncols and nrows must be positive, got ncols={ncols}, nrows={nrows}")
    return plt.subplots(
        int(nrows), int(ncols), figsize=(size * int(ncols), size * int(nrows)), layout="constrained"
    )


def density_grid(
    log_prob_fn,
    bounds=((-4, 4), (-4, 4)),
    resolution: int = 200,
    device=None,
    batch_size: int = 65536,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate a 2-D log-density on a regular grid.

    Args:
        log_prob_fn: a callable mapping an ``(N, 2)`` tensor to ``(N,)`` log-densities, or any
            object with such a ``log_prob`` method (a :class:`~coursepkg.core.NormalizingFlow`,
            a base distribution, a toy data distribution). Modules are evaluated on their own
            device (or ``device``), in ``eval()`` mode, under ``torch.no_grad()``.
        bounds: ``((xmin, xmax), (ymin, ymax))``, the grid's extent (endpoints included).
        resolution: number of grid points along each axis.
        device: where to evaluate; by default the module's device, or the CPU for a function.
        batch_size: points per call, to bound memory on large grids.

    Returns:
        ``(xx, yy, log_p)``, float64 arrays of shape ``(resolution, resolution)`` indexed
        ``[row, column] = [y, x]`` (``np.meshgrid``'s default), so ``log_p[i, j]`` is the
        log-density at ``(xx[i, j], yy[i, j])``.
    """
    (x0, x1), (y0, y1) = _bounds_2d(bounds)
    resolution = int(resolution)
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    xx, yy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    points = np.stack([xx.ravel(), yy.ravel()], axis=1)
    log_p = _log_prob_values(log_prob_fn, points, device, batch_size)
    return xx, yy, log_p.reshape(resolution, resolution)


def plot_density(
    model_or_fn,
    bounds=((-4, 4), (-4, 4)),
    resolution: int = 200,
    ax=None,
    title: str | None = None,
    cmap: str = "viridis",
    log: bool = False,
):
    """Heatmap of a 2-D density ``p(x) = exp(log_prob(x))`` over ``bounds``.

    Args:
        model_or_fn: as ``log_prob_fn`` of :func:`density_grid`.
        bounds, resolution: the grid, as in :func:`density_grid`.
        ax: the Axes to draw on; a new figure when None.
        title: the panel's title.
        cmap: matplotlib colormap name.
        log: draw ``log p`` instead of ``p``; points where ``p = 0`` (``log p = -inf``) or where
            the model returns NaN are masked and show the background.

    The image's pixel ``[i, j]`` is the grid point of :func:`density_grid` (origin lower left),
    the aspect is equal and ticks are hidden. Returns the Axes.
    """
    (x0, x1), (y0, y1) = _bounds_2d(bounds)
    _, _, log_p = density_grid(model_or_fn, bounds, resolution)
    with np.errstate(over="ignore"):
        values = log_p if log else np.exp(log_p)
    ax = _new_ax(ax)
    # Pixel centres sit on the grid points, so the image reaches half a cell past the bounds.
    dx, dy = (x1 - x0) / (resolution - 1), (y1 - y0) / (resolution - 1)
    ax.imshow(
        np.ma.masked_invalid(values),
        origin="lower",
        extent=(x0 - dx / 2, x1 + dx / 2, y0 - dy / 2, y1 + dy / 2),
        cmap=cmap,
        interpolation="nearest",
        aspect="equal",
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title)
    return ax


def plot_density_1d(
    model_or_fn,
    bounds=(-4, 4),
    resolution: int = 500,
    ax=None,
    label: str | None = None,
    **plot_kwargs,
):
    """Line plot of the density ``p(x)`` of a 1-D model over ``bounds = (min, max)``.

    ``model_or_fn`` receives ``(N, 1)`` tensors (a callable, or an object with ``log_prob``,
    evaluated as in :func:`density_grid`). ``label`` names the curve in a legend; the other
    keyword arguments go to ``Axes.plot``. Returns the Axes.
    """
    lo, hi = _bounds_1d(bounds)
    xs = np.linspace(lo, hi, int(resolution))
    log_p = _log_prob_values(model_or_fn, xs[:, None])
    ax = _new_ax(ax)
    with np.errstate(over="ignore"):
        ax.plot(xs, np.exp(log_p), label=label, **plot_kwargs)
    ax.set_xlim(lo, hi)
    if label is not None:
        ax.legend()
    return ax


def plot_samples(
    x,
    ax=None,
    bounds=None,
    title: str | None = None,
    s: float = 2,
    alpha: float = 0.5,
    color=None,
):
    """Scatter plot of 2-D points ``x``, shape ``(N, 2)`` (tensor or array), with equal aspect.

    ``bounds = ((xmin, xmax), (ymin, ymax))`` fixes the view (e.g. to match :func:`plot_density`);
    by default it fits the points. ``s``, ``alpha`` and ``color`` style the markers (``color``
    None takes the next color of the cycle). Returns the Axes.
    """
    points = _points_2d(x)
    ax = _new_ax(ax)
    # Rasterized: tens of thousands of markers would make a vector export huge.
    ax.scatter(points[:, 0], points[:, 1], s=s, alpha=alpha, color=color, linewidths=0, rasterized=True)
    ax.set_aspect("equal")
    if bounds is not None:
        (x0, x1), (y0, y1) = _bounds_2d(bounds)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    if title is not None:
        ax.set_title(title)
    return ax


def plot_histogram_1d(x, ax=None, bins: int = 100, bounds=None, **kw):
    """Density histogram of 1-D samples ``x``, shape ``(N,)`` or ``(N, 1)``: bar height is the
    fraction of all samples in the bin divided by its width, so the bars estimate the density even
    when ``bounds`` leaves some samples out.

    ``bounds = (min, max)`` sets the histogram's range and the view; the other keyword
    arguments go to ``Axes.hist`` (default ``alpha=0.5``, so a density curve drawn on the same
    Axes with :func:`plot_density_1d` stays visible). Returns the Axes.
    """
    values = _to_numpy(x)
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise ValueError(f"x must have shape (N,) or (N, 1), got {tuple(values.shape)}")
    value_range = _bounds_1d(bounds) if bounds is not None else None
    kw.setdefault("alpha", 0.5)
    ax = _new_ax(ax)
    flat = values.reshape(-1)
    if value_range is None:
        ax.hist(flat, bins=bins, density=True, **kw)
    else:
        # density=True would normalise by the samples inside the range only, inflating the bars
        # when mass lies outside; weight each sample by 1 / (N * bin width) instead.
        width = (value_range[1] - value_range[0]) / bins
        ax.hist(flat, bins=bins, range=value_range, weights=np.full(flat.size, 1 / (flat.size * width)), **kw)
    if value_range is not None:
        ax.set_xlim(*value_range)
    return ax


# ---------------------------------------------------------------------------------------------
# How a map moves space
# ---------------------------------------------------------------------------------------------


def _apply_map(fn, points: np.ndarray, need_log_det: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``fn`` on ``points`` (N, 2): the mapped points (N, 2) and, if asked, ``log|det J|`` (N,)."""
    if isinstance(fn, NormalizingFlow):
        fn = fn.transform  # its forward is log_prob; the map is its transform
    module = _module_of(fn)
    dev, dtype = _placement(module)
    inputs = torch.as_tensor(points, dtype=dtype, device=dev)
    with _evaluating(module):
        with torch.no_grad():
            out = fn(inputs)
        log_det = None
        if isinstance(out, (tuple, list)):
            out, log_det = out[0], (out[1] if len(out) > 1 else None)
        if need_log_det and log_det is None:
            # A plain map reports no log_det: differentiate it (cheap in 2-D).
            log_det = log_abs_det_jacobian(fn, inputs)
    mapped = _to_numpy(out).astype(np.float64)
    if mapped.shape != points.shape:
        raise ValueError(f"the map must send (N, 2) points to (N, 2), got {tuple(mapped.shape)}")
    if log_det is None:
        return mapped, None
    log_det = _to_numpy(log_det).astype(np.float64).reshape(-1)
    if log_det.shape[0] != points.shape[0]:
        raise ValueError(f"log_det must have one value per point, got shape {log_det.shape}")
    return mapped, log_det


def plot_grid_deformation(
    fn,
    bounds=((-3, 3), (-3, 3)),
    num_lines: int = 21,
    resolution: int = 200,
    ax=None,
    title: str | None = None,
    color_by: str | None = None,
):
    """A regular grid and its image under a 2-D map: how the map stretches, shears and folds space.

    The grid has ``num_lines`` vertical and ``num_lines`` horizontal lines spanning ``bounds``,
    each sampled at ``resolution`` points so that curved images stay smooth. The original grid
    is drawn thin and light grey underneath; its image is drawn on top, vertical lines in the
    first cycle color and horizontal lines in the second.

    Args:
        fn: a map from ``(N, 2)`` tensors to ``(N, 2)``, or a flow returning ``(z, log_det)``
            (its first element is used). A :class:`~coursepkg.core.NormalizingFlow` is drawn
            through its ``transform`` (data to latent). Modules run in ``eval()`` mode on their
            device, without gradients.
        bounds: ``((xmin, xmax), (ymin, ymax))`` of the original grid.
        num_lines: lines in each direction.
        resolution: points along each line.
        ax, title: where to draw, and the panel's title.
        color_by: None, or ``"log_det"`` to colour the image lines by the local
            ``log|det J|`` of the map at each point (red: area grows, blue: area shrinks;
            colour scale symmetric about 0, with a colorbar). The flow's own ``log_det`` is
            used; a plain map's is computed by autograd.

    The view fits both grids with equal aspect. Returns the Axes.

    Drawn artists, in order: ``ax.collections[0]`` the original grid (``2 * num_lines`` lines of
    ``resolution`` points: vertical lines first), ``ax.collections[1]`` its image (the same
    lines, or, with ``color_by="log_det"``, ``2 * num_lines * (resolution - 1)`` two-point
    segments).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    if color_by not in (None, "log_det"):
        raise ValueError(f"color_by must be None or 'log_det', got {color_by!r}")
    (x0, x1), (y0, y1) = _bounds_2d(bounds)
    num_lines, resolution = int(num_lines), int(resolution)
    if num_lines < 2 or resolution < 2:
        raise ValueError(f"num_lines and resolution must be at least 2, got {num_lines}, {resolution}")

    line_x, line_y = np.linspace(x0, x1, num_lines), np.linspace(y0, y1, num_lines)
    along_x, along_y = np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution)
    shape = (num_lines, resolution)
    vertical = np.stack([np.broadcast_to(line_x[:, None], shape), np.broadcast_to(along_y, shape)], axis=-1)
    horizontal = np.stack([np.broadcast_to(along_x, shape), np.broadcast_to(line_y[:, None], shape)], axis=-1)
    lines = np.concatenate([vertical, horizontal])  # (2 * num_lines, resolution, 2)

    mapped, log_det = _apply_map(fn, lines.reshape(-1, 2), need_log_det=color_by == "log_det")
    mapped = mapped.reshape(lines.shape)

    ax = _new_ax(ax)
    ax.add_collection(LineCollection(lines, colors="0.85", linewidths=0.6, zorder=1))
    if color_by is None:
        colors = ["C0"] * num_lines + ["C1"] * num_lines
        image = LineCollection(mapped, colors=colors, linewidths=0.9, zorder=2)
        ax.add_collection(image)
    else:
        # One two-point segment per step along each line, coloured by its endpoints' mean.
        segments = np.stack([mapped[:, :-1], mapped[:, 1:]], axis=2).reshape(-1, 2, 2)
        per_point = log_det.reshape(shape[0] * 2, resolution)
        values = (0.5 * (per_point[:, :-1] + per_point[:, 1:])).ravel()
        finite = values[np.isfinite(values)]
        extent = max(float(np.abs(finite).max()), 1e-6) if finite.size else 1.0
        image = LineCollection(
            segments, array=values, cmap="coolwarm", norm=Normalize(-extent, extent), linewidths=1.2, zorder=2
        )
        ax.add_collection(image)
        ax.get_figure().colorbar(image, ax=ax, label=r"$\log|\det J|$", shrink=0.8)
    ax.autoscale_view()
    ax.set_aspect("equal")
    if title is not None:
        ax.set_title(title)
    return ax


def plot_trajectory(
    flow, x, ax_row=None, titles: Sequence[str] | None = None, bounds=None, max_panels: int = 8
):
    """Scatter 2-D points after each layer of a composed flow, one panel per stage.

    Args:
        flow: a :class:`~coursepkg.core.Compose` (its ``trajectory(x)`` gives the stages), any
            iterable of layers, or a single flow; a
            :class:`~coursepkg.core.NormalizingFlow` is followed through its ``transform``.
            Evaluated in ``eval()`` mode on its device, without gradients.
        x: the input points, shape ``(N, 2)``, usually data (the flow runs data to latent).
        ax_row: a sequence of Axes to draw on; a new row of panels when None. When given, at
            most ``len(ax_row)`` panels are drawn.
        titles: one title per drawn panel; by default ``"input"`` then ``"after i: LayerName"``.
        bounds: ``((xmin, xmax), (ymin, ymax))`` shared by all panels; each fits its points when
            None.
        max_panels: with more stages than this, evenly spaced stages are shown, always
            including the input and the output.

    Points are coloured by their input x-coordinate so each one can be followed from panel to
    panel. Returns the Figure.
    """
    if isinstance(flow, NormalizingFlow):
        flow = flow.transform
    module = _module_of(flow)
    dev, dtype = _placement(module)
    inputs = torch.as_tensor(_points_2d(x), dtype=dtype, device=dev)
    layers = list(flow) if hasattr(flow, "__iter__") else None
    with torch.no_grad(), _evaluating(module):
        if hasattr(flow, "trajectory"):
            states = list(flow.trajectory(inputs))
        elif layers is not None:
            states = [inputs]
            for layer in layers:
                states.append(layer(states[-1])[0])
        else:
            out = flow(inputs)
            states = [inputs, out[0] if isinstance(out, (tuple, list)) else out]
    states = [_points_2d(state, "every stage of the trajectory") for state in states]

    limit = int(max_panels) if ax_row is None else min(int(max_panels), len(ax_row))
    if limit < 1:
        raise ValueError("max_panels and ax_row must allow at least one panel")
    if len(states) <= limit:
        shown = list(range(len(states)))
    elif limit == 1:
        shown = [len(states) - 1]
    else:
        shown = sorted({int(i) for i in np.linspace(0, len(states) - 1, limit).round()})

    if titles is None:
        named = layers is not None and len(layers) == len(states) - 1

        def default_title(i: int) -> str:
            if i == 0:
                return "input"
            return f"after {i}: {type(layers[i - 1]).__name__}" if named else f"after {i}"

        titles = [default_title(i) for i in shown]
    elif len(titles) != len(shown):
        raise ValueError(f"got {len(titles)} titles for {len(shown)} panels (stages {shown})")

    if ax_row is None:
        fig, axes = figure(ncols=len(shown), size=2.6)
        axes = np.atleast_1d(axes)
    else:
        axes = list(ax_row)
        fig = axes[0].get_figure()

    colour = states[0][:, 0]
    for ax, index, panel_title in zip(axes[: len(shown)], shown, titles, strict=True):
        points = states[index]
        ax.scatter(points[:, 0], points[:, 1], c=colour, cmap="viridis", s=2, alpha=0.6, linewidths=0)
        ax.set_aspect("equal")
        if bounds is not None:
            (x0, x1), (y0, y1) = _bounds_2d(bounds)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
        ax.set_title(panel_title, fontsize="small")
    return fig


# ---------------------------------------------------------------------------------------------
# Images and training curves
# ---------------------------------------------------------------------------------------------


def show_images(
    images,
    nrow: int = 8,
    ax=None,
    title: str | None = None,
    cmap: str = "gray",
    vmin: float = 0,
    vmax: float = 1,
):
    """A grid of images, ``nrow`` per row (torchvision's ``make_grid`` convention).

    Args:
        images: ``(N, C, H, W)`` with ``C`` 1 (grayscale) or 3 (RGB), or ``(N, H, W)``; a tensor
            or array with values in ``[vmin, vmax]`` (by default ``[0, 1]``). Values outside are
            clipped.
        nrow: images per row; the grid has ``ceil(N / nrow)`` rows and ``min(N, nrow)``
            columns.
        ax, title: where to draw, and the title.
        cmap: colormap of grayscale images (RGB images are drawn as they are).
        vmin, vmax: the value range mapped to black and white.

    Images are separated, and surrounded, by 1-pixel lines of the value ``vmax`` (white), and
    empty cells of the last row are filled with it, so the drawn array has shape
    ``(rows * (H + 1) + 1, cols * (W + 1) + 1)`` (plus a trailing 3 for RGB). Pixels are drawn
    without interpolation and the axes are hidden. Returns the Axes.
    """
    array = _to_numpy(images).astype(np.float64)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (N, C, H, W) with C = 1 or 3, or (N, H, W); got {array.shape}"
        )
    n, channels, height, width = array.shape
    if n == 0:
        raise ValueError("images is empty")
    if int(nrow) < 1:
        raise ValueError(f"nrow must be positive, got {nrow}")
    if not vmin < vmax:
        raise ValueError(f"vmin must be less than vmax, got {vmin}, {vmax}")
    cols = min(int(nrow), n)
    rows = math.ceil(n / cols)
    pad = 1
    grid = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, channels), float(vmax))
    array = np.clip(array, vmin, vmax).transpose(0, 2, 3, 1)  # channels last, as imshow wants
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (height + pad), pad + c * (width + pad)
        grid[top : top + height, left : left + width] = array[i]

    ax = _new_ax(ax)
    if channels == 1:
        ax.imshow(grid[..., 0], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    else:
        # imshow takes RGB floats in [0, 1] and ignores vmin/vmax for them: rescale here.
        ax.imshow((grid - vmin) / (vmax - vmin), interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return ax


def _history_field(history, name: str):
    if isinstance(history, Mapping):
        return history.get(name)
    return getattr(history, name, None)


def _as_floats(values) -> np.ndarray:
    # Entries may be Python numbers or 0-d tensors left in a list by a training loop.
    return np.array([float(v) for v in values], dtype=np.float64)


def plot_history(
    history,
    ax=None,
    title: str | None = None,
    bits_per_dim: bool = False,
    dims: int | None = None,
    num_levels: int | None = None,
):
    """Training and validation loss against the step, and the step of the best validation loss.

    Args:
        history: an object with attributes, or a dict with keys, ``steps`` and ``train_loss``
            (equal lengths), and optionally ``val_steps`` and ``val_loss`` (equal lengths) and
            ``best_step``. Missing ``steps`` count ``0, 1, 2, ...``.
        ax, title: where to draw, and the title.
        bits_per_dim: show bits per dimension instead of the loss, assumed to be the mean
            negative log-likelihood per example in nats: ``loss / (dims * ln 2)``.
        dims: the number of dimensions of one example (e.g. ``3 * 32 * 32``); required with
            ``bits_per_dim``.
        num_levels: with ``bits_per_dim``, for images whose pixels were rescaled to ``[0, 1]``
            from ``num_levels`` discrete values (256 for 8-bit images): adds
            ``log2(num_levels)`` so the numbers are those of the discrete images, as in
            :meth:`~coursepkg.core.NormalizingFlow.bits_per_dim`.

    Drawn: ``ax.lines[0]`` the training curve, ``ax.lines[1]`` the validation curve (if any,
    with markers), then a dotted vertical line at ``best_step`` (if set), and a legend.
    Returns the Axes.
    """
    train = _history_field(history, "train_loss")
    if train is None:
        raise ValueError("history has no train_loss")
    train = _as_floats(train)
    steps = _history_field(history, "steps")
    steps = np.arange(len(train)) if steps is None or len(steps) == 0 else _as_floats(steps)
    if len(steps) != len(train):
        raise ValueError(f"history has {len(steps)} steps but {len(train)} train_loss values")
    val_loss = _history_field(history, "val_loss")
    val_steps = _history_field(history, "val_steps")
    val_loss = _as_floats(val_loss) if val_loss is not None else np.zeros(0)
    val_steps = _as_floats(val_steps) if val_steps is not None else np.zeros(0)
    if len(val_loss) != len(val_steps):
        raise ValueError(f"history has {len(val_steps)} val_steps but {len(val_loss)} val_loss values")

    if bits_per_dim:
        if dims is None or dims <= 0:
            raise ValueError("bits_per_dim=True needs dims, the number of dimensions of one example")
        train, val_loss = (nats_to_bits_per_dim(v, dims, num_levels) for v in (train, val_loss))

    ax = _new_ax(ax)
    ax.plot(steps, train, color="C0", linewidth=1, alpha=0.8, label="train")
    if len(val_loss):
        ax.plot(val_steps, val_loss, color="C1", marker="o", markersize=3, label="validation")
    best_step = _history_field(history, "best_step")
    if best_step is not None:
        best_step = float(best_step)
        shown = int(best_step) if best_step.is_integer() else best_step
        ax.axvline(best_step, color="0.3", linestyle=":", linewidth=1.2, label=f"best (step {shown})")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per dimension" if bits_per_dim else "loss")
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax
