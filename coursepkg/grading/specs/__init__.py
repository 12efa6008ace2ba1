"""The tests of each exercise set: one module ``chNN.py`` per solution notebook.

A module defines ``SET = ExerciseSet("chNN", notebook="NN_slug.ipynb", forbidden=forbid(...))``
(the package's answers, which graded cells may not use) and, per exercise, its tests with
``@SET.test("chNN-id", points=..., requires=(...), rtol=..., atol=...)``, the points of its check
cell with ``SET.check_cell("chNN-id", points=0.5)`` and its wrong variants with
``SET.variant("chNN-id", old, new, fails="test_name")`` (see :mod:`coursepkg.grading.spec`).
:mod:`.common` holds the helpers they share. The grader finds the modules by name (``ch`` and two
digits); nothing here is imported until a set is asked for.
"""
