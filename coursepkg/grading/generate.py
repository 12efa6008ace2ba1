"""Generate ``exercises/`` and the grader's references from the reference solutions in ``solutions/``.

    python -m coursepkg.grading.generate            # write exercises/ and coursepkg/grading/references/
    python -m coursepkg.grading.generate --check    # exit 1, listing each file that differs

For each ``solutions/NN_slug.ipynb`` (metadata ``coursepkg.exercise_set = "chNN"``):

* ``exercises/NN_slug.ipynb``: every region between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  becomes one line at the marker's indentation,
  ``raise NotImplementedError("Exercise <id>: replace this line with your solution. Hint: <text>")``;
  ``### HINT: text`` lines become ``# Hint: text``; all outputs and execution counts are removed
  and the metadata ``kind`` becomes ``"exercise"``. Everything else is kept.
* ``references/chNN.py``: the definitions the grader extracts from the solution's graded cells
  (see :func:`coursepkg.grading.notebook.extract_program`), so the grader and the in-notebook
  self-check have the reference where ``solutions/`` is absent (Colab).
* ``references/chNN.json``: each exercise's points, cell and names, and the stored outputs of the
  check cells (nbval's reference outputs).

The output is deterministic (nbformat's JSON, sorted keys, one trailing newline), so a test can
insist that ``exercises/`` is exactly what this command writes.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import sys
from pathlib import Path

from .judge import stub_text
from .notebook import Notebook, NotebookError, extract_program, parse_notebook, top_level_names
from .spec import EXERCISE_ID, PACKAGE_REFERENCES

__all__ = ["GenerateError", "strip_solutions", "make_exercise", "make_reference", "generate", "main"]

ROOT = Path(__file__).resolve().parents[2]
BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
HINT = "### HINT:"
CHECK_TAG = "nbval-check-output"


class GenerateError(Exception):
    """A solution notebook breaks the exercise format; the message says where and how."""


def stub_line(exercise: str, indent: str, hints: list[str]) -> str:
    message = json.dumps(stub_text(exercise, hints), ensure_ascii=False)
    return f"{indent}raise NotImplementedError({message})"


def strip_solutions(source: str, exercise: str, where: str = "cell") -> str:
    """Replace each solution region of a graded cell's source by the stub line (see module doc)."""
    out: list[str] = []
    hints: list[str] = []
    region_start = None
    regions = 0
    for number, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if region_start is not None:
            if stripped.startswith(BEGIN):
                raise GenerateError(f"{where}, line {number}: `{BEGIN}` inside another solution region")
            if stripped.startswith(END):
                region_start = None
            continue
        if stripped.startswith(BEGIN):
            out.append(stub_line(exercise, indent, hints))
            region_start, hints = number, []
            regions += 1
        elif stripped.startswith(END):
            raise GenerateError(f"{where}, line {number}: `{END}` without `{BEGIN}`")
        elif stripped.startswith(HINT):
            text = stripped[len(HINT) :].strip()
            hints.append(text)
            out.append(f"{indent}# Hint: {text}")
        else:
            hints = []
            out.append(line)
    if region_start is not None:
        raise GenerateError(f"{where}, line {region_start}: `{BEGIN}` without `{END}`")
    if not regions:
        raise GenerateError(f"{where}: a graded cell needs at least one `{BEGIN}` ... `{END}` region")
    return "\n".join(out)


def set_name_of(notebook: Notebook, path: Path) -> str:
    name = notebook.exercise_set
    if name is None:
        match = re.match(r"^(\d{2})_", path.name)
        if not match:
            raise GenerateError(f"{path.name}: no metadata coursepkg.exercise_set and no NN_ prefix")
        name = f"ch{match.group(1)}"
    return name


