"""Run a student's notebook from top to bottom with nbval and judge its check cells.

The notebook is never run in place: a copy is written to a temporary folder in which

* each check cell (``# CHECK <id>`` or tag ``check:<id>``) gets the reference outputs of that id,
  taken from the solution notebook via the generated metadata (never the student's own stored
  outputs), an execution count and exactly the tag ``nbval-check-output``;
* every other cell loses its outputs and tags, so nbval only executes it, and every cell loses
  its ``# NBVAL_...`` markers: the grader, not the notebook, decides what runs and what is
  compared.

nbval runs in the sandbox of :mod:`coursepkg.grading.sandbox` (``python -m pytest -p
nbval.plugin --nbval-lax``, no other plugins, no rootdir conftest) with a per-cell and a
per-notebook time limit, the sanitizer ``sanitize.cfg`` (devices, addresses, progress bars,
durations) and the plugin :mod:`coursepkg.grading.nbval_plugin`, copied next to the notebook.
The run is *Restart & Run All*: a cell that raises (in a check cell, or with the
``NotImplementedError`` of an exercise left undone, only that cell fails), runs past its time
limit or kills the kernel stops it, and the check cells after it get no points. A check cell
earns its points when it runs and prints what the reference prints. Its JUnit XML is mapped back
to check ids; the kernel runs in a subfolder holding only the copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from . import nbval_plugin
from .judge import still_a_stub, stub_exercise
from .notebook import Cell, Notebook
from .sandbox import Limits, child_env, finish, limited_command, spawn

__all__ = ["SANITIZE", "CheckOutcome", "NbvalRun", "build_copy", "run_nbval", "judge_checks", "grade_checks"]

SANITIZE = Path(__file__).resolve().with_name("sanitize.cfg")
PLUGIN_NAME = "coursepkg_nbval_plugin"
COPY_NAME = "notebook.ipynb"
_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*[A-Za-z]")  # JUnit XML writes ESC as "#x1B"
_NBVAL_MARK = re.compile(r"^\s*#\s*(NBVAL_|PYTEST_VALIDATE_)\w*\s*$")
_NOT_RUN = "the check cells after it did not run"


@dataclass
class CheckOutcome:
    passed: bool
    message: str = ""
    duration_s: float = 0.0


@dataclass
class NbvalRun:
    """What one nbval run of a notebook's copy left behind."""

    results: dict[int, tuple[str, str, float]]  # code-cell index -> (outcome, failure text, seconds)
    printed: dict[int, str]  # check cell index -> what it printed, when it differs from the reference
    stopped_at: int | None  # code-cell index of the cell that stopped the run
    timed_out: bool  # the whole run went past the notebook's time limit
    output: str  # the tail of pytest's output


def build_copy(notebook: Notebook, reference_checks: dict[str, list]) -> tuple[dict, dict[int, str]]:
    """The notebook to run (as JSON data) and its check cells: nbval code-cell index -> check id."""
    import nbformat
    from nbformat import v4

    cells = []
    checks: dict[int, str] = {}
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cells.append(v4.new_markdown_cell(cell.source))
            continue
        if cell.cell_type != "code":
            cells.append(v4.new_raw_cell(cell.source))
            continue
        source = "\n".join(line for line in cell.source.split("\n") if not _NBVAL_MARK.match(line))
        entry = v4.new_code_cell(source)
        exercise = cell.exercise
        if cell.kind == "check" and exercise in reference_checks and exercise not in checks.values():
            entry.execution_count = 1
            entry.metadata["tags"] = [nbval_plugin.CHECK_TAG]
            entry.outputs = [_reference_output(output) for output in reference_checks[exercise]]
            checks[cell.code_index] = exercise
        cells.append(entry)
    node = v4.new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    return json.loads(nbformat.writes(node)), checks


def _reference_output(output: dict):
    from nbformat import from_dict

    output = dict(output)
    kind = output.get("output_type")
    if kind == "execute_result":
        output.setdefault("execution_count", 1)
        output.setdefault("metadata", {})
    elif kind == "display_data":
        output.setdefault("metadata", {})
    return from_dict(output)


# -- reading nbval's results --------------------------------------------------------------------


def _parse_junit(path: Path) -> dict[int, tuple[str, str, float]]:
    """nbval code-cell index -> (outcome, failure text, seconds)."""
    results: dict[int, tuple[str, str, float]] = {}
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return results
    for case in root.iter("testcase"):
        match = re.search(r"Cell (\d+)", case.get("name", ""))
        if not match:
            continue
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                text += (child.get("message") or "") + "\n" + (child.text or "")
            elif child.tag == "skipped":
                outcome = "skipped"
        try:
            seconds = float(case.get("time", 0))
        except ValueError:
            seconds = 0.0
        results[int(match.group(1))] = (outcome, _ANSI.sub("", text), seconds)
    return results


