"""The tests of every exercise set, as pytest tests, on a notebook given with ``--notebook``.

    pytest tests/grading/test_exercise_sets.py                       # the reference solutions
    pytest tests/grading/test_exercise_sets.py --notebook my.ipynb   # a student's notebook

Each test of a spec is one pytest test (``ch01-density::density_values``), run in the grader's
sandbox and compared with the reference, and so is each notebook's top-to-bottom run under nbval
(its check cells); the points appear in the summary at the end. By default the notebooks are the
reference solutions (which must get full marks, check cells included) and the generated exercises
(which must get zero, check cells included). Each notebook is graded once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coursepkg.grade import grade_notebook, recognise
from coursepkg.grading.notebook import NotebookError, read_notebook
from coursepkg.grading.spec import available_sets, get_set

ROOT = Path(__file__).resolve().parents[2]


def _course_sets() -> list:
    sets = []
    for name in available_sets():
        exercise_set = get_set(name)
        if str(exercise_set.origin).startswith("coursepkg.grading.specs."):
            sets.append(exercise_set)
    return sets


def _targets(config) -> list[tuple[Path, str | None]]:
    """(notebook, set name) pairs: the --notebook paths, else each set's reference solution."""
    given = config.getoption("--notebook", default=[])
    if given:
        targets = []
        for path in map(Path, given):
            try:
                name = recognise(path.name, read_notebook(path)).name
            except (NotebookError, LookupError):
                name = None  # graded anyway: the report says what is wrong
            targets.append((path.resolve(), name))
        return targets
    return [(ROOT / "solutions" / s.notebook, s.name) for s in _course_sets()]


def pytest_generate_tests(metafunc):
    targets = _targets(metafunc.config)
    if "spec_test" in metafunc.fixturenames:
        params = []
        for path, name in targets:
            tests = get_set(name).tests if name else [None]
            for test in tests:
                label = f"{path.stem}::{test.exercise}::{test.name}" if test else f"{path.stem}::notebook"
                params.append(pytest.param((path, name, test.name if test else None), id=label))
        metafunc.parametrize("spec_test", params)
    if "notebook_target" in metafunc.fixturenames:
        metafunc.parametrize("notebook_target", targets, ids=[p.stem for p, _ in targets])
    if "exercise_set_name" in metafunc.fixturenames:
        names = (
            [] if metafunc.config.getoption("--notebook", default=[]) else [s.name for s in _course_sets()]
        )
        metafunc.parametrize("exercise_set_name", names)


def _require_reference(name: str | None) -> None:
    if name and not get_set(name).has_reference():
        pytest.skip(f"no generated reference for {name}: run `make exercises`")


_REPORTS: dict[Path, object] = {}


def _report(path: Path, name: str | None):
    """The grader's report of a notebook, check cells included (graded once per session)."""
    if path not in _REPORTS:
        if not path.exists():
            pytest.skip(f"{path} does not exist")
        _REPORTS[path] = grade_notebook(path, set_name=name, nbval=True)
    return _REPORTS[path]


def test_spec_test(spec_test, record_property):
    """One test of an exercise set on the notebook under test (points in the summary)."""
    path, name, test_name = spec_test
    _require_reference(name)
    report = _report(path, name)
    assert report.status == "ok", report.message
    (result,) = [t for t in report.tests if t.name == test_name]
    record_property("grading", (str(path.name), result.points, result.max_points))
    assert result.passed, f"{result.exercise} ({result.max_points:g} points): {result.message}"


def test_check_cells(notebook_target, record_property):
    """The notebook runs from top to bottom and its check cells print what the reference prints."""
    path, name = notebook_target
    _require_reference(name)
    if name is None:
        pytest.fail(f"{path.name}: not a gradable notebook of a known exercise set")
    report = _report(path, name)
    assert report.status == "ok", report.message
    results = [t for t in report.tests if t.kind == "check"]
    for result in results:
        record_property("grading", (str(path.name), result.points, result.max_points))
    assert {r.exercise for r in results} == set(get_set(name).checks()), report.errors
    failed = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, "\n".join(failed + report.errors)


def test_unmodified_exercise_gets_zero(exercise_set_name):
    """Every test and every check cell of a set fails on the generated exercise notebook (the stubs)."""
    _require_reference(exercise_set_name)
    exercise_set = get_set(exercise_set_name)
    path = ROOT / "exercises" / exercise_set.notebook
    if not path.exists():
        pytest.skip(f"exercises/{exercise_set.notebook} is not generated: run `make exercises`")
    report = _report(path, exercise_set_name)
    passing = [t.name for t in report.tests if t.passed]
    assert report.status == "ok" and not passing, f"passing on the unmodified exercise: {passing}"
    assert report.score == 0 and report.max_score == exercise_set.max_score()


def test_every_check_cell_carries_points(exercise_set_name):
    """The top-to-bottom run counts: each exercise gives part of its points to its check cell."""
    exercise_set = get_set(exercise_set_name)
    checks = exercise_set.checks()
    for exercise, points in exercise_set.exercises().items():
        assert 0 < checks.get(exercise, 0) < points, f"{exercise}: its check cell carries no points"
