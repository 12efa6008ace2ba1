"""Reading notebooks, finding graded and check cells, extracting the definitions the grader runs.

A graded cell starts with ``# EXERCISE <id> (<n> points)`` or carries the tag ``exercise:<id>``;
a check cell starts with ``# CHECK <id>`` or carries the tag ``check:<id>``.

:func:`extract_program` keeps what the grader runs of a notebook, never its training: from each
graded cell its top-level imports, function and class definitions and constant assignments (the
right-hand side made of literals, names, attributes, operators, subscripts, lambdas and calls of
imported names, builtins or classes of graded cells, e.g. ``torch.tensor(...)``); from every other
code cell its top-level imports. IPython lines starting with ``%`` or ``!`` become ``pass``. Each
part is compiled with the file name ``<notebook>#cell<n>`` (``n`` counts all cells from 1), so a
traceback points at the student's cell.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .judge import stub_exercise

__all__ = [
    "NotebookError",
    "Cell",
    "Notebook",
    "Unit",
    "Program",
    "read_notebook",
    "parse_notebook",
    "extract_program",
    "strip_magics",
    "top_level_names",
]

EXERCISE_HEADER = re.compile(
    r"^#\s*EXERCISE\s+(?P<id>[A-Za-z0-9_.:-]+)(?:\s*\(\s*(?P<points>\d+(?:\.\d+)?)\s*points?\s*\))?"
)
CHECK_HEADER = re.compile(r"^#\s*CHECK\s+(?P<id>[A-Za-z0-9_.:-]+)")
MAX_NOTEBOOK_BYTES = 100 * 2**20

SAFE_BUILTINS = frozenset(
    "abs bool complex dict divmod enumerate float frozenset int len list max min pow range "
    "reversed round set slice sorted str sum tuple zip".split()
)


class NotebookError(Exception):
    """The file cannot be graded as a notebook; the message is meant for the student."""


@dataclass
class Cell:
    index: int  # position among all cells, from 0
    cell_type: str
    source: str
    metadata: dict
    outputs: list = field(default_factory=list)
    execution_count: int | None = None
    code_index: int = -1  # position among code cells (nbval's "Cell N"), -1 for other cells
    kind: str | None = None  # "exercise", "check" or None
    exercise: str | None = None
    points: float | None = None  # from the "(n points)" of an exercise header

    @property
    def tags(self) -> list[str]:
        tags = self.metadata.get("tags", [])
        return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []

    @property
    def number(self) -> int:
        """1-based position, as a person counts cells."""
        return self.index + 1


@dataclass
class Notebook:
    name: str  # file name, for messages
    metadata: dict
    cells: list[Cell]
    nbformat_minor: int = 4

    @property
    def code_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.cell_type == "code"]

    def graded_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "exercise"]

    def check_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.kind == "check"]

    @property
    def exercise_set(self) -> str | None:
        info = self.metadata.get("coursepkg")
        value = info.get("exercise_set") if isinstance(info, dict) else None
        return value if isinstance(value, str) else None


def read_notebook(path: str | Path, name: str | None = None) -> Notebook:
    """Read and validate a notebook file; :class:`NotebookError` says clearly what is wrong."""
    path = Path(path)
    name = name or path.name
    try:
        if path.is_dir():
            raise NotebookError(f"{name} is a folder, not a notebook file")
        if not path.is_file():
            raise NotebookError(f"{name} is not a regular file")
        size = path.stat().st_size
        if size > MAX_NOTEBOOK_BYTES:
            raise NotebookError(
                f"{name} is {size / 2**20:.0f} MB, more than a notebook should be "
                f"({MAX_NOTEBOOK_BYTES // 2**20} MB): clear its outputs (Edit > Clear all outputs) and save"
            )
        data = path.read_bytes()
    except OSError as error:
        raise NotebookError(f"cannot read {name}: {error.strerror or error}") from None
    return parse_notebook(data, name)


def parse_notebook(data: bytes | str, name: str = "notebook.ipynb") -> Notebook:
    """Parse a notebook's JSON text (see :func:`read_notebook`)."""
    if isinstance(data, bytes):
        if not data.strip():
            raise NotebookError(f"{name} is empty: save the notebook again (File > Save) and resubmit")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise NotebookError(
                f"{name} is not a notebook: it is not a text file (a notebook is JSON text)"
            ) from None
    else:
        text = data
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        where = (
            f" at line {error.lineno}, column {error.colno} ({error.msg})"
            if isinstance(error, json.JSONDecodeError)
            else ""
        )
        raise NotebookError(
            f"{name} is not a notebook: its content is not valid JSON{where}. Download it again "
            "from Jupyter or Colab (File > Download > .ipynb) rather than renaming another file"
        ) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells", raw.get("worksheets")), list):
        raise NotebookError(
            f"{name} is not a notebook: it is JSON, but without the list of `cells` a notebook has"
        )
    if raw.get("nbformat", 4) != 4:
        raw = _upgrade(raw, name)
    cells_raw = raw.get("cells")
    if not isinstance(cells_raw, list) or not cells_raw:
        raise NotebookError(f"{name} has no cells: it is an empty notebook")
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    cells = []
    code_index = 0
    for index, cell in enumerate(cells_raw):
        if not isinstance(cell, dict):
            raise NotebookError(f"{name} is not a valid notebook: cell {index + 1} is not a JSON object")
        cell_type = cell.get("cell_type")
        if cell_type not in ("code", "markdown", "raw"):
            cell_type = "raw"
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(s, str) for s in source):
            source = "".join(source)
        if not isinstance(source, str):
            raise NotebookError(f"{name} is not a valid notebook: the source of cell {index + 1} is not text")
        cell_metadata = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        outputs = cell.get("outputs") if isinstance(cell.get("outputs"), list) else []
        count = cell.get("execution_count")
        entry = Cell(
            index=index,
            cell_type=cell_type,
            source=source,
            metadata=cell_metadata,
            outputs=outputs if cell_type == "code" else [],
            execution_count=count if isinstance(count, int) else None,
        )
        if cell_type == "code":
            entry.code_index = code_index
            code_index += 1
            _classify(entry)
        cells.append(entry)
    minor = raw.get("nbformat_minor", 4)
    return Notebook(name, metadata, cells, minor if isinstance(minor, int) else 4)


