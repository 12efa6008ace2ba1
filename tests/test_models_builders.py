"""The model builders (models.nice, realnvp, maf, iaf, glow), checked as whole density models."""

import copy
import io
import math

import pytest
import torch

from coursepkg import Inverse, StandardLogistic, StandardNormal, models
from coursepkg import layers as L
from coursepkg.jacobian import log_abs_det_jacobian

# Tiny configurations, so that the brute-force Jacobians stay cheap.
BUILDERS = {
    "nice": (lambda: models.nice(4, hidden=8), (4,)),
    "nice-logistic-logit": (lambda: models.nice(4, hidden=8, prior="logistic", logit=True), (4,)),
    "realnvp-vector": (lambda: models.realnvp(4, num_layers=3, hidden=8), (4,)),
    "realnvp-vector-batchnorm": (
        lambda: models.realnvp(5, hidden=(8, 6), norm="batchnorm", mask="random"),
        (5,),
    ),
    "realnvp-image": (
        lambda: models.realnvp((1, 4, 4), num_layers=2, hidden=4, num_blocks=0, num_scales=1),
        (1, 4, 4),
    ),
    "realnvp-image-2-scales": (
        lambda: models.realnvp((2, 4, 8), num_layers=1, hidden=4, num_scales=2),
        (2, 4, 8),
    ),
    "realnvp-image-actnorm": (
        lambda: models.realnvp((1, 4, 4), num_layers=1, hidden=4, norm="actnorm", num_scales=1),
        (1, 4, 4),
    ),
    "maf-affine": (lambda: models.maf(4, num_layers=3, hidden=8), (4,)),
    "maf-random-batchnorm": (
        lambda: models.maf(5, num_layers=2, hidden=(8, 6), order="random", norm="batchnorm"),
        (5,),
    ),
    "maf-spline": (lambda: models.maf(3, num_layers=2, hidden=8, transformer="spline"), (3,)),
    "iaf-affine": (lambda: models.iaf(4, num_layers=3, hidden=8), (4,)),
    "iaf-spline-actnorm": (
        lambda: models.iaf(3, num_layers=2, hidden=8, transformer="spline", norm="actnorm"),
        (3,),
    ),
    "glow": (lambda: models.glow((1, 4, 4), num_layers=2, hidden=4), (1, 4, 4)),
    "iresnet-elu": (lambda: models.iresnet(3, num_layers=2, hidden=8, activation="elu"), (3,)),
    "iresnet-default": (lambda: models.iresnet(3, num_layers=2, hidden=8), (3,)),
    "iresnet-lipswish-actnorm": (
        lambda: models.iresnet(2, num_layers=2, hidden=(8, 6), activation="lipswish", norm="actnorm"),
        (2,),
    ),
    "glow-plain-no-prior": (
        lambda: models.glow((2, 4, 4), num_layers=1, hidden=4, conv1x1="plain", split_prior=False),
        (2, 4, 4),
    ),
    "glow-3-levels": (lambda: models.glow((1, 8, 8), num_layers=1, hidden=4, num_levels=3), (1, 8, 8)),
    "glow-1-level-no-logit": (
        lambda: models.glow((3, 2, 2), num_layers=2, hidden=4, num_levels=1, logit=False),
        (3, 2, 2),
    ),
}


def _build(name, seed=0):
    make, shape = BUILDERS[name]
    torch.manual_seed(seed)
    model = make()
    # Make every layer non-trivial: zero-initialised conditioners start as the identity.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for buffer_name, b in model.named_buffers():
            if buffer_name.endswith("running_mean"):
                b.normal_()
            elif buffer_name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model.eval(), shape


