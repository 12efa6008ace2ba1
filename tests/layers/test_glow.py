"""Glow's layers beyond the shared checks: ActNorm's flag, the 1x1 convolutions' cache, the learned prior."""

import io
import math

import pytest
import torch

from coursepkg import Compose, models
from coursepkg import layers as L
from coursepkg.nets import GlowNet
from coursepkg.testing import check_flow

# ----------------------------------------------------------------------------------------------
# ActNorm
# ----------------------------------------------------------------------------------------------


def test_actnorm_flag_survives_state_dict_of_a_model_and_is_not_run_again():
    torch.manual_seed(0)
    model = models.glow((1, 4, 4), num_layers=1, hidden=4).train()
    model.log_prob(torch.rand(16, 1, 4, 4))  # the first training batch initialises every ActNorm
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = models.glow((1, 4, 4), num_layers=1, hidden=4).train()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    actnorms = [m for m in restored.modules() if isinstance(m, L.ActNorm)]
    assert actnorms and all(bool(m.initialized) for m in actnorms)
    before = {k: v.clone() for k, v in restored.state_dict().items()}
    restored.log_prob(0.5 * torch.rand(16, 1, 4, 4))  # other data, train mode: no initialisation
    for key, value in restored.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_actnorm_loading_an_uninitialised_state_makes_it_initialise_again():
    # The layer remembers a True flag in Python; load_state_dict must make it read the buffer again.
    layer = L.ActNorm(2)
    layer(3 + torch.randn(32, 2))
    assert layer.initialized
    layer.load_state_dict(L.ActNorm(2).state_dict())
    assert not layer.initialized
    x = -5 + 4 * torch.randn(64, 2)
    z, _ = layer(x)
    assert layer.initialized
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-5, rtol=0)


def test_actnorm_on_images_standardises_each_channel_over_batch_and_pixels():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 7
    layer = L.ActNorm(3)
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(log_det, torch.full((8,), 16 * layer.log_scale.sum().item()))
    # Sampling (inverse) never initialises.
    fresh = L.ActNorm(3).train()
    fresh.inverse(x)
    assert not fresh.initialized


# ----------------------------------------------------------------------------------------------
# Invertible 1x1 convolutions
# ----------------------------------------------------------------------------------------------


def _perturbed_lu(channels=4, seed=0):
    torch.manual_seed(seed)
    layer = L.LUConv1x1(channels)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def test_plain_and_lu_conv1x1_agree_for_the_same_weight():
    lu = _perturbed_lu(4).double()
    weight = lu.weight().detach()
    plain = L.Conv1x1(4, weight=weight).double()
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64)
    z_lu, log_det_lu = lu(x)
    z_plain, log_det_plain = plain(x)
    torch.testing.assert_close(z_lu, z_plain)
    torch.testing.assert_close(log_det_lu, log_det_plain)
    # Both are H W log|det W|, computed here independently of either layer.
    expected = 10 * torch.linalg.slogdet(weight)[1]
    torch.testing.assert_close(log_det_lu, expected.expand(3))
    # And the same at every pixel: the matrix applied to one pixel's channels.
    torch.testing.assert_close(z_lu[1, :, 3, 1], weight @ x[1, :, 3, 1])


def test_lu_conv1x1_caches_its_inverse_in_eval_mode_only():
    layer = _perturbed_lu().eval()
    z = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        layer.inverse(z)
        cached = layer._cache.entries["inverse"][1]
        layer.inverse(z)
        assert layer._cache.entries["inverse"][1] is cached  # reused, not recomputed
    layer.train()
    assert not layer._cache.entries  # a change of mode empties the cache
    with torch.no_grad():
        layer.inverse(z)
    assert not layer._cache.entries  # training mode computes afresh
    layer.eval()
    _, log_det = layer.inverse(z.requires_grad_())
    assert not layer._cache.entries and log_det.requires_grad  # a graph is being recorded


