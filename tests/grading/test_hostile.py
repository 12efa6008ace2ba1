"""A folder of mixed submissions, good to hostile, graded in bounded time without harm.

Every file gets one CSV row with a score and a clear message; the submissions' bytes and their
folder listing are unchanged afterwards. Graded without nbval (the tests are the point here; the
check cells have their own test in test_machinery.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

GOOD = 4  # points of the toy set without its check cell

# The infinite loop in a function waits this long. A correct answer must finish well within it
# even on a machine whose two cores are shared with a book build and other jobs: 3 s was
# measured to be too short there (correct tests timed out at a load average of 5).
HOSTILE_TIMEOUT = 10


def _submissions(toy, folder: Path, edit_notebook) -> dict[str, tuple[str, float | None, str]]:
    """Write the submissions; file -> (status, expected score or None for "less than full", message)."""
    sol, ex = toy.solution, toy.exercise
    expected: dict[str, tuple[str, float | None, str]] = {}

    def add(name, status, score, message, path=None):
        expected[name] = (status, score, message)
        return folder / name

    edit_notebook(sol, add("alice_good.ipynb", "ok", GOOD, "all tests pass"))
    edit_notebook(
        sol,
        add(
            "bob_partial.ipynb",
            "ok",
            1,
            "3 of 4 tests failed: affine_values, affine_properties, constant_value",
        ),
        {
            "ch99-affine": [("x.new_zeros(x.shape[0]) - self", "x.new_zeros(x.shape[0]) + self")],
            "ch99-constant": [("math.log(2 * math.pi)", "math.log(math.pi)")],
        },
    )
    edit_notebook(ex, add("carol_unmodified.ipynb", "ok", 0, "failed"))
    add("ch99_invalid_json.ipynb", "error", 0, "not valid JSON").write_text(
        '{"cells": [{"cell_type": "code", '
    )
    add("ch99_text_renamed.ipynb", "error", 0, "not valid JSON").write_text("My answers:\n1. the log-det\n")
    add("ch99_no_cells.ipynb", "error", 0, "no cells").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    add("ch99_empty.ipynb", "error", 0, "empty").write_bytes(b"")
    forbidden = "from coursepkg.layers import ElementwiseAffine\n\n\nclass ScaleShift(nn.Module):"
    edit_notebook(
        sol,
        add("syntax_error_and_forbidden_import.ipynb", "ok", 1, "failed"),
        {
            "ch99-logpdf": [("def scaled_logpdf(x, scale):", "def scaled_logpdf(x, scale)")],
            "ch99-affine": [("class ScaleShift(nn.Module):", forbidden)],
        },
    )
    edit_notebook(
        sol,
        add("loop_top_level.ipynb", "ok", GOOD, "all tests pass"),
        {"ch99-constant": lambda s: s + "\nwhile True:\n    pass\n"},
        append=["while True:\n    pass\n"],
    )
    edit_notebook(
        sol,
        add("loop_in_function.ipynb", "ok", 3, "failed"),
        {"ch99-logpdf": [("    z = x / scale\n", "    while True:\n        pass\n")]},
    )
    edit_notebook(
        sol,
        add("os_exit_and_nan.ipynb", "ok", 1, "failed"),
        {
            2: [("import math\n", "import math\nimport os\n")],
            "ch99-logpdf": [("    z = x / scale\n", "    z = x / scale * float('nan')\n")],
            "ch99-affine": [
                ("    def forward(self, x):\n", "    def forward(self, x):\n        os._exit(0)\n")
            ],
        },
        append=["os._exit(0)\n"],
    )
    noisy = (
        "    print('x' * 50_000_000)\n"
        "    import warnings\n"
        "    warnings.warn('a warning on stderr')\n"
        "    print('to stderr', file=sys.stderr)\n"
        "    z = x / scale\n"
    )
    edit_notebook(
        sol,
        add("flood_and_stderr.ipynb", "ok", GOOD, "all tests pass"),
        {"ch99-logpdf": [("    z = x / scale\n", noisy)]},
        append=["print('y' * 50_000_000)\n"],
    )
    edit_notebook(
        sol,
        add("misnamed.ipynb", "ok", 3, "failed"),
        {"ch99-logpdf": [("def scaled_logpdf(", "def scaled_log_pdf(")]},
    )
    readonly = edit_notebook(sol, add("readonly_dir/dave.ipynb", "ok", GOOD, "all tests pass"))
    readonly.chmod(0o444)
    (folder / "readonly_dir").chmod(0o555)
    patch = (
        "    torch.allclose = lambda *a, **k: True\n"
        "    torch.equal = lambda *a, **k: True\n"
        "    torch.testing.assert_close = lambda *a, **k: None\n"
        "    import numpy\n"
        "    numpy.allclose = lambda *a, **k: True\n"
        "    z = x / scale\n"
        "    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)\n"
    )
    edit_notebook(
        sol,
        add("monkeypatch.ipynb", "ok", 3, "failed"),
        {"ch99-logpdf": [("    z = x / scale\n", patch)]},
        append=["torch.allclose = lambda *a, **k: True\nimport coursepkg.testing\n"],
    )
    add("notes.txt", "error", 0, "not a notebook").write_text("please grade kindly\n")
    edit_notebook(
        sol,
        add("memory_hog.ipynb", "ok", 3, "failed"),
        {"ch99-logpdf": [("    z = x / scale\n", "    big = torch.ones(10**11)\n    z = x / scale\n")]},
    )
    edit_notebook(sol, add("homework.ipynb", "error", 0, "cannot tell which exercise set"), metadata={})
    return expected


def _snapshot(folder: Path) -> dict[str, str]:
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_dir():
                state[rel] = f"dir {stat.S_IMODE(path.stat().st_mode):o}"
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                state[rel] = f"{digest} {stat.S_IMODE(path.stat().st_mode):o}"
    return state


@pytest.mark.slow
def test_folder_of_hostile_submissions(toy, tmp_path, edit_notebook):
    folder = tmp_path / "submissions"
    folder.mkdir()
    expected = _submissions(toy, folder, edit_notebook)
    assert len(expected) >= 15
    before = _snapshot(folder)
    folder_mode = stat.S_IMODE(folder.stat().st_mode)
    grades = tmp_path / "grades.csv"
    scope = tmp_path / "results.json"
    reports_json = tmp_path / "reports.json"
    started = time.monotonic()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "coursepkg.grade",
                str(folder),
                "--csv",
                str(grades),
                "--gradescope",
                str(scope),
                "--json",
                str(reports_json),
                "--spec",
                str(toy.spec),
                "--no-nbval",
                "--timeout",
                str(HOSTILE_TIMEOUT),
                "--jobs",
                "2",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        (folder / "readonly_dir").chmod(0o755)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert elapsed < 240, f"grading the folder took {elapsed:.0f} s"  # ~25 s on 2 idle cores
    (folder / "readonly_dir").chmod(0o555)
    assert _snapshot(folder) == before, "the grader changed the submissions"
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    (folder / "readonly_dir").chmod(0o755)

    with open(grades, newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(expected), result.stdout
    problems = []
    for name, (status, score, message) in expected.items():
        row = rows[name]
        if row["status"] != status or message not in row["message"]:
            problems.append(f"{name}: {row}")
        elif score is not None and float(row["score"]) != score:
            problems.append(f"{name}: score {row['score']}, expected {score}: {row}")
    assert not problems, "\n".join(problems) + "\n" + result.stdout[-4000:]
    assert float(rows["alice_good.ipynb"]["max_score"]) == GOOD
    assert float(rows["ch99_invalid_json.ipynb"]["max_score"]) == GOOD  # set known from the name

    results = json.loads(scope.read_text())
    assert results["tests"] and all(
        {"name", "score", "max_score", "status"} <= set(t) for t in results["tests"]
    )
    assert "notes.txt" in results["output"]
    assert "output omitted" not in result.stdout  # the flood stays in the child's bounded buffer
    assert len(result.stdout) < 100_000

    # What a student reads for some hostile cases.
    messages = {
        (r["notebook"], t["name"]): t["message"]
        for r in json.loads(reports_json.read_text())
        for t in r["tests"]
    }
    assert (
        "no function named `scaled_logpdf` (did you mean `scaled_log_pdf`?)"
        in messages[("misnamed.ipynb", "logpdf_values")]
    )
    assert "ended during this test" in messages[("os_exit_and_nan.ipynb", "affine_values")]
    assert "ended during this test" in messages[("os_exit_and_nan.ipynb", "affine_properties")]
    assert "non-finite value nan at index [0]" in messages[("os_exit_and_nan.ipynb", "logpdf_values")]
    assert (
        f"did not finish within {HOSTILE_TIMEOUT} s" in messages[("loop_in_function.ipynb", "logpdf_values")]
    )
    assert "out of memory" in messages[("memory_hog.ipynb", "logpdf_values")]
    broken = "syntax_error_and_forbidden_import.ipynb"
    assert "syntax error on line 2" in messages[(broken, "logpdf_values")]
    assert "imports `ElementwiseAffine` from coursepkg" in messages[(broken, "affine_values")]
    assert "still raises NotImplementedError" in messages[("carol_unmodified.ipynb", "constant_value")]
    assert "max abs error" in messages[("monkeypatch.ipynb", "logpdf_values")]