def _inputs(model, shape, n=3, dtype=torch.float32):
    torch.manual_seed(1)
    if isinstance(model.transform[0], (L.Logit, L.HistogramCDF)):  # pixels: values in (0, 1)
        return torch.rand(n, *shape, dtype=dtype).clamp(0.02, 0.98)
    return torch.randn(n, *shape, dtype=dtype)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_log_prob_is_the_change_of_variables_by_brute_force(name):
    model, shape = _build(name)
    model = model.double()
    x = _inputs(model, shape, dtype=torch.float64)
    z, _ = model.transform(x)
    expected = model.base.log_prob(z) + log_abs_det_jacobian(model.transform, x)
    torch.testing.assert_close(model.log_prob(x), expected, atol=1e-7, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_invertible_and_samples_have_the_data_shape(name):
    model, shape = _build(name)
    model = model.double()
    x = _inputs(model, shape, dtype=torch.float64)
    z, log_det = model.transform(x)
    assert z.shape == x.shape  # the latent has the data's shape, so the base fits it
    x_back, log_det_back = model.transform.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(log_det_back, -log_det)
    samples = model.sample(5)
    assert samples.shape == (5, *shape) and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_state_dict_round_trip(name):
    model, shape = _build(name)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(99)  # a different initialisation, overwritten by the load
    restored = BUILDERS[name][0]()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    restored.eval()
    x = _inputs(model, shape)
    assert torch.equal(restored.log_prob(x), model.log_prob(x))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_float32_and_gradients(name):
    model, shape = _build(name)
    model.train()
    x = _inputs(model, shape)
    loss = -model.log_prob(x).mean()
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_nice_structure_and_volume():
    model = models.nice(6, num_layers=4, hidden=8, prior="logistic")
    assert isinstance(model.base, StandardLogistic)
    couplings = [layer for layer in model.transform if isinstance(layer, L.AdditiveCoupling)]
    assert len(couplings) == 4 and isinstance(model.transform[-1], L.Scaling)
    # The masks alternate, so every coordinate is transformed by some layer.
    assert torch.equal(couplings[0].mask, 1 - couplings[1].mask)
    with torch.no_grad():
        model.transform[-1].log_scale.fill_(0.5)
        for p in model.transform[0].parameters():
            p.normal_()
    _, log_det = model.transform(torch.randn(5, 6))
    torch.testing.assert_close(log_det, torch.full((5,), 3.0))  # only the scaling changes volume
    assert isinstance(models.nice(6).base, StandardNormal)


def test_realnvp_image_has_the_paper_structure():
    model = models.realnvp((1, 8, 8))
    logit, scale = model.transform
    assert isinstance(logit, L.Logit)
    assert isinstance(scale, L.MultiScale) and isinstance(scale.inner, L.MultiScale)
    assert not isinstance(scale.inner.inner, L.MultiScale)  # two scales, then the last couplings
    steps = list(scale.steps)
    squeeze_at = next(i for i, layer in enumerate(steps) if isinstance(layer, L.Squeeze))
    before = [layer for layer in steps[:squeeze_at] if isinstance(layer, L.ConvAffineCoupling)]
    after = [layer for layer in steps[squeeze_at:] if isinstance(layer, L.ConvAffineCoupling)]
    assert len(before) == 3 and all(c.mask.shape == (1, 8, 8) for c in before)  # checkerboard
    assert len(after) == 3 and all(c.mask.shape == (4, 1, 1) for c in after)  # channel-wise
    assert any(isinstance(layer, L.BatchNormFlow) for layer in steps)


def test_realnvp_image_factored_out_latents_skip_the_deeper_scales():
    model, _ = _build("realnvp-image")
    x = _inputs(model, (1, 4, 4))
    z, _ = model.transform(x)
    logit, scale = model.transform
    y, _ = scale.steps(logit(x)[0])
    assert torch.equal(L.squeeze(z)[:, 2:], y[:, 2:])


def test_realnvp_image_bits_per_dim_matches_log_prob():
    model, shape = _build("realnvp-image")
    x = _inputs(model, shape)
    bpd = model.bits_per_dim(x, num_levels=17)
    expected = (-model.log_prob(x) / 16 + math.log(17)) / math.log(2)
    torch.testing.assert_close(bpd, expected)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_realnvp_defaults_build_for_the_course_images(shape):
    model = models.realnvp(shape).eval()
    x = torch.rand(2, *shape)
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(x)).all()
        assert model.sample(2).shape == (2, *shape)


def test_a_few_training_steps_lower_the_loss_on_digits():
    from coursepkg.data import DIGITS_LEVELS, Dequantize, load_digits
    from coursepkg.training import evaluate, train

    torch.manual_seed(0)
    model = models.realnvp((1, 8, 8), num_layers=1, hidden=8, num_blocks=0)
    data = load_digits("train")[:256]
    deq = Dequantize(DIGITS_LEVELS)
    before = evaluate(copy.deepcopy(model), data, preprocess=deq)
    train(model, data, steps=30, batch_size=64, lr=3e-3, preprocess=deq, progress=False, device="cpu")
    assert evaluate(model, data, preprocess=deq) < before - 5


def test_maf_structure_alternates_the_order():
    model = models.maf(3, num_layers=4, hidden=8, norm="batchnorm")
    assert isinstance(model.base, StandardNormal)
    norms, mades = model.transform[0::2], model.transform[1::2]
    assert all(isinstance(layer, L.BatchNormFlow) for layer in norms)
    assert all(isinstance(layer, L.MaskedAutoregressive) for layer in mades)
    assert [layer.order.tolist() for layer in mades] == [[0, 1, 2], [2, 1, 0]] * 2
    spline = models.maf(3, num_layers=2, hidden=8, transformer="spline", num_bins=5, spline_bound=4.0)
    assert all(
        isinstance(s.transformer, L.RationalQuadraticSpline)
        and (s.transformer.num_bins, s.transformer.bound) == (5, 4.0)
        for s in spline.transform
    )
    random = models.maf(6, hidden=8, order="random")
    orders = {tuple(layer.order.tolist()) for layer in random.transform}
    assert len(orders) > 1
    assert orders == {
        tuple(layer.order.tolist()) for layer in models.maf(6, hidden=8, order="random").transform
    }