@pytest.mark.parametrize("layer_class", [L.LUConv1x1, L.Conv1x1])
def test_conv1x1_cache_is_invalidated_by_an_optimizer_step(layer_class):
    torch.manual_seed(0)
    layer = layer_class(4).eval()
    x = torch.randn(8, 4, 3, 3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    for _ in range(3):
        with torch.no_grad():  # eval mode without gradients: the cached weights
            z, log_det = layer(x)
            x_back, log_det_back = layer.inverse(z)
        assert layer._cache.entries
        # With gradients the weights are built afresh: the cached ones must be today's.
        z_fresh, log_det_fresh = layer(x)
        torch.testing.assert_close(z, z_fresh.detach())
        torch.testing.assert_close(log_det, log_det_fresh.detach())
        torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(log_det_back, -log_det)
        # One optimizer step in eval mode (so no mode switch clears the cache).
        optimizer.zero_grad()
        (z_fresh.square().sum() - log_det_fresh.sum()).backward()
        optimizer.step()


def test_conv1x1_cache_follows_load_state_dict_and_dtype():
    layer = _perturbed_lu(seed=1).eval()
    other = _perturbed_lu(seed=2).eval()
    z = torch.randn(2, 4, 2, 2)
    with torch.no_grad():
        layer.inverse(z)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer.inverse(z)[0], other.inverse(z)[0])
        layer.double()
        x, _ = layer.inverse(z.double())
    assert x.dtype == torch.float64


def test_lu_conv1x1_log_det_is_linear_in_the_number_of_pixels():
    layer = _perturbed_lu()
    _, small = layer(torch.randn(1, 4, 1, 1))
    _, large = layer(torch.randn(1, 4, 3, 5))
    torch.testing.assert_close(large, 15 * small)
    torch.testing.assert_close(small, layer.log_diag.sum().reshape(1))


# ----------------------------------------------------------------------------------------------
# Channel coupling and the learned prior
# ----------------------------------------------------------------------------------------------


def test_channel_coupling_conditioner_reads_only_the_kept_half():
    layer = L.ChannelAffineCoupling(6, hidden=8)
    assert isinstance(layer.net, GlowNet)
    assert layer.net.first.in_channels == 3 and layer.net.last.out_channels == 6
    x = torch.randn(2, 6, 3, 3)
    z, log_det = layer(x)  # zero last layer: the identity
    assert torch.equal(z, x) and torch.equal(log_det, torch.zeros(2))
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z, _ = layer(x)
    assert torch.equal(z[:, :3], x[:, :3]) and not torch.allclose(z[:, 3:], x[:, 3:])
    # parity 1 keeps the other half: the channels that channel_mask(C, 1) marks.
    odd = L.ChannelAffineCoupling(5, hidden=4, parity=1)
    with torch.no_grad():
        for p in odd.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 5, 2, 2)
    z, _ = odd(x)
    kept = L.channel_mask(5, 1)
    assert odd.kept == int(kept.sum()) == 3
    assert torch.equal(z[:, kept], x[:, kept]) and not torch.allclose(z[:, ~kept], x[:, ~kept])


