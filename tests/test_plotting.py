"""coursepkg.plotting draws what its docstrings say: the data in each artist is checked."""

import math

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from coursepkg import plotting  # noqa: E402
from coursepkg.core import Compose, Flow, NormalizingFlow  # noqa: E402
from coursepkg.distributions import StandardNormal  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def normal_log_density(xx, yy):
    return -0.5 * (xx**2 + yy**2) - math.log(2 * math.pi)


class Scale(Flow):
    """z = a * x, elementwise, with a learnable-looking parameter so the module has a device."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a, dtype=torch.float32))

    def forward(self, x):
        return x * self.a, self.a.abs().log().sum().expand(x.shape[0])

    def inverse(self, z):
        return z / self.a, -self.a.abs().log().sum().expand(z.shape[0])


class Shift(Flow):
    def __init__(self, b):
        super().__init__()
        self.b = nn.Parameter(torch.as_tensor(b, dtype=torch.float32))

    def forward(self, x):
        return x + self.b, x.new_zeros(x.shape[0])

    def inverse(self, z):
        return z - self.b, z.new_zeros(z.shape[0])


# --- densities --------------------------------------------------------------------------------


def test_density_grid_equals_standard_normal_log_density():
    xx, yy, log_p = plotting.density_grid(StandardNormal(2), bounds=((-3, 2), (-1, 4)), resolution=31)
    assert xx.shape == yy.shape == log_p.shape == (31, 31)
    assert xx[0, 0] == -3 and xx[0, -1] == 2 and yy[0, 0] == -1 and yy[-1, 0] == 4
    np.testing.assert_allclose(log_p, normal_log_density(xx, yy), rtol=1e-5, atol=1e-5)


def test_density_grid_accepts_functions_and_batches_them():
    calls = []

    def fn(points):
        calls.append(points.shape[0])
        return -0.5 * (points**2).sum(1) - math.log(2 * math.pi)

    xx, yy, log_p = plotting.density_grid(fn, resolution=20, batch_size=150)
    assert sum(calls) == 400 and max(calls) == 150
    np.testing.assert_allclose(log_p, normal_log_density(xx, yy), atol=1e-5)


def test_density_grid_uses_eval_mode_and_restores_flags():
    model = NormalizingFlow(Compose(Scale([2.0, 0.5])), StandardNormal(2))
    model.train()
    model.base.eval()  # a deliberately frozen part keeps its own flag
    seen = []
    model.transform[0].register_forward_pre_hook(lambda module, args: seen.append(module.training))
    xx, yy, log_p = plotting.density_grid(model, resolution=9)
    assert seen == [False]
    assert model.training and model.transform.training and not model.base.training
    # change of variables: z = (2x, y/2), |det| = 1
    np.testing.assert_allclose(log_p, normal_log_density(2 * xx, yy / 2), atol=1e-5)


def test_density_grid_rejects_wrong_output_shape():
    with pytest.raises(ValueError, match="one log-density per point"):
        plotting.density_grid(lambda p: p, resolution=5)


def test_plot_density_image_equals_exp_of_density_grid():
    bounds = ((-2, 3), (-1, 1))
    ax = plotting.plot_density(StandardNormal(2), bounds=bounds, resolution=25, title="p")
    _, _, log_p = plotting.density_grid(StandardNormal(2), bounds=bounds, resolution=25)
    (image,) = ax.images
    np.testing.assert_allclose(np.asarray(image.get_array()), np.exp(log_p), rtol=1e-6)
    assert image.origin == "lower"
    assert ax.get_xlim() == (-2, 3) and ax.get_ylim() == (-1, 1)
    assert ax.get_title() == "p"


def test_plot_density_log_masks_zero_density():
    def half_plane(points):
        # p = 0 where x < 0
        log_p = -0.5 * (points**2).sum(1)
        return torch.where(points[:, 0] < 0, torch.full_like(log_p, -math.inf), log_p)

    ax = plotting.plot_density(half_plane, resolution=10, log=True)
    array = ax.images[0].get_array()
    xx, _, _ = plotting.density_grid(half_plane, resolution=10)
    np.testing.assert_array_equal(np.ma.getmaskarray(array), xx < 0)


def test_plot_density_1d_draws_the_density():
    ax = plotting.plot_density_1d(StandardNormal(1), bounds=(-2, 2), resolution=50, label="N(0, 1)")
    (line,) = ax.lines
    xs, ys = line.get_data()
    np.testing.assert_allclose(xs, np.linspace(-2, 2, 50))
    np.testing.assert_allclose(ys, np.exp(-0.5 * xs**2) / math.sqrt(2 * math.pi), rtol=1e-5)
    assert ax.get_legend() is not None


def test_plot_samples_offsets_are_the_points():
    x = torch.randn(100, 2, requires_grad=True)
    ax = plotting.plot_samples(x, bounds=((-5, 5), (-4, 4)), title="data")
    (collection,) = ax.collections
    np.testing.assert_allclose(collection.get_offsets(), x.detach().numpy())
    assert ax.get_xlim() == (-5, 5) and ax.get_ylim() == (-4, 4)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        plotting.plot_samples(torch.randn(10, 3))


def test_plot_histogram_1d_is_density_normalised():
    ax = plotting.plot_histogram_1d(torch.randn(500, 1), bins=20, bounds=(-4, 4))
    heights = np.array([patch.get_height() for patch in ax.patches])
    assert len(heights) == 20
    assert heights.sum() * 8 / 20 == pytest.approx(1.0, abs=0.01)  # mass inside the bounds


# --- grid deformation, trajectories ------------------------------------------------------------


def test_grid_deformation_identity_keeps_the_lines():
    ax = plotting.plot_grid_deformation(lambda p: p, bounds=((-1, 2), (0, 3)), num_lines=4, resolution=5)
    original, image = ax.collections
    lines = np.array(image.get_segments())
    np.testing.assert_allclose(lines, np.array(original.get_segments()))
    assert lines.shape == (8, 5, 2)
    np.testing.assert_allclose(lines[:4, :, 0], np.linspace(-1, 2, 4)[:, None].repeat(5, 1))  # vertical
    np.testing.assert_allclose(lines[:4, :, 1], np.linspace(0, 3, 5)[None].repeat(4, 0))
    np.testing.assert_allclose(lines[4:, :, 1], np.linspace(0, 3, 4)[:, None].repeat(5, 1))  # horizontal


def test_grid_deformation_linear_map_from_a_flow():
    a = torch.tensor([[1.0, 0.5], [-0.3, 2.0]])

    class Linear(Flow):
        def forward(self, x):
            return x @ a.T, torch.linalg.slogdet(a)[1].expand(x.shape[0])

    ax = plotting.plot_grid_deformation(Linear(), num_lines=3, resolution=4)
    original, image = ax.collections
    before = np.array(original.get_segments())
    np.testing.assert_allclose(np.array(image.get_segments()), before @ a.numpy().T, rtol=1e-5, atol=1e-6)


def test_grid_deformation_colour_by_log_det():
    flow = Scale([2.0, 1.5])
    ax = plotting.plot_grid_deformation(flow, num_lines=3, resolution=4, color_by="log_det")
    image = ax.collections[1]
    assert len(image.get_segments()) == 2 * 3 * 3
    np.testing.assert_allclose(image.get_array(), math.log(3.0), rtol=1e-5)
    # a plain map has its log|det J| computed by autograd
    ax = plotting.plot_grid_deformation(lambda p: 3 * p, num_lines=2, resolution=3, color_by="log_det")
    np.testing.assert_allclose(ax.collections[1].get_array(), math.log(9.0), rtol=1e-5)
    with pytest.raises(ValueError, match="color_by"):
        plotting.plot_grid_deformation(flow, color_by="jacobian")


def test_plot_trajectory_shows_each_layer():
    flow = Compose(Scale([2.0, 1.0]), Shift([1.0, -1.0]), Scale([1.0, 3.0]))
    x = torch.randn(50, 2)
    fig = plotting.plot_trajectory(flow, x)
    axes = fig.axes
    assert len(axes) == 4
    expected = [x, x * torch.tensor([2.0, 1.0])]
    expected.append(expected[-1] + torch.tensor([1.0, -1.0]))
    expected.append(expected[-1] * torch.tensor([1.0, 3.0]))
    for ax, points in zip(axes, expected, strict=True):
        np.testing.assert_allclose(ax.collections[0].get_offsets(), points.numpy(), rtol=1e-5, atol=1e-6)
    assert [ax.get_title() for ax in axes] == ["input", "after 1: Scale", "after 2: Shift", "after 3: Scale"]

    fig = plotting.plot_trajectory(flow, x, max_panels=2, titles=["x", "z"])
    assert [ax.get_title() for ax in fig.axes] == ["x", "z"]
    np.testing.assert_allclose(fig.axes[1].collections[0].get_offsets(), expected[-1].numpy(), rtol=1e-5)


# --- images, history -----------------------------------------------------------------------------


def test_show_images_grid_layout_and_padding():
    images = torch.stack([torch.full((1, 3, 2), i / 10) for i in range(10)])  # (10, 1, 3, 2)
    ax = plotting.show_images(images, nrow=4)
    grid = np.asarray(ax.images[0].get_array())
    assert grid.shape == (3 * (3 + 1) + 1, 4 * (2 + 1) + 1)
    for i in range(10):
        r, c = divmod(i, 4)
        top, left = 1 + 4 * r, 1 + 3 * c
        np.testing.assert_allclose(grid[top : top + 3, left : left + 2], i / 10)
    assert np.all(grid[0] == 1) and np.all(grid[:, 0] == 1) and np.all(grid[4] == 1)  # padding
    assert np.all(grid[9:12, 7:12] == 1)  # empty cells of the last row


def test_show_images_rgb_and_clipping():
    images = np.zeros((2, 3, 2, 2))
    images[0, 0] = 2.0  # clipped to 1
    images[1, 2] = -1.0  # clipped to 0
    images[1, 1] = 0.25
    grid = np.asarray(plotting.show_images(images).images[0].get_array())
    assert grid.shape == (4, 7, 3)
    np.testing.assert_allclose(grid[1:3, 1:3], np.broadcast_to([1.0, 0.0, 0.0], (2, 2, 3)))
    np.testing.assert_allclose(grid[1:3, 4:6], np.broadcast_to([0.0, 0.25, 0.0], (2, 2, 3)))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        plotting.show_images(np.zeros((2, 2, 4, 4)))


def test_plot_history_curves_and_best_step():
    history = {
        "steps": [0, 1, 2, 3, 4],
        "train_loss": [5.0, 4.0, 3.5, 3.2, 3.1],
        "val_steps": [1, 3],
        "val_loss": [4.5, 3.4],
        "best_step": 3,
    }
    ax = plotting.plot_history(history, title="run")
    train, val, best = ax.lines
    np.testing.assert_allclose(train.get_xdata(), history["steps"])
    np.testing.assert_allclose(train.get_ydata(), history["train_loss"])
    np.testing.assert_allclose(val.get_xdata(), history["val_steps"])
    np.testing.assert_allclose(val.get_ydata(), history["val_loss"])
    np.testing.assert_allclose(best.get_xdata(), [3, 3])
    assert best.get_linestyle() == ":"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "validation", "best (step 3)"]


def test_plot_history_bits_per_dim_from_an_object():
    class History:
        steps = [0, 1]
        train_loss = [torch.tensor(100.0), torch.tensor(50.0)]
        val_steps = []
        val_loss = []

    dims = 10
    ax = plotting.plot_history(History(), bits_per_dim=True, dims=dims, num_levels=256)
    (train,) = ax.lines
    np.testing.assert_allclose(train.get_ydata(), np.array([100.0, 50.0]) / (dims * math.log(2)) + 8)
    assert ax.get_ylabel() == "bits per dimension"
    with pytest.raises(ValueError, match="dims"):
        plotting.plot_history(History(), bits_per_dim=True)


def test_figure_layout():
    fig, axes = plotting.figure(ncols=3, nrows=2, size=2.0)
    assert axes.shape == (2, 3)
    np.testing.assert_allclose(fig.get_size_inches(), [6.0, 4.0])
    assert fig.get_layout_engine() is not None
