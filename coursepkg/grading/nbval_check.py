"""Run a student's notebook with nbval and compare its check cells with the reference outputs.

The notebook is never run in place: a copy is written to a temporary folder in which

* each check cell (``# CHECK <id>`` or tag ``check:<id>``) gets the reference outputs of that id,
  taken from the solution notebook via the generated metadata (never the student's own stored
  outputs), an execution count and exactly the tag ``nbval-check-output``;
* every other cell loses its outputs, so nbval only executes it.

nbval runs in a subprocess (``python -m pytest -p nbval.plugin --nbval-lax``, no other plugins,
no rootdir conftest) under the sandbox's memory and CPU limits, with a per-cell and a
per-notebook time limit, and the sanitizer ``sanitize.cfg`` (devices, addresses, progress bars,
durations). Its JUnit XML is mapped back to check ids.

A tiny pytest plugin (:data:`PLUGIN`, written to the temporary folder) makes nbval notice a dead
kernel (``os._exit``) at once instead of after the cell time limit, judges the cells after a
timed-out one on their own, and leaves stderr out of the comparison (a warning never costs
points). The kernel runs in a subfolder holding only the copy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .notebook import Notebook
from .runner import Limits, _Drain, child_env, kill_tree

__all__ = ["SANITIZE", "CheckOutcome", "build_copy", "run_nbval", "grade_checks"]

SANITIZE = Path(__file__).resolve().with_name("sanitize.cfg")
COPY_NAME = "notebook.ipynb"
_ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*[A-Za-z]")  # JUnit XML writes ESC as "#x1B"
_STUB = re.compile(r"NotImplementedError: Exercise (\S+): replace this line")
_NBVAL_MARK = re.compile(r"^\s*#\s*(NBVAL_|PYTEST_VALIDATE_)\w*\s*$")


@dataclass
class CheckOutcome:
    passed: bool
    message: str = ""
    duration_s: float = 0.0


def build_copy(notebook: Notebook, reference_checks: dict[str, list]) -> tuple[dict, dict[int, str]]:
    """The notebook to run (as JSON data) and its check cells: nbval code-cell index -> check id."""
    cells = []
    checks: dict[int, str] = {}
    for cell in notebook.cells:
        if cell.cell_type != "code":
            cells.append({"cell_type": cell.cell_type, "metadata": {}, "source": cell.source})
            continue
        entry = {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": cell.source,
        }
        exercise = cell.exercise
        if cell.kind == "check" and exercise in reference_checks and exercise not in checks.values():
            source = "\n".join(line for line in cell.source.split("\n") if not _NBVAL_MARK.match(line))
            entry.update(
                execution_count=1,
                metadata={"tags": ["nbval-check-output"]},
                outputs=_outputs(reference_checks[exercise]),
                source=source,
            )
            checks[cell.code_index] = exercise
        cells.append(entry)
    data = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    return data, checks


def _outputs(outputs: list) -> list:
    fixed = []
    for output in outputs:
        output = dict(output)
        kind = output.get("output_type")
        if kind == "execute_result":
            output.setdefault("execution_count", 1)
            output.setdefault("metadata", {})
        elif kind == "display_data":
            output.setdefault("metadata", {})
        fixed.append(output)
    return fixed


def _last_error_line(text: str) -> str:
    text = _ANSI.sub("", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b.*", line) or re.match(
            r"^[A-Z]\w+: ", line
        ):
            return line
    return lines[-1] if lines else ""


def _printed(outputs: list) -> str:
    text = "".join(
        o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    for o in outputs:
        if o.get("output_type") in ("execute_result", "display_data"):
            text += o.get("data", {}).get("text/plain", "") + "\n"
    return text


def _sanitize(text: str) -> str:
    for regex, replace in _sanitize_patterns():
        text = re.sub(regex, replace, text)
    return text


def _sanitize_patterns() -> list[tuple[str, str]]:
    return re.findall(r"^regex: (.*)$\n^replace: (.*)$", SANITIZE.read_text(encoding="utf-8"), flags=re.M)


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


def _describe_failure(
    text: str, reference: list | None, cell_timeout: float, printed: str | None = None
) -> str:
    clean = _ANSI.sub("", text)
    stub = _STUB.search(clean)
    if stub:
        return (
            f"Exercise {stub.group(1)} still raises NotImplementedError: replace the stub with your solution"
        )
    if "Kernel dead on test start" in clean or "kernel died" in clean:
        return (
            "the notebook's Python kernel had died before this cell (os._exit(), a crash, or "
            "the memory limit in an earlier cell)"
        )
    if "Timeout of" in clean and "exceeded" in clean:
        return f"the cell did not finish within {cell_timeout:g} s (an infinite loop, or much too slow?)"
    if "Cell outputs differ" in clean:
        return _output_difference(_printed(reference or []), printed)
    if "Cell execution caused an exception" in clean:
        return f"the cell raised {_short(_last_error_line(clean), 300)}"
    return _short(_last_error_line(clean) or "failed", 300)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.strip().split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_printed(path: Path) -> dict[int, str]:
    printed: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return printed
    for line in lines:
        try:
            entry = json.loads(line)
            printed[int(entry["cell"])] = str(entry["text"])
        except (ValueError, KeyError, TypeError):
            continue
    return printed


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
        results[int(match.group(1))] = (outcome, text, seconds)
    return results


def run_nbval(notebook: Notebook, reference_checks: dict[str, list], limits: Limits):
    """Execute the notebook's copy with nbval.

    Returns ``(outcomes, notes, output)``: a :class:`CheckOutcome` per check id found in the
    notebook, notes about other cells that failed, and the tail of pytest's output.
    """
    data, checks = build_copy(notebook, reference_checks)
    outcomes: dict[str, CheckOutcome] = {}
    notes: list[str] = []
    code_cells = {c.code_index: c for c in notebook.code_cells}
    with tempfile.TemporaryDirectory(prefix="coursepkg-nbval-") as tmp:
        folder = Path(tmp)
        work = folder / "run"  # the kernel's working folder: only the copy is there
        work.mkdir()
        (work / COPY_NAME).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        junit = folder / "junit.xml"
        cpu_s = int(limits.nbval_timeout + 60)
        (folder / f"{PLUGIN_NAME}.py").write_text(PLUGIN, encoding="utf-8")
        command = [
            sys.executable,
            "-c",
            LIMITS_WRAPPER,
            str(limits.memory_mb),
            str(cpu_s),
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "nbval.plugin",
            "-p",
            PLUGIN_NAME,
            "-p",
            "no:cacheprovider",
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
            "-p",
            "no:warnings",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
            str(work / COPY_NAME),
        ]
        env_path = child_env()["PYTHONPATH"]
        recorded = folder / "outputs.jsonl"
        env = child_env(
            {
                "COURSEPKG_NBVAL_OUTPUTS": str(recorded),
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                "PYTHONPATH": os.pathsep.join([str(folder), env_path]),
                "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
                "IPYTHONDIR": str(folder / "ipython"),
            }
        )
        proc = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        drain = _Drain(proc.stdout.fileno(), limits.output_bytes)
        drain.start()
        timed_out = False
        try:
            proc.wait(timeout=limits.nbval_timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        results = _parse_junit(junit)
        printed = _read_printed(recorded)
        kill_tree(proc)
        drain.join(timeout=5)
        proc.stdout.close()
        output = drain.text()
    if not results and not timed_out:
        notes.append(f"the notebook could not be run with nbval: {_short(output[-600:], 600)}")
    for index, exercise in checks.items():
        cell = code_cells[index]
        outcome, text, seconds = results.get(index, ("missing", "", 0.0))
        if outcome == "passed":
            outcomes[exercise] = CheckOutcome(True, "", seconds)
        elif outcome == "missing":
            why = (
                f"not run: executing the notebook took longer than {limits.nbval_timeout:g} s"
                if timed_out
                else "not run: the notebook stopped before this cell"
            )
            outcomes[exercise] = CheckOutcome(False, why)
        elif outcome == "skipped":
            outcomes[exercise] = CheckOutcome(False, "not compared: an earlier cell did not finish in time")
        else:
            message = _describe_failure(
                text, reference_checks.get(exercise), limits.cell_timeout, printed.get(index)
            )
            outcomes[exercise] = CheckOutcome(False, f"{message} (cell {cell.number})", seconds)
    failing = []
    for index, (outcome, text, _) in sorted(results.items()):
        if outcome == "failed" and index not in checks and index in code_cells:
            failing.append(
                f"cell {code_cells[index].number}: {_describe_failure(text, None, limits.cell_timeout)}"
            )
    if failing:
        shown = failing[:3] + ([f"... and {len(failing) - 3} more"] if len(failing) > 3 else [])
        notes.append("when the notebook ran, " + "; ".join(shown))
    return outcomes, notes, output


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


# -- the pytest plugin used inside the nbval subprocess -----------------------------------------
# Written into the temporary folder and loaded with ``-p``: importing it must not import coursepkg
# (and torch) into pytest's process.

PLUGIN = '''"""nbval adjustments of the coursepkg grader (generated by coursepkg.grading.nbval_check)."""

import json
import os
import time


def pytest_configure(config):
    from queue import Empty

    from nbval.kernel import RunningKernel
    from nbval.plugin import IPyNbCell

    original = RunningKernel.await_reply

    def await_reply(self, msg_id, timeout=None):
        # Poll the kernel: a dead kernel (os._exit) fails its cell at once, not after the time limit.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if step <= 0:
                raise Empty
            try:
                return original(self, msg_id, timeout=step)
            except Empty:
                if not self.is_alive():
                    raise RuntimeError("the kernel died (os._exit(), a crash, or the memory limit)") from None

    RunningKernel.await_reply = await_reply
    compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        # A warning printed on stderr never costs points: compare what the cell prints on stdout.
        def keep(outputs):
            return [o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]

        same = compare(self, keep(test), keep(ref), skip_compare)
        record = os.environ.get("COURSEPKG_NBVAL_OUTPUTS")
        if record and not same:  # what the cell printed, for the grader's message only
            text = "".join(o.get("text", "") for o in test if o.get("output_type") == "stream" and o.get("name") == "stdout")
            for o in test:
                if o.get("output_type") in ("execute_result", "display_data"):
                    text += o.get("data", {}).get("text/plain", "") + "\\n"
            with open(record, "a", encoding="utf-8") as f:
                f.write(json.dumps({"cell": self.cell_num, "text": text[:20000]}) + "\\n")
        return same

    IPyNbCell.compare_outputs = compare_outputs

    def setup(self):
        # nbval marks every cell after a timed-out one "expected to fail"; the kernel was
        # interrupted and goes on, so later check cells are judged on their own.
        self.parent.timed_out = False

    IPyNbCell.setup = setup
'''
PLUGIN_NAME = "coursepkg_nbval_plugin"

# Applies the limits, then becomes pytest, without importing coursepkg (and torch) first.
LIMITS_WRAPPER = (
    "import os, sys, resource\n"
    "for name, value in (('RLIMIT_DATA', int(sys.argv[1]) << 20), ('RLIMIT_CPU', int(sys.argv[2])),\n"
    "                    ('RLIMIT_FSIZE', 1 << 30), ('RLIMIT_CORE', 0)):\n"
    "    limit = getattr(resource, name, None)\n"
    "    if limit is None:\n"
    "        continue\n"
    "    try:\n"
    "        hard = resource.getrlimit(limit)[1]\n"
    "        value = value if hard == resource.RLIM_INFINITY else min(value, hard)\n"
    "        resource.setrlimit(limit, (value, value))\n"
    "    except (ValueError, OSError):\n"
    "        pass\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)
