"""Bad input to the models gets a clear error, or the mathematically right answer; never a silent NaN.

The rules are listed in the docstring of ``NormalizingFlow.log_prob`` (and of ``Logit`` for the
support of image models).
"""

import math

import numpy as np
import pytest
import torch

from coursepkg import NormalizingFlow, StandardNormal, models
from coursepkg import layers as L

IMAGE = (1, 8, 8)


def _image_model():
    torch.manual_seed(0)
    return models.realnvp(IMAGE, num_layers=1, hidden=4, num_blocks=0).eval()


def _vector_model():
    torch.manual_seed(0)
    return models.realnvp(4, num_layers=2, hidden=8).eval()


def _pixels(n=4):
    torch.manual_seed(1)
    return torch.rand(n, *IMAGE)


# ----------------------------------------------------------------------------------------------
# Data on the wrong scale, outside the support
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_levels", [17, 256])
def test_unscaled_pixel_levels_are_an_error_everywhere(num_levels):
    model = _image_model()
    levels = torch.randint(0, num_levels, (4, *IMAGE)).float()
    levels[0, 0, 0, 0] = num_levels - 1  # some value above 1
    calls = (
        lambda: model.log_prob(levels),
        lambda: model(levels),
        lambda: model.transform(levels),  # the bare flow: its Logit layer checks
        lambda: model.bits_per_dim(levels, num_levels),
    )
    for call in calls:
        with pytest.raises(
            ValueError, match=rf"integers from 0 to {num_levels - 1}.*unscaled pixel levels.*dequantize"
        ):
            call()


def test_unscaled_levels_are_caught_by_bits_per_dim_of_any_model_and_by_flat_logit_models():
    levels = torch.randint(0, 17, (5, 64)).float()
    levels[0, 0] = 16
    with pytest.raises(ValueError, match="unscaled pixel levels"):
        models.realnvp(64, num_layers=1, hidden=8).bits_per_dim(levels, 17)  # no Logit layer
    with pytest.raises(ValueError, match="unscaled pixel levels"):
        models.nice(64, hidden=8, logit=True).log_prob(levels)
    # Without a bounded support, integers are ordinary data.
    assert torch.isfinite(models.realnvp(64, num_layers=1, hidden=8).log_prob(levels)).all()


def test_values_outside_the_support_have_log_prob_minus_inf_not_nan():
    model = _image_model()
    x = _pixels()
    x[1, 0, 3, 3] = 1.5  # above the support
    x[2, 0, 0, 0] = -0.25  # below it
    log_prob = model.log_prob(x)
    assert torch.equal(torch.isinf(log_prob), torch.tensor([False, True, True, False]))
    assert log_prob[1:3].tolist() == [-math.inf, -math.inf] and torch.isfinite(log_prob[[0, 3]]).all()
    # the other samples are untouched (eval mode: no batch statistics)
    torch.testing.assert_close(log_prob[[0, 3]], model.log_prob(x[[0, 3]]))
    # and a training step on such a batch (loss inf) gives finite gradients, not NaN
    model.train()
    model.log_prob(x).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_the_support_is_the_logit_domain_which_contains_the_unit_interval():
    layer = L.Logit(alpha=0.05).double()
    model = NormalizingFlow(layer, StandardNormal(3)).double()
    # Samples can fall just outside [0, 1] (sigmoid(z) < alpha): they are in the support.
    torch.manual_seed(0)
    x, log_prob = model.sample_with_log_prob(2000)
    assert (x < 0).any() and torch.isfinite(model.log_prob(x)).all()
    torch.testing.assert_close(model.log_prob(x), log_prob)
    edge = 0.05 / 0.9  # alpha / (1 - 2 alpha): where alpha + (1 - 2 alpha) x reaches 0
    inside = torch.tensor([[0.0, 1.0, -0.99 * edge]], dtype=torch.float64)
    outside = torch.tensor([[0.5, 0.5, -1.01 * edge], [0.5, 1 + 1.01 * edge, 0.5]], dtype=torch.float64)
    assert torch.isfinite(model.log_prob(inside)).all()
    assert torch.equal(model.log_prob(outside), torch.full((2,), -math.inf, dtype=torch.float64))
    # With alpha = 0 the domain is the open interval: 0 and 1 have density 0, not NaN.
    edges = torch.tensor([[0.0], [1.0], [0.5]])
    log_prob = NormalizingFlow(L.Logit(alpha=0.0), StandardNormal(1)).log_prob(edges)
    assert log_prob[:2].tolist() == [-math.inf, -math.inf] and torch.isfinite(log_prob[2])


