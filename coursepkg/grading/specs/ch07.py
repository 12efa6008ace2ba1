"""Tests of the exercises of chapter 7 (invertible residual networks), ``solutions/07_iresnet.ipynb``.

Probes run in the student's process and return plain data; comparisons run in the grader. Every
probe seeds torch and draws its inputs in float64. Nothing is judged by the package's i-ResNet
code: the expected values are computed here, from matrices of known singular values (the power
method), from points whose inverse is known or from a linear solve (the fixed-point inverse), and
from exact Jacobians by ``torch.func.jacrev`` (traces, powers, variances of the estimators).

The two estimators are random. Where a Rademacher probe is exact (a diagonal Jacobian: ``v_i^2 =
1``) their values are compared exactly; otherwise means over many probes must lie within 5
standard errors of the exact expectation, the standard error computed here from the exact
variance of ``v^T M v`` (``sum_{i<j} (M_ij + M_ji)^2`` for Rademacher probes), and a sample
variance within 25 % of that variance. Five standard errors fail a correct solution about once in
two million runs; the wrong probe distributions, a missing average and a probe shared by the whole
batch miss by far more.

While a probe calls the student's code the package's residual layers, their methods, their module
and ``coursepkg.models.iresnet`` are switched off; for the power method also torch's singular-value
and eigenvalue functions; for the two estimators the Jacobian builders and torch's determinants.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

import coursepkg
from coursepkg.grading.spec import (
    ExerciseSet,
    ForbiddenCall,
    default_compare,
    describe,
    forbid,
    forbid_brute_force_jacobian,
    forbid_determinants,
)
from coursepkg.layers import residual
from coursepkg.testing import assert_close

SET = ExerciseSet(
    "ch07",
    notebook="07_iresnet.ipynb",
    # The residual block and the spectrally normalised linear map (also in the module that defines
    # them, and their methods), that module, and the builder that stacks the blocks.
    forbidden=forbid(coursepkg.layers, "InvertibleResidual", "SpectralLinear", "residual")
    + forbid(residual, "InvertibleResidual", "SpectralLinear")
    + forbid(residual.SpectralLinear, "forward", "sigma", "normalized_weight", "_power_method")
    + forbid(
        residual.InvertibleResidual,
        "forward",
        "inverse",
        "g",
        "_g",
        "normalized_weights",
        "_g_and_jacobian",
        "_exact_log_det",
        "_series_log_det",
    )
    + forbid(coursepkg.models, "iresnet"),
)
_NO_SVD = forbid(
    torch.linalg,
    "matrix_norm",
    "svd",
    "svdvals",
    "eig",
    "eigh",
    "eigvals",
    "eigvalsh",
    why="the exercise asks for the power method, not a decomposition",
) + forbid(
    torch, "svd", "svd_lowrank", "lobpcg", why="the exercise asks for the power method, not a decomposition"
)
_WHY_NO_JACOBIAN = (
    "the estimator uses vector-Jacobian products (torch.autograd.grad) and never forms the Jacobian"
)
_NO_JACOBIAN = (
    forbid_brute_force_jacobian(_WHY_NO_JACOBIAN)
    + forbid_determinants(_WHY_NO_JACOBIAN)
    + forbid(torch.func, "jacrev", "jacfwd", "hessian", why=_WHY_NO_JACOBIAN)
    + forbid(torch.autograd.functional, "jacobian", "hessian", why=_WHY_NO_JACOBIAN)
)
_F64 = torch.float64
#: Means of random estimates must lie within this many standard errors of their expectation.
_ALLOWED_ERRORS = 5.0
#: Sample variances must lie within this factor of the expected variance.
_VARIANCE_BAND = (0.75, 1.25)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _pair(got, expected, atol: float = 1e-10, rtol: float = 1e-8) -> dict:
    """An entry compared with ``expected``, computed here (see :func:`_judge`)."""
    return {"got": _detached(got), "expected": expected.detach(), "atol": atol, "rtol": rtol}


def _statistic(estimate, expectation: float, standard_error: float) -> dict:
    """A mean of random estimates that must lie within ``_ALLOWED_ERRORS`` standard errors."""
    return {"estimate": _detached(estimate), "expectation": expectation, "standard_error": standard_error}


def _spread(variance, expected: float, largest: float | None = None) -> dict:
    """A sample variance that must lie within ``_VARIANCE_BAND`` times ``expected`` (or, given
    ``largest``, between the band's low end times ``expected`` and its high end times ``largest``)."""
    return {"variance": _detached(variance), "expected_variance": expected, "largest": largest or expected}


def _number(value, key: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AssertionError(f"{key}: expected a number, got {describe(value)}")
    if not math.isfinite(value):
        raise AssertionError(f"{key}: got the non-finite value {value}")
    return float(value)


def _judge(student: dict, reference: dict) -> None:
    """Entries made by :func:`_pair`, :func:`_statistic` and :func:`_spread` are judged by the values
    computed here in the student's process; the other entries are compared with the reference's."""
    for key, expected in reference.items():
        if key not in student:
            raise AssertionError(f"missing entry {key!r}")
        got = student[key]
        if isinstance(expected, dict) and "got" in expected:
            value = got["got"]
            if not isinstance(value, torch.Tensor):
                raise AssertionError(f"{key}: expected {describe(got['expected'])}, got {describe(value)}")
            if value.dtype != got["expected"].dtype:
                raise AssertionError(f"{key}: expected dtype {got['expected'].dtype}, got {value.dtype}")
            assert_close(value, got["expected"], key, got["atol"], got["rtol"])
        elif isinstance(expected, dict) and "standard_error" in expected:
            estimate = _number(got["estimate"], key)
            error = abs(estimate - got["expectation"]) / got["standard_error"]
            if error > _ALLOWED_ERRORS:
                raise AssertionError(
                    f"{key}: {estimate:.6g} against the expected {got['expectation']:.6g}, off by "
                    f"{error:.1f} standard errors of {got['standard_error']:.3g} (at most "
                    f"{_ALLOWED_ERRORS:g} allowed): too far for an unbiased estimate averaged "
                    "over independent probes"
                )
        elif isinstance(expected, dict) and "expected_variance" in expected:
            variance = _number(got["variance"], key)
            low = _VARIANCE_BAND[0] * got["expected_variance"]
            high = _VARIANCE_BAND[1] * got["largest"]
            if not low <= variance <= high:
                expected = (
                    f"{got['expected_variance']:.4g}"
                    if got["largest"] == got["expected_variance"]
                    else f"{got['expected_variance']:.4g} to {got['largest']:.4g}"
                )
                raise AssertionError(
                    f"{key}: {variance:.4g} where {expected} is expected (allowed: {low:.4g} to {high:.4g}); "
                    "are the probes drawn independently for every sample and averaged?"
                )
        else:
            default_compare({key: got}, {key: expected})


def _outcome(call) -> str:
    """What ``call()`` did, as a short string compared with the reference's."""
    try:
        call()
    except (ForbiddenCall, NotImplementedError):  # the grader's own messages say more
        raise
    except Exception as error:  # the name of the error is what is judged
        return f"raised {type(error).__name__}"
    return "returned without an error"


def _matrix(shape, top: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, u1)``: a ``shape`` matrix whose singular values are ``top``, ``0.6 top`` and smaller, and
    its top left singular vector."""
    generator = _generator(seed)
    m, n = shape
    rank = min(m, n)
    left = torch.linalg.qr(torch.randn(m, rank, generator=generator, dtype=_F64))[0]
    right = torch.linalg.qr(torch.randn(n, rank, generator=generator, dtype=_F64))[0]
    values = (
        top
        * torch.cat(
            [
                torch.tensor([1.0, 0.6], dtype=_F64),
                0.5 * torch.rand(max(rank - 2, 0), generator=generator, dtype=_F64),
            ]
        )[:rank]
    )
    return (left * values) @ right.T, left[:, 0]


def _label(shape) -> str:
    return f"W of shape {tuple(shape)}"


# -- ch07-spectral-norm ---------------------------------------------------------------------------

SET.check_cell("ch07-spectral-norm", points=0.5)

_SHAPES = ((4, 4), (3, 7), (7, 3), (1, 5), (5, 1), (6, 6))
_TOPS = (2.5, 0.4, 1.7, 3.0, 0.8, 1.3)


def _estimate(ns, *args):
    with SET.switched_off(*_NO_SVD), torch.no_grad():
        return ns.spectral_norm_estimate(*args)


@SET.test("ch07-spectral-norm", points=1, requires=("spectral_norm_estimate",))
def spectral_norm_values(ns):
    """60 iterations from a random start: sigma against ||W||_2, u along the top left singular vector."""
    result = {}
    for index, (shape, top) in enumerate(zip(_SHAPES, _TOPS, strict=True)):
        weight, top_vector = _matrix(shape, top, seed=700 + index)
        torch.manual_seed(710 + index)
        sigma, u = _estimate(ns, weight.clone(), 60)
        label = f"{_label(shape)}, ||W||_2 = {top:g}"
        result[f"{label}: sigma vs the exact spectral norm"] = _pair(sigma, torch.tensor(top, dtype=_F64))
        if isinstance(u, torch.Tensor) and u.shape == top_vector.shape:
            result[f"{label}: length of u"] = _pair(
                torch.linalg.vector_norm(u), torch.tensor(1.0, dtype=_F64)
            )
            result[f"{label}: |u . u1|, u1 the top left singular vector"] = _pair(
                (u @ top_vector).abs(), torch.tensor(1.0, dtype=_F64), atol=1e-8
            )
        else:
            result[f"{label}: shape of u"] = tuple(u.shape) if isinstance(u, torch.Tensor) else describe(u)
    return result


spectral_norm_values.compare(_judge)


def _power_steps(weight: torch.Tensor, u: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The power method of the exercise, run here: ``(u^T W v, u)``."""
    u = u / torch.linalg.vector_norm(u)
    for _ in range(steps):
        v = F.normalize(weight.T @ u, dim=0)
        u = F.normalize(weight @ v, dim=0)
    return u @ weight @ v, u


@SET.test("ch07-spectral-norm", points=0.5, requires=("spectral_norm_estimate",))
def spectral_norm_warm_start(ns):
    """1 and 3 iterations from a given start against the grader's; the start unchanged; 0 refused."""
    result = {}
    for index, shape in enumerate(((4, 4), (3, 6), (6, 2))):
        weight, _ = _matrix(shape, 1.5 + index, seed=720 + index)
        start = 3.0 * torch.randn(shape[0], generator=_generator(730 + index), dtype=_F64)
        for steps in (1, 3):
            given = start.clone()
            sigma, u = _estimate(ns, weight, steps, given)
            expected_sigma, expected_u = _power_steps(weight, start, steps)
            label = f"{_label(shape)}, {steps} iteration{'s' if steps > 1 else ''} from a given u"
            result[f"{label}: sigma"] = _pair(sigma, expected_sigma)
            result[f"{label}: the returned u"] = _pair(u, expected_u)
            result[f"{label}: the given u afterwards (must be unchanged)"] = _pair(given, start, 0.0, 0.0)
    weight, _ = _matrix((3, 3), 1.0, seed=739)
    result["num_iterations=0"] = _outcome(lambda: _estimate(ns, weight, 0))
    return result


spectral_norm_warm_start.compare(_judge)


_NORMALIZE_CASES = (
    ((4, 4), 2.5, 0.9),
    ((4, 4), 0.5, 0.9),
    ((3, 6), 1.2, 0.5),
    ((6, 3), 0.95, 0.97),
    ((1, 5), 3.0, 0.8),
    ((5, 5), 0.7, 0.5),
)


@SET.test("ch07-spectral-norm", points=1, requires=("spectral_normalize",))
def spectral_normalize_values(ns):
    """W c / ||W||_2 above c, W itself below; the result's norm min(||W||_2, c); input unchanged; float32."""
    result = {}
    for index, (shape, top, coefficient) in enumerate(_NORMALIZE_CASES):
        weight, _ = _matrix(shape, top, seed=740 + index)
        given = weight.clone()
        torch.manual_seed(750 + index)
        with SET.switched_off(*_NO_SVD), torch.no_grad():
            normalized = ns.spectral_normalize(given, coefficient)
        expected = weight * coefficient / top if top > coefficient else weight
        label = f"{_label(shape)}, ||W||_2 = {top:g}, coefficient {coefficient:g}"
        result[f"{label}: the normalised weight"] = _pair(normalized, expected, 1e-12, 1e-9)
        if isinstance(normalized, torch.Tensor) and normalized.shape == weight.shape:
            result[f"{label}: its spectral norm"] = _pair(
                torch.linalg.matrix_norm(normalized.detach(), ord=2),
                torch.tensor(min(top, coefficient), dtype=_F64),
                1e-12,
                1e-9,
            )
        result[f"{label}: the input afterwards (must be unchanged)"] = _pair(given, weight, 0.0, 0.0)
    weight, _ = _matrix((3, 4), 2.0, seed=759)
    torch.manual_seed(759)
    with SET.switched_off(*_NO_SVD), torch.no_grad():
        normalized = ns.spectral_normalize(weight.float(), 0.9)
    result["float32 in: shape and dtype out"] = (
        (tuple(normalized.shape), str(normalized.dtype))
        if isinstance(normalized, torch.Tensor)
        else describe(normalized)
    )
    return result


spectral_normalize_values.compare(_judge)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant(
    "ch07-spectral-norm",
    "return weight / torch.clamp(sigma / coefficient, min=1.0)",
    "return weight * coefficient / sigma",
    fails="spectral_normalize_values",
)
SET.variant(
    "ch07-spectral-norm",
    "return weight / torch.clamp(sigma / coefficient, min=1.0)",
    "return weight / torch.clamp(sigma, min=1.0)",
    fails="spectral_normalize_values",
)
SET.variant(
    "ch07-spectral-norm",
    "sigma = u @ weight @ v",
    "sigma = torch.sqrt(weight.square().sum())",
    fails="spectral_norm_values",
)
SET.variant(
    "ch07-spectral-norm",
    "        v = v / torch.linalg.vector_norm(v)\n",
    "",
    fails="spectral_norm_values",
)
SET.variant(
    "ch07-spectral-norm",
    "        v = v / torch.linalg.vector_norm(v)\n"
    "        u = weight @ v\n"
    "        u = u / torch.linalg.vector_norm(u)\n",
    "        u = weight @ v\n",
    fails="spectral_norm_values",
)
SET.variant(
    "ch07-spectral-norm", "sigma = u @ weight @ v", "sigma = u @ weight", fails="spectral_norm_values"
)
SET.variant(
    "ch07-spectral-norm",
    "        v = weight.t() @ u\n",
    "        v = weight @ u\n",
    fails="spectral_norm_values",
)
SET.variant(
    "ch07-spectral-norm",
    "        v = weight.t() @ u\n        v = v / torch.linalg.vector_norm(v)\n        u = weight @ v\n",
    "        v = weight @ u\n        v = v / torch.linalg.vector_norm(v)\n        u = weight.t() @ v\n",
    fails="spectral_norm_values",
)
SET.variant(
    "ch07-spectral-norm",
    "    u = u / torch.linalg.vector_norm(u)  # a new tensor: the caller's u is left alone\n",
    "    u /= torch.linalg.vector_norm(u)\n",
    fails="spectral_norm_warm_start",
)
SET.variant(
    "ch07-spectral-norm",
    "    if num_iterations < 1:\n",
    "    if num_iterations < 0:\n",
    fails="spectral_norm_warm_start",
)


# -- ch07-fixed-point -----------------------------------------------------------------------------

SET.check_cell("ch07-fixed-point", points=0.5)


def _contraction(dim: int, lipschitz: float, seed: int, nonlinear: bool):
    """``g`` with ``Lip(g) = lipschitz`` (linear: ``x A^T``, ``||A||_2`` exactly that) or at most that
    (``lipschitz tanh(x W1^T + b) W2^T``, unit spectral norms), and the linear map's ``A`` or None."""
    generator = _generator(seed)

    def unit_norm(m, n):
        weight = torch.randn(m, n, generator=generator, dtype=_F64)
        return weight / torch.linalg.matrix_norm(weight, ord=2)

    if not nonlinear:
        matrix = lipschitz * unit_norm(dim, dim)
        return (lambda x: x @ matrix.T), matrix
    first, second = unit_norm(2 * dim + 1, dim), unit_norm(dim, 2 * dim + 1)
    bias = torch.randn(2 * dim + 1, generator=generator, dtype=_F64)
    return (lambda x: lipschitz * torch.tanh(x @ first.T + bias) @ second.T), None


_FIXED_CASES = (
    (1, 4, 0.5, False),
    (3, 6, 0.3, False),
    (5, 2, 0.9, False),
    (2, 5, 0.6, True),
    (4, 3, 0.9, True),
    (5, 1, 0.8, True),
)


def _invert(ns, g, z, **kwargs):
    with SET.switched_off(), torch.no_grad():
        return ns.fixed_point_inverse(g, z, **kwargs)


def _case_label(dim, batch, lipschitz, nonlinear) -> str:
    kind = "nonlinear" if nonlinear else "linear"
    return f"{kind} g, D = {dim}, B = {batch}, Lip {lipschitz:g}"


@SET.test("ch07-fixed-point", points=1, requires=("fixed_point_inverse",))
def fixed_point_accuracy(ns):
    """x against the exact inverse (a linear solve, or the x that made z), tol 1e-12; z unchanged."""
    result = {}
    for index, (dim, batch, lipschitz, nonlinear) in enumerate(_FIXED_CASES):
        g, matrix = _contraction(dim, lipschitz, seed=760 + index, nonlinear=nonlinear)
        x_true = 1.5 * torch.randn(batch, dim, generator=_generator(770 + index), dtype=_F64)
        z = x_true + g(x_true)
        if matrix is not None:  # the linear solve, independent of any iteration
            x_true = torch.linalg.solve(torch.eye(dim, dtype=_F64) + matrix, z.T).T
        given = z.clone()
        output = _invert(ns, g, given, tol=1e-12, max_iter=1000)
        label = _case_label(dim, batch, lipschitz, nonlinear)
        if not isinstance(output, (tuple, list)) or len(output) != 2:
            result[f"{label}: the returned (x, num_steps)"] = describe(output)
            continue
        result[f"{label}: x vs the exact inverse"] = _pair(output[0], x_true, 1e-9, 1e-9)
        result[f"{label}: z afterwards (must be unchanged)"] = _pair(given, z, 0.0, 0.0)
    return result


fixed_point_accuracy.compare(_judge)


def _count_steps(g, z, start, tol: float, max_iter: int) -> int:
    """The steps of ``x <- z - g(x)`` from ``start`` until no entry moves by more than ``tol``."""
    x = start
    for step in range(1, max_iter + 1):
        x_next = z - g(x)
        moved = (x_next - x).abs().max().item()
        x = x_next
        if moved <= tol:
            return step
    return max_iter + 1


@SET.test("ch07-fixed-point", points=0.5, requires=("fixed_point_inverse",))
def fixed_point_steps(ns):
    """The number of steps for tolerances 1e-4 to 1e-12: the grader's count from x_0 = z (or from x_0 = 0)."""
    result = {}
    for index, (dim, batch, lipschitz, nonlinear) in enumerate(_FIXED_CASES[1:5]):
        g, _ = _contraction(dim, lipschitz, seed=780 + index, nonlinear=nonlinear)
        x = 1.5 * torch.randn(batch, dim, generator=_generator(790 + index), dtype=_F64)
        z = x + g(x)
        for tol in (1e-4, 1e-8, 1e-12):
            output = _invert(ns, g, z, tol=tol, max_iter=1000)
            label = f"{_case_label(dim, batch, lipschitz, nonlinear)}, tol {tol:g}: number of steps"
            steps = output[1] if isinstance(output, (tuple, list)) and len(output) == 2 else output
            if isinstance(steps, torch.Tensor) and steps.numel() == 1 and not steps.is_floating_point():
                steps = int(steps.item())
            allowed = sorted(
                {_count_steps(g, z, z, tol, 1000), _count_steps(g, z, torch.zeros_like(z), tol, 1000)}
            )
            result[label] = {"steps": steps, "allowed": allowed}
    return result


@fixed_point_steps.compare
def _(student, reference):
    for key in reference:
        if key not in student:
            raise AssertionError(f"missing entry {key!r}")
        steps, allowed = student[key]["steps"], student[key]["allowed"]
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise AssertionError(f"{key}: expected an int, got {describe(steps)}")
        if steps not in allowed:
            counted = (
                f"{allowed[0]} (from x_0 = z)"
                if len(allowed) == 1
                else f"one of {allowed} (from x_0 = z or 0)"
            )
            raise AssertionError(
                f"{key}: expected {counted}, got {steps}: stop at the first step that moves no entry "
                "by more than tol, and count every evaluation of g"
            )


@SET.test("ch07-fixed-point", points=0.5, requires=("fixed_point_inverse",))
def fixed_point_no_convergence(ns):
    """RuntimeError for g(x) = 1.2 x, for a contraction given too few steps and for a g returning NaN."""
    z = torch.randn(3, 2, generator=_generator(799), dtype=_F64)
    g, _ = _contraction(2, 0.9, seed=798, nonlinear=False)
    cases = {
        "g(x) = 1.2 x (not a contraction), max_iter=40": (lambda x: 1.2 * x, 40),
        "a contraction of constant 0.9, tol 1e-12, max_iter=5": (g, 5),
        "a g that returns NaN, max_iter=20": (lambda x: x * math.nan, 20),
    }
    return {
        key: _outcome(lambda g=g, steps=steps: _invert(ns, g, z.clone(), tol=1e-12, max_iter=steps))
        for key, (g, steps) in cases.items()
    }


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
SET.variant("ch07-fixed-point", "x_next = z - g(x)", "x_next = z + g(x)", fails="fixed_point_accuracy")
SET.variant("ch07-fixed-point", "x_next = z - g(x)", "x_next = g(z - x)", fails="fixed_point_accuracy")
SET.variant("ch07-fixed-point", "if moved <= tol:", "if step == max_iter:", fails="fixed_point_steps")
SET.variant("ch07-fixed-point", "return x, step", "return x, step - 1", fails="fixed_point_steps")
SET.variant("ch07-fixed-point", "return x, step", "return x, max_iter", fails="fixed_point_steps")
SET.variant(
    "ch07-fixed-point",
    "    raise RuntimeError(\n",
    "    return x, max_iter\n    raise RuntimeError(\n",
    fails="fixed_point_no_convergence",
)
SET.variant("ch07-fixed-point", "if moved <= tol:", "if not moved > tol:", fails="fixed_point_no_convergence")


# -- the estimators' maps and their exact Jacobians ----------------------------------------------


def _jacobians(fn, x: torch.Tensor) -> torch.Tensor:
    """``J_fn`` at each row of ``x``, ``(B, D, D)``, computed here by ``torch.func``."""
    return torch.func.vmap(torch.func.jacrev(lambda row: fn(row.unsqueeze(0)).squeeze(0)))(x).detach()


def _rademacher_variance(matrix: torch.Tensor) -> float:
    """``Var[v^T M v]`` for Rademacher ``v``: ``sum_{i<j} (M_ij + M_ji)^2``."""
    return float(torch.triu(matrix + matrix.T, diagonal=1).square().sum())


def _tanh_network(dim: int, hidden: int, seed: int, gain: float):
    """``gain tanh(x W1^T + b) W2^T``, a fixed random map with a full Jacobian."""
    generator = _generator(seed)
    first = torch.randn(hidden, dim, generator=generator, dtype=_F64) / math.sqrt(dim)
    second = torch.randn(dim, hidden, generator=generator, dtype=_F64) / math.sqrt(hidden)
    bias = 0.5 * torch.randn(hidden, generator=generator, dtype=_F64)
    return lambda x: gain * torch.tanh(x @ first.T + bias) @ second.T


def _elementwise(dim: int, seed: int, scale: float):
    """``a tanh(x) + b x`` per coordinate and its derivative: a diagonal Jacobian, entries below ``scale``."""
    generator = _generator(seed)
    a = scale * (1.2 * torch.rand(dim, generator=generator, dtype=_F64) - 0.6)
    b = scale * (0.8 * torch.rand(dim, generator=generator, dtype=_F64) - 0.4)
    return (lambda x: a * torch.tanh(x) + b * x), (lambda x: a / torch.cosh(x).square() + b)


# -- ch07-hutchinson ------------------------------------------------------------------------------

SET.check_cell("ch07-hutchinson", points=0.5)


def _trace(ns, f, x, num_probes):
    with SET.switched_off(*_NO_JACOBIAN):
        return ns.hutchinson_trace(f, x, num_probes)


@SET.test("ch07-hutchinson", points=0.5, requires=("hutchinson_trace",))
def hutchinson_diagonal(ns):
    """Diagonal Jacobians, where each Rademacher probe is exact: the estimates against the traces."""
    result = {}
    for index, (dim, batch) in enumerate(((1, 5), (4, 1), (4, 5), (7, 3))):
        f, derivative = _elementwise(dim, seed=800 + index, scale=2.0)
        x = 1.5 * torch.randn(batch, dim, generator=_generator(810 + index), dtype=_F64)
        for num_probes in (1, 3):
            torch.manual_seed(820 + 10 * index + num_probes)
            estimate = _trace(ns, f, x.clone(), num_probes)
            label = f"D = {dim}, B = {batch}, {num_probes} probe{'s' if num_probes > 1 else ''}"
            result[f"{label}: estimates vs the traces (exact for a diagonal Jacobian)"] = _pair(
                estimate, derivative(x).sum(dim=1)
            )
    return result


hutchinson_diagonal.compare(_judge)


@SET.test("ch07-hutchinson", points=1, requires=("hutchinson_trace",))
def hutchinson_unbiased(ns):
    """Full Jacobians, 4000 probes per sample: each mean within 5 standard errors of the exact trace."""
    result = {}
    num_probes = 4000
    matrix = 3 * torch.eye(4, dtype=_F64) + torch.randn(4, 4, generator=_generator(839), dtype=_F64)
    maps = {
        "tanh network, D = 4": (_tanh_network(4, 6, seed=830, gain=1.5), 4),
        "tanh network, D = 2": (_tanh_network(2, 5, seed=831, gain=2.0), 2),
        "linear map of trace about 12, D = 4": ((lambda x: x @ matrix.T), 4),
    }
    for index, (name, (f, dim)) in enumerate(maps.items()):
        x = 1.5 * torch.randn(3, dim, generator=_generator(840 + index), dtype=_F64)
        jacobians = _jacobians(f, x)
        torch.manual_seed(850 + index)
        estimate = _trace(ns, f, x.clone(), num_probes)
        if not isinstance(estimate, torch.Tensor) or estimate.shape != (3,):
            result[f"{name}: the estimates"] = describe(estimate)
            continue
        for b, jacobian in enumerate(jacobians):
            error = math.sqrt(_rademacher_variance(jacobian) / num_probes)
            result[f"{name}, sample {b}: mean of {num_probes} probes vs the exact trace"] = _statistic(
                estimate[b], float(torch.trace(jacobian)), error
            )
    return result


hutchinson_unbiased.compare(_judge)


@SET.test("ch07-hutchinson", points=0.5, requires=("hutchinson_trace",))
def hutchinson_variance(ns):
    """A linear map, 2000 samples, 1 and 4 probes: mean within 5 standard errors, variance Var / P."""
    result = {}
    generator = _generator(860)
    matrix = 2 * torch.eye(5, dtype=_F64) + 0.8 * torch.randn(5, 5, generator=generator, dtype=_F64)
    x = torch.randn(2000, 5, generator=generator, dtype=_F64)
    variance = _rademacher_variance(matrix)
    for num_probes in (1, 4):
        torch.manual_seed(870 + num_probes)
        estimates = _trace(ns, lambda v: v @ matrix.T, x.clone(), num_probes)
        label = f"{num_probes} probe{'s' if num_probes > 1 else ''} per sample, 2000 samples"
        if not isinstance(estimates, torch.Tensor) or estimates.shape != (2000,):
            result[f"{label}: the estimates"] = describe(estimates)
            continue
        result[f"{label}: mean vs tr A"] = _statistic(
            estimates.mean(), float(torch.trace(matrix)), math.sqrt(variance / num_probes / 2000)
        )
        result[f"{label}: variance of the estimates vs Var[v^T A v] / {num_probes}"] = _spread(
            estimates.var(), variance / num_probes
        )
    return result


hutchinson_variance.compare(_judge)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
_RADEMACHER = "v = torch.randint(0, 2, x_rep.shape, device=x.device).to(x.dtype) * 2 - 1"
SET.variant(
    "ch07-hutchinson", _RADEMACHER, "v = torch.randn(x_rep.shape, dtype=x.dtype)", fails="hutchinson_diagonal"
)
SET.variant(
    "ch07-hutchinson", _RADEMACHER, "v = torch.randn(x_rep.shape, dtype=x.dtype)", fails="hutchinson_variance"
)
SET.variant(
    "ch07-hutchinson", _RADEMACHER, "v = torch.rand(x_rep.shape, dtype=x.dtype)", fails="hutchinson_diagonal"
)
SET.variant(
    "ch07-hutchinson", _RADEMACHER, "v = torch.rand(x_rep.shape, dtype=x.dtype)", fails="hutchinson_unbiased"
)
SET.variant(
    "ch07-hutchinson",
    _RADEMACHER,
    "v = (torch.randint(0, 2, (1, x.shape[1])).to(x.dtype) * 2 - 1).expand_as(x_rep)",
    fails="hutchinson_variance",
)
SET.variant(
    "ch07-hutchinson",
    _RADEMACHER,
    "v = (torch.randint(0, 2, (num_probes, 1, x.shape[1])).to(x.dtype) * 2 - 1)"
    ".expand(num_probes, batch, x.shape[1]).reshape(x_rep.shape)",
    fails="hutchinson_variance",
)
SET.variant(
    "ch07-hutchinson",
    "estimates = (v_jacobian * v).sum(dim=1)",
    "estimates = v_jacobian.sum(dim=1)",
    fails="hutchinson_diagonal",
)
SET.variant(
    "ch07-hutchinson",
    "return estimates.detach().view(num_probes, batch).mean(dim=0)",
    "return estimates.detach().view(num_probes, batch).sum(dim=0)",
    fails="hutchinson_diagonal",
)
SET.variant(
    "ch07-hutchinson",
    "return estimates.detach().view(num_probes, batch).mean(dim=0)",
    "return estimates.detach().view(num_probes, batch).sum(dim=0)",
    fails="hutchinson_unbiased",
)
SET.variant(
    "ch07-hutchinson",
    "return estimates.detach().view(num_probes, batch).mean(dim=0)",
    "return estimates.detach().view(batch, num_probes).mean(dim=1)",
    fails="hutchinson_unbiased",
)


# -- ch07-log-det-series --------------------------------------------------------------------------

SET.check_cell("ch07-log-det-series", points=0.5)


def _coefficient(k: int) -> float:
    return (-1) ** (k + 1) / k


def _series(ns, g, x, num_terms, num_probes):
    with SET.switched_off(*_NO_JACOBIAN):
        return ns.log_det_series(g, x, num_terms, num_probes)


def _series_expectation(jacobian: torch.Tensor, num_terms: int) -> tuple[float, float, float]:
    """The truncated series ``sum_k (-1)^(k+1) tr(J^k) / k`` of one Jacobian, and the smaller and the
    larger of the estimator's variances with one probe for all terms and with a fresh probe per term
    (the exercise asks for the first; the second is as right, only slower)."""
    powers = [torch.linalg.matrix_power(jacobian, k) for k in range(1, num_terms + 1)]
    combined = sum(_coefficient(k) * power for k, power in enumerate(powers, start=1))
    shared = _rademacher_variance(combined)
    fresh = sum(_coefficient(k) ** 2 * _rademacher_variance(power) for k, power in enumerate(powers, start=1))
    return float(torch.trace(combined)), min(shared, fresh), max(shared, fresh)


@SET.test("ch07-log-det-series", points=1, requires=("log_det_series",))
def series_diagonal(ns):
    """Diagonal Jacobians diag(d), where each probe is exact: against sum_k (-1)^(k+1) sum_i d_i^k / k."""
    result = {}
    for index, (dim, batch) in enumerate(((1, 4), (3, 1), (5, 3))):
        g, derivative = _elementwise(dim, seed=900 + index, scale=1.3)
        x = 1.5 * torch.randn(batch, dim, generator=_generator(910 + index), dtype=_F64)
        slopes = derivative(x)
        for num_terms in (1, 2, 3, 6):
            expected = sum(_coefficient(k) * slopes.pow(k).sum(dim=1) for k in range(1, num_terms + 1))
            for num_probes in (1, 2):
                torch.manual_seed(920 + 100 * index + 10 * num_terms + num_probes)
                estimate = _series(ns, g, x.clone(), num_terms, num_probes)
                probes = f"{num_probes} probe{'s' if num_probes > 1 else ''}"
                label = f"D = {dim}, B = {batch}, {num_terms} terms, {probes}"
                result[f"{label}: estimates vs the truncated series"] = _pair(estimate, expected)
    return result


series_diagonal.compare(_judge)


def _residual_network(dim: int, hidden: int, seed: int, norm: float):
    """``elu(x W1^T + b1) W2^T + b2`` with both spectral norms equal to ``norm``: Lip at most norm^2."""
    generator = _generator(seed)

    def weight(m, n):
        raw = torch.randn(m, n, generator=generator, dtype=_F64)
        return norm * raw / torch.linalg.matrix_norm(raw, ord=2)

    first, second = weight(hidden, dim), weight(dim, hidden)
    bias_first = 0.5 * torch.randn(hidden, generator=generator, dtype=_F64)
    bias_second = 0.5 * torch.randn(dim, generator=generator, dtype=_F64)
    return lambda x: F.elu(x @ first.T + bias_first) @ second.T + bias_second


@SET.test("ch07-log-det-series", points=1, requires=("log_det_series",))
def series_unbiased(ns):
    """A contractive residual network, 1500 probes per sample: within 5 standard errors of the series."""
    result = {}
    num_probes = 1500
    g = _residual_network(3, 8, seed=930, norm=0.9)
    x = torch.randn(3, 3, generator=_generator(931), dtype=_F64)
    jacobians = _jacobians(g, x)
    for num_terms in (1, 2, 8):
        torch.manual_seed(940 + num_terms)
        estimate = _series(ns, g, x.clone(), num_terms, num_probes)
        if not isinstance(estimate, torch.Tensor) or estimate.shape != (3,):
            result[f"{num_terms} terms: the estimates"] = describe(estimate)
            continue
        for b, jacobian in enumerate(jacobians):
            expectation, _, variance = _series_expectation(jacobian, num_terms)
            result[f"sample {b}, {num_terms} terms: mean of {num_probes} probes vs the truncated series"] = (
                _statistic(estimate[b], expectation, math.sqrt(variance / num_probes))
            )
    return result


series_unbiased.compare(_judge)


@SET.test("ch07-log-det-series", points=0.5, requires=("log_det_series",))
def series_linear(ns):
    """A linear map of norm 0.7, 2000 samples, 5 terms, 1 probe: mean within 5 standard errors, variance."""
    generator = _generator(950)
    raw = torch.randn(4, 4, generator=generator, dtype=_F64)
    matrix = 0.7 * raw / torch.linalg.matrix_norm(raw, ord=2)
    x = torch.randn(2000, 4, generator=generator, dtype=_F64)
    expectation, smallest, variance = _series_expectation(matrix, 5)
    torch.manual_seed(951)
    estimates = _series(ns, lambda v: v @ matrix.T, x.clone(), 5, 1)
    if not isinstance(estimates, torch.Tensor) or estimates.shape != (2000,):
        return {"the estimates": describe(estimates)}
    return {
        "mean over 2000 samples vs the truncated series": _statistic(
            estimates.mean(), expectation, math.sqrt(variance / 2000)
        ),
        "variance of the 2000 estimates vs that of one probe": _spread(estimates.var(), smallest, variance),
    }


series_linear.compare(_judge)


# Wrong versions of the solution that must fail a test (tests/grading/test_variants.py).
_TERM = "estimates = estimates + (-1) ** (k + 1) / k * (w * v).sum(dim=1)"
SET.variant(
    "ch07-log-det-series",
    _TERM,
    "estimates = estimates + 1 / k * (w * v).sum(dim=1)",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    _TERM,
    "estimates = estimates + (-1) ** (k + 1) * (w * v).sum(dim=1)",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    _TERM,
    "estimates = estimates + (-1) ** (k + 1) / math.factorial(k) * (w * v).sum(dim=1)",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    _TERM,
    "estimates = estimates + (-1) ** k / k * (w * v).sum(dim=1)",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    _TERM,
    "estimates = estimates + (-1) ** k / k * (w * v).sum(dim=1)",
    fails="series_unbiased",
)
SET.variant(
    "ch07-log-det-series",
    "for k in range(1, num_terms + 1):",
    "for k in range(1, num_terms):",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    "        (w,) = torch.autograd.grad(g_x, x_rep, grad_outputs=w, retain_graph=True)  # v^T J^k\n"
    f"        {_TERM}\n",
    f"        {_TERM}\n        (w,) = torch.autograd.grad(g_x, x_rep, grad_outputs=w, retain_graph=True)\n",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    "return estimates.detach().view(num_probes, batch).mean(dim=0)",
    "return estimates.detach().view(num_probes, batch).sum(dim=0)",
    fails="series_diagonal",
)
SET.variant(
    "ch07-log-det-series",
    "v = torch.randint(0, 2, x_rep.shape, device=x.device).to(x.dtype) * 2 - 1",
    "v = torch.rand(x_rep.shape, dtype=x.dtype)",
    fails="series_unbiased",
)
SET.variant(
    "ch07-log-det-series",
    "v = torch.randint(0, 2, x_rep.shape, device=x.device).to(x.dtype) * 2 - 1",
    "v = (torch.randint(0, 2, (1, x.shape[1])).to(x.dtype) * 2 - 1).expand_as(x_rep)",
    fails="series_linear",
)