def _read_record(path: Path) -> tuple[dict[int, str], int | None]:
    """What the plugin recorded: check cell index -> what it printed, and where the run stopped."""
    printed: dict[int, str] = {}
    stopped = None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return printed, stopped
    for line in lines:
        try:
            entry = json.loads(line)
            if entry.get("stopped_run"):
                stopped = int(entry["cell"])
            else:
                printed[int(entry["cell"])] = str(entry["printed"])
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return printed, stopped


# -- messages -----------------------------------------------------------------------------------


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*", line) or re.match(
            r"^[A-Z]\w+: ", line
        ):
            return line
    return lines[-1] if lines else ""


def _sanitize(text: str) -> str:
    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns(SANITIZE.read_text(encoding="utf-8")):
        text = re.sub(regex, replace, text)
    return text


def _output_difference(expected: str, printed: str | None) -> str:
    """Which line of a check cell's output differs from the reference, in words."""
    if printed is None:
        return "the check cell printed something else than the reference"
    want, got = _sanitize(expected).splitlines(), _sanitize(printed).splitlines()
    raw_want, raw_got = expected.splitlines(), printed.splitlines()
    if len(raw_want) != len(want) or len(raw_got) != len(got):  # the sanitizer joined lines
        raw_want, raw_got = want, got
    for i, (a, b) in enumerate(zip(want, got, strict=False)):
        if a != b:
            return (
                f"line {i + 1} of the check cell's output is `{_short(raw_got[i])}` where the "
                f"reference prints `{_short(raw_want[i])}`"
            )
    if len(got) < len(want):
        return f"the check cell printed {len(got)} lines where the reference prints {len(want)}; the next is `{_short(raw_want[len(got)])}`"
    if len(got) > len(want):
        return f"the check cell printed {len(got)} lines where the reference prints {len(want)}; the extra one is `{_short(raw_got[len(want)])}`"
    return "the check cell's output differs from the reference"


def _what_happened(text: str, cell_timeout: float) -> str:
    """What a failing cell did, as a verb phrase: ``raised ValueError: ...``, ``did not finish ...``."""
    if "Kernel dead on test start" in text or "kernel died" in text:
        return "killed the notebook's Python kernel (os._exit(), a crash, or the memory limit)"
    if "Timeout of" in text and "exceeded" in text:
        return f"did not finish within {cell_timeout:g} s (an infinite loop, or much too slow?)"
    error = _last_error_line(text) or "failed"
    return (
        f"raised {_short(error, 300)}" if "Cell execution caused an exception" in text else _short(error, 300)
    )


def _check_failure(text: str, reference: list, cell_timeout: float, printed: str | None) -> str:
    """Why a check cell that ran did not earn its points."""
    exercise = stub_exercise(text) if "NotImplementedError" in text else None
    if exercise:
        return still_a_stub(exercise)
    if "Cell outputs differ" in text:
        return _output_difference(nbval_plugin.printed_text(reference), printed)
    return f"the cell {_what_happened(text, cell_timeout)}"


def _cell_label(cell: Cell) -> str:
    first = next((line.strip() for line in cell.source.splitlines() if line.strip()), "")
    return f"cell {cell.number} (`{_short(first, 60)}`)"


# -- running ------------------------------------------------------------------------------------


def _pytest_command(folder: Path, notebook: Path, junit: Path, limits: Limits) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "nbval.plugin",
        "-p",
        PLUGIN_NAME,
        "-p",
        "no:cacheprovider",
        "-p",
        "no:warnings",
        "-c",
        str(folder / "pytest.ini"),
        "--rootdir",
        str(folder),
        "--nbval-lax",
        "--nbval-current-env",
        "--nbval-sanitize-with",
        str(SANITIZE),
        "--nbval-cell-timeout",
        str(int(limits.cell_timeout)),
        "--nbval-kernel-startup-timeout",
        str(int(limits.startup_timeout)),
        "-q",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
        str(notebook),
    ]


