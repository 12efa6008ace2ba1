"""Automatic grading of the course's exercise notebooks.

Students, in a notebook (locally or on Colab)::

    from coursepkg.grading import check
    check("ch01-density")

Instructors: ``python -m coursepkg.grade NOTEBOOK_OR_FOLDER`` (:mod:`coursepkg.grade`). Course
authors: ``python -m coursepkg.grading.generate`` writes ``exercises/`` from ``solutions/``.

Modules: :mod:`.spec` (exercise sets and their tests), :mod:`.notebook` (reading notebooks,
extracting definitions), :mod:`.generate` and :mod:`.record` (exercises from solutions),
:mod:`.sandbox` (limits, processes, framing), :mod:`.child` (the sandboxed side of the probes),
:mod:`.runner` (running the probes), :mod:`.judge` (verdicts and the messages students read),
:mod:`.nbval_check` and :mod:`.nbval_plugin` (check cells), :mod:`.report`, :mod:`.check` (the
self-check). Only the self-check is imported here; the rest loads when used.
"""

from .check import check

__all__ = ["check", "ExerciseSet", "grade_notebook", "grade_folder"]


def __getattr__(name: str):
    if name == "ExerciseSet":
        from .spec import ExerciseSet

        return ExerciseSet
    if name in ("grade_notebook", "grade_folder"):
        from .. import grade

        return getattr(grade, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
