"""Grading reports: one per notebook, as a text table, JSON, a CSV row or Gradescope results.

JSON (``Report.to_dict``)::

    {"notebook": "01_change_of_variables.ipynb", "exercise_set": "ch01", "status": "ok",
     "message": "", "score": 7.0, "max_score": 9.0, "nbval": true, "duration_s": 21.4,
     "errors": [...],
     "tests": [{"name": "density_values", "exercise": "ch01-density", "kind": "test",
                "points": 1.0, "max_points": 1.0, "passed": true, "message": "",
                "duration_s": 0.01}, ...]}

``status`` is ``"ok"`` when the notebook was graded (whatever its score) and ``"error"`` when it
could not be (not a notebook, no cells, unknown exercise set); ``message`` says why.
"""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["TestResult", "Report", "write_csv", "write_json", "gradescope", "CSV_COLUMNS"]

CSV_COLUMNS = ("file", "exercise_set", "score", "max_score", "status", "message")


def fmt_points(value: float) -> str:
    return f"{value:g}" if abs(value - round(value)) > 1e-9 else str(int(round(value)))


@dataclass
class TestResult:
    name: str
    exercise: str
    points: float
    max_points: float
    passed: bool
    message: str = ""
    duration_s: float = 0.0
    kind: str = "test"  # "test" (pytest-like probe) or "check" (a check cell run by nbval)


@dataclass
class Report:
    notebook: str
    exercise_set: str | None = None
    tests: list[TestResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    status: str = "ok"
    message: str = ""
    duration_s: float = 0.0
    nbval: bool = True
    max_score_hint: float = 0.0  # the set's maximum when the notebook could not be graded
    output: str = ""  # tail of the submission's own printed output (not in JSON)

    @property
    def score(self) -> float:
        return round(sum(t.points for t in self.tests), 6)

    @property
    def max_score(self) -> float:
        if not self.tests:
            return self.max_score_hint
        return round(sum(t.max_points for t in self.tests), 6)

    def to_dict(self) -> dict:
        return {
            "notebook": self.notebook,
            "exercise_set": self.exercise_set,
            "status": self.status,
            "message": self.message,
            "score": self.score,
            "max_score": self.max_score,
            "nbval": self.nbval,
            "duration_s": round(self.duration_s, 2),
            "errors": list(self.errors),
            "tests": [asdict(t) for t in self.tests],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    def summary(self) -> str:
        """One line: why it could not be graded, or which tests failed (the first one's reason)."""
        if self.status != "ok":
            return self.message
        failed = [t for t in self.tests if not t.passed]
        if not failed:
            return "all tests pass"
        first = failed[0].message
        first = first if len(first) <= 150 else first[:147] + "..."
        names = ", ".join(t.name for t in failed)
        return f"{len(failed)} of {len(self.tests)} tests failed: {names}. {failed[0].name}: {first}"

    def csv_row(self, file: str | None = None) -> dict:
        return {
            "file": file or self.notebook,
            "exercise_set": self.exercise_set or "",
            "score": fmt_points(self.score),
            "max_score": fmt_points(self.max_score),
            "status": self.status,
            "message": self.summary(),
        }

    def table(self, width: int | None = None) -> str:
        """The report as a text table: test, exercise, points, result and the reason of a failure."""
        width = width or max(shutil.get_terminal_size((110, 20)).columns, 80)
        title = f"{self.notebook}" + (f" (exercise set {self.exercise_set})" if self.exercise_set else "")
        lines = [title]
        if self.status != "ok":
            lines.append(f"  cannot grade: {self.message}")
        if self.tests:
            name_w = max(4, *(len(t.name) for t in self.tests))
            ex_w = max(8, *(len(t.exercise) for t in self.tests))
            head = f"  {'test':<{name_w}}  {'exercise':<{ex_w}}  {'points':>7}  result  reason"
            lines += [head, "  " + "-" * (len(head) - 2)]
            indent = 2 + name_w + 2 + ex_w + 2 + 7 + 2 + 6 + 2
            reason_w = max(width - indent, 30)
            for t in self.tests:
                points = f"{fmt_points(t.points)}/{fmt_points(t.max_points)}"
                result = "pass" if t.passed else "FAIL"
                reason = textwrap.wrap(t.message, reason_w) or [""]
                lines.append(
                    f"  {t.name:<{name_w}}  {t.exercise:<{ex_w}}  {points:>7}  {result:<6}  {reason[0]}"
                )
                lines += [" " * indent + more for more in reason[1:]]
        for error in self.errors:
            lines += textwrap.wrap(error, width - 4, initial_indent="  note: ", subsequent_indent="        ")
        if not self.nbval and self.status == "ok":
            lines.append("  (check cells not run: --no-nbval)")
        lines.append(f"  score: {fmt_points(self.score)} / {fmt_points(self.max_score)} points")
        return "\n".join(lines)


def write_json(reports: Report | list[Report], path: str | Path) -> None:
    data = reports.to_dict() if isinstance(reports, Report) else [r.to_dict() for r in reports]
    Path(path).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(rows: list[dict], path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})


def gradescope(reports: list[tuple[str, Report]], skipped: list[tuple[str, str]] = ()) -> dict:
    """Gradescope's ``results.json`` for the notebooks of one submission (file name, report)."""
    tests = []
    output = []
    several = len(reports) > 1
    for file, report in reports:
        output.append(f"{file}: {fmt_points(report.score)} / {fmt_points(report.max_score)} points")
        if report.status != "ok":
            output.append(f"  cannot grade {file}: {report.message}")
            tests.append(
                {
                    "name": f"{file}: grading",
                    "score": 0,
                    "max_score": report.max_score,
                    "status": "failed",
                    "output": report.message,
                    "visibility": "visible",
                }
            )
        for t in report.tests:
            tests.append(
                {
                    "name": f"{file}: {t.name}" if several else t.name,
                    "score": t.points,
                    "max_score": t.max_points,
                    "status": "passed" if t.passed else "failed",
                    "output": t.message,
                    "visibility": "visible",
                }
            )
        output += [f"  note: {e}" for e in report.errors]
    for file, why in skipped:
        output.append(f"{file}: {why}")
    return {
        "score": round(sum(r.score for _, r in reports), 6),
        "execution_time": round(sum(r.duration_s for _, r in reports), 2),
        "output": "\n".join(output),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }
