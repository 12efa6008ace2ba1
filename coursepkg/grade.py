"""Grade exercise notebooks against the reference solutions.

    python -m coursepkg.grade NOTEBOOK [--json REPORT] [--gradescope results.json] [--no-nbval]
    python -m coursepkg.grade DIR --csv grades.csv [--jobs N] [--json reports.json] [--gradescope results.json]

A notebook's exercise set comes from its metadata (``coursepkg.exercise_set``), else from its file
name (the chapter's slug such as ``change_of_variables``, ``ch01`` or a leading ``01_``), else from
``--set``. Its tests run in sandboxed subprocesses (see :mod:`coursepkg.grading.runner`) and its
check cells with nbval (see :mod:`coursepkg.grading.nbval_check`). Nothing is ever written into
the submission's file or folder.

A folder is searched recursively (hidden files and folders skipped); every file gets one report
and one CSV row, a file that is not an ``.ipynb`` notebook included (status ``error``, "not a
notebook"). The exit status is 0 whenever the reports were written, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .grading.notebook import Notebook, NotebookError, extract_program, read_notebook
from .grading.report import Report, gradescope, write_csv, write_json
from .grading.sandbox import Limits
from .grading.spec import ExerciseSet, SpecError, available_sets, get_set, load_set

__all__ = ["grade_notebook", "grade_folder", "recognise", "submission_files", "main"]


def _sets() -> list[ExerciseSet]:
    found = []
    for name in available_sets():
        try:
            found.append(get_set(name))
        except Exception:  # a broken spec is reported when its notebooks are graded
            continue
    return found


def recognise(file_name: str, notebook: Notebook | None = None, forced: str | None = None) -> ExerciseSet:
    """The exercise set of a submission (see the module doc); ``LookupError`` if none fits."""
    if forced:
        return get_set(forced)
    names = available_sets()
    if notebook is not None and notebook.exercise_set in names:
        return get_set(notebook.exercise_set)
    lower = Path(file_name).name.lower()
    for exercise_set in _sets():
        slug = re.sub(r"^\d+_", "", Path(exercise_set.notebook).stem).lower()
        if slug and slug in lower:
            return exercise_set
    for pattern in (r"ch(\d{2})(?!\d)", r"(?:^|[^0-9a-z])(\d{2})[_ .-]"):
        match = re.search(pattern, lower)
        if match and f"ch{match.group(1)}" in names:
            return get_set(f"ch{match.group(1)}")
    known = ", ".join(f"{s.name} ({s.notebook})" for s in _sets()) or "none"
    raise LookupError(
        f"cannot tell which exercise set {Path(file_name).name} belongs to: keep the exercise "
        f"notebook's file name (or pass --set); known sets: {known}"
    )


def grade_notebook(
    path: str | Path,
    *,
    set_name: str | None = None,
    nbval: bool = True,
    limits: Limits | None = None,
    name: str | None = None,
    parallel: bool = True,
) -> Report:
    """Grade one notebook file; never raises: a broken submission gets an ``error`` report."""
    limits = limits or Limits()
    path = Path(path)
    name = name or path.name
    started = time.monotonic()
    report = Report(notebook=name, nbval=nbval)
    try:
        try:
            notebook = read_notebook(path, name)
        except NotebookError as error:
            report.status, report.message = "error", str(error)
            try:
                guess = recognise(name, None, set_name)
                report.exercise_set = guess.name
                report.max_score_hint = guess.max_score(nbval)
            except (LookupError, SpecError):
                pass
            return report
        try:
            exercise_set = recognise(name, notebook, set_name)
        except LookupError as error:
            report.status, report.message = "error", str(error)
            return report
        report.exercise_set = exercise_set.name
        report.max_score_hint = exercise_set.max_score(nbval)
        try:
            exercise_set.metadata()
            exercise_set.validate()
        except SpecError as error:
            report.status, report.message = "error", f"internal error in the course's grader: {error}"
            return report
        program = extract_program(notebook, exercise_set.forbidden_imports, label=name)
        box: dict = {}

        def checks() -> None:
            try:
                from .grading.nbval_check import grade_checks

                box["checks"] = grade_checks(notebook, exercise_set, limits)
            except Exception as error:  # reported, never raised
                box["error"] = f"internal error while running the notebook: {error!r}"

        thread = None
        if nbval:
            thread = threading.Thread(target=checks, daemon=True)
            if parallel:
                thread.start()
            else:
                thread.run()
        from .grading.runner import grade_probes

        results, errors, output = grade_probes(exercise_set, program, limits)
        if thread is not None and parallel:
            thread.join()
        report.tests = results
        report.errors = errors
        report.output = output
        if nbval:
            check_results, notes, _ = box.get("checks", ([], [], ""))
            report.tests += check_results
            report.errors += notes
            if "error" in box:
                report.errors.append(box["error"])
        report.tests.sort(key=lambda t: (_order(exercise_set, t.exercise), t.kind != "test"))
        report.errors += program.notes
        return report
    except Exception as error:  # the grader must never crash on a submission
        report.status = "error"
        report.message = f"internal error in the grader: {type(error).__name__}: {error}"
        report.errors.append(traceback.format_exc(limit=8))
        return report
    finally:
        report.duration_s = time.monotonic() - started


def _order(exercise_set: ExerciseSet, exercise: str) -> int:
    try:
        return list(exercise_set.exercises()).index(exercise)
    except (ValueError, SpecError):
        return 10_000


def submission_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` (sorted), skipping hidden files and folders and caches."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(found, key=lambda p: str(p.relative_to(folder)))


def _grade_file(path: Path, folder: Path, **options) -> Report:
    relative = str(path.relative_to(folder))
    try:
        mode = os.lstat(path).st_mode
    except OSError as error:
        return Report(notebook=relative, status="error", message=f"cannot read: {error.strerror}")
    if not stat.S_ISREG(mode):
        return Report(notebook=relative, status="error", message="not a regular file (a link or a device)")
    if path.suffix.lower() != ".ipynb":
        return Report(
            notebook=relative, status="error", message="not a notebook (only .ipynb files are graded)"
        )
    return grade_notebook(path, name=relative, parallel=False, **options)


def grade_folder(folder: str | Path, *, jobs: int | None = None, progress=None, **options) -> list[Report]:
    """Grade every file of a folder, ``jobs`` notebooks at a time; one report per file, in order."""
    folder = Path(folder)
    files = submission_files(folder)
    jobs = jobs or min(2, os.cpu_count() or 1)
    reports: dict[Path, Report] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(_grade_file, path, folder, **options): path for path in files}
        for future in as_completed(futures):
            path = futures[future]
            try:
                report = future.result()
            except Exception as error:  # _grade_file never raises; belt and braces
                report = Report(notebook=str(path.relative_to(folder)), status="error", message=repr(error))
            reports[path] = report
            if progress:
                progress(report)
    return [reports[path] for path in files]


def _limits(args: argparse.Namespace) -> Limits:
    limits = Limits(test_timeout=args.timeout, memory_mb=args.memory_mb)
    if args.notebook_timeout:
        limits.notebook_timeout = limits.nbval_timeout = args.notebook_timeout
    if args.cell_timeout:
        limits.cell_timeout = args.cell_timeout
    limits.cell_timeout = min(limits.cell_timeout, limits.nbval_timeout)
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coursepkg.grade",
        description="Grade exercise notebooks (a notebook, or every file of a folder).",
    )
    parser.add_argument("path", type=Path, help="a notebook, or a folder of submissions")
    parser.add_argument("--json", type=Path, help="write the report(s) as JSON to this file")
    parser.add_argument("--csv", type=Path, help="write one row per file (file, exercise_set, score, ...)")
    parser.add_argument("--gradescope", type=Path, help="write Gradescope's results.json (all notebooks)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="notebooks graded at once (default: min(2, CPUs))"
    )
    parser.add_argument("--set", dest="set_name", help="grade as this exercise set (e.g. ch01)")
    parser.add_argument("--no-nbval", action="store_true", help="skip running the notebook's check cells")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per test (default 60)")
    parser.add_argument(
        "--cell-timeout", type=float, default=None, help="seconds per notebook cell under nbval (default 120)"
    )
    parser.add_argument(
        "--notebook-timeout",
        type=float,
        default=None,
        help="seconds per notebook (default 300 tests, 600 nbval)",
    )
    parser.add_argument(
        "--memory-mb", type=int, default=4096, help="memory cap of student code (default 4096)"
    )
    parser.add_argument("--spec", action="append", default=[], help="load an extra exercise set (a .py file)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args(argv)

    for source in args.spec:
        try:
            load_set(source)
        except Exception as error:
            parser.exit(2, f"error: cannot load the spec {source}: {error}\n")
    if not args.path.exists():
        parser.exit(2, f"error: {args.path} does not exist\n")
    options = dict(set_name=args.set_name, nbval=not args.no_nbval, limits=_limits(args))

    if args.path.is_dir():
        started = time.monotonic()

        def progress(report: Report) -> None:
            if not args.quiet:
                print(
                    f"  {report.notebook}: {report.score:g} / {report.max_score:g}  {report.summary()}",
                    flush=True,
                )

        reports = grade_folder(args.path, jobs=args.jobs, progress=progress, **options)
        print(_folder_table(reports))
        print(f"graded {len(reports)} files in {time.monotonic() - started:.1f} s")
    else:
        reports = [grade_notebook(args.path, **options)]
        if args.quiet:
            print(
                f"{reports[0].notebook}: {reports[0].score:g} / {reports[0].max_score:g}  {reports[0].summary()}"
            )
        else:
            print(reports[0].table())
    if args.json:
        write_json(reports[0] if not args.path.is_dir() else reports, args.json)
    if args.csv:
        write_csv([r.csv_row() for r in reports], args.csv)
    if args.gradescope:
        import json

        graded = [(r.notebook, r) for r in reports if r.notebook.lower().endswith(".ipynb")]
        skipped = [(r.notebook, r.message) for r in reports if not r.notebook.lower().endswith(".ipynb")]
        args.gradescope.write_text(json.dumps(gradescope(graded, skipped), indent=1) + "\n", encoding="utf-8")
    return 0


def _folder_table(reports: list[Report]) -> str:
    if not reports:
        return "no files to grade"
    width = max(4, *(len(r.notebook) for r in reports))
    lines = [f"{'file':<{width}}  {'set':<5}  {'score':>9}  {'status':<6}  message", "-" * (width + 40)]
    for r in reports:
        score = f"{r.score:g}/{r.max_score:g}"
        lines.append(
            f"{r.notebook:<{width}}  {r.exercise_set or '-':<5}  {score:>9}  {r.status:<6}  {r.summary()}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
