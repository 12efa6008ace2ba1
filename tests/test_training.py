"""The shared training loop: fitting, seeding, resuming, the NaN guard, early stopping, files."""

import json
import math
import pickle

import numpy as np
import pytest
import torch

from coursepkg import Compose, Flow, NormalizingFlow, StandardNormal, models
from coursepkg import layers as L
from coursepkg.data import Banana
from coursepkg.training import (
    History,
    NonFiniteLossError,
    ReverseKL,
    default_loss,
    evaluate,
    load_or_train,
    train,
)

QUIET = dict(device="cpu", progress=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Threads only add contention for models this small (tenfold on a busy two-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_flow(dim=2, seed=0):
    """An affine flow: it can represent every Gaussian, and nothing else."""
    torch.manual_seed(seed)
    return NormalizingFlow(Compose(L.ElementwiseAffine(dim), L.LULinear(dim)), StandardNormal(dim))


def gaussian_sample(n=512, seed=1):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.tensor([[2.0, 0.0], [1.2, 0.5]])
    return torch.randn(n, 2, generator=g) @ mixing.T + torch.tensor([3.0, -2.0])


def gaussian_nll(x):
    """The lowest mean NLL a Gaussian reaches on ``x``: that of its maximum-likelihood fit."""
    cov = torch.cov(x.T.double(), correction=0)
    return 0.5 * torch.logdet(2 * math.pi * math.e * cov).item()


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def without_time(history):
    d = history.to_dict()
    d.pop("elapsed")
    return d


class Noise:
    """Dequantization-like preprocessing; optionally crashes like a dying session."""

    def __init__(self, crash_after=None):
        self.calls = 0
        self.crash_after = crash_after

    def __call__(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise KeyboardInterrupt
        return x + 0.05 * torch.randn_like(x)


def test_training_reaches_the_gaussian_nll():
    data = gaussian_sample()
    model = make_flow()
    before = evaluate(model, data)
    history = train(model, data, steps=100, batch_size=128, lr=0.1, scheduler="cosine", **QUIET)
    after = evaluate(model, data)
    best = gaussian_nll(data)
    assert before > best + 2
    assert after == pytest.approx(best, abs=0.02)
    assert history.steps == list(range(10, 101, 10))
    assert history.train_loss[-1] < history.train_loss[0] - 2
    assert history.best_step is None and history.val_loss == []
    assert not model.training


def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    data = gaussian_sample()
    results = []
    for seed in (0, 0, 1):
        model = make_flow()
        torch.randn(7)  # whatever happened before must not matter
        history = train(model, data, steps=15, batch_size=64, lr=0.01, seed=seed, preprocess=Noise(), **QUIET)
        results.append((model, history))
    (a, ha), (b, hb), (c, hc) = results
    assert_same_state(a, b)
    assert ha.train_loss == hb.train_loss
    assert not torch.equal(a.transform.layers[0].shift, c.transform.layers[0].shift)
    assert ha.train_loss != hc.train_loss


@pytest.mark.parametrize("interruption", ["shorter run", "crash"])
def test_resumed_run_matches_an_uninterrupted_one_bitwise(tmp_path, interruption):
    data, val = gaussian_sample(), gaussian_sample(100, seed=2)
    # Log, validation and checkpoint periods that do not divide the interruption step.
    kw = dict(val_data=val, batch_size=48, lr=0.02, log_every=4, eval_every=7, patience=10, **QUIET)
    reference = make_flow()
    expected = train(reference, data, steps=30, preprocess=Noise(), **kw)

    path = tmp_path / "run.ckpt"
    first = make_flow()
    if interruption == "shorter run":
        partial = train(first, data, steps=13, preprocess=Noise(), checkpoint=path, checkpoint_every=5, **kw)
        assert partial.steps[-1] == 13 and partial.val_steps[-1] == 13  # end-of-run extras
    else:
        with pytest.raises(KeyboardInterrupt):  # dies in step 18, after the checkpoint of step 15
            train(
                first,
                data,
                steps=30,
                preprocess=Noise(crash_after=18),
                checkpoint=path,
                checkpoint_every=5,
                **kw,
            )

    torch.manual_seed(1234)  # a new session: other random state, other initial weights
    resumed = make_flow(seed=99)
    history = train(resumed, data, steps=30, preprocess=Noise(), checkpoint=path, checkpoint_every=5, **kw)
    assert_same_state(resumed, reference)
    assert without_time(history) == without_time(expected)


def test_finished_checkpoint_returns_its_history_without_training(tmp_path):
    calls = []

    def counting_loss(model, x):
        calls.append(len(x))
        return default_loss(model, x)

    data, path = gaussian_sample(), tmp_path / "run.ckpt"
    kw = dict(batch_size=64, lr=0.02, loss_fn=counting_loss, checkpoint=path, **QUIET)
    model = make_flow()
    first = train(model, data, steps=10, **kw)
    assert len(calls) == 10

    again = make_flow(seed=5)
    second = train(again, data, steps=10, **kw)
    assert len(calls) == 10
    assert_same_state(again, model)
    assert second == first

    longer = train(again, data, steps=14, **kw)  # a larger `steps` trains on from the checkpoint
    assert len(calls) == 14
    assert longer.steps == [10, 14]


class BreaksAfter(Flow):
    """The identity, until its ``n``-th call returns NaN."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        z = x * math.nan if self.calls >= self.n else x
        return z, x.new_zeros(x.shape[0])

    def inverse(self, z):
        return z, z.new_zeros(z.shape[0])


def test_nan_guard_names_the_step_and_the_first_bad_layer():
    torch.manual_seed(0)
    model = NormalizingFlow(Compose(L.ElementwiseAffine(2), BreaksAfter(5), L.LULinear(2)), StandardNormal(2))
    with pytest.raises(NonFiniteLossError) as info:
        train(model, gaussian_sample(), steps=20, batch_size=32, **QUIET)
    error = info.value
    assert error.step == 5
    assert error.layer == "transform.layers.1"
    assert "loss became nan at step 5" in str(error)
    assert "transform.layers.1 (BreaksAfter)" in str(error)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert pickle.loads(pickle.dumps(error)).layer == "transform.layers.1"


def unchecked_nll(model, x):
    """The NLL without NormalizingFlow.log_prob's own input checks, to reach the NaN guard."""
    z, log_det = model.transform(x)
    return -(model.base.log_prob(z) + log_det).mean()


def test_nan_guard_blames_the_data_when_a_sampler_returns_inf():
    def sampler(n):
        sampler.calls += 1
        x = torch.randn(n, 2)
        if sampler.calls == 3:
            x[5, 1] = math.inf
        return x

    sampler.calls = 0
    with pytest.raises(NonFiniteLossError, match="batch itself contains non-finite values") as info:
        train(make_flow(), sampler, steps=20, batch_size=64, loss_fn=unchecked_nll, **QUIET)
    assert info.value.layer is None
    assert info.value.step == 3
    assert "batch 3" in str(info.value)


def test_nan_guard_reports_an_overflowing_loss_and_a_bad_gradient():
    data = gaussian_sample()
    with pytest.raises(NonFiniteLossError, match="loss became inf at step 1.*loss itself overflowed"):
        train(make_flow(), data, steps=5, loss_fn=lambda m, x: default_loss(m, x) * 1e38 * 1e38, **QUIET)

    def sqrt_at_zero(model, x):  # finite value, NaN gradient: d sqrt(u)/du is infinite at 0
        shift = model.transform.layers[0].shift
        return default_loss(model, x) + torch.sqrt(shift - shift).sum()

    with pytest.raises(NonFiniteLossError, match="gradient norm became nan at step 1") as info:
        train(make_flow(), data, steps=5, loss_fn=sqrt_at_zero, **QUIET)
    assert info.value.layer == "transform.layers.0"
    assert "gradients: transform.layers.0.shift." in str(info.value)  # that one only


@pytest.mark.parametrize("patience", [2, None])
def test_the_best_validation_state_is_restored(patience):
    torch.manual_seed(0)
    train_set = 0.1 * torch.randn(16, 2)  # narrow: fitting it makes the wide validation set unlikely
    val = torch.randn(256, 2)
    model = make_flow()
    steps = 40
    history = train(
        model, train_set, val_data=val, steps=steps, lr=0.05, eval_every=5, patience=patience, **QUIET
    )
    best = history.val_loss.index(min(history.val_loss))
    assert history.best_val_loss == history.val_loss[best]
    assert history.best_step == history.val_steps[best]
    assert history.val_loss[-1] > history.best_val_loss + 0.1
    assert evaluate(model, val) == pytest.approx(history.best_val_loss, rel=1e-6, abs=1e-6)
    if patience is None:
        assert not history.stopped_early and history.val_steps[-1] == steps
    else:
        assert history.stopped_early and history.steps[-1] < steps
        assert len(history.val_steps) == best + 1 + patience


def test_validation_preprocess_draws_its_noise_once():
    noise = Noise()
    val = gaussian_sample(200, seed=3)
    model = make_flow()
    history = train(
        model, gaussian_sample(), val_data=val, preprocess=noise, steps=20, batch_size=32, lr=0.0,
        eval_every=5, **QUIET,
    )  # fmt: skip
    assert noise.calls == 1 + 20  # the validation set once, then every training batch
    assert len(set(history.val_loss)) == 1  # lr=0: same model, and the same validation points
    assert evaluate(model, val, preprocess=noise) == history.val_loss[0]
    assert evaluate(model, val) != history.val_loss[0]


class Toy:
    def __init__(self):
        self.generators = []

    def sample(self, n, generator=None):
        self.generators.append(generator)
        return 2 * torch.randn(n, 2, generator=generator) + 1


class ToyWithoutGenerator:
    def sample(self, n):
        return 2 * torch.randn(n, 2) + 1


@pytest.mark.parametrize("kind", ["tensor", "sampler", "sampler without generator", "function"])
def test_every_kind_of_data_trains(kind):
    toy = Toy()
    data = {
        "tensor": 2 * torch.randn(300, 2, dtype=torch.float64) + 1,  # float64 is cast to the model's dtype
        "sampler": toy,
        "sampler without generator": ToyWithoutGenerator(),
        "function": lambda n: 2 * torch.randn(n, 2) + 1,
    }[kind]
    history = train(make_flow(), data, steps=40, batch_size=64, lr=0.05, log_every=10, **QUIET)
    assert history.train_loss[-1] < history.train_loss[0]
    if kind == "sampler":
        assert len(toy.generators) == 40 and all(isinstance(g, torch.Generator) for g in toy.generators)


@pytest.mark.parametrize(
    "data, error, words",
    [
        ([[0.0, 1.0]], TypeError, "got list. Stack"),
        (np.zeros((4, 2), dtype=np.float32), TypeError, "torch.as_tensor"),
        (torch.tensor(1.0), ValueError, "at least one sample"),
        (Toy, TypeError, "did you mean Toy()"),
        (lambda n: [0.0] * n, TypeError, "returned list"),
    ],
)
def test_unusable_data_raises_a_clear_error(data, error, words):
    with pytest.raises(error, match=r"tensor") as info:
        train(make_flow(), data, steps=2, **QUIET)
    assert words in str(info.value)


def test_bad_arguments_raise_clear_errors():
    data = gaussian_sample()
    with pytest.raises(ValueError, match="patience needs val_data"):
        train(make_flow(), data, steps=2, patience=3, **QUIET)
    with pytest.raises(ValueError, match="'cosine'"):
        train(make_flow(), data, steps=2, scheduler="linear", **QUIET)
    with pytest.raises(TypeError, match="no log_prob"):
        train(torch.nn.Linear(2, 2), data, steps=2, **QUIET)
    with pytest.raises(ValueError, match="forget .mean"):
        train(make_flow(), data, steps=2, loss_fn=lambda m, x: -m.log_prob(x), **QUIET)


def test_load_or_train_trains_once_then_loads(tmp_path, capsys):
    calls = []

    def counting_loss(model, x):
        calls.append(len(x))
        return default_loss(model, x)

    data, path = gaussian_sample(), tmp_path / "models" / "flow.pt"
    kw = dict(steps=20, batch_size=64, lr=0.02, loss_fn=counting_loss, **QUIET)
    model = make_flow()
    trained = load_or_train(path, model, data, **kw)
    assert len(calls) == 20
    assert path.exists() and not (tmp_path / "models" / "flow.pt.ckpt").exists()
    capsys.readouterr()

    fresh = make_flow(seed=7)
    loaded = load_or_train(path, fresh, data, **kw)
    assert len(calls) == 20
    assert f"loaded trained model from {path}" in capsys.readouterr().out
    assert_same_state(fresh, model)
    assert loaded == trained and not fresh.training

    with pytest.raises(RuntimeError, match="does not match.*Delete the file"):
        load_or_train(path, make_flow(dim=3), data, **kw)


def test_clip_grad_bounds_the_update():
    data = gaussian_sample()  # far from the initial model: large gradients
    moved = {}
    for clip in (1e-3, None):
        model = make_flow()
        before = torch.nn.utils.parameters_to_vector(model.parameters()).clone()
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        train(model, data, steps=1, optimizer=sgd, clip_grad=clip, **QUIET)
        moved[clip] = (torch.nn.utils.parameters_to_vector(model.parameters()) - before).norm().item()
    assert moved[1e-3] <= 1e-3 * 1.001
    assert moved[None] > 0.1


def test_cosine_schedule_anneals_to_zero():
    history = train(
        make_flow(), gaussian_sample(), steps=20, lr=0.1, scheduler="cosine", log_every=1, **QUIET
    )
    assert history.lr[0] == pytest.approx(0.1)
    assert history.lr == sorted(set(history.lr), reverse=True)  # strictly decreasing
    assert history.lr[-1] < 1e-3


class FakeClock:
    """``time.perf_counter`` that advances by ``tick`` seconds at every call."""

    def __init__(self, tick):
        self.now, self.tick = 1000.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_time_budget_stops_training_and_anneals_over_the_budget(monkeypatch):
    import coursepkg.training as training

    monkeypatch.setattr(training.time, "perf_counter", FakeClock(0.1))
    history = train(
        make_flow(), gaussian_sample(), steps=None, max_seconds=5.0, lr=0.1, scheduler="cosine",
        log_every=1, **QUIET,
    )  # fmt: skip
    assert history.out_of_time and not history.stopped_early
    assert 5.0 <= history.elapsed < 5.5
    assert 5 < history.steps[-1] < 50  # some steps, far fewer than 50 ticks of 0.1 s
    # The cosine follows the clock: it starts near the peak and ends near 0, decreasing.
    assert 0.09 < history.lr[0] <= 0.1
    assert history.lr[-1] < 0.01
    assert history.lr == sorted(history.lr, reverse=True)


def test_steps_end_a_timed_run_when_they_come_first():
    history = train(make_flow(), gaussian_sample(), steps=7, max_seconds=600, scheduler="cosine", **QUIET)
    assert history.steps[-1] == 7 and not history.out_of_time
    assert history.lr[-1] < 1e-4  # annealed by the step count (peak 1e-3): near 0 at the last step


def test_time_budget_on_the_real_clock_keeps_the_best_validation_state():
    data, val = gaussian_sample(), gaussian_sample(256, seed=5)
    model = make_flow()
    history = train(model, data, steps=None, max_seconds=0.5, val_data=val, eval_every=5, lr=0.05, **QUIET)
    assert history.out_of_time and history.elapsed >= 0.5
    assert history.val_steps[-1] == history.steps[-1]  # the last step is validated too
    assert evaluate(model, val) == pytest.approx(history.best_val_loss, rel=1e-6)


def test_time_budget_arguments_are_checked():
    data = gaussian_sample()
    with pytest.raises(ValueError, match="give max_seconds"):
        train(make_flow(), data, steps=None, **QUIET)
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match="max_seconds must be a positive number"):
            train(make_flow(), data, steps=5, max_seconds=bad, **QUIET)
    for bad in (True, "60"):
        with pytest.raises(TypeError, match="max_seconds must be a number of seconds"):
            train(make_flow(), data, steps=5, max_seconds=bad, **QUIET)


def test_progress_bar_shows_unless_switched_off(capsys, monkeypatch):
    data = gaussian_sample()
    monkeypatch.delenv("COURSEPKG_PROGRESS", raising=False)
    train(make_flow(), data, steps=3, device="cpu", progress=False)
    assert capsys.readouterr() == ("", "")
    train(make_flow(), data, steps=3, device="cpu", progress=True, desc="fitting")
    assert "fitting" in capsys.readouterr().err
    monkeypatch.setenv("COURSEPKG_PROGRESS", "0")
    train(make_flow(), data, steps=3, device="cpu", progress=True)
    assert capsys.readouterr() == ("", "")


def test_evaluate_is_an_exact_mean_in_eval_mode_without_gradients():
    seen = []

    def loss_fn(model, x):
        seen.append((model.training, torch.is_grad_enabled()))
        return default_loss(model, x)

    data = gaussian_sample()
    model = make_flow()
    model.train()
    model.transform.layers[0].eval()
    value = evaluate(model, data, batch_size=100, loss_fn=loss_fn)  # batches of 100, ..., 100, 12
    assert seen == [(False, False)] * 6
    assert model.training and not model.transform.layers[0].training
    assert value == pytest.approx(-model.log_prob(data).double().mean().item(), rel=1e-6)


def test_history_round_trips_and_summarises():
    history = train(
        make_flow(), gaussian_sample(), val_data=gaussian_sample(64, seed=4), steps=20, eval_every=10, **QUIET
    )
    assert History.from_dict(history.to_dict()) == history
    assert pickle.loads(pickle.dumps(history)) == history
    json.dumps(history.to_dict())
    summary = repr(history)
    assert summary.startswith("History(20 steps") and "best val loss" in summary and len(summary) < 120


# -- bad input: caught once, before the first step, with what to do -------------------------------


@pytest.mark.parametrize(
    "data, error, words",
    [
        (torch.empty(0, 2), ValueError, "at least one sample"),
        (torch.randint(0, 256, (64, 2), dtype=torch.uint8), TypeError, "data.float() / 255"),
        (torch.tensor([[0.0, 1.0], [math.nan, 2.0], [3.0, math.inf]]), ValueError, "first at index 1"),
    ],
    ids=["empty", "uint8", "non-finite"],
)
def test_unusable_data_tensors_are_refused_before_training(data, error, words):
    calls = []

    def counting_loss(model, x):
        calls.append(len(x))
        return default_loss(model, x)

    with pytest.raises(error) as info:
        train(make_flow(), data, steps=2, loss_fn=counting_loss, **QUIET)
    assert words in str(info.value)
    assert calls == []  # refused before the first step
    with pytest.raises(error) as info:  # the validation set gets the same checks
        train(make_flow(), gaussian_sample(), val_data=data, steps=2, **QUIET)
    assert words.replace("data", "val_data", 1) in str(info.value)


def test_integer_images_say_how_to_scale_them_and_train_with_a_preprocess():
    levels = torch.randint(0, 256, (64, 4), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"integer levels of images.*\[0, 1\].*Dequantize"):
        train(make_flow(dim=4), levels, steps=2, **QUIET)
    # With a preprocess that turns levels into floats, integer data is what it should be.
    history = train(make_flow(dim=4), levels, steps=2, preprocess=lambda x: (x + 0.5) / 256, **QUIET)
    assert len(history.train_loss) == 1


def test_data_of_the_wrong_shape_names_the_shapes():
    with pytest.raises((RuntimeError, ValueError), match=r"first batch, of shape \(64, 3\)") as info:
        train(make_flow(dim=2), torch.randn(100, 3), steps=2, batch_size=64, **QUIET)
    message = str(info.value)
    assert "from data of shape (100, 3)" in message and "flatten(1)" in message
    assert info.value.__cause__ is not None  # the model's own error stays attached


@pytest.mark.parametrize(
    "arguments, error, words",
    [
        (dict(steps=1e3), TypeError, "steps must be an integer, got float 1000.0: write steps=1_000"),
        (dict(steps="100"), TypeError, "steps must be an integer, got str"),
        (dict(steps=-1), ValueError, "steps must be an integer of at least 0"),
        (dict(batch_size=64.0), TypeError, "batch_size must be an integer, got float"),
        (dict(batch_size=None), TypeError, "batch_size must be an integer, got NoneType"),
        (dict(batch_size=0), ValueError, "batch_size must be an integer of at least 1"),
        (dict(eval_every=True), TypeError, "eval_every must be an integer, got bool"),
    ],
)
def test_counts_of_the_wrong_type_raise_clear_errors(arguments, error, words):
    with pytest.raises(error) as info:
        train(make_flow(), gaussian_sample(), **{"steps": 2, **arguments}, **QUIET)
    assert words in str(info.value)


def test_numpy_integers_are_fine_counts():
    history = train(make_flow(), gaussian_sample(), steps=np.int64(3), batch_size=np.int32(64), **QUIET)
    assert history.steps == [3]


# -- training without data: reverse KL ------------------------------------------------------------


def small_realnvp(seed=0):
    torch.manual_seed(seed)
    return models.realnvp(2, num_layers=4, hidden=(32, 32), norm=None)


def reverse_kl_to(target, flow, num_samples=100_000):
    """KL(q || p) in nats, by Monte Carlo over samples of the flow q, with the exact normalised log p."""
    with torch.no_grad():
        x, log_q = flow.sample_with_log_prob(num_samples)
        return (log_q.double() - target.log_prob(x.double())).mean().item()


def test_reverse_kl_fits_a_flow_to_an_unnormalised_banana():
    banana = Banana()
    flow = small_realnvp()
    before = reverse_kl_to(banana, flow)
    objective = ReverseKL(banana.unnormalized_log_prob)
    history = train(
        flow, None, loss_fn=objective, steps=150, batch_size=256, lr=1e-2, scheduler="cosine", **QUIET
    )
    after = reverse_kl_to(banana, flow)
    assert before > 1.0
    assert after < 0.1
    # The loss estimates KL(q || p) - log Z: offset by the normaliser the target left out.
    assert history.train_loss[-1] + banana.log_normalizer == pytest.approx(after, abs=0.05)
    assert history.steps[-1] == 150 and not flow.training


def test_reverse_kl_is_the_kl_divergence_up_to_log_z():
    # q = N(0, I) against p = N(m, s^2 I) known up to Z: KL = sum_i [log s + (1 + m_i^2) / (2 s^2) - 1/2].
    flow = NormalizingFlow(Compose(), StandardNormal(2))  # the identity: q = N(0, I)
    m, s, c = torch.tensor([1.0, -2.0]), 2.0, 3.7
    loss = ReverseKL(lambda x: -0.5 * ((x - m) / s).square().sum(1) + c)
    torch.manual_seed(0)
    estimate = loss(flow, 400_000).item()
    expected = sum(math.log(s) + (1 + mi**2) / (2 * s**2) - 0.5 for mi in m.tolist())
    log_z = c + math.log(2 * math.pi * s**2)  # p~ = Z N(m, s^2 I)
    assert estimate == pytest.approx(expected - log_z, abs=0.01)


@pytest.mark.parametrize("interruption", ["shorter run", "crash"])
def test_reverse_kl_resumes_bitwise(tmp_path, interruption):
    banana = Banana()
    # A shorter run anneals over its own steps, so only an interrupted one can share the cosine.
    scheduler = "cosine" if interruption == "crash" else None
    kw = dict(batch_size=64, lr=5e-3, log_every=4, scheduler=scheduler, checkpoint_every=5, **QUIET)

    class CrashingTarget:
        def __init__(self, crash_after=None):
            self.calls, self.crash_after = 0, crash_after

        def __call__(self, x):
            self.calls += 1
            if self.crash_after is not None and self.calls > self.crash_after:
                raise KeyboardInterrupt
            return banana.unnormalized_log_prob(x)

    reference = small_realnvp()
    expected = train(reference, None, loss_fn=ReverseKL(CrashingTarget()), steps=30, **kw)

    path = tmp_path / "vi.ckpt"
    if interruption == "shorter run":
        train(small_realnvp(), None, loss_fn=ReverseKL(CrashingTarget()), steps=13, checkpoint=path, **kw)
    else:
        with pytest.raises(KeyboardInterrupt):  # dies in step 18, after the checkpoint of step 15
            train(
                small_realnvp(), None, loss_fn=ReverseKL(CrashingTarget(18)), steps=30, checkpoint=path, **kw
            )

    torch.manual_seed(4321)  # a new session: other random state, other initial weights
    resumed = small_realnvp(seed=7)
    history = train(resumed, None, loss_fn=ReverseKL(CrashingTarget()), steps=30, checkpoint=path, **kw)
    assert_same_state(resumed, reference)
    assert without_time(history) == without_time(expected)


class NaNBeyond(Flow):
    """The identity, but its inverse turns a sample NaN where the latent's first coordinate exceeds 2.5."""

    def forward(self, x):
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z):
        bad = z[:, :1] > 2.5
        return torch.where(bad, math.nan, z), z.new_zeros(z.shape[0])


def test_nan_guard_explains_a_data_free_loss_on_the_samples_that_failed():
    # About one batch of 16 in ten holds a latent beyond 2.5: a fresh draw would rarely show
    # the NaN again, so the diagnosis must replay the samples of the failing step.
    def build():
        torch.manual_seed(0)
        return NormalizingFlow(Compose(L.ElementwiseAffine(2), NaNBeyond(), L.LULinear(2)), StandardNormal(2))

    objective = ReverseKL(lambda x: -0.5 * x.square().sum(1))
    kw = dict(batch_size=16, lr=0.01, seed=3, **QUIET)
    model = build()
    with pytest.raises(NonFiniteLossError) as info:
        train(model, None, loss_fn=objective, steps=200, **kw)
    error = info.value
    assert error.step > 1
    assert f"loss became nan at step {error.step} (16 samples drawn by the loss)" in str(error)
    assert error.layer == "transform.layers.1"
    assert "transform.layers.1 (NaNBeyond, inverse)" in str(error)
    assert "target log-density" in str(error)
    assert all("inverse" not in vars(m) for m in model.modules())  # the watchers are gone
    # The model holds the parameters of the step before: those of a run that stops there.
    before = build()
    train(before, None, loss_fn=objective, steps=error.step - 1, **kw)
    assert_same_state(model, before)


def test_nan_guard_blames_a_target_that_is_not_finite():
    flow = small_realnvp()
    with pytest.raises(
        NonFiniteLossError, match="loss became -?inf at step 1.*is the target log-density finite"
    ):
        train(flow, None, loss_fn=ReverseKL(lambda x: torch.full((len(x),), -math.inf)), steps=3, **QUIET)


def test_training_without_data_needs_a_loss_that_samples():
    flow = small_realnvp()
    with pytest.raises(TypeError, match="loss_fn=ReverseKL"):
        train(flow, None, steps=2, **QUIET)
    objective = ReverseKL(Banana().unnormalized_log_prob)
    with pytest.raises(ValueError, match=r"takes no data: call train\(model, None"):
        train(flow, gaussian_sample(), loss_fn=objective, steps=2, **QUIET)
    for extra in (dict(val_data=gaussian_sample()), dict(preprocess=Noise())):
        with pytest.raises(ValueError, match="needs data, but data=None"):
            train(flow, None, loss_fn=objective, steps=2, **extra, **QUIET)
    with pytest.raises(ValueError, match=r"one log-density per sample, shape \(8,\), got \(8, 2\)"):
        ReverseKL(lambda x: x)(flow, 8)
    with pytest.raises(TypeError, match="no sample_with_log_prob"):
        ReverseKL(Banana().unnormalized_log_prob)(torch.nn.Linear(2, 2), 8)
    # A plain function of (model, n) is a data-free loss too.
    history = train(flow, None, loss_fn=lambda model, n: objective(model, n), steps=3, batch_size=8, **QUIET)
    assert history.steps == [3]


def test_data_free_training_has_the_time_budget_and_the_progress_bar(monkeypatch, capsys):
    import coursepkg.training as training

    monkeypatch.delenv("COURSEPKG_PROGRESS", raising=False)
    monkeypatch.setattr(training.time, "perf_counter", FakeClock(0.1))
    objective = ReverseKL(Banana().unnormalized_log_prob)
    history = train(
        small_realnvp(), None, loss_fn=objective, steps=None, max_seconds=2.0, batch_size=32,
        device="cpu", progress=True, desc="variational",
    )  # fmt: skip
    assert history.out_of_time and 0 < history.steps[-1] < 20
    assert "variational" in capsys.readouterr().err


def test_checkpoint_file_names_a_file_in_full_mode_only(monkeypatch):
    from coursepkg.training import checkpoint_file

    monkeypatch.setenv("COURSEPKG_MODE", "quick")
    assert checkpoint_file("ch04", "digits", "image RealNVP") is None
    monkeypatch.setenv("COURSEPKG_MODE", "full")
    assert checkpoint_file("ch04", "digits", "image RealNVP") == "checkpoints/ch04_digits_image_realnvp.pt"
    assert checkpoint_file("ch03", "two moons (NICE)", folder="out") == "out/ch03_two_moons_nice.pt"
    with pytest.raises(ValueError, match="name the run"):
        checkpoint_file()