def _upgrade(raw: dict, name: str) -> dict:
    import nbformat

    try:
        node = nbformat.from_dict(raw)
        return json.loads(json.dumps(nbformat.convert(node, 4)))
    except Exception as error:  # nbformat raises many kinds
        raise NotebookError(f"{name} is a notebook format this grader cannot read: {error}") from None


def _first_line(source: str) -> str:
    for line in source.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("%"):
            return stripped
    return ""


def _classify(cell: Cell) -> None:
    """Kind and id from the first line, or from the tag, which wins when both exist and differ
    (a student edits the visible comment more easily than the hidden tag)."""
    first = _first_line(cell.source)
    tagged = None
    for tag in cell.tags:
        if tag.startswith(("exercise:", "check:")):
            kind, _, exercise = tag.partition(":")
            tagged = (kind, exercise)
            break
    match = EXERCISE_HEADER.match(first)
    if match:
        cell.kind, cell.exercise = "exercise", match.group("id")
        cell.points = float(match.group("points")) if match.group("points") else None
    else:
        match = CHECK_HEADER.match(first)
        if match:
            cell.kind, cell.exercise = "check", match.group("id")
    if tagged and (cell.kind, cell.exercise) != tagged:
        if cell.kind != tagged[0]:
            cell.points = None
        cell.kind, cell.exercise = tagged


# -- extracting definitions ---------------------------------------------------------------------


