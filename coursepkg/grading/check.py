"""The self-check a student runs inside a notebook (also on Colab, where no notebook file exists).

    from coursepkg.grading import check
    check("ch01-density")   # one exercise
    check("ch01")           # every exercise of a set
    check()                 # every exercise of the set this notebook's definitions belong to

The exercise's tests run in the notebook's own process on the objects it has defined (the globals
of ``__main__``), are compared with the packaged reference solution, and a verdict per test is
printed with its points, in the grader's words (:mod:`coursepkg.grading.judge`). The random state of the notebook is left as it was. Unlike the grader,
nothing is sandboxed: an infinite loop is stopped with the kernel's interrupt button. Check cells
are compared only when the whole notebook is graded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..runtime import fork_rng
from .judge import Outcome, internal_error, stub_exercise, verdict

__all__ = ["check", "CheckSummary"]

_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
_REFERENCE: dict[tuple, tuple[dict, dict[str, Outcome]]] = {}


@dataclass
class CheckSummary:
    """What :func:`check` found: ``score`` and ``max_score`` over the tests it ran."""

    target: str
    results: list = field(default_factory=list)  # report.TestResult

    @property
    def score(self) -> float:
        return sum(r.points for r in self.results)

    @property
    def max_score(self) -> float:
        return sum(r.max_points for r in self.results)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def __repr__(self) -> str:
        return f"<check {self.target}: {self.score:g} / {self.max_score:g} points>"

    def _ipython_display_(self) -> None:
        """The verdict is already printed; show nothing more in a notebook."""


def _is_student_frame(filename: str) -> bool:
    return not (
        filename.startswith(_PACKAGE_DIR)
        or "site-packages" in filename
        or "dist-packages" in filename
        or filename.startswith("<frozen")
    )


def _reference(exercise_set) -> tuple[dict, dict[str, Outcome]]:
    """The reference namespace of a set and a cache of its probe values."""
    key = (exercise_set.name, str(exercise_set.reference_path))
    if key not in _REFERENCE:
        source = exercise_set.reference_source()
        namespace: dict[str, Any] = {"__name__": f"coursepkg_reference_{exercise_set.name}"}
        with fork_rng():
            exec(compile(source, f"<reference {exercise_set.name}>", "exec"), namespace)
        _REFERENCE[key] = (namespace, {})
    return _REFERENCE[key]


def _run(test, namespace: dict) -> Outcome:
    """What one probe does on ``namespace``, run in this process with the random state kept."""
    from .child import format_exception, plain
    from .spec import MissingName, Namespace, SpecError

    available = sorted(n for n in namespace if not n.startswith("_"))
    missing = [n for n in test.requires if n not in namespace]
    if missing:
        return Outcome("missing", names=missing, available=available)
    try:
        with fork_rng():
            return Outcome("ok", value=plain(test(Namespace(namespace))))
    except KeyboardInterrupt:
        raise
    except MissingName as error:
        return Outcome("missing", names=[error.name_missing], available=available)
    except SpecError as error:
        return Outcome("internal", internal_error(error))
    except BaseException as error:  # SystemExit included: the student's code may raise anything
        message = format_exception(error, 0, _is_student_frame)
        stub = isinstance(error, NotImplementedError) and stub_exercise(str(error)) is not None
        return Outcome("stub" if stub else "error", message)


def _targets(exercise: str | None, namespace: dict):
    from .spec import EXERCISE_ID, available_sets, get_set, set_for_exercise

    if exercise is None:
        best, best_count = None, 0
        for name in available_sets():
            try:
                candidate = get_set(name)
            except Exception:
                continue
            if not candidate.has_reference():
                continue
            required = {n for t in candidate.tests for n in t.requires}
            count = sum(n in namespace for n in required)
            if count > best_count:
                best, best_count = candidate, count
        if best is None:
            raise ValueError(
                "check() cannot tell which exercises this notebook holds: call it with an exercise id, "
                'e.g. check("ch01-density") (the id is in the first line of the exercise\'s cell)'
            )
        return best, best.tests, best.name
    exercise_set = set_for_exercise(exercise)
    if not EXERCISE_ID.match(exercise):
        return exercise_set, exercise_set.tests, exercise
    tests = exercise_set.tests_of(exercise)
    if not tests:
        known = ", ".join(exercise_set.exercises())
        raise ValueError(f"no exercise {exercise!r} in set {exercise_set.name} (its exercises: {known})")
    return exercise_set, tests, exercise


def check(exercise: str | None = None, *, namespace: dict | None = None, quiet: bool = False) -> CheckSummary:
    """Run the tests of ``exercise`` on this notebook's objects and print a verdict (see module doc)."""
    from .report import TestResult, fmt_points

    if namespace is None:
        namespace = vars(sys.modules["__main__"])
    exercise_set, tests, target = _targets(exercise, namespace)
    reference_ns, reference_values = _reference(exercise_set)
    summary = CheckSummary(target)
    lines: list[str] = []
    exercises = list(dict.fromkeys(t.exercise for t in tests))
    all_points = exercise_set.exercises()
    for ex in exercises:
        lines.append(f"Exercise {ex} ({fmt_points(all_points.get(ex, 0))} points)")
        for test in (t for t in tests if t.exercise == ex):
            outcome = _run(test, namespace)
            reference = None
            if outcome.status == "ok":
                if test.name not in reference_values:
                    reference_values[test.name] = _run(test, reference_ns)
                reference = reference_values[test.name]
            passed, message = verdict(test, outcome, reference)
            result = TestResult(
                name=test.name,
                exercise=ex,
                points=float(test.points) if passed else 0.0,
                max_points=float(test.points),
                passed=passed,
                message=message,
            )
            summary.results.append(result)
            mark = "✓" if passed else "✗"
            points = f"{fmt_points(result.points)}/{fmt_points(result.max_points)}"
            lines.append(f"  {mark} {test.name}  {points}" + (f"  {message}" if message else ""))
        check_points = exercise_set.check_points.get(ex, 0)
        if check_points:
            lines.append(
                f"  · check cell  {fmt_points(check_points)} point(s), earned when the whole notebook "
                "runs from top to bottom and the cell prints what the reference prints"
            )
        for name in exercise_set.forbidden_imports:
            value = namespace.get(name)
            if value is not None and str(getattr(value, "__module__", "")).startswith("coursepkg"):
                lines.append(
                    f"  ! `{name}` comes from coursepkg: the grader gives no points to an exercise whose "
                    "cell imports it"
                )
    if summary.passed:
        lines.append(
            f"{target}: all tests pass ({fmt_points(summary.score)} / {fmt_points(summary.max_score)} points)."
        )
    else:
        lines.append(
            f"{target}: {fmt_points(summary.score)} / {fmt_points(summary.max_score)} points. Fix the tests "
            f'marked ✗ and run check("{target}") again.'
        )
    if not quiet:
        print("\n".join(lines))
    return summary
