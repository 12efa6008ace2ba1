"""Wrong solutions lose points: the variants that each spec module declares with ``SET.variant``.

A variant is a textual edit of one graded cell of ``solutions/NN_*.ipynb``: a flipped sign of a
log-determinant, a missing term, an off-by-one bin index, a summed axis, a forced dtype, a
transposed Jacobian... It must fail the test it names. The variants only show that the specs
catch mistakes, so they are judged in this process, as the in-notebook self-check does
(:func:`coursepkg.grading.check.check` on the edited notebook's definitions, with the same
verdicts and messages as the grader); the sandbox has its own tests (test_machinery.py,
test_hostile.py, and the grading of every solution and exercise in test_exercise_sets.py).

The variants are collected from every exercise set of ``coursepkg/grading/specs``: a new
chapter's variants need no edit here.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from coursepkg.grading import check
from coursepkg.grading.notebook import compile_unit, extract_program, parse_notebook
from coursepkg.grading.spec import available_sets, get_set

ROOT = Path(__file__).resolve().parents[2]


def _course_sets() -> list:
    return [
        exercise_set
        for exercise_set in map(get_set, available_sets())
        if str(exercise_set.origin).startswith("coursepkg.grading.specs.")
    ]


VARIANTS = [(exercise_set, variant) for exercise_set in _course_sets() for variant in exercise_set.variants]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread, as in the grader's sandbox: small models train several times faster on a
    busy machine than with a thread per core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _label(variant) -> str:
    first = variant.new.strip().splitlines()[0] if variant.new.strip() else "(deleted)"
    return f"{variant.exercise}:{variant.fails}:{first[:40]}"


def _graded_cells(notebook: dict) -> dict[str, dict]:
    cells = {}
    for cell in notebook["cells"]:
        for tag in cell.get("metadata", {}).get("tags", []):
            if tag.startswith("exercise:"):
                cells[tag.split(":", 1)[1]] = cell
    return cells


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _solution(exercise_set) -> dict:
    path = ROOT / "solutions" / exercise_set.notebook
    if not path.exists():
        pytest.skip(f"solutions/{exercise_set.notebook} does not exist")
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_set_declares_variants():
    for exercise_set in _course_sets():
        without = set(exercise_set.exercises()) - {v.exercise for v in exercise_set.variants}
        assert not without, f"{exercise_set.name}: no wrong variant of {sorted(without)}"


def test_variants_apply():
    """Each variant's text occurs exactly once in its graded cell of the solution."""
    for exercise_set in _course_sets():
        cells = _graded_cells(_solution(exercise_set))
        for variant in exercise_set.variants:
            assert variant.exercise in cells, f"{exercise_set.notebook} has no graded cell {variant.exercise}"
            count = _source(cells[variant.exercise]).count(variant.old)
            assert count == 1, f"{variant.old!r} occurs {count} times in the cell of {variant.exercise}"


def _definitions(exercise_set, notebook: dict) -> dict:
    """What the grader runs of a notebook (its graded definitions and imports), run here."""
    parsed = parse_notebook(json.dumps(notebook), exercise_set.notebook)
    program = extract_program(parsed, exercise_set.forbidden_imports, label=exercise_set.notebook)
    assert not program.problems, program.problems
    namespace: dict = {"__name__": "variant", "__builtins__": builtins}
    for unit in program.units:
        exec(compile_unit(unit), namespace)
    return namespace


@pytest.mark.parametrize(("exercise_set", "variant"), VARIANTS, ids=[_label(v) for _, v in VARIANTS])
def test_variant_loses_points(exercise_set, variant):
    notebook = _solution(exercise_set)
    cell = _graded_cells(notebook)[variant.exercise]
    cell["source"] = _source(cell).replace(variant.old, variant.new)
    summary = check(variant.exercise, namespace=_definitions(exercise_set, notebook), quiet=True)
    results = {r.name: r for r in summary.results}
    assert set(results) == {t.name for t in exercise_set.tests_of(variant.exercise)}
    for result in results.values():
        assert "internal error" not in result.message, result.message
    failed = {name: r.message for name, r in results.items() if not r.passed}
    assert variant.fails in failed, (
        f"the variant {variant.new!r} of {variant.exercise} passes {variant.fails}; "
        f"failed: {sorted(failed) or 'none'}"
    )
    assert summary.score < summary.max_score
