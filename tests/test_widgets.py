"""coursepkg.widgets: the static HTML animation and the ipywidgets version."""

import re

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from coursepkg import widgets  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def recorder():
    calls = []

    def draw(ax, *args, **kwargs):
        calls.append((ax, args, kwargs))
        ax_list = np.atleast_1d(ax)
        value = args[0] if args else sum(kwargs.values())
        for a in ax_list:
            a.plot([0, 1], [0, value])

    return calls, draw


# --- slider_animation ----------------------------------------------------------------------------


def test_slider_animation_embeds_one_frame_per_value_with_controls():
    calls, draw = recorder()
    values = [0.5, 1.0, 2.0]
    open_before = plt.get_fignums()
    html = widgets.slider_animation(draw, values, label="scale", figsize=(2, 1.5), dpi=40)
    text = html.data
    assert [args[0] for _, args, _ in calls] == values  # once per value, in order
    assert plt.get_fignums() == open_before  # its figure is closed
    assert 'type="range"' in text and "anim-slider" in text  # the JavaScript player
    assert "new Array(3)" in text
    assert len(re.findall(r'frames\[\d+\] = "data:image/png;base64,', text)) == len(values)
    assert 'value="once"' in re.search(r"<input[^>]*checked>", text).group(0)


def test_slider_animation_caption_and_axes():
    seen = []

    def draw(axes, value):
        assert len(axes) == 2
        axes[0].plot([0, value])
        seen.append(axes[0].get_figure().get_suptitle())

    widgets.slider_animation(draw, [1, 2], ncols=2, label="k", fmt="{:d}", figsize=(2, 1), dpi=30)
    # draw sees the previous caption; the last frame's caption is set after it
    assert seen == ["", "k = 1"]


def test_slider_animation_removes_colorbars_between_frames():
    counts = []

    def draw(ax, value):
        counts.append(len(ax.get_figure().axes))
        image = ax.imshow(np.full((2, 2), value))
        ax.get_figure().colorbar(image, ax=ax)

    widgets.slider_animation(draw, [1.0, 2.0, 3.0], figsize=(2, 1.5), dpi=30)
    assert counts == [1, 1, 1]


def test_slider_animation_rejects_empty_and_too_many_values():
    calls, draw = recorder()
    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match="empty"):
        widgets.slider_animation(draw, [])
    with pytest.raises(ValueError, match="max_frames"):
        widgets.slider_animation(draw, range(61))
    assert calls == [] and plt.get_fignums() == open_before


def test_slider_animation_closes_its_figure_when_draw_fails():
    open_before = plt.get_fignums()

    def draw(ax, value):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        widgets.slider_animation(draw, [1.0])
    assert plt.get_fignums() == open_before


# --- interactive ------------------------------------------------------------------------------------


def test_interactive_builds_sliders_and_redraws_on_change():
    calls, draw = recorder()
    box = widgets.interactive(draw, scale=(0.0, 2.0, 0.1), shift=(-3, 3, 1, 2))
    assert isinstance(box, ipywidgets.VBox)
    scale, shift, output = box.children
    assert isinstance(scale, ipywidgets.FloatSlider) and isinstance(shift, ipywidgets.IntSlider)
    assert (scale.min, scale.max, scale.step, scale.value) == (0.0, 2.0, 0.1, 1.0)
    assert (shift.min, shift.max, shift.step, shift.value) == (-3, 3, 1, 2)
    assert scale.description == "scale" and isinstance(output, ipywidgets.Output)
    assert [kwargs for _, _, kwargs in calls] == [{"scale": 1.0, "shift": 2}]  # drawn once at start

    scale.value = 0.5
    shift.value = -1
    assert [kwargs for _, _, kwargs in calls[1:]] == [{"scale": 0.5, "shift": 2}, {"scale": 0.5, "shift": -1}]
    assert all(isinstance(ax, matplotlib.axes.Axes) for ax, _, _ in calls)
    assert plt.get_fignums() == []  # its figures are not pyplot's


def test_interactive_accepts_widgets_and_several_axes():
    calls, draw = recorder()
    choice = ipywidgets.Dropdown(options=[1, 2, 3], value=2)
    box = widgets.interactive(draw, ncols=3, level=choice)
    assert box.children[0] is choice and choice.description == "level"
    choice.value = 3
    assert [kwargs for _, _, kwargs in calls] == [{"level": 2}, {"level": 3}]
    assert len(calls[0][0]) == 3


@pytest.mark.parametrize(
    "spec",
    [(0, 1), (0, 1, 0.1, 0.5, 9), "0:1", (1, 0, 0.1), (0, 1, 0), (0, 1, -0.1), (0, 1, 0.1, 2), (0, "a", 1)],
)
def test_interactive_rejects_malformed_specs(spec):
    calls, draw = recorder()
    with pytest.raises(ValueError, match="slider 'x'"):
        widgets.interactive(draw, x=spec)
    assert calls == []


def test_interactive_needs_a_slider():
    with pytest.raises(ValueError, match="at least one slider"):
        widgets.interactive(lambda ax: None)


def test_in_notebook_kernel_is_false_under_pytest():
    assert widgets.in_notebook_kernel() is False


def test_slider_animation_needs_no_network_and_has_alt_text():
    def draw(ax, value):
        ax.plot([0, value])

    html = widgets.slider_animation(draw, [1, 2], label="k", figsize=(2, 1), dpi=30).data
    assert "http://" not in html and "https://" not in html, "the player must not load anything remote"
    assert 'class="fa' not in html, "icon-font buttons are blank without the font"
    assert re.search(r'<img id="_anim_img\w+" alt="Animation in 2 frames as k goes from 1.00 to 2.00', html)
    html = widgets.slider_animation(draw, [1], figsize=(2, 1), dpi=30, alt='a "line" <growing>').data
    assert 'alt="a &quot;line&quot; &lt;growing&gt;"' in html