def test_iaf_samples_with_the_maf_layers_in_one_pass_each():
    maf = models.maf(3, num_layers=3, hidden=8).double()
    iaf = models.iaf(3, num_layers=3, hidden=8).double()
    with torch.no_grad():
        for p in maf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    # The IAF holds the MAF's layers in reverse order, each inside an Inverse.
    for iaf_layer, maf_layer in zip(iaf.transform, reversed(maf.transform), strict=True):
        iaf_layer.flow.load_state_dict(maf_layer.state_dict())
    assert all(isinstance(layer, Inverse) for layer in iaf.transform)
    z = torch.randn(7, 3, dtype=torch.float64)
    x, log_det = iaf.transform.inverse(z)  # sampling: the MAF's density pass
    x_maf, log_det_maf = maf.transform(z)
    torch.testing.assert_close(x, x_maf, atol=0, rtol=0)
    torch.testing.assert_close(log_det, log_det_maf, atol=0, rtol=0)
    # The log-density that comes with a sample is the one log_prob computes (D passes).
    torch.manual_seed(1)
    samples, log_q = iaf.sample_with_log_prob(64)
    torch.testing.assert_close(iaf.log_prob(samples), log_q, atol=1e-10, rtol=1e-10)


def test_a_few_steps_lower_the_loss_of_maf_and_iaf():
    from coursepkg.data import Banana, kl_divergence, toy
    from coursepkg.training import ReverseKL, train

    target = toy("eight_gaussians")
    maf = models.maf(2, num_layers=2, hidden=16)
    before = kl_divergence(maf, target, num_samples=2000)["kl"]
    train(maf, target, steps=40, batch_size=256, lr=1e-2, progress=False, device="cpu")
    assert kl_divergence(maf, target, num_samples=2000)["kl"] < before - 0.3
    # An IAF fits an unnormalised density by reverse KL: it only ever samples.
    iaf = models.iaf(2, num_layers=2, hidden=16)
    history = train(
        iaf,
        None,
        loss_fn=ReverseKL(Banana().unnormalized_log_prob),
        steps=40,
        batch_size=256,
        lr=1e-2,
        log_every=20,
        progress=False,
        device="cpu",
    )
    assert history.train_loss[-1] < history.train_loss[0] - 0.1


def test_builders_reject_bad_options_clearly():
    with pytest.raises(ValueError, match="flatten"):
        models.nice((1, 8, 8))
    with pytest.raises(ValueError, match="at least 2"):
        models.realnvp(1)
    with pytest.raises(ValueError, match="prior"):
        models.nice(4, prior="cauchy")
    with pytest.raises(ValueError, match="divisible by 4"):
        models.realnvp((1, 6, 6))
    with pytest.raises(ValueError, match="single pixel"):
        models.realnvp((1, 4, 4), num_scales=2)
    with pytest.raises(ValueError, match="channels"):
        models.realnvp((1, 8, 8), hidden=(8, 8))
    with pytest.raises(ValueError, match="norm"):
        models.realnvp(4, norm="layernorm")
    with pytest.raises(ValueError, match="mask"):
        models.realnvp(4, mask="stripes")
    for builder in (models.maf, models.iaf):
        with pytest.raises(ValueError, match="flatten"):
            builder((1, 8, 8))
        with pytest.raises(ValueError, match="transformer"):
            builder(4, transformer="cubic")
        with pytest.raises(ValueError, match="order"):
            builder(4, order="sideways")
        with pytest.raises(ValueError, match="norm"):
            builder(4, norm="layernorm")
        with pytest.raises(ValueError, match="num_layers"):
            builder(4, num_layers=0)
        with pytest.raises(ValueError, match="hidden"):
            builder(4, hidden=())
        with pytest.raises(ValueError, match="scale_bound"):
            builder(4, scale_bound=-1.0)
        with pytest.raises(ValueError, match="num_bins"):
            builder(4, transformer="spline", num_bins=0)
        with pytest.raises(ValueError, match="spline_bound"):
            builder(4, transformer="spline", spline_bound=float("inf"))
    assert {"nice", "realnvp", "maf", "iaf"} <= set(models.__all__)


def test_every_builder_is_checked_here():
    """A new model family in coursepkg.models must get an entry in BUILDERS (key "family-...")."""
    helpers = {"data_shape", "standard_normal_base"}
    builders = set(models.__all__) - helpers
    checked = {key.split("-")[0] for key in BUILDERS}
    missing = sorted(builders - checked)
    assert not missing, f"add an entry for {missing} to BUILDERS in tests/test_models_builders.py"
