"""Interactive demos that work both in a live notebook and in the static book.

The book is rendered without a kernel, so ipywidgets sliders would be dead there. Each demo is
written once as a drawing function ``draw(ax, value)`` and shown in one of two ways:

* :func:`slider_animation` pre-renders one frame per value into an HTML animation whose play
  buttons and frame slider run in the browser's JavaScript: it works in the static book.
* :func:`interactive` builds ipywidgets sliders that redraw on change: for Jupyter and Colab,
  where a kernel runs.

A chapter typically does::

    def draw(ax, temperature):
        plotting.plot_samples(model.sample(2000, temperature), ax=ax, bounds=box)

    slider_animation(draw, np.linspace(0.2, 1.5, 14), label="temperature")
    # and, for readers running the notebook:
    # interactive(draw, temperature=(0.2, 1.5, 0.1, 1.0))
"""

from __future__ import annotations

import io
import math
import numbers
import re
from collections.abc import Callable, Iterable
from html import escape

import numpy as np

__all__ = ["in_notebook_kernel", "interactive", "slider_animation"]


def in_notebook_kernel() -> bool:
    """True when running in a Jupyter/Colab kernel, where ipywidgets work; False in a script,
    in tests, or in a plain IPython terminal."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _caption_formatter(fmt: str | Callable) -> Callable[[object], str]:
    return fmt if callable(fmt) else fmt.format


def slider_animation(
    draw: Callable,
    values: Iterable,
    *,
    label: str = "value",
    fmt: str | Callable = "{:.2f}",
    interval: int = 200,
    figsize: tuple[float, float] = (6, 3),
    ncols: int = 1,
    dpi: int = 72,
    max_frames: int = 60,
    alt: str | None = None,
):
    """An animation over ``values`` with play/pause/step buttons and a frame slider, as HTML
    that works in a static page (no kernel needed).

    For each value, in order, the figure's axes are cleared and ``draw(ax, value)`` is called
    (``ax`` is a single Axes when ``ncols == 1``, else a 1-D array of ``ncols`` Axes); the
    figure's title reads ``"{label} = {value}"``. Every frame is rendered now and embedded as
    a PNG in the returned HTML (made by ``FuncAnimation.to_jshtml(default_mode="once")``), so a
    cell ending with the call shows the player both in Jupyter and in the built book. The figure
    is closed before returning, so the notebook does not also show a static copy.

    Args:
        draw: ``draw(ax_or_axes, value)``; it may add colorbars, which are removed before the
            next frame.
        values: the parameter values, one frame each (a list, range or 1-D array).
        label: the parameter's name in the caption.
        fmt: a format string for the value (``str.format``), or a callable ``value -> str``.
        interval: milliseconds between frames when playing.
        figsize: figure size in inches.
        ncols: number of side-by-side axes passed to ``draw``.
        dpi: resolution of the frames.
        max_frames: the most frames accepted.
        alt: the frames' alternative text, for readers who cannot see them; default: what the
            animation varies, from which value to which.

    The player needs nothing from the network: matplotlib's player loads its button icons from
    a font on a CDN, so its buttons are given text symbols instead (offline books, Colab).

    Size warning: every frame is an embedded PNG, so the HTML grows with the number of frames,
    ``figsize`` and ``dpi`` (squared). With the defaults (at most 60 frames of 432 x 216 pixels)
    one animation stays under about 2 MB; raise them only with care, as the book's pages carry
    every animation they show.

    Returns:
        an ``IPython.display.HTML`` object (its ``.data`` is the HTML string).

    Raises:
        ValueError: ``values`` is empty or has more than ``max_frames`` entries.
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML
    from matplotlib.animation import FuncAnimation

    values = list(values)
    if not values:
        raise ValueError("values is empty: slider_animation needs at least one value to draw")
    if len(values) > max_frames:
        raise ValueError(
            f"{len(values)} values would embed {len(values)} frames; at most max_frames={max_frames} "
            "keep the page small. Use fewer values (e.g. np.linspace(a, b, 30)) or raise max_frames."
        )
    caption = _caption_formatter(fmt)
    caption(values[0])  # a wrong fmt fails here, before any drawing

    fig, axes = plt.subplots(1, int(ncols), figsize=figsize, dpi=dpi, layout="constrained")
    # FuncAnimation asks for a redraw after every frame and the writer then renders it again
    # with savefig; only savefig's render is embedded, so skip the other (halves the time).
    fig.canvas.draw_idle = lambda *args, **kwargs: None
    own_axes = list(np.atleast_1d(axes))

    def update(frame: int):
        # Axes that draw() added for the previous frame (colorbars) would pile up: remove them.
        for extra in [a for a in fig.axes if not any(a is own for own in own_axes)]:
            extra.remove()
        for ax in own_axes:
            ax.clear()
        draw(axes, values[frame])
        fig.suptitle(f"{label} = {caption(values[frame])}")
        return []

    try:
        # A no-op init_func: without it matplotlib draws frame 0 an extra time to initialise.
        animation = FuncAnimation(
            fig, update, frames=len(values), init_func=lambda: [], interval=interval, repeat=False
        )
        html = animation.to_jshtml(default_mode="once")
    finally:
        plt.close(fig)
    if alt is None:
        alt = (
            f"Animation in {len(values)} frames as {label} goes from {caption(values[0])} to "
            f"{caption(values[-1])}; play it or move the slider to see each frame."
        )
    return HTML(_offline_player(html, alt))


#: Text symbols for the Font Awesome icons of matplotlib's animation player.
_BUTTON_SYMBOLS = {
    "fa-minus": "\u2212",
    "fa-fast-backward": "\u21e4",
    "fa-step-backward": "\u25c1",
    "fa-play fa-flip-horizontal": "\u25c0",
    "fa-pause": "\u275a\u275a",
    "fa-play": "\u25b6",
    "fa-step-forward": "\u25b7",
    "fa-fast-forward": "\u21e5",
    "fa-plus": "+",
}