def test_binary_images_and_negative_integers_are_not_mistaken_for_levels():
    model = _image_model()
    binary = torch.randint(0, 2, (4, *IMAGE)).float()
    assert torch.isfinite(model.log_prob(binary)).all()  # in [0, 1]: in the support
    centred = 2 * binary - 1  # images in {-1, 1}: outside the support, not unscaled levels
    assert torch.isinf(model.log_prob(centred)).all()


# ----------------------------------------------------------------------------------------------
# Types and dtypes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_integer_dtypes_are_a_type_error_with_advice(dtype):
    image = torch.randint(0, 2, (4, *IMAGE)).to(dtype)
    model = _image_model()
    for call in (model.log_prob, model.transform, lambda t: model.bits_per_dim(t, 256)):
        with pytest.raises(TypeError, match=rf"floating-point.*{dtype}.*x\.float\(\).*dequantize"):
            call(image)
    with pytest.raises(TypeError, match="floating-point"):
        _vector_model().log_prob(torch.ones(3, 4, dtype=dtype))


def test_a_numpy_array_is_a_type_error_with_advice():
    with pytest.raises(TypeError, match=r"torch\.Tensor, got numpy\.ndarray.*torch\.as_tensor"):
        _vector_model().log_prob(np.zeros((3, 4), dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, shape, hint",
    [
        ("image", (5, 8, 8), r"got \(5, 8, 8\): images without their channel axis: use x\.unsqueeze\(1\)"),
        ("image", (1, 8, 8), r"got \(1, 8, 8\): a single data point .* x\.unsqueeze\(0\)"),
        ("image", (5, 64), r"got \(5, 64\): .*right number of values \(64\).*x\.reshape\(-1, 1, 8, 8\)"),
        ("image", (64,), r"got \(64,\): a single data point .* x\.reshape\(1, 1, 8, 8\)"),
        ("image", (5, 1, 4, 4), r"got \(5, 1, 4, 4\): a data point of this model has 64 values"),
        ("vector", (4,), r"got \(4,\): a single data point .* x\.unsqueeze\(0\)"),
        ("vector", (6, 5), r"expects a batch of shape \(B, 4\).*got \(6, 5\)"),
        ("vector", (6, 2, 2), r"got \(6, 2, 2\):.*x\.reshape\(-1, 4\)"),
    ],
)
def test_wrong_shapes_name_the_expected_and_the_given_shape(model, shape, hint):
    model = _image_model() if model == "image" else _vector_model()
    x = torch.rand(shape)
    with pytest.raises(ValueError, match=hint):
        model.log_prob(x)
    with pytest.raises(ValueError, match="bits_per_dim expects a batch of shape"):
        model.bits_per_dim(x)


def test_channels_last_images_are_recognised():
    model = models.realnvp((3, 4, 4), num_layers=1, hidden=4, num_scales=1).eval()
    with pytest.raises(ValueError, match=r"channels-last.*x\.permute\(0, 3, 1, 2\)"):
        model.log_prob(torch.rand(2, 4, 4, 3))
    with pytest.raises(ValueError, match="scalar"):
        model.log_prob(torch.tensor(0.5))


def test_event_shape_comes_from_the_base_or_the_argument():
    assert _image_model().event_shape == IMAGE and _vector_model().event_shape == (4,)
    # A flow that reshapes: data (1, 4, 4), latent (4, 2, 2).
    squeezing = NormalizingFlow(L.Squeeze(), StandardNormal((4, 2, 2)), event_shape=(1, 4, 4))
    assert squeezing.log_prob(torch.randn(3, 1, 4, 4)).shape == (3,)
    assert squeezing.sample(0).shape == (0, 1, 4, 4) and squeezing.sample(2).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\(B, 1, 4, 4\)"):
        squeezing.log_prob(torch.randn(3, 4, 2, 2))
    with pytest.raises(ValueError, match="event_shape"):
        NormalizingFlow(L.Squeeze(), StandardNormal((4, 2, 2)), event_shape=(1, 0, 4))

    class NoShape(torch.nn.Module):  # a base that does not know its shape: no shape check
        def log_prob(self, z):
            return torch.zeros(z.shape[0], dtype=z.dtype)

    free = NormalizingFlow(L.ElementwiseAffine(3), NoShape())
    assert free.event_shape is None and free.log_prob(torch.randn(2, 3)).shape == (2,)
    with pytest.raises(TypeError, match="no sample"):
        free.sample(2)
    with pytest.raises(TypeError, match="log_prob"):
        NormalizingFlow(L.ElementwiseAffine(3), torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="transform must be a flow"):
        NormalizingFlow("affine", StandardNormal(3))
    one_way = NormalizingFlow(lambda x: (2 * x, x.new_full(x.shape[:1], 3 * math.log(2))), StandardNormal(3))
    assert one_way.log_prob(torch.zeros(2, 3)).shape == (2,)  # densities work without an inverse
    with pytest.raises(TypeError, match="no inverse"):
        one_way.sample(2)


# ----------------------------------------------------------------------------------------------
# NaN and infinity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, what", [(math.nan, "1 NaN and 0 infinite"), (math.inf, "0 NaN and 1 infinite")]
)
def test_nan_and_inf_are_errors_that_name_the_sample(value, what):
    image = _pixels()
    image[2, 0, 4, 4] = value
    model = _image_model()
    for call in (model.log_prob, model.transform, model.bits_per_dim):
        with pytest.raises(ValueError, match=rf"{what} values \(first in sample 2\)"):
            call(image)
    vector = torch.randn(3, 4)
    vector[1, 3] = -value
    with pytest.raises(ValueError, match=rf"{what} values \(first in sample 1\)"):
        _vector_model().log_prob(vector)