def _validate(notebook: Notebook, path: Path, set_name: str) -> None:
    problems = []
    graded: dict[str, int] = {}
    checks: dict[str, int] = {}
    for cell in notebook.cells:
        where = f"cell {cell.number}"
        markers = any(line.strip().startswith((BEGIN, END, HINT)) for line in cell.source.splitlines())
        if cell.kind is None:
            if markers:
                problems.append(f"{where}: solution markers in a cell that is not a graded cell")
            continue
        first = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
        tag = f"{cell.kind}:{cell.exercise}"
        if cell.kind == "exercise":
            if not first.startswith(f"# EXERCISE {cell.exercise} (") or cell.points is None:
                problems.append(f"{where}: a graded cell starts with `# EXERCISE <id> (<n> points)`")
            if cell.exercise in graded:
                problems.append(f"{where}: exercise {cell.exercise} already has cell {graded[cell.exercise]}")
            graded[cell.exercise] = cell.number
        else:
            if not first.startswith(f"# CHECK {cell.exercise}"):
                problems.append(f"{where}: a check cell starts with `# CHECK <id>`")
            if CHECK_TAG not in cell.tags:
                problems.append(f"{where}: check cell {cell.exercise} needs the tag `{CHECK_TAG}`")
            if not cell.outputs or cell.execution_count is None:
                problems.append(
                    f"{where}: check cell {cell.exercise} has no stored output (run the solution "
                    "notebook and keep the outputs of its check cells)"
                )
            if cell.exercise in checks:
                problems.append(
                    f"{where}: exercise {cell.exercise} already has check cell {checks[cell.exercise]}"
                )
            checks[cell.exercise] = cell.number
        if tag not in cell.tags:
            problems.append(f"{where}: needs the tag `{tag}`")
        match = EXERCISE_ID.match(cell.exercise or "")
        if not match or match.group(1) != set_name:
            problems.append(f"{where}: id {cell.exercise!r} must look like '{set_name}-some-name'")
    for check, number in checks.items():
        if check not in graded:
            problems.append(f"cell {number}: check cell {check} checks no graded cell of this notebook")
    if not graded:
        problems.append("no graded cells (`# EXERCISE <id> (<n> points)`)")
    if problems:
        raise GenerateError(f"{path.name}:\n  " + "\n  ".join(problems))


def make_exercise(node, notebook: Notebook, path: Path):
    """The exercise notebook (an nbformat node) for a solution notebook."""
    exercise = copy.deepcopy(node)
    for cell, info in zip(exercise.cells, notebook.cells, strict=True):
        if cell.cell_type != "code":
            continue
        cell.outputs = []
        cell.execution_count = None
        if info.kind == "exercise":
            cell.source = strip_solutions(cell.source, info.exercise, f"{path.name}, cell {info.number}")
    meta = exercise.metadata.setdefault("coursepkg", {})
    meta["kind"] = "exercise"
    return exercise


def _without_markers(text: str) -> str:
    lines = [line for line in text.split("\n") if not line.strip().startswith((BEGIN, END, HINT))]
    return "\n".join(lines)