@dataclass
class Unit:
    """Code the grader runs: ``source`` parsed, restricted to the statements ``keep`` (all if None)."""

    filename: str
    source: str
    keep: list[int] | None
    exercise: str | None
    cell: int  # 1-based cell number

    def to_dict(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "source": self.source,
            "keep": self.keep,
            "exercise": self.exercise,
            "cell": self.cell,
        }


@dataclass
class Program:
    """What the grader runs of a notebook, and what it found wrong on the way."""

    units: list[Unit]
    problems: dict[str, str]  # exercise id -> why its cell cannot be graded
    exercise_cells: dict[str, list[int]]  # exercise id -> cell numbers
    defined_elsewhere: dict[str, int]  # name -> number of a non-graded cell defining it
    notes: list[str] = field(default_factory=list)
    stubs: set[str] = field(default_factory=set)  # exercises whose cell still raises the stub at top level
    graded_names: set[str] = field(default_factory=set)  # names the graded cells define at top level


def strip_magics(source: str) -> str:
    """IPython lines (``%time``, ``!pip install``) become ``pass``, keeping line numbers."""
    lines = source.splitlines()
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            out.append(line[: len(line) - len(stripped)] + "pass")
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def _parse(source: str, filename: str) -> ast.Module:
    return ast.parse(source, filename)


def _import_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    names = []
    for alias in node.names:
        if alias.name == "*":
            continue
        names.append(alias.asname or alias.name.split(".")[0])
    return names


def _is_coursepkg(module: str) -> bool:
    return module == "coursepkg" or module.startswith("coursepkg.")


