"""Reference definitions and metadata of each exercise set (``chNN.py``, ``chNN.json``).

Generated from ``solutions/`` by ``python -m coursepkg.grading.generate`` (``make exercises``):
never edit these files by hand. They let the grader and the in-notebook self-check compare with
the reference where no ``solutions/`` folder exists (Colab, an installed package).
"""
