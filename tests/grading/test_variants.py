"""Hand-made wrong variants of the reference solutions must lose points.

Each variant is a textual edit of one graded cell of a copy of ``solutions/NN_*.ipynb``: a flipped
sign of a log-determinant, a missing term, an off-by-one bin index, a summed axis, a forced dtype,
a transposed Jacobian... Graded by the machinery (``grade_probes`` in the sandbox), the variant must
fail the test named in the table (or any test of its exercise, for ``"any"``), and the grader must
neither crash nor report an internal error.

To save child processes, variants of different exercises share one edited notebook (a "batch"):
the probes of an exercise only call that exercise's definitions, except where an exercise builds on
another one (``DEPENDS``), and those never share a batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coursepkg.grading.notebook import extract_program, read_notebook
from coursepkg.grading.runner import Limits, grade_probes
from coursepkg.grading.spec import get_set

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = {
    "ch01": "01_change_of_variables.ipynb",
    "ch02": "02_jacobians.ipynb",
    "ch03": "03_nice.ipynb",
    "ch04": "04_realnvp.ipynb",
}

# Exercises whose tests also run the definitions of another exercise.
DEPENDS = {"ch01-experiment": "ch01-knots", "ch02-stack": "ch02-jacobian"}

# (exercise id, old text, new text, name of the test that must fail, or "any")
VARIANTS_CH01_CH02 = [
    ("ch01-density", "+ log_abs_derivative", "- log_abs_derivative", "density_values"),
    (
        "ch01-density",
        "log_abs_derivative = -math.log(SCALE)",
        "log_abs_derivative = math.log(SCALE)",
        "density_values",
    ),
    (
        "ch01-density",
        "- torch.log(x) - torch.log1p(-x)  # log|f'(x)|",
        "- torch.log(x)  # log|f'(x)|",
        "density_values",
    ),
    (
        "ch01-density",
        "z = (torch.log1p(-x) - torch.log(x) - SHIFT) / SCALE",
        "z = (torch.log(x) - torch.log1p(-x) - SHIFT) / SCALE",
        "density_values",
    ),
    (
        "ch01-density",
        "    z = (torch.log1p(-x)",
        "    x = x.double()\n    z = (torch.log1p(-x)",
        "density_shape_dtype",
    ),
    ("ch01-inverse-cdf", "positive = x.clamp_min(0.0)", "positive = x", "weibull_cdf_icdf"),
    ("ch01-inverse-cdf", "** (1 / WEIBULL_SHAPE)", "** WEIBULL_SHAPE", "weibull_cdf_icdf"),
    (
        "ch01-inverse-cdf",
        "torch.rand(n, generator=generator, dtype=torch.float64)",
        "torch.rand(n, dtype=torch.float64)",
        "weibull_sampler",
    ),
    (
        "ch01-inverse-cdf",
        "u = torch.rand(n, generator=generator, dtype=torch.float64)",
        "u = torch.rand(n, generator=generator)",
        "weibull_sampler",
    ),
    ("ch01-inverse-cdf", "return weibull_icdf(u)", "return weibull_icdf(u) * 1.2", "weibull_sampler"),
    (
        "ch01-inverse-cdf",
        "low = torch.where(below, middle, low)\n        high = torch.where(below, high, middle)",
        "low = torch.where(below, low, middle)\n        high = torch.where(below, middle, high)",
        "invert_cdf_values",
    ),
    ("ch01-inverse-cdf", "    while True:", "    while False:", "invert_cdf_values"),
    (
        "ch01-inverse-cdf",
        "for _ in range(num_halvings):",
        "for _ in range(num_halvings // 4):",
        "invert_cdf_values",
    ),
    ("ch01-autograd-nll", "torch.log(derivative.abs())", "torch.log(derivative)", "nll_values"),
    ("ch01-autograd-nll", "x, create_graph=True)", "x, create_graph=False)", "nll_gradient"),
    ("ch01-autograd-nll", "log_prob_latent(z) + torch.log", "log_prob_latent(z) - torch.log", "nll_values"),
    ("ch01-autograd-nll", "derivative.abs())).mean()", "derivative.abs())).sum()", "nll_values"),
    (
        "ch01-autograd-nll",
        "x = x.detach().clone().requires_grad_(True)",
        "x.requires_grad_(True)",
        "nll_values",
    ),
    (
        "ch01-knots",
        "k = (v[:, None] >= source[1:-1]).sum(1)",
        "k = (v[:, None] >= source[:-1]).sum(1).clamp(max=len(source) - 2)",
        "knots_forward",
    ),
    (
        "ch01-knots",
        "torch.where(inside, torch.log(slopes[k])",
        "torch.where(inside, -torch.log(slopes[k])",
        "knots_forward",
    ),
    (
        "ch01-knots",
        "out = torch.where(inside, target[k] + (v - source[k]) * slopes[k], v)",
        "out = target[k] + (v - source[k]) * slopes[k]",
        "knots_forward",
    ),
    (
        "ch01-knots",
        "inner = t[0] + (t[-1] - t[0]) * torch.cumsum(widths, dim=0)[:-1]",
        "inner = t[0] + (t[-1] - t[0]) * torch.cumsum(widths, dim=0)[1:]",
        "knots_forward",
    ),
    (
        "ch01-knots",
        "return self._piecewise(z, self.output_knots().to(z.dtype), self.knots.to(z.dtype))",
        "return self._piecewise(z, self.knots.to(z.dtype), self.output_knots().to(z.dtype))",
        "knots_inverse",
    ),
    (
        "ch01-knots",
        'self.register_buffer("knots", knots.clone())',
        "self.knots = knots.clone()",
        "knots_properties",
    ),
    (
        "ch01-knots",
        "self.logits = nn.Parameter(torch.log(knots[1:] - knots[:-1]))",
        "self.logits = nn.Parameter(torch.zeros(len(knots) - 1, dtype=knots.dtype))",
        "knots_properties",
    ),
    (
        "ch01-knots",
        "return self._piecewise(x, self.knots.to(x.dtype), self.output_knots().to(x.dtype))",
        "return self._piecewise(x.double(), self.knots.double(), self.output_knots().double())",
        "knots_properties",
    ),
    ("ch01-experiment", 'if placement == "uniform":', 'if placement == "quantile":', "knot_placement"),
    ("ch01-experiment", "+ log_det).mean()", ").mean()", "knot_placement"),
    ("ch01-experiment", "for _ in range(steps):", "for _ in range(steps // 40):", "knot_placement"),
    (
        "ch02-jacobian",
        "return torch.stack(rows, dim=1).detach()",
        "return torch.stack(rows, dim=2).detach()",
        "jacobian_values",
    ),
    (
        "ch02-jacobian",
        "return torch.stack(rows, dim=1).detach()",
        "return torch.stack(rows, dim=1).detach().double()",
        "jacobian_float32",
    ),
    (
        "ch02-jacobian",
        "return torch.stack(rows, dim=1).detach()",
        "return torch.stack(rows, dim=1).detach().transpose(1, 2)",
        "jacobian_values",
    ),
    (
        "ch02-jacobian",
        "    x = x.detach().requires_grad_(True)\n    with",
        "    x.requires_grad_(True)\n    with",
        "jacobian_float32",
    ),
    ("ch02-jacobian", "return 0.5 * x2 + torch.log1p", "return torch.log1p", "twist_closed_form"),
    ("ch02-jacobian", "torch.log1p(-0.15 * x1", "torch.log1p(0.15 * x1", "twist_closed_form"),
    (
        "ch02-autoregressive",
        "scale_weights = torch.tril(scale_weights, diagonal=-1)",
        "scale_weights = torch.tril(scale_weights)",
        "autoregressive_output",
    ),
    (
        "ch02-autoregressive",
        "shift_weights = torch.tril(shift_weights, diagonal=-1)",
        "shift_weights = shift_weights.T",
        "autoregressive_output",
    ),
    (
        "ch02-autoregressive",
        "return z, torch.log(scale).sum(1)",
        "return z, torch.log(scale).sum(0)",
        "autoregressive_log_det",
    ),
    (
        "ch02-autoregressive",
        "return z, torch.log(scale).sum(1)",
        "return z, scale.sum(1)",
        "autoregressive_log_det",
    ),
    (
        "ch02-autoregressive",
        "return z, torch.log(scale).sum(1)",
        "jac = torch.func.vmap(torch.func.jacrev(lambda v: v * F.softplus(v @ scale_weights.T + scale_bias) + v @ shift_weights.T))(x)\n    return z, torch.linalg.slogdet(jac)[1]",
        "autoregressive_log_det",
    ),
    (
        "ch02-autoregressive",
        "return z, torch.log(scale).sum(1)",
        "return z.double(), torch.log(scale).sum(1).double()",
        "autoregressive_float32",
    ),
    ("ch02-planar", "* self.w / (self.w @ self.w)", "* self.w", "planar_u_hat"),
    ("ch02-planar", "(F.softplus(wu) - 1 - wu)", "(F.softplus(wu) - wu)", "planar_u_hat"),
    (
        "ch02-planar",
        "derivative = 1 / (1 + a.abs()).square()  # h'(a)",
        "derivative = 1 / (1 + a.abs())  # h'(a)",
        "planar_log_det",
    ),
    (
        "ch02-planar",
        "return z, torch.log1p(derivative * (self.w @ u))",
        "return z, -torch.log1p(derivative * (self.w @ u))",
        "planar_log_det",
    ),
    (
        "ch02-planar",
        "return z, torch.log1p(derivative * (self.w @ u))",
        "return z, torch.log1p(derivative * (self.w @ self.u))",
        "planar_log_det",
    ),
    (
        "ch02-planar",
        "z = x + F.softsign(a).unsqueeze(1) * u",
        "z = x + torch.tanh(a).unsqueeze(1) * u",
        "planar_forward",
    ),
    (
        "ch02-planar",
        "t = 0.5 * (torch.sqrt(linear.square() + 4 * size) - linear)",
        "t = 0.5 * (-torch.sqrt(linear.square() + 4 * size) - linear)",
        "planar_inverse",
    ),
    ("ch02-planar", "a = torch.sign(y) * t", "a = t", "planar_inverse"),
    (
        "ch02-planar",
        "a = x @ self.w + self.b  # (B,)",
        "a = (x @ self.w + self.b).double()  # (B,)",
        "planar_float32",
    ),
    (
        "ch02-stack",
        "    for layer in layers:\n        x, log_det = layer(x)",
        "    start = x\n    for layer in layers:\n        x, log_det = layer(start)",
        "stack_values",
    ),
    (
        "ch02-stack",
        "torch.stack(per_layer, dim=1) if per_layer",
        "torch.stack(per_layer, dim=0) if per_layer",
        "stack_values",
    ),
    (
        "ch02-stack",
        "return x, per_layer.sum(1), per_layer",
        "return x, per_layer[:, :-1].sum(1), per_layer",
        "stack_values",
    ),
    (
        "ch02-stack",
        "return x, per_layer.sum(1), per_layer",
        "return x.double(), per_layer.sum(1).double(), per_layer.double()",
        "stack_float32",
    ),
    (
        "ch02-stack",
        "(log_det - torch.linalg.slogdet(jacobians)[1]).abs().max()",
        "(log_det - torch.linalg.slogdet(jacobians)[1]).max()",
        "stack_gap",
    ),
    (
        "ch02-stack",
        "(log_det - torch.linalg.slogdet(jacobians)[1]).abs().max()",
        "(log_det - torch.linalg.slogdet(jacobians)[1]).abs().mean()",
        "stack_gap",
    ),
]
# Chapter 3 (NICE).
DEPENDS_CH03: dict[str, str] = {"ch03-experiment": "ch03-likelihood"}
VARIANTS_CH03: list[tuple[str, str, str, str]] = [
    # The mask not complemented: the kept half is shifted, the other half passes unchanged.
    (
        "ch03-coupling",
        "shift = self.shift_net(x * keep) * (1 - keep)",
        "shift = self.shift_net(x * keep) * keep",
        "coupling_forward",
    ),
    ("ch03-coupling", "return z - shift", "return z + shift", "coupling_inverse"),
    # The inverse computes its shift from the wrong half of z.
    ("ch03-coupling", "self.shift_net(z * keep)", "self.shift_net(z * (1 - keep))", "coupling_inverse"),
    ("ch03-coupling", "keep = self.mask.to(x.dtype)  #", "keep = self.mask.double()  #", "coupling_float32"),
    (
        "ch03-scaling",
        "return z, self.log_scale.sum().expand(x.shape[0])",
        "return z, -self.log_scale.sum().expand(x.shape[0])",
        "scaling_log_det",
    ),
    # exp and log confused: the sum of the scales instead of the sum of the log-scales.
    (
        "ch03-scaling",
        "return z, self.log_scale.sum().expand(x.shape[0])",
        "return z, torch.exp(self.log_scale).sum().expand(x.shape[0])",
        "scaling_log_det",
    ),
    # The log-determinant summed over the batch axis instead of the feature axis.
    (
        "ch03-scaling",
        "return z, self.log_scale.sum().expand(x.shape[0])",
        "return z, (torch.zeros_like(x) + self.log_scale).sum(0)",
        "scaling_log_det",
    ),
    (
        "ch03-scaling",
        "-(F.softplus(z) + F.softplus(-z)).sum(1)",
        "-(F.softplus(z) + F.softplus(-z)).sum(0)",
        "logistic_values",
    ),
    (
        "ch03-scaling",
        "return -(F.softplus(z) + F.softplus(-z)).sum(1)",
        "return (F.softplus(z) + F.softplus(-z)).sum(1)",
        "logistic_values",
    ),
    # The textbook formula, which underflows to log(0) for large |z|.
    (
        "ch03-scaling",
        "return -(F.softplus(z) + F.softplus(-z)).sum(1)",
        "return torch.log(torch.sigmoid(z) * torch.sigmoid(-z)).sum(1)",
        "logistic_stable",
    ),
    (
        "ch03-likelihood",
        "return log_prior(z) + log_det",
        "return log_prior(z) - log_det",
        "likelihood_values",
    ),
    # The inverses applied in the forward order.
    ("ch03-likelihood", "for layer in reversed(layers):", "for layer in layers:", "sample_distribution"),
    ("ch03-experiment", "math.exp(2 * entropy / dim)", "math.exp(entropy / dim)", "bound_values"),
    # Gradient ascent on the negative log-likelihood.
    (
        "ch03-experiment",
        "loss = -nice_log_prob(layers, batch, normal_log_prob).mean()",
        "loss = nice_log_prob(layers, batch, normal_log_prob).mean()",
        "fit_values",
    ),
]

# Chapter 4 (RealNVP).
DEPENDS_CH04: dict[str, str] = {"ch04-experiment": "ch04-coupling"}
VARIANTS_CH04: list[tuple[str, str, str, str]] = [
    ("ch04-masks", "(rows + columns) % 2 == parity", "(rows + columns) % 2 != parity", "checkerboard_values"),
    (
        "ch04-masks",
        "torch.arange(channels) < channels // 2",
        "torch.arange(channels) < (channels + 1) // 2",
        "channel_values",
    ),
    (
        "ch04-squeeze",
        "blocks.permute(0, 1, 3, 5, 2, 4)",
        "blocks.permute(0, 1, 5, 3, 2, 4)",
        "squeeze_values",
    ),
    (
        "ch04-squeeze",
        "blocks.permute(0, 1, 3, 5, 2, 4)",
        "blocks.permute(1, 0, 3, 5, 2, 4)",
        "squeeze_round_trip",
    ),
    (
        "ch04-squeeze",
        "blocks.permute(0, 1, 4, 2, 5, 3)",
        "blocks.permute(0, 1, 4, 3, 5, 2)",
        "squeeze_round_trip",
    ),
    ("ch04-coupling", "return z, s.sum(dim=1)", "return z, -s.sum(dim=1)", "coupling_log_det"),
    ("ch04-coupling", "return z, s.sum(dim=1)", "return z, s.sum(dim=0)", "coupling_forward"),
    ("ch04-coupling", "free = 1 - keep", "free = keep", "coupling_forward"),
    ("ch04-coupling", "self.conditioner(v * keep)", "self.conditioner(v)", "coupling_log_det"),
    ("ch04-coupling", "z = x * torch.exp(s) + t", "z = x * s + t", "coupling_forward"),
    (
        "ch04-coupling",
        "s = self.scale_bound * torch.tanh(s_raw / self.scale_bound) * free",
        "s = s_raw * free",
        "coupling_clamp",
    ),
    ("ch04-coupling", "x = (z - t) * torch.exp(-s)", "x = z * torch.exp(-s) - t", "coupling_inverse"),
    (
        "ch04-experiment",
        "keeps_first = k % 2 == 0 or not alternate",
        "keeps_first = k % 2 == 0",
        "alternating_masks",
    ),
    (
        "ch04-experiment",
        "-(base.log_prob(z) + log_det).mean()",
        "-(base.log_prob(z) - log_det).mean()",
        "alternating_masks",
    ),
]

VARIANTS = VARIANTS_CH01_CH02 + VARIANTS_CH03 + VARIANTS_CH04
DEPENDS.update(DEPENDS_CH03)
DEPENDS.update(DEPENDS_CH04)


def _label(variant) -> str:
    exercise, _, new, expected = variant
    first = new.strip().splitlines()[0] if new.strip() else "(deleted)"
    return f"{exercise}:{expected}:{first[:40]}"


def _batches() -> list[list[int]]:
    """Indices of VARIANTS grouped so that a batch edits each exercise at most once, per set."""
    batches: list[tuple[str, list[int]]] = []
    for index, (exercise, *_rest) in enumerate(VARIANTS):
        set_name = exercise[:4]
        for batch_set, batch in batches:
            touched = {VARIANTS[i][0] for i in batch}
            related = (
                touched | {DEPENDS.get(e) for e in touched} | {e for e, d in DEPENDS.items() if d in touched}
            )
            if batch_set == set_name and exercise not in related and DEPENDS.get(exercise) not in touched:
                batch.append(index)
                break
        else:
            batches.append((set_name, [index]))
    return [batch for _, batch in batches]


BATCHES = _batches()
BATCH_OF = {index: b for b, batch in enumerate(BATCHES) for index in batch}
_RESULTS: dict[int, tuple[dict, list[str]]] = {}


def _edited_notebook(indices: list[int], folder: Path) -> Path:
    set_name = VARIANTS[indices[0]][0][:4]
    source = ROOT / "solutions" / NOTEBOOKS[set_name]
    notebook = json.loads(source.read_text(encoding="utf-8"))
    for index in indices:
        exercise, old, new, _ = VARIANTS[index]
        (cell,) = [
            c for c in notebook["cells"] if f"exercise:{exercise}" in c.get("metadata", {}).get("tags", [])
        ]
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        assert text.count(old) == 1, f"variant {index}: {old!r} must occur once in the cell of {exercise}"
        cell["source"] = text.replace(old, new)
    path = folder / NOTEBOOKS[set_name]
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


def _grade_batch(b: int, folder: Path) -> tuple[dict, list[str]]:
    if b not in _RESULTS:
        indices = BATCHES[b]
        exercise_set = get_set(VARIANTS[indices[0]][0][:4])
        if not exercise_set.has_reference():
            pytest.skip(f"no generated reference for {exercise_set.name}: run `make exercises`")
        path = _edited_notebook(indices, folder)
        program = extract_program(read_notebook(path), exercise_set.forbidden_imports, label=path.name)
        exercises = {VARIANTS[i][0] for i in indices}
        tests = [t for t in exercise_set.tests if t.exercise in exercises]
        results, errors, _ = grade_probes(exercise_set, program, Limits(), tests)
        _RESULTS[b] = ({r.name: r for r in results}, errors)
    return _RESULTS[b]


def test_batches_are_independent():
    """No batch edits one exercise twice, or two exercises of which one runs the other's code."""
    for batch in BATCHES:
        exercises = [VARIANTS[i][0] for i in batch]
        assert len(set(exercises)) == len(exercises)
        for exercise in exercises:
            assert DEPENDS.get(exercise) not in exercises