# ----------------------------------------------------------------------------------------------
# Empty batches
# ----------------------------------------------------------------------------------------------


def test_an_empty_batch_gives_an_empty_result():
    for model in (_image_model(), _vector_model()):
        shape = model.event_shape
        empty = torch.rand(0, *shape)
        assert model.log_prob(empty).shape == (0,)
        assert model.bits_per_dim(empty).shape == (0,)
        for sample in (model.sample(0), model.rsample(0), model.sample_with_log_prob(0)[0]):
            assert sample.shape == (0, *shape) and sample.dtype == torch.float32
        assert model.sample_with_log_prob(0)[1].shape == (0,)


@pytest.mark.parametrize(
    "build",
    [
        lambda: models.nice(4, num_layers=2, hidden=8),
        lambda: models.realnvp(4, num_layers=2, hidden=8),
        lambda: models.realnvp(IMAGE, num_layers=1, hidden=4, num_blocks=0),
        lambda: models.glow(IMAGE, num_layers=1, hidden=4),
        lambda: models.iresnet(3, num_layers=2, hidden=4, norm="actnorm"),
    ],
    ids=["nice", "realnvp-vector", "realnvp-image", "glow", "iresnet"],
)
def test_the_bare_transform_maps_an_empty_batch_in_train_mode(build):
    # Train mode: ActNorm's initialisation and batch norm's statistics must not see the empty batch.
    model = build().train()
    x = torch.rand(0, *model.event_shape)
    z, log_det = model.transform(x)
    assert z.shape == x.shape and log_det.shape == (0,)
    x_back, log_det_back = model.transform.inverse(z)
    assert x_back.shape == x.shape and log_det_back.shape == (0,)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.transform(x)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed on an empty batch"


def test_checks_on_values_stand_aside_under_torch_func():
    # Brute-force Jacobians with torch.func (vmap of jacrev) must work on every model, Logit
    # included, and agree with the model's log-determinant.
    from torch.func import jacrev, vmap

    torch.manual_seed(0)
    model = models.realnvp(IMAGE, num_layers=1, hidden=4, num_blocks=0, num_scales=1).double().eval()
    x = torch.rand(3, *IMAGE, dtype=torch.float64)
    jacobians = vmap(jacrev(lambda xi: model.transform(xi.unsqueeze(0))[0].flatten()))(x)
    brute = torch.linalg.slogdet(jacobians.reshape(3, 64, 64)).logabsdet
    torch.testing.assert_close(brute, model.transform(x)[1], atol=1e-10, rtol=1e-10)