def _is_grader(module: str) -> bool:
    return module == "coursepkg.grading" or module.startswith("coursepkg.grading.")


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def top_level_names(tree: ast.Module) -> dict[str, str]:
    """Names a module binds at top level -> ``"function"``, ``"class"``, ``"constant"`` or ``"import"``."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = "function"
        elif isinstance(node, ast.ClassDef):
            names[node.name] = "class"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for name in _import_names(node):
                names[name] = "import"
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for sub in ast.walk(target):
                    if isinstance(sub, ast.Name):
                        names[sub.id] = "constant"
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = "constant"
    return names


class _Extractor:
    def __init__(self, forbidden: tuple[str, ...], callables: set[str], coursepkg_roots: set[str]):
        self.forbidden = forbidden
        self.callables = callables
        self.coursepkg_roots = coursepkg_roots

    # constants ---------------------------------------------------------------------------------
    def constant(self, node: ast.AST | None) -> bool:
        ok = self.constant
        if node is None:
            return True
        if isinstance(node, (ast.Constant, ast.Name, ast.Lambda)):
            return True
        if isinstance(node, ast.Attribute):
            return ok(node.value)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return all(map(ok, node.elts))
        if isinstance(node, ast.Dict):
            return all(ok(k) for k in node.keys if k is not None) and all(map(ok, node.values))
        if isinstance(node, ast.UnaryOp):
            return ok(node.operand)
        if isinstance(node, ast.BinOp):
            return ok(node.left) and ok(node.right)
        if isinstance(node, ast.BoolOp):
            return all(map(ok, node.values))
        if isinstance(node, ast.Compare):
            return ok(node.left) and all(map(ok, node.comparators))
        if isinstance(node, ast.IfExp):
            return ok(node.test) and ok(node.body) and ok(node.orelse)
        if isinstance(node, ast.Subscript):
            return ok(node.value) and ok(node.slice)
        if isinstance(node, ast.Slice):
            return ok(node.lower) and ok(node.upper) and ok(node.step)
        if isinstance(node, ast.Starred):
            return ok(node.value)
        if isinstance(node, ast.JoinedStr):
            return all(ok(v.value) if isinstance(v, ast.FormattedValue) else ok(v) for v in node.values)
        if isinstance(node, ast.Call):
            return (
                self._callable(node.func)
                and all(map(ok, node.args))
                and all(ok(k.value) for k in node.keywords)
            )
        return False

    def _callable(self, func: ast.AST) -> bool:
        while isinstance(func, ast.Attribute):
            func = func.value
        if isinstance(func, ast.Name):
            return func.id in self.callables or func.id in SAFE_BUILTINS
        if isinstance(func, ast.Call):
            return self.constant(func)
        return False

    def keep(self, node: ast.stmt) -> bool:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            return False  # only valid first in a module; the grader compiles each cell alone
        if isinstance(
            node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
        ):
            return True
        if isinstance(node, ast.Assign):
            simple = all(
                isinstance(t, ast.Name)
                or (isinstance(t, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Name) for e in t.elts))
                for t in node.targets
            )
            return simple and self.constant(node.value)
        if isinstance(node, ast.AnnAssign):
            return isinstance(node.target, ast.Name) and node.value is not None and self.constant(node.value)
        return False

    # imports -----------------------------------------------------------------------------------
    def import_issue(self, node: ast.Import | ast.ImportFrom) -> str | None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_grader(alias.name):
                    return "imports the grader (`coursepkg.grading`)"
            return None
        module = node.module or ""
        if node.level or not _is_coursepkg(module):
            return None
        if _is_grader(module):
            return "imports from the grader (`coursepkg.grading`)"
        for alias in node.names:
            if alias.name in self.forbidden:
                return f"imports `{alias.name}` from coursepkg"
            if alias.name == "grading" and module == "coursepkg":
                return "imports the grader (`coursepkg.grading`)"
            if alias.name == "*" and self.forbidden:
                return f"imports everything from `{module}` (which includes the answer)"
        return None

    def usage_issue(self, tree: ast.AST) -> str | None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                parts = _dotted(node)
                if parts and parts[0] in self.coursepkg_roots:
                    for part in parts[1:]:
                        if part in self.forbidden:
                            return f"uses `{'.'.join(parts)}` from coursepkg"
                        if part == "grading":
                            return "uses the grader (`coursepkg.grading`)"
            elif isinstance(node, ast.Name) and node.id in self.forbidden and node.id in self.coursepkg_roots:
                return f"uses `{node.id}` from coursepkg"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                if "coursepkg.grading" in node.value or "grading.references" in node.value:
                    return "refers to the grader (`coursepkg.grading`)"
        return None

    def filter_import(self, node: ast.Import | ast.ImportFrom) -> ast.stmt | None:
        """An import of a non-graded cell without the forbidden names (None if nothing is left)."""
        if isinstance(node, ast.Import):
            names = [a for a in node.names if not _is_grader(a.name)]
        else:
            module = node.module or ""
            if node.level:
                return None
            if module == "__future__" or _is_grader(module):
                return None
            names = list(node.names)
            if _is_coursepkg(module):
                names = [
                    a
                    for a in names
                    if a.name not in self.forbidden
                    and not (a.name == "*" and self.forbidden)
                    and not (module == "coursepkg" and a.name == "grading")
                ]
        if not names:
            return None
        clone = ast.Import(names=names) if isinstance(node, ast.Import) else None
        if clone is None:
            clone = ast.ImportFrom(module=node.module, names=names, level=0)
        return ast.copy_location(clone, node)


def extract_program(notebook: Notebook, forbidden: tuple[str, ...] = (), label: str | None = None) -> Program:
    """The definitions of the graded cells and the imports of the others; see the module doc."""
    label = label or notebook.name
    parsed: list[tuple[Cell, str, ast.Module | None, str | None]] = []
    callables: set[str] = set()
    coursepkg_roots: set[str] = set()
    for cell in notebook.code_cells:
        source = strip_magics(cell.source)
        try:
            tree = _parse(source, f"{label}#cell{cell.number}")
            error = None
        except SyntaxError as exc:
            tree, error = None, f"a syntax error on line {exc.lineno}: {exc.msg}"
        except (ValueError, RecursionError, MemoryError) as exc:
            tree, error = None, f"code Python cannot parse ({type(exc).__name__}: {exc})"
        parsed.append((cell, source, tree, error))
        if tree is None:
            continue
        # An import inside a function of a graded cell binds coursepkg names too.
        nodes = ast.walk(tree) if cell.kind == "exercise" else tree.body
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if node in tree.body:
                    callables.update(_import_names(node))
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if _is_coursepkg(alias.name):
                            coursepkg_roots.add(alias.asname or alias.name.split(".")[0])
                elif _is_coursepkg(node.module or "") and not node.level:
                    coursepkg_roots.update(_import_names(node))
            elif isinstance(node, ast.ClassDef) and cell.kind == "exercise":
                callables.add(node.name)

    extractor = _Extractor(tuple(forbidden), callables, coursepkg_roots)
    units: list[Unit] = []
    problems: dict[str, str] = {}
    exercise_cells: dict[str, list[int]] = {}
    defined_elsewhere: dict[str, int] = {}
    notes: list[str] = []
    stubs: set[str] = set()
    graded_names: set[str] = set()
    for cell, source, tree, error in parsed:
        filename = f"{label}#cell{cell.number}"
        if cell.kind == "exercise":
            exercise = cell.exercise
            exercise_cells.setdefault(exercise, []).append(cell.number)
            if tree is None:
                problems.setdefault(
                    exercise, f"the cell of exercise {exercise} (cell {cell.number}) has {error}"
                )
                continue
            issue = None
            keep = []
            for i, node in enumerate(tree.body):
                if _is_stub(node):
                    stubs.add(exercise)
                if extractor.keep(node):
                    keep.append(i)
            for node in ast.walk(tree):  # imports inside functions and classes too
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    issue = issue or extractor.import_issue(node)
            issue = issue or extractor.usage_issue(tree)
            if issue:
                problems.setdefault(
                    exercise,
                    f"the cell of exercise {exercise} {issue}, which gives the answer away: write "
                    "your own implementation instead",
                )
                continue
            units.append(Unit(filename, source, keep, exercise, cell.number))
            kept = ast.Module(body=[tree.body[i] for i in keep], type_ignores=[])
            graded_names.update(n for n, kind in top_level_names(kept).items() if kind != "import")
        elif tree is not None:
            kept = []
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    filtered = extractor.filter_import(node)
                    if filtered is not None:
                        kept.append(filtered)
            for name, kind in top_level_names(tree).items():
                if kind != "import":
                    defined_elsewhere.setdefault(name, cell.number)
            if kept:
                body = ast.Module(body=kept, type_ignores=[])
                units.append(Unit(filename, ast.unparse(body) + "\n", None, None, cell.number))
        elif error:
            notes.append(f"cell {cell.number} has {error} (it is not graded)")
    return Program(units, problems, exercise_cells, defined_elsewhere, notes, stubs, graded_names)


def _is_stub(node: ast.stmt) -> bool:
    """``raise NotImplementedError("Exercise ...")`` as written by the exercise generator."""
    if not isinstance(node, ast.Raise) or not isinstance(node.exc, ast.Call):
        return False
    call = node.exc
    return (
        isinstance(call.func, ast.Name)
        and call.func.id == "NotImplementedError"
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and stub_exercise(str(call.args[0].value)) is not None
    )


def compile_unit(unit: dict[str, Any] | Unit):
    """Compile a unit (as :class:`Unit` or its dict) to a code object, keeping its line numbers."""
    if isinstance(unit, Unit):
        unit = unit.to_dict()
    tree = ast.parse(unit["source"], unit["filename"])
    if unit.get("keep") is not None:
        tree.body = [tree.body[i] for i in unit["keep"] if i < len(tree.body)]
    return compile(tree, unit["filename"], "exec")