def _perturb(model, scale=0.3, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def _normal_log_prob(x, mean, log_std):
    return (
        (-0.5 * ((x - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi))
        .flatten(1)
        .sum(1)
    )


def test_log_prob_includes_the_learned_prior_of_the_factored_out_half():
    # Glow's likelihood written out: the factored-out half has density N(mu(y_keep), sigma^2).
    model = _perturb(models.glow((1, 4, 4), num_layers=2, hidden=4).double().eval())
    *front, level = model.transform  # HistogramCDF and Logit, then the levels
    prior = level.steps[-1]
    assert isinstance(prior, L.SplitPrior)
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64).clamp(0.02, 0.98)
    with torch.no_grad():
        h, log_det = Compose(*front)(x)
        y, steps_log_det = Compose(*level.steps[:-1])(h)  # everything but the prior
        y_keep, y_out = y[:, :2], y[:, 2:]
        z_inner, inner_log_det = level.inner(y_keep)
        mu, log_std = prior.prior(y_keep)
        expected = (
            log_det
            + steps_log_det
            + inner_log_det
            + _normal_log_prob(z_inner, 0.0, torch.zeros(()))
            + _normal_log_prob(y_out, mu, log_std)
        )
        torch.testing.assert_close(model.log_prob(x), expected)
        assert log_std.abs().max() > 0.05  # the prior is not the standard normal here


def test_temperature_scales_every_latent_and_the_factored_out_half_given_the_kept_half():
    # No Logit, in float64: a sigmoid saturated in float32 would spoil the round trip.
    model = _perturb(models.glow((1, 8, 8), num_layers=1, hidden=8, logit=False), scale=0.5)
    model = model.double().eval()
    (level,) = model.transform
    prior = level.steps[-1]
    for temperature in (0.5, 1.0):
        torch.manual_seed(1)
        with torch.no_grad():
            x = model.sample(4000, temperature=temperature)
            z, _ = model.transform(x)
            # The latent of every level is N(0, T^2).
            assert z.std().item() == pytest.approx(temperature, rel=0.03)
            assert abs(z.mean().item()) < 0.02
            # The factored-out half is N(mu, (T sigma)^2) given the kept half.
            y, _ = Compose(*level.steps[:-1])(x)
            mu, log_std = prior.prior(y[:, :2])
            standardised = (y[:, 2:] - mu) * torch.exp(-log_std)
            assert standardised.std().item() == pytest.approx(temperature, rel=0.03)
            assert (y[:, 2:] - mu).std().item() != pytest.approx(temperature, rel=0.1)


def test_split_prior_is_the_identity_at_initialisation_and_glow_latents_skip_deeper_levels():
    layer = L.SplitPrior(4)
    y = torch.randn(3, 4, 2, 2)
    z, log_det = layer(y)
    assert torch.equal(z, y) and torch.equal(log_det, torch.zeros(3))
    # As for RealNVP: the factored-out values of the first level are final in the latent image.
    model = _perturb(models.glow((1, 4, 4), num_layers=1, hidden=4)).eval()
    x = torch.rand(3, 1, 4, 4)
    with torch.no_grad():
        z, _ = model.transform(x)
        *front, level = model.transform
        y, _ = level.steps(Compose(*front)(x)[0])
    assert torch.equal(L.squeeze(z)[:, 2:], y[:, 2:])


def test_glow_structure():
    model = models.glow((1, 8, 8))
    histogram, logit, level = model.transform
    assert isinstance(histogram, L.HistogramCDF) and histogram.num_bins == 16
    assert histogram.shape == (1, 8, 8)
    assert isinstance(logit, L.Logit) and isinstance(level, L.MultiScale)
    couplings = [m for m in model.modules() if isinstance(m, L.ChannelAffineCoupling)]
    assert len(couplings) == 8 and all(c.net.dropout == 0.3 for c in couplings)
    assert isinstance(level.inner, L.MultiScale) and level.inner.inner is None
    steps = list(level.steps)
    assert isinstance(steps[0], L.Squeeze) and isinstance(steps[-1], L.SplitPrior)
    kinds = [type(layer) for layer in steps[1:-1]]
    assert kinds == [L.ActNorm, L.LUConv1x1, L.ChannelAffineCoupling] * 4
    assert not any(isinstance(layer, L.SplitPrior) for layer in level.inner.steps)
    # The paper's model: no histogram layer, no dropout.
    paper = models.glow((1, 8, 8), histogram_bins=None, dropout=0.0)
    assert [type(layer) for layer in paper.transform] == [L.Logit, L.MultiScale]
    assert all(m.dropout == 0 for m in paper.modules() if isinstance(m, GlowNet))
    # Without the Logit the model takes unbounded data: no histogram layer either.
    (level,) = models.glow((1, 8, 8), logit=False, histogram_bins=32).transform
    assert isinstance(level, L.MultiScale)
    plain = models.glow((1, 8, 8), conv1x1="plain", split_prior=False)
    assert any(isinstance(m, L.Conv1x1) for m in plain.modules())
    assert not any(isinstance(m, (L.SplitPrior, L.LUConv1x1)) for m in plain.modules())


def test_glow_defaults_build_for_the_course_images():
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32)]:
        model = models.glow(shape).eval()
        with torch.no_grad():
            assert torch.isfinite(model.log_prob(torch.rand(2, *shape))).all()
            assert model.sample(2).shape == (2, *shape)