def test_an_empty_batch_does_not_initialise_actnorm():
    model = models.realnvp(4, num_layers=1, hidden=8).train()  # ActNorm first: data-dependent init
    actnorm = model.transform[0]
    assert isinstance(actnorm, L.ActNorm)
    model.log_prob(torch.zeros(0, 4))
    assert not actnorm.initialized
    model.log_prob(torch.randn(16, 4))
    assert actnorm.initialized and torch.isfinite(actnorm.log_scale).all()


# ----------------------------------------------------------------------------------------------
# Sample sizes and temperatures
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, error, message",
    [
        (-1, ValueError, "at least 0, got -1"),
        (2.5, TypeError, "must be an int, got float 2.5"),
        (2.0, TypeError, "must be an int, got float"),
        (True, TypeError, "must be an int, got bool"),
        (torch.tensor(3), TypeError, r"a tensor: pass int\(n\)"),
        ((2, 3), TypeError, "must be an int, got tuple"),
    ],
)
def test_impossible_sample_sizes_are_explained(n, error, message):
    model = _vector_model()
    for call in (model.sample, model.rsample, model.sample_with_log_prob):
        with pytest.raises(error, match=message):
            call(n)


@pytest.mark.parametrize(
    "temperature, error",
    [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError)],
)
def test_bad_temperatures_are_explained(temperature, error):
    model = _vector_model()
    with pytest.raises(error, match="temperature"):
        model.sample(3, temperature=temperature)
    with pytest.raises(error, match="temperature"):
        model.rsample(3, temperature)


def test_numpy_integers_and_temperatures_are_fine():
    model = _vector_model()
    assert model.sample(np.int64(3), temperature=np.float32(0.5)).shape == (3, 4)


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


