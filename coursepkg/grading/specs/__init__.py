"""The tests of each exercise set: one module ``chNN.py`` per solution notebook.

A module defines ``SET = ExerciseSet("chNN", notebook="NN_slug.ipynb", forbidden_imports=(...))``
and its tests with ``@SET.test("chNN-id", points=..., requires=(...))`` (see
:mod:`coursepkg.grading.spec`); ``SET.check_cell("chNN-id", points=...)`` gives points to a check
cell. The grader finds the modules by name (``ch`` and two digits); nothing here is imported
until a set is asked for.
"""
