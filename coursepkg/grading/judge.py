"""Judging one test: the verdict on a probe's outcome, and every message a student reads about it.

The grader (:func:`coursepkg.grading.runner.grade_probes`, sandboxed) and the self-check
(:func:`coursepkg.grading.check.check`, in the notebook's process) both turn what a probe did into
an :class:`Outcome` and ask :func:`verdict` for ``(passed, message)``, so a student reads the same
words in both. The text of the stub that ``generate`` writes into exercise notebooks is defined
here too (:func:`stub_text`), with the functions that recognise it.

Nothing here imports torch at import time.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Outcome",
    "NotebookContext",
    "stub_text",
    "stub_exercise",
    "still_a_stub",
    "internal_error",
    "missing_message",
    "verdict",
    "compare",
    "explain",
    "load_value",
]

_STUB = re.compile(r"Exercise (\S+): replace this line with your solution")


def stub_text(exercise: str, hints: Iterable[str] = ()) -> str:
    """The message of the ``NotImplementedError`` that replaces a solution in an exercise notebook."""
    message = f"Exercise {exercise}: replace this line with your solution."
    hints = list(hints)
    if hints:
        message += " Hint: " + " ".join(hints)
    return message


def stub_exercise(text: str) -> str | None:
    """The exercise id of the stub text found in ``text`` (a message, a traceback), else None."""
    match = _STUB.search(text)
    return match.group(1) if match else None


def still_a_stub(exercise: str) -> str:
    return f"Exercise {exercise} still raises NotImplementedError: replace the stub with your solution"


def internal_error(error: BaseException) -> str:
    """The message of a test that the course's spec, not the submission, broke."""
    return f"internal error in the exercise set: {error}; tell the instructors"


def missing_message(name: str, available: Iterable[str], kind: str = "function or class") -> str:
    """``your notebook has no function named `f` (did you mean `g`?)``."""
    close = difflib.get_close_matches(name, list(available), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
    return f"your notebook has no {kind} named `{name}`{hint}"


@dataclass
class Outcome:
    """What one probe did, before any comparison.

    ``status`` is ok, missing, stub, error, timeout, crash, protocol, deadline or internal. An
    ``ok`` outcome carries the probe's value, as ``value`` (run in this process) or as the
    ``torch.save`` bytes ``data`` (from the sandboxed child).
    """

    status: str
    message: str = ""
    data: bytes | None = None
    duration_s: float = 0.0
    names: list[str] = field(default_factory=list)  # missing names
    available: list[str] = field(default_factory=list)  # names the notebook does define
    value: Any = None

    def load(self) -> Any:
        return self.value if self.data is None else load_value(self.data)


def load_value(data: bytes) -> Any:
    """A value sent by the child: plain tensors and containers only (``weights_only``)."""
    import io

    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


@dataclass
class NotebookContext:
    """What the grader knows of a submission, to explain a failure in its terms."""

    program: Any  # coursepkg.grading.notebook.Program
    kinds: dict[str, str] = field(default_factory=dict)  # name -> function, class or constant
    unit_errors: dict[int, str] = field(default_factory=dict)  # unit index -> why it failed to run
    memory_mb: int = 0

    def exercise_of_unit(self, index: int) -> str | None:
        return self.program.units[index].exercise if index < len(self.program.units) else None


def compare(test, student: Any, reference: Any) -> str:
    """``""`` when ``test`` accepts the student's value, else what differs (in the grader's process)."""
    try:
        test.check(student, reference)
    except AssertionError as error:
        return str(error) or "your result differs from the reference"
    except Exception as error:
        return f"your result could not be compared with the reference ({type(error).__name__}: {error})"
    return ""


def verdict(
    test, student: Outcome, reference: Outcome | None, context: NotebookContext | None = None
) -> tuple[bool, str]:
    """``(passed, message)`` for one test, from the student's and the reference's outcomes."""
    if student.status != "ok":
        return False, explain(test, student, context)
    if reference is None or reference.status != "ok":
        detail = reference.message if reference is not None else "it did not run"
        return False, (
            f"internal error: the reference solution fails this test ({detail}); tell the instructors"
        )
    try:
        value = student.load()
    except Exception as error:
        return False, f"your code returned a value the grader cannot read ({type(error).__name__})"
    message = compare(test, value, reference.load())
    return not message, message


def explain(test, outcome: Outcome, context: NotebookContext | None = None) -> str:
    """Why a probe that did not return a value failed, in the student's terms."""
    status = outcome.status
    program = context.program if context else None
    if status == "ok":
        return ""
    if status == "stub" or (status == "missing" and program and test.exercise in program.stubs):
        return still_a_stub(stub_exercise(outcome.message) or test.exercise)
    if status == "missing":
        return _missing(test, outcome, context)
    if status == "error":
        return _error(test, outcome, program)
    if status == "timeout":
        return f"{outcome.message} (an infinite loop, or much too slow?)"
    if status == "crash":
        why = f" ({outcome.message})" if outcome.message else ""
        memory = f" {context.memory_mb} MB" if context and context.memory_mb else ""
        return (
            "the Python process running your code ended during this test"
            f"{why}: os._exit(), a crash, or more memory than the{memory} allowed"
        )
    return outcome.message or status


def _missing(test, outcome: Outcome, context: NotebookContext | None) -> str:
    kinds = context.kinds if context else {}
    program = context.program if context else None
    parts = []
    for name in outcome.names or list(test.requires):
        kind = kinds.get(name, "")
        text = missing_message(name, outcome.available, kind if kind else "function or class")
        if program and name in program.defined_elsewhere:
            text += (
                f"; it is defined in cell {program.defined_elsewhere[name]}, which is not a graded "
                f"cell: define it in the cell that starts with `# EXERCISE {test.exercise}`"
            )
        parts.append(text)
    if program:
        if test.exercise not in program.exercise_cells:
            parts.append(
                f"the cell that starts with `# EXERCISE {test.exercise}` is missing from your notebook"
            )
        for index, error in context.unit_errors.items():
            if context.exercise_of_unit(index) == test.exercise:
                parts.append(f"running that cell's definitions failed: {error}")
    return "; ".join(parts)


def _error(test, outcome: Outcome, program) -> str:
    message = f"your code raised {outcome.message}"
    undefined = re.match(r"NameError: name '(\w+)' is not defined", outcome.message)
    if undefined:
        name = undefined.group(1)
        if name in test.exercise_set.forbidden_imports:
            message += f"; `{name}` comes from coursepkg, which this exercise set does not allow"
        elif program and name in program.defined_elsewhere:
            message += (
                f"; `{name}` is defined in cell {program.defined_elsewhere[name]}, which is not a graded "
                "cell: the grader only runs the graded cells, so move it into one"
            )
        elif program:
            close = difflib.get_close_matches(name, sorted(program.graded_names), n=2, cutoff=0.6)
            if close:
                message += f" (did you mean {', '.join(f'`{c}`' for c in close)}?)"
    return message