def test_variants_apply():
    """Each variant's text occurs exactly once in its graded cell, and the edit changes it."""
    for set_name, name in NOTEBOOKS.items():
        notebook = json.loads((ROOT / "solutions" / name).read_text(encoding="utf-8"))
        cells = {}
        for cell in notebook["cells"]:
            for tag in cell.get("metadata", {}).get("tags", []):
                if tag.startswith("exercise:"):
                    source = cell["source"]
                    cells[tag.split(":", 1)[1]] = "".join(source) if isinstance(source, list) else source
        for exercise, old, new, _ in VARIANTS:
            if exercise.startswith(set_name):
                assert exercise in cells, f"{name} has no graded cell {exercise}"
                assert cells[exercise].count(old) == 1, f"{old!r} must occur once in the cell of {exercise}"
                assert old != new


def test_variants_name_real_tests():
    for exercise, _, _, expected in VARIANTS:
        exercise_set = get_set(exercise[:4])
        names = [t.name for t in exercise_set.tests_of(exercise)]
        assert names, f"{exercise} has no tests"
        assert expected == "any" or expected in names, f"{expected} is not a test of {exercise}"


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(VARIANTS)), ids=[_label(v) for v in VARIANTS])
def test_variant_loses_points(index, tmp_path_factory):
    exercise, _, new, expected = VARIANTS[index]
    results, errors = _grade_batch(BATCH_OF[index], tmp_path_factory.mktemp("variants"))
    internal = [e for e in errors if "internal error" in e]
    assert not internal, internal
    mine = {name: r for name, r in results.items() if r.exercise == exercise}
    assert mine, f"no results for {exercise}"
    for r in mine.values():
        assert "internal error" not in r.message, r.message
        assert r.points in (0.0, r.max_points)
    failed = {name: r.message for name, r in mine.items() if not r.passed}
    if expected == "any":
        assert failed, f"the variant {new!r} of {exercise} gets full marks"
    else:
        assert expected in failed, (
            f"the variant {new!r} of {exercise} passes {expected}; failed: {sorted(failed) or 'none'}"
        )
    assert sum(r.points for r in mine.values()) < sum(r.max_points for r in mine.values())