BAD_BUILDS = {
    "nice-dim-0": (lambda: models.nice(0), ValueError, r"dim must be .*got 0; every entry must be positive"),
    "nice-dim-negative": (lambda: models.nice(-3), ValueError, "dim must be"),
    "nice-dim-float": (lambda: models.nice(2.5), TypeError, "dim must be a data dimension .* got float 2.5"),
    "nice-dim-bool": (lambda: models.nice(True), TypeError, "dim must be"),
    "nice-dim-1": (lambda: models.nice(1), ValueError, "dim must be at least 2 for a coupling flow"),
    "realnvp-dim-1": (lambda: models.realnvp(1), ValueError, "dim_or_shape must be at least 2"),
    "nice-num-layers-0": (
        lambda: models.nice(4, num_layers=0),
        ValueError,
        "num_layers must be at least 1, got 0",
    ),
    "nice-num-layers-float": (lambda: models.nice(4, num_layers=2.0), TypeError, "num_layers must be an int"),
    "realnvp-num-layers-negative": (lambda: models.realnvp(4, num_layers=-1), ValueError, "at least 1"),
    "realnvp-image-num-layers-0": (lambda: models.realnvp(IMAGE, num_layers=0), ValueError, "at least 1"),
    "nice-hidden-empty": (
        lambda: models.nice(4, hidden=()),
        ValueError,
        "hidden must be a positive int or a",
    ),
    "realnvp-hidden-zero-entry": (lambda: models.realnvp(4, hidden=(8, 0)), ValueError, "hidden must be"),
    "realnvp-hidden-negative": (lambda: models.realnvp(4, hidden=-8), ValueError, "hidden must be"),
    "realnvp-hidden-float": (lambda: models.realnvp(4, hidden=(8.5,)), ValueError, "hidden must be"),
    "realnvp-image-hidden-0": (lambda: models.realnvp(IMAGE, hidden=0), ValueError, "hidden must be"),
    "realnvp-odd-height": (
        lambda: models.realnvp((1, 7, 8)),
        ValueError,
        r"H and W of dim_or_shape .* 7 x 8",
    ),
    "realnvp-width-6": (lambda: models.realnvp((1, 8, 6), num_scales=2), ValueError, "divisible by 4"),
    "realnvp-odd-one-scale": (lambda: models.realnvp((1, 9, 9), num_scales=1), ValueError, "divisible by 2"),
    "realnvp-no-channels": (lambda: models.realnvp((8, 8)), ValueError, r"\(C, H, W\).*give \(1, 8, 8\)"),
    "realnvp-batch-axis": (lambda: models.realnvp((16, 1, 8, 8)), ValueError, r"batch axis: \(1, 8, 8\)"),
    "realnvp-float-entry": (lambda: models.realnvp((1, 8.0, 8)), TypeError, "dim_or_shape must hold ints"),
    "realnvp-string": (lambda: models.realnvp("1, 8, 8"), TypeError, "dim_or_shape must be"),
    "realnvp-num-scales": (
        lambda: models.realnvp(IMAGE, num_scales=-1),
        ValueError,
        "num_scales must be at least 0",
    ),
    "realnvp-num-blocks": (
        lambda: models.realnvp(IMAGE, num_blocks=-1),
        ValueError,
        "num_blocks must be at least 0",
    ),
    "realnvp-scale-bound": (
        lambda: models.realnvp(4, scale_bound=0),
        ValueError,
        "scale_bound must be a finite",
    ),
    "realnvp-logit-alpha": (
        lambda: models.realnvp(4, logit_alpha=0.5),
        ValueError,
        r"logit_alpha .* \[0, 0.5\)",
    ),
    "nice-logit-not-bool": (lambda: models.nice(4, logit="yes"), TypeError, "logit must be True or False"),
    "data-shape-empty": (lambda: models.data_shape(()), ValueError, r"\(C, H, W\)"),
    "glow-vector": (
        lambda: models.glow(64),
        ValueError,
        r"glow works on images: pass their shape \(C, H, W\)",
    ),
    "glow-not-divisible": (lambda: models.glow((1, 8, 8), num_levels=4), ValueError, "divisible by 16"),
    "glow-num-levels-0": (
        lambda: models.glow(IMAGE, num_levels=0),
        ValueError,
        "num_levels must be at least 1",
    ),
    "glow-hidden-tuple": (lambda: models.glow(IMAGE, hidden=(8, 8)), TypeError, "hidden must be an int"),
    "glow-conv1x1": (
        lambda: models.glow(IMAGE, conv1x1="dense"),
        ValueError,
        "conv1x1 must be 'lu' or 'plain'",
    ),
    "glow-split-prior": (
        lambda: models.glow(IMAGE, split_prior=1),
        TypeError,
        "split_prior must be True or False",
    ),
    "glow-logit-none": (lambda: models.glow(IMAGE, logit=None), TypeError, "logit must be True or False"),
    "iresnet-image": (lambda: models.iresnet(IMAGE), ValueError, "iresnet works on vectors"),
    "iresnet-num-layers-0": (
        lambda: models.iresnet(2, num_layers=0),
        ValueError,
        "num_layers must be at least 1",
    ),
    "iresnet-hidden-empty": (lambda: models.iresnet(2, hidden=()), ValueError, "hidden must be"),
    "iresnet-coefficient-1": (
        lambda: models.iresnet(2, coefficient=1.0),
        ValueError,
        r"coefficient must be in \(0, 1\), got 1.0",
    ),
    "iresnet-log-det": (
        lambda: models.iresnet(2, log_det="slogdet"),
        ValueError,
        "log_det must be 'exact', 'series', 'roulette' or None",
    ),
    "iresnet-roulette-p": (
        lambda: models.iresnet(2, log_det="roulette", roulette_p=1.0),
        ValueError,
        r"roulette_p must be in \(0, 1\)",
    ),
    "iresnet-activation": (lambda: models.iresnet(2, activation="relu"), ValueError, "activation must be"),
    "iresnet-probe": (lambda: models.iresnet(2, probe="uniform"), ValueError, "probe must be"),
    "iresnet-num-probes": (
        lambda: models.iresnet(2, num_probes=0),
        ValueError,
        "num_probes must be a positive",
    ),
    "iresnet-max-iter": (lambda: models.iresnet(2, max_iter=2.5), ValueError, "max_iter must be a positive"),
    "iresnet-tol": (lambda: models.iresnet(2, tol=-1e-3), ValueError, "tol must be > 0"),
    "iresnet-norm": (lambda: models.iresnet(2, norm="layer"), ValueError, "norm must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_BUILDS))
def test_builders_name_the_argument_and_the_constraint(case):
    build, error, message = BAD_BUILDS[case]
    with pytest.raises(error, match=message):
        build()


def test_builders_accept_numpy_integers_and_torch_sizes():
    assert models.data_shape(np.int64(3)) == (3,)
    assert models.data_shape(torch.Size([1, 8, 8])) == IMAGE
    assert models.realnvp(np.int64(4), num_layers=np.int64(2), hidden=8).event_shape == (4,)