def test_glow_bits_per_dim_and_sampling_work_as_for_realnvp():
    model = _perturb(models.glow((1, 4, 4), num_layers=1, hidden=4)).eval()
    x = torch.rand(3, 1, 4, 4).clamp(0.02, 0.98)
    expected = (-model.log_prob(x) / 16 + math.log(17)) / math.log(2)
    torch.testing.assert_close(model.bits_per_dim(x, num_levels=17), expected)
    torch.manual_seed(0)
    cold = model.sample(500, temperature=0.1)
    torch.manual_seed(0)
    warm = model.sample(500, temperature=1.0)
    assert cold.shape == warm.shape == (500, 1, 4, 4)
    assert cold.std(0).mean() < warm.std(0).mean()  # a low temperature concentrates the samples


def test_glow_conditioner_dropout_acts_in_training_only():
    torch.manual_seed(0)
    net = GlowNet(4, 8, hidden=16, zero_last=False, dropout=0.5)
    x = torch.randn(3, 4, 4, 4)
    net.train()
    assert not torch.equal(net(x), net(x)), "training mode: a new dropout mask each call"
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.dropout = 0.0
    reference = net(x)
    net.dropout = 0.5
    torch.testing.assert_close(net(x), reference, msg="eval mode: dropout is off")
    # Both layouts (pixel-major and nn.Conv2d) agree in eval mode.
    torch.testing.assert_close(net.conv_forward(x), reference)
    for bad in (-0.1, 1.0, True, "0.2"):
        with pytest.raises(ValueError, match="dropout must be a probability"):
            GlowNet(4, 8, dropout=bad)


@pytest.mark.parametrize("layout", ["pixels", "conv"])
def test_glow_conditioner_dropout_drops_whole_channels(layout):
    # The last layer made the identity on the hidden channels: the output is the dropped-out h.
    torch.manual_seed(1)
    net = GlowNet(4, 16, hidden=16, zero_last=False, dropout=0.5)
    with torch.no_grad():
        net.last.weight.zero_()
        net.last.weight[:, :, 1, 1] = torch.eye(16)
        net.last.bias.zero_()
    run = net if layout == "pixels" else net.conv_forward
    x = torch.randn(8, 4, 4, 4)
    net.eval()
    h = run(x)  # nothing dropped
    net.train()
    dropped = run(x)  # (8, 16, 4, 4)
    kept = (dropped != 0).flatten(2).any(2)  # (image, channel): kept somewhere
    torch.testing.assert_close(dropped, h * kept[:, :, None, None] / 0.5)
    alive = (h != 0).flatten(2).any(2)
    assert 0.2 < kept[alive].float().mean() < 0.8  # about half of the channels dropped


def test_glow_with_dropout_is_an_exact_flow_in_eval_mode():
    torch.manual_seed(0)
    model = models.glow((1, 4, 4), num_layers=2, hidden=8, dropout=0.3)
    couplings = [m for m in model.modules() if isinstance(m, L.ChannelAffineCoupling)]
    assert couplings and all(c.net.dropout == 0.3 for c in couplings)
    with torch.no_grad():  # make the couplings non-trivial: their last layers start at zero
        for coupling in couplings:
            coupling.net.last.weight.normal_(0, 0.1)
    check_flow(model.transform.eval(), torch.rand(3, 1, 4, 4) * 0.9 + 0.05)
    model.train()
    x = torch.rand(5, 1, 4, 4) * 0.9 + 0.05
    assert not torch.equal(model.log_prob(x), model.log_prob(x)), "dropout is on in training"