def run_nbval(notebook: Notebook, reference_checks: dict[str, list], limits: Limits):
    """Execute the notebook's copy with nbval.

    Returns ``(outcomes, notes, output)``: a :class:`CheckOutcome` per check id found in the
    notebook, notes about other cells that failed, and the tail of pytest's output.
    """
    data, checks = build_copy(notebook, reference_checks)
    with tempfile.TemporaryDirectory(prefix="coursepkg-nbval-") as tmp:
        folder = Path(tmp)
        work = folder / "run"  # the kernel's working folder: only the copy is there
        work.mkdir()
        (work / COPY_NAME).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        shutil.copyfile(nbval_plugin.__file__, folder / f"{PLUGIN_NAME}.py")
        junit = folder / "junit.xml"
        record = folder / "record.jsonl"
        env = child_env(
            {
                nbval_plugin.RECORD_VARIABLE: str(record),
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                "PYTHONPATH": os.pathsep.join([str(folder), child_env()["PYTHONPATH"]]),
                "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
                "IPYTHONDIR": str(folder / "ipython"),
            }
        )
        command = limited_command(
            _pytest_command(folder, work / COPY_NAME, junit, limits),
            limits.memory_mb,
            limits.nbval_timeout + 60,
        )
        proc, drain = spawn(command, cwd=work, env=env, output_bytes=limits.output_bytes)
        timed_out = False
        try:
            proc.wait(timeout=limits.nbval_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        output = finish(proc, drain)
        results = _parse_junit(junit)
        printed, stopped = _read_record(record)
    run = NbvalRun(results, printed, stopped, timed_out, output)
    outcomes, notes = judge_checks(notebook, checks, reference_checks, run, limits)
    return outcomes, notes, output


def judge_checks(
    notebook: Notebook,
    checks: dict[int, str],
    reference_checks: dict[str, list],
    run: NbvalRun,
    limits: Limits,
) -> tuple[dict[str, CheckOutcome], list[str]]:
    """A :class:`CheckOutcome` per check id of ``checks`` (code-cell index -> id), and notes."""
    code_cells = {c.code_index: c for c in notebook.code_cells}
    results, printed, stopped, timed_out = run.results, run.printed, run.stopped_at, run.timed_out
    outcomes: dict[str, CheckOutcome] = {}
    notes: list[str] = []
    if not results and not timed_out:
        notes.append(f"the notebook could not be run with nbval: {_short(run.output[-600:], 600)}")
    stop = ""
    if stopped is not None and stopped in code_cells:
        what = _what_happened(results.get(stopped, ("", "", 0.0))[1], limits.cell_timeout)
        stop = f"{_cell_label(code_cells[stopped])} {what}"
        later = any(index > stopped for index in checks)
        notes.append(f"when the notebook ran from top to bottom, {stop}" + (f"; {_NOT_RUN}" if later else ""))
    for index, exercise in checks.items():
        cell = code_cells[index]
        outcome, text, seconds = results.get(index, ("missing", "", 0.0))
        if outcome == "passed":
            outcomes[exercise] = CheckOutcome(True, "", seconds)
        elif outcome == "skipped" and stop:
            outcomes[exercise] = CheckOutcome(False, f"not run: {stop}; {_NOT_RUN}")
        elif outcome in ("missing", "skipped"):
            why = (
                f"not run: executing the notebook took longer than {limits.nbval_timeout:g} s"
                if timed_out
                else "not run: the notebook stopped before this cell"
            )
            outcomes[exercise] = CheckOutcome(False, why)
        else:
            message = _check_failure(
                text, reference_checks[exercise], limits.cell_timeout, printed.get(index)
            )
            outcomes[exercise] = CheckOutcome(False, f"{message} (cell {cell.number})", seconds)
    failing = [
        f"cell {code_cells[index].number}: {_what_happened(text, limits.cell_timeout)}"
        for index, (outcome, text, _) in sorted(results.items())
        if outcome == "failed" and index not in checks and index in code_cells and index != stopped
    ]
    if failing:
        shown = failing[:3] + ([f"... and {len(failing) - 3} more"] if len(failing) > 3 else [])
        notes.append("when the notebook ran, " + "; ".join(shown))
    return outcomes, notes


def grade_checks(notebook: Notebook, exercise_set, limits: Limits):
    """One :class:`~coursepkg.grading.report.TestResult` per check cell of the set, and notes."""
    from .report import TestResult

    reference_checks = exercise_set.metadata().get("checks", {})
    points = exercise_set.checks()
    if not reference_checks:
        return [], [], ""
    outcomes, notes, output = run_nbval(notebook, reference_checks, limits)
    results = []
    for exercise, max_points in points.items():
        outcome = outcomes.get(exercise)
        if outcome is None:
            outcome = CheckOutcome(
                False,
                f"the check cell `# CHECK {exercise}` is missing from your notebook: copy it back "
                "from the exercise notebook",
            )
        results.append(
            TestResult(
                name=f"check {exercise}",
                exercise=exercise,
                points=float(max_points) if outcome.passed else 0.0,
                max_points=float(max_points),
                passed=outcome.passed,
                message=outcome.message,
                duration_s=round(outcome.duration_s, 3),
                kind="check",
            )
        )
    return results, notes, output