def _offline_player(html: str, alt: str) -> str:
    """``to_jshtml``'s player without its remote stylesheet, with text buttons and alt text."""
    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", html)
    for icon, symbol in _BUTTON_SYMBOLS.items():
        html = html.replace(f'<i class="fa {icon}"></i>', f'<span aria-hidden="true">{symbol}</span>')
    return re.sub(r'<img id="(_anim_img\w+)">', lambda m: f'<img id="{m[1]}" alt="{escape(alt)}">', html)


def _decimals(*numbers_: float) -> int:
    """Decimal places needed to show every one of ``numbers_`` exactly (at most 6)."""
    for places in range(7):
        if all(abs(round(x, places) - x) <= 1e-9 * max(1.0, abs(x)) for x in numbers_):
            return places
    return 6


def _make_slider(name: str, spec):
    """An ipywidgets slider from ``(min, max, step)`` or ``(min, max, step, initial)``, or the
    widget ``spec`` itself."""
    import ipywidgets

    if isinstance(spec, ipywidgets.Widget):
        if not hasattr(spec, "value"):
            raise ValueError(f"slider {name!r}: the widget {type(spec).__name__} has no value")
        if not getattr(spec, "description", None):
            spec.description = name
        return spec

    form = f"{name}=(min, max, step) or {name}=(min, max, step, initial), or an ipywidgets widget"
    if not isinstance(spec, (tuple, list)) or len(spec) not in (3, 4):
        raise ValueError(f"slider {name!r}: expected {form}, got {spec!r}")
    for entry in spec:
        # bool is an int to Python, but True as a slider bound is surely a mistake.
        if isinstance(entry, bool) or not isinstance(entry, numbers.Real) or not math.isfinite(entry):
            raise ValueError(
                f"slider {name!r}: entries must be finite numbers, got {spec!r}; expected {form}"
            )
    low, high, step = spec[:3]
    if not low < high:
        raise ValueError(f"slider {name!r}: min must be less than max, got {spec!r}")
    if not step > 0:
        raise ValueError(f"slider {name!r}: step must be positive, got {spec!r}")
    if len(spec) == 4:
        initial = spec[3]
        if not low <= initial <= high:
            raise ValueError(f"slider {name!r}: initial value {initial} lies outside [{low}, {high}]")
    else:
        # The middle of the range on the step grid, as ipywidgets.interact chooses.
        initial = min(high, low + round((high - low) / 2 / step) * step)
        # Rounded, so that 0.1 * 3 shows as 0.3 and not 0.30000000000000004.
        initial = round(initial, _decimals(float(low), float(step)))

    if all(isinstance(entry, numbers.Integral) for entry in spec):
        return ipywidgets.IntSlider(
            value=int(initial),
            min=int(low),
            max=int(high),
            step=int(step),
            description=name,
            continuous_update=False,
        )
    places = _decimals(float(low), float(step), float(initial))
    return ipywidgets.FloatSlider(
        value=float(initial),
        min=float(low),
        max=float(high),
        step=float(step),
        description=name,
        readout_format=f".{places}f",
        continuous_update=False,
    )


def interactive(draw: Callable, *, figsize: tuple[float, float] = (6, 3), ncols: int = 1, **sliders):
    """Sliders that redraw a figure when moved, for Jupyter and Colab (they need a kernel).

    Each keyword argument names a parameter of ``draw`` and describes its slider:

    * ``name=(min, max, step)``: starts in the middle of the range (on the step grid);
    * ``name=(min, max, step, initial)``;
    * an ipywidgets widget with a ``value`` (e.g. a ``Dropdown``), used as it is.

    A tuple of ints makes an ``IntSlider`` (``draw`` then gets ints), any float a
    ``FloatSlider``. Sliders update when released (``continuous_update=False``), so a slow
    ``draw`` does not queue up one redraw per pixel dragged.

    On every change (and once at the start) a fresh figure of ``figsize`` inches with ``ncols``
    axes is made, ``draw(ax, **values)`` is called (``ax`` a single Axes when ``ncols == 1``,
    else a 1-D array), and the figure is shown as a PNG in an ``ipywidgets.Output`` below the
    sliders. Errors raised by ``draw`` appear in that output.

    Returns:
        an ``ipywidgets.VBox`` whose children are the sliders, in keyword order, then the
        ``Output``; a cell ending with it displays it. In the static book it shows nothing
        useful: pair it with :func:`slider_animation`.

    Raises:
        ValueError: no sliders, or a malformed slider specification.
    """
    import ipywidgets
    from IPython.display import Image, display
    from matplotlib.figure import Figure

    if not sliders:
        raise ValueError("interactive needs at least one slider, e.g. interactive(draw, scale=(0.1, 3, 0.1))")
    controls = {name: _make_slider(name, spec) for name, spec in sliders.items()}
    output = ipywidgets.Output()

    def redraw(change=None) -> None:
        values = {name: control.value for name, control in controls.items()}
        # A Figure outside pyplot: nothing else displays it, and it is freed with its last use.
        fig = Figure(figsize=figsize, layout="constrained")
        axes = fig.subplots(1, int(ncols))
        with output:
            output.clear_output(wait=True)
            draw(axes, **values)
            # PNG bytes display the same under any matplotlib backend (inline, widget, Colab).
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png")
            display(Image(data=buffer.getvalue(), format="png"))

    for control in controls.values():
        control.observe(redraw, names="value")
    redraw()
    return ipywidgets.VBox([*controls.values(), output])