def make_reference(notebook: Notebook, path: Path, set_name: str) -> tuple[str, str]:
    """The reference module's text and the metadata JSON for a solution notebook."""
    program = extract_program(notebook, forbidden=(), label=path.name)
    if program.problems:
        raise GenerateError(f"{path.name}:\n  " + "\n  ".join(program.problems.values()))
    parts = [
        f'"""Reference definitions of exercise set {set_name}, extracted from solutions/{path.name}.\n\n'
        "Generated by `python -m coursepkg.grading.generate` (`make exercises`): do not edit.\n"
        '"""\n'
        "# ruff: noqa\n"
        "# fmt: off\n"
    ]
    for unit in program.units:
        header = f"# cell {unit.cell}" + (f": {unit.exercise}" if unit.exercise else "")
        if unit.keep is None:
            body = unit.source.rstrip("\n")
        else:
            lines = unit.source.split("\n")
            tree = ast.parse(unit.source)
            chunks = []
            for i in unit.keep:
                node = tree.body[i]
                start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                chunks.append("\n".join(lines[start - 1 : node.end_lineno]))
            body = _without_markers("\n\n".join(chunks))
        parts.append(f"\n{header}\n{body}\n")
    source = "".join(parts)
    try:
        names = top_level_names(ast.parse(source))
    except SyntaxError as error:
        raise GenerateError(f"{path.name}: the extracted reference does not compile: {error}") from None
    exercises = {}
    for cell in notebook.graded_cells():
        points = cell.points or 0
        unit_names: dict[str, str] = {}
        for unit in program.units:
            if unit.exercise == cell.exercise:
                tree = ast.parse(unit.source)
                tree.body = [tree.body[i] for i in unit.keep or []]
                unit_names = {n: kind for n, kind in top_level_names(tree).items() if kind != "import"}
        exercises[cell.exercise] = {
            "points": int(points) if float(points).is_integer() else points,
            "cell": cell.number,
            "names": unit_names,
        }
    checks = {}
    for cell in notebook.check_cells():
        outputs = []
        for output in cell.outputs:
            output = dict(output)
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                continue  # warnings are never compared
            for key in ("text", "traceback"):
                if isinstance(output.get(key), list):
                    output[key] = "".join(output[key]) if key == "text" else output[key]
            if isinstance(output.get("data"), dict):
                output["data"] = {
                    k: "".join(v) if isinstance(v, list) else v for k, v in output["data"].items()
                }
            outputs.append(output)
        checks[cell.exercise] = outputs
    meta = {
        "exercise_set": set_name,
        "notebook": path.name,
        "exercises": exercises,
        "checks": checks,
        "names": {n: kind for n, kind in sorted(names.items()) if kind != "import"},
    }
    return source, json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def generate(solutions: Path, exercises: Path, references: Path) -> tuple[dict[Path, str], list[Path]]:
    """Every file to write (path -> text) and the stale files with no solution any more."""
    import nbformat

    outputs: dict[Path, str] = {}
    seen_ids: dict[str, str] = {}
    seen_sets: dict[str, str] = {}
    for path in sorted(solutions.glob("*.ipynb")):
        try:
            notebook = parse_notebook(path.read_bytes(), path.name)
        except NotebookError as error:
            raise GenerateError(str(error)) from None
        node = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        set_name = set_name_of(notebook, path)
        if set_name in seen_sets:
            raise GenerateError(f"{path.name}: exercise set {set_name} is also {seen_sets[set_name]}")
        seen_sets[set_name] = path.name
        _validate(notebook, path, set_name)
        for cell in notebook.graded_cells():
            if cell.exercise in seen_ids:
                raise GenerateError(
                    f"{path.name}: exercise id {cell.exercise} is also in {seen_ids[cell.exercise]}"
                )
            seen_ids[cell.exercise] = path.name
        text = nbformat.writes(make_exercise(node, notebook, path))
        outputs[exercises / path.name] = text if text.endswith("\n") else text + "\n"
        source, meta = make_reference(notebook, path, set_name)
        outputs[references / f"{set_name}.py"] = source
        outputs[references / f"{set_name}.json"] = meta
    existing = set(exercises.glob("*.ipynb")) if exercises.is_dir() else set()
    if references.is_dir():
        existing |= {p for p in references.glob("ch*.py")} | set(references.glob("ch*.json"))
    stale = sorted(existing - set(outputs))
    return outputs, stale


def _show(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coursepkg.grading.generate",
        description="Generate exercises/ and the grader's references from solutions/.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    parser.add_argument("--solutions", type=Path, default=ROOT / "solutions")
    parser.add_argument("--exercises", type=Path, default=ROOT / "exercises")
    parser.add_argument("--references", type=Path, default=PACKAGE_REFERENCES)
    args = parser.parse_args(argv)
    try:
        outputs, stale = generate(args.solutions, args.exercises, args.references)
    except GenerateError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not outputs:
        print(f"no solution notebooks in {_show(args.solutions)}")
    differ = []
    for path, text in outputs.items():
        current = path.read_bytes() if path.is_file() else None
        if current == text.encode("utf-8"):
            continue
        if args.check:
            differ.append(f"{_show(path)} {'is missing' if current is None else 'differs'}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            print(f"wrote {_show(path)}")
    for path in stale:
        differ.append(f"{_show(path)} has no solution notebook any more: delete it")
    if differ:
        print("\n".join(differ), file=sys.stderr)
    if args.check and differ:
        print("not in sync with solutions/: run `make exercises`", file=sys.stderr)
        return 1
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
