"""Exercise sets: the tests of one chapter's graded exercises, and how the grader finds them.

A spec module ``coursepkg/grading/specs/chNN.py`` defines ``SET = ExerciseSet(...)`` and registers
its tests with ``@SET.test(...)``. A test has two halves:

* the *probe* ``fn(ns)`` runs in the student's sandboxed process (and, separately, on the
  reference solution): it seeds torch, calls the notebook's objects through ``ns`` and returns
  plain data (tensors, numbers, bools, strings, ``None`` and tuples, lists and dicts of these);
* the *comparison* runs in the grader's own process on the two returned values and raises
  ``AssertionError`` with a friendly message to fail. Without ``@probe.compare`` every value is
  compared by :func:`default_compare` with the test's ``rtol`` and ``atol`` (by default
  ``1e-4`` and ``1e-5``), shapes and dtypes included.

``SET.check_cell("chNN-id", points=0.5)`` gives points to the check cell of an exercise, earned
when the notebook runs from top to bottom under nbval and the cell prints what the reference
prints. The points of an exercise's tests and of its check cell add up to the ``(n points)`` of its
graded cell; :meth:`ExerciseSet.validate` checks this against the reference metadata that
``python -m coursepkg.grading.generate`` writes.

``ExerciseSet(forbidden=forbid(coursepkg.layers, "Planar", ...))`` lists the package's answers to
the set's exercises, once: a graded cell may not import those names (the static check of
:mod:`coursepkg.grading.notebook` refuses every listed attribute of a coursepkg module), and
``with SET.switched_off():`` makes each of them raise :class:`ForbiddenCall` while a probe calls
the student's code, so that not even ``getattr`` reaches them. ``SET.switched_off(*extra)`` adds
restrictions of one probe (torch's determinants, a class's methods).

``SET.variant("chNN-id", old, new, fails="test_name")`` declares a wrong solution: the graded
cell of the reference with ``old`` replaced by ``new`` must fail that test
(``tests/grading/test_variants.py`` checks every declared variant of every set).

The real sets are found by module name in :mod:`coursepkg.grading.specs`; :func:`load_set`
registers another one from a module or a file path (the grader's own tests do that).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import pkgutil
import re
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from .judge import missing_message

__all__ = [
    "ExerciseSet",
    "Test",
    "Namespace",
    "MissingName",
    "SpecError",
    "default_compare",
    "describe",
    "Variant",
    "Forbidden",
    "ForbiddenCall",
    "forbid",
    "switched_off",
    "forbid_brute_force_jacobian",
    "forbid_determinants",
    "available_sets",
    "get_set",
    "load_set",
    "set_for_exercise",
]

PACKAGE_REFERENCES = Path(__file__).resolve().with_name("references")
SET_NAME = re.compile(r"^ch\d{2}$")
EXERCISE_ID = re.compile(r"^(ch\d{2})-[a-z0-9]+(?:-[a-z0-9]+)*$")

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5


class SpecError(Exception):
    """A spec contradicts its reference (a bug in the course, never in a submission)."""


class MissingName(AttributeError):
    """The notebook does not define a name a test needs."""

    def __init__(self, name: str, available: Iterable[str] = ()):
        self.name_missing = name
        self.available = sorted(n for n in available if not n.startswith("_"))
        super().__init__(missing_message(name, self.available))


class Namespace:
    """Attribute access to the definitions of a notebook, as probes see them (``ns.square(x)``).

    A name the notebook lacks raises :class:`MissingName`, an ``AttributeError`` whose message
    suggests similar names.
    """

    __slots__ = ("_mapping",)

    def __init__(self, mapping: Mapping[str, Any]):
        object.__setattr__(self, "_mapping", mapping)

    def __getattr__(self, name: str):
        try:
            return self._mapping[name]
        except KeyError:
            raise MissingName(name, self._mapping.keys()) from None

    def __contains__(self, name: str) -> bool:
        return name in self._mapping

    def __dir__(self):
        return sorted(self._mapping)


class Test:
    """One test: a probe (``self(ns)``), its points and the names it needs; see the module doc."""

    def __init__(
        self,
        exercise_set: ExerciseSet,
        probe: Callable[[Namespace], Any],
        exercise: str,
        points: float,
        requires: tuple[str, ...],
        timeout: float | None,
        name: str,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
    ):
        self.exercise_set = exercise_set
        self.probe = probe
        self.exercise = exercise
        self.points = points
        self.requires = requires
        self.timeout = timeout
        self.name = name
        self.rtol = rtol
        self.atol = atol
        self.__doc__ = probe.__doc__
        self._compare: Callable[[Any, Any], None] | None = None

    def __call__(self, ns: Namespace):
        return self.probe(ns)

    def compare(self, fn: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        """Decorator: ``fn(student, reference)`` raises ``AssertionError`` when they disagree."""
        self._compare = fn
        return fn

    def check(self, student: Any, reference: Any) -> None:
        """Compare a student's returned value with the reference's (in the grader's process)."""
        if self._compare is not None:
            self._compare(student, reference)
        else:
            default_compare(student, reference, rtol=self.rtol, atol=self.atol)

    def __repr__(self) -> str:
        return f"<Test {self.name} of {self.exercise} ({self.points:g} points)>"


@dataclass(frozen=True)
class Variant:
    """A wrong solution: the reference's graded cell of ``exercise`` with ``old`` replaced by ``new``
    must fail the test named ``fails``."""

    exercise: str
    old: str
    new: str
    fails: str


class ExerciseSet:
    """The tests of one exercise notebook.

    Args:
        name: ``"chNN"``, the set's name (the notebook's metadata ``coursepkg.exercise_set``).
        notebook: the file name shared by ``solutions/`` and ``exercises/``.
        forbidden: the package's answers (see :func:`forbid` and the module doc): their names
            may not be imported by a graded cell, and :meth:`switched_off` turns them off.
        references: the folder of the generated reference module ``<name>.py`` and metadata
            ``<name>.json``; by default the one packaged in ``coursepkg/grading/references``.
    """

    def __init__(
        self,
        name: str,
        notebook: str,
        forbidden: Iterable[Forbidden] = (),
        references: str | Path | None = None,
    ):
        if not SET_NAME.match(name):
            raise SpecError(f"exercise set name {name!r} must look like 'ch01'")
        self.name = name
        self.notebook = notebook
        self.forbidden = tuple(forbidden)
        self.references_dir = Path(references) if references is not None else PACKAGE_REFERENCES
        self.tests: list[Test] = []
        self.check_points: dict[str, float] = {}
        self.variants: list[Variant] = []
        self.origin: str | None = None  # module name or file path; set by the loader
        self._metadata: dict | None = None

    # -- declaring ------------------------------------------------------------------------------
    def test(
        self,
        exercise: str,
        points: float = 1,
        requires: Iterable[str] = (),
        timeout: float | None = None,
        name: str | None = None,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
    ) -> Callable[[Callable], Test]:
        """Decorator registering a probe as a test of ``exercise`` worth ``points``.

        ``rtol`` and ``atol`` are the tolerances of :func:`default_compare`, used unless the test
        has its own ``@probe.compare``.
        """
        if isinstance(requires, str):
            requires = (requires,)

        def register(probe: Callable) -> Test:
            test = Test(
                self, probe, exercise, points, tuple(requires), timeout, name or probe.__name__, rtol, atol
            )
            if any(t.name == test.name for t in self.tests):
                raise SpecError(f"{self.name}: two tests are named {test.name!r}")
            self.tests.append(test)
            return test

        return register

    def check_cell(self, exercise: str, points: float = 0) -> None:
        """Give ``points`` to the check cell of ``exercise`` (run by nbval when grading)."""
        self.check_points[exercise] = points

    def variant(self, exercise: str, old: str, new: str, fails: str) -> None:
        """Declare a wrong solution: ``old`` replaced by ``new`` in the cell of ``exercise`` fails ``fails``."""
        self.variants.append(Variant(exercise, old, new, fails))

    @property
    def forbidden_imports(self) -> tuple[str, ...]:
        """The names a graded cell may not import: every forbidden attribute of a coursepkg module."""
        names = [f.attribute for f in self.forbidden if _is_coursepkg_module(f.owner)]
        return tuple(sorted(set(names)))

    def switched_off(self, *extra: Forbidden):
        """Context manager: the set's forbidden answers and ``extra`` raise :class:`ForbiddenCall`."""
        return switched_off([*self.forbidden, *extra])

    # -- reading the reference ------------------------------------------------------------------
    @property
    def reference_path(self) -> Path:
        return self.references_dir / f"{self.name}.py"

    @property
    def metadata_path(self) -> Path:
        return self.references_dir / f"{self.name}.json"

    def has_reference(self) -> bool:
        return self.reference_path.is_file() and self.metadata_path.is_file()

    def metadata(self) -> dict:
        """The generated metadata: ``exercises`` (points, names, cell) and ``checks`` (outputs)."""
        if self._metadata is None:
            if not self.has_reference():
                raise SpecError(
                    f"exercise set {self.name}: no reference in {self.references_dir} "
                    "(run `make exercises` to generate it from solutions/)"
                )
            self._metadata = json.loads(self.metadata_path.read_text(encoding="utf-8"))
        return self._metadata

    def reference_source(self) -> str:
        return self.reference_path.read_text(encoding="utf-8")

    def exercises(self) -> dict[str, float]:
        """Exercise id -> points, in notebook order."""
        items = sorted(self.metadata()["exercises"].items(), key=lambda kv: kv[1].get("cell", 0))
        return {k: v["points"] for k, v in items}

    def tests_of(self, exercise: str) -> list[Test]:
        return [t for t in self.tests if t.exercise == exercise]

    def get_test(self, name: str) -> Test:
        for test in self.tests:
            if test.name == name:
                return test
        raise KeyError(name)

    def checks(self) -> dict[str, float]:
        """Check id -> points, for every check cell of the reference (undeclared ones are worth 0)."""
        return {k: self.check_points.get(k, 0) for k in self.metadata().get("checks", {})}

    def max_score(self, nbval: bool = True) -> float:
        total = sum(t.points for t in self.tests)
        if nbval:
            total += sum(self.check_points.values())
        return total

    def validate(self) -> None:
        """Raise :class:`SpecError` listing every disagreement between the spec and its reference."""
        meta = self.metadata()
        exercises = meta["exercises"]
        checks = meta.get("checks", {})
        names = {n for ex in exercises.values() for n in ex.get("names", [])}
        names |= set(meta.get("names", []))
        problems = []
        for test in self.tests:
            if test.exercise not in exercises:
                problems.append(f"test {test.name} belongs to {test.exercise!r}, not a graded cell")
            if not (isinstance(test.points, (int, float)) and test.points >= 0):
                problems.append(f"test {test.name} has invalid points {test.points!r}")
            for required in test.requires:
                if required not in names:
                    problems.append(f"test {test.name} requires `{required}`, which the reference lacks")
        for entry in self.forbidden:
            if not hasattr(entry.owner, entry.attribute):
                problems.append(f"forbidden answer {entry.label} does not exist (renamed?)")
        for variant in self.variants:
            if variant.fails not in {t.name for t in self.tests_of(variant.exercise)}:
                problems.append(f"variant of {variant.exercise}: {variant.fails!r} is not one of its tests")
            if variant.old == variant.new:
                problems.append(f"variant of {variant.exercise}: {variant.old!r} is replaced by itself")
        for check, points in self.check_points.items():
            if check not in checks:
                problems.append(f"check_cell({check!r}): the reference has no check cell with this id")
            elif check not in exercises and points:
                problems.append(f"check_cell({check!r}) has points but is no exercise's check cell")
        for exercise, info in exercises.items():
            if not EXERCISE_ID.match(exercise) or not exercise.startswith(self.name + "-"):
                problems.append(f"exercise id {exercise!r} must look like '{self.name}-some-name'")
            tests = self.tests_of(exercise)
            declared = sum(t.points for t in tests) + self.check_points.get(exercise, 0)
            if not tests:
                problems.append(f"exercise {exercise} ({_points(info['points'])}) has no tests")
            elif not math.isclose(declared, info["points"], abs_tol=1e-9):
                problems.append(
                    f"exercise {exercise}: its graded cell says {_points(info['points'])}, its tests "
                    f"and check cell give {_points(declared)}"
                )
        if problems:
            raise SpecError(f"exercise set {self.name} ({self.origin}):\n  " + "\n  ".join(problems))

    def __repr__(self) -> str:
        return f"<ExerciseSet {self.name} ({self.notebook}), {len(self.tests)} tests>"


def _points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


# -- comparing ----------------------------------------------------------------------------------


def describe(value: Any) -> str:
    """A short description of a returned value for failure messages."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, dict) and "__unsupported__" in value:
        return f"an object of type {value['__unsupported__']}"
    if isinstance(value, (bool, int, float, complex)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {text!r}"
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return f"an object of type {type(value).__name__}"


def default_compare(
    student: Any, reference: Any, what: str = "result", rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL
) -> None:
    """Compare nested returned values; ``AssertionError`` names the first difference.

    Tensors must agree in shape and dtype and be close (``atol + rtol*|expected|``; integer and
    bool tensors exactly), floats likewise, other values exactly. A top-level dict uses its keys
    as labels, so ``{"density_under_map(x)": p}`` gives ``density_under_map(x): max abs error ...``.
    """
    import torch

    from coursepkg.testing import assert_close

    if isinstance(reference, dict) and isinstance(student, dict) and what == "result":
        _compare_dict(student, reference, None, rtol, atol)
        return
    if isinstance(reference, torch.Tensor):
        if not isinstance(student, torch.Tensor):
            if isinstance(student, (int, float)) and reference.numel() == 1 and not isinstance(student, bool):
                student = torch.tensor(student, dtype=reference.dtype).reshape(reference.shape)
            else:
                raise AssertionError(f"{what}: expected {describe(reference)}, got {describe(student)}")
        if student.shape != reference.shape:
            raise AssertionError(
                f"{what}: expected shape {tuple(reference.shape)}, got {tuple(student.shape)}"
            )
        if student.dtype != reference.dtype:
            raise AssertionError(f"{what}: expected dtype {reference.dtype}, got {student.dtype}")
        if reference.dtype == torch.bool or not (reference.is_floating_point() or reference.is_complex()):
            if not torch.equal(student, reference):
                bad = torch.nonzero(student != reference)[0].tolist()
                raise AssertionError(
                    f"{what}: first mismatch at index {bad}: expected {reference[tuple(bad)].item()}, "
                    f"got {student[tuple(bad)].item()}"
                )
            return
        if reference.is_complex():
            assert_close(torch.view_as_real(student), torch.view_as_real(reference), what, atol, rtol)
        else:
            assert_close(student, reference, what, atol, rtol)
        return
    if isinstance(reference, bool):
        if isinstance(student, torch.Tensor) and student.numel() == 1:
            student = bool(student.item())
        if not isinstance(student, bool) or student != reference:
            raise AssertionError(f"{what}: expected {reference}, got {describe(student)}")
        return
    if isinstance(reference, (int, float)):
        if isinstance(student, torch.Tensor) and student.numel() == 1:
            student = student.item()
        if isinstance(student, bool) or not isinstance(student, (int, float)):
            raise AssertionError(f"{what}: expected the number {reference:.6g}, got {describe(student)}")
        if isinstance(reference, int) and isinstance(student, int):
            if student != reference:
                raise AssertionError(f"{what}: expected {reference}, got {student}")
            return
        if not math.isfinite(student) and math.isfinite(reference):
            raise AssertionError(f"{what}: expected {reference:.6g}, got the non-finite value {student}")
        if not math.isclose(student, reference, rel_tol=rtol, abs_tol=atol) and not (
            math.isnan(student) and math.isnan(reference)
        ):
            raise AssertionError(
                f"{what}: expected {reference:.6g}, got {student:.6g} "
                f"(error {abs(student - reference):.3g}, tolerance {atol:g} + {rtol:g}*|expected|)"
            )
        return
    if isinstance(reference, (list, tuple)):
        if not isinstance(student, (list, tuple)):
            raise AssertionError(f"{what}: expected {describe(reference)}, got {describe(student)}")
        if len(student) != len(reference):
            raise AssertionError(f"{what}: expected {len(reference)} items, got {len(student)}")
        for i, (s, r) in enumerate(zip(student, reference, strict=True)):
            default_compare(s, r, f"{what}[{i}]", rtol, atol)
        return
    if isinstance(reference, dict):
        if not isinstance(student, dict):
            raise AssertionError(f"{what}: expected {describe(reference)}, got {describe(student)}")
        _compare_dict(student, reference, what, rtol, atol)
        return
    if student != reference or type(student) is not type(reference):
        raise AssertionError(f"{what}: expected {reference!r}, got {describe(student)}")


def _compare_dict(student: dict, reference: dict, what: str | None, rtol: float, atol: float) -> None:
    missing = [k for k in reference if k not in student]
    if missing:
        where = f"{what}: " if what else ""
        raise AssertionError(f"{where}missing entries {missing}")
    for key, ref in reference.items():
        label = str(key) if what is None else f"{what}[{key!r}]"
        default_compare(student[key], ref, label, rtol, atol)


# -- the package's answers, switched off -------------------------------------------------------


class ForbiddenCall(RuntimeError):
    """A graded function called code that would give the exercise's answer away."""


DEFAULT_WHY = "this exercise asks for your own code"


class Forbidden(NamedTuple):
    """``owner.attribute`` (a module's function or class, a class's method) may not answer an exercise."""

    owner: Any
    attribute: str
    why: str = DEFAULT_WHY

    @property
    def label(self) -> str:
        name = getattr(self.owner, "__qualname__", None) or self.owner.__name__
        module = getattr(self.owner, "__module__", None)
        prefix = f"{module}.{name}" if module and isinstance(self.owner, type) else name
        return f"{prefix}.{self.attribute}"


def forbid(owner: Any, *attributes: str, why: str = DEFAULT_WHY) -> list[Forbidden]:
    """``Forbidden`` entries for several attributes of one module or class."""
    return [Forbidden(owner, attribute, why) for attribute in attributes]


def _is_coursepkg_module(owner: Any) -> bool:
    name = getattr(owner, "__name__", "") if isinstance(owner, ModuleType) else ""
    return name == "coursepkg" or name.startswith("coursepkg.")


def _refuse(label: str, why: str) -> Callable:
    def refuse(*args, **kwargs):
        raise ForbiddenCall(f"{label} was called: {why}")

    return refuse


@contextlib.contextmanager
def switched_off(entries: Iterable[Forbidden]) -> Iterator[None]:
    """Within the block, every ``owner.attribute`` of ``entries`` raises :class:`ForbiddenCall`.

    Probes wrap the student's code in it, so that a graded function cannot lean on the package's
    answer even through an attribute access that the grader's static import check does not see.
    A class's attribute is replaced on the class itself, so its instances and subclasses refuse
    too. An attribute the owner lacks is a :class:`SpecError` (a renamed answer must not quietly
    become allowed). Everything is put back as it was on exit, exceptions included.
    """
    saved = []
    try:
        for entry in entries:
            owner, attribute = entry.owner, entry.attribute
            if not hasattr(owner, attribute):
                raise SpecError(f"cannot switch off {entry.label}: it does not exist")
            own = vars(owner)
            saved.append((owner, attribute, attribute in own, own.get(attribute)))
            setattr(owner, attribute, _refuse(entry.label, entry.why))
        yield
    finally:
        for owner, attribute, had_own, original in reversed(saved):
            if had_own:
                setattr(owner, attribute, original)
            else:  # it was inherited: removing the replacement uncovers it again
                delattr(owner, attribute)


def forbid_brute_force_jacobian(why: str) -> list[Forbidden]:
    """coursepkg's brute-force Jacobian, every way in."""
    import coursepkg
    import coursepkg.jacobian as jacobian_module

    return forbid(coursepkg, "brute_force_jacobian", "log_abs_det_jacobian", why=why) + forbid(
        jacobian_module, "jacobian", "log_abs_det_jacobian", why=why
    )


def forbid_determinants(why: str) -> list[Forbidden]:
    """torch's determinant functions."""
    import torch

    return forbid(torch.linalg, "det", "slogdet", why=why) + forbid(
        torch, "det", "slogdet", "logdet", why=why
    )


# -- finding sets -------------------------------------------------------------------------------

_REGISTRY: dict[str, ExerciseSet] = {}
_LOCK = threading.RLock()


def _specs_package_names() -> list[str]:
    from . import specs

    return sorted(m.name for m in pkgutil.iter_modules(specs.__path__) if SET_NAME.match(m.name))


def available_sets() -> list[str]:
    """Names of the known exercise sets: those of ``coursepkg/grading/specs`` and registered ones."""
    with _LOCK:
        return sorted(set(_specs_package_names()) | set(_REGISTRY))


def get_set(name: str) -> ExerciseSet:
    """The exercise set ``name`` (``"ch01"``), registered or imported from ``coursepkg.grading.specs``."""
    with _LOCK:
        if name in _REGISTRY:
            return _REGISTRY[name]
        if not SET_NAME.match(name) or name not in _specs_package_names():
            known = ", ".join(available_sets()) or "none"
            raise LookupError(f"no exercise set named {name!r} (known: {known})")
        return load_set(f"{__package__}.specs.{name}")


def load_set(source: str | Path | ModuleType) -> ExerciseSet:
    """Import a spec module (a module, a dotted name or a ``.py`` path), validate and register its ``SET``."""
    with _LOCK:
        if isinstance(source, ModuleType):
            module = source
            origin = module.__name__ if module.__name__ in sys.modules else str(module.__file__)
        elif isinstance(source, Path) or str(source).endswith(".py") or "/" in str(source):
            path = Path(source).resolve()
            origin = str(path)
            key = f"coursepkg_grading_spec_{zlib.crc32(origin.encode()):08x}_{path.stem}"
            spec = importlib.util.spec_from_file_location(key, path)
            if spec is None or spec.loader is None:
                raise SpecError(f"cannot import the spec module {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # always afresh: the file may have changed
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[key]
                raise
        else:
            origin = str(source)
            module = importlib.import_module(origin)
        exercise_set = getattr(module, "SET", None)
        if not isinstance(exercise_set, ExerciseSet):
            raise SpecError(f"{origin} defines no `SET = ExerciseSet(...)`")
        exercise_set.origin = origin
        if exercise_set.has_reference():
            exercise_set.validate()
        _REGISTRY[exercise_set.name] = exercise_set
        return exercise_set


def set_for_exercise(exercise: str) -> ExerciseSet:
    """The set an exercise id (``ch01-density``) or a set name (``ch01``) belongs to."""
    match = EXERCISE_ID.match(exercise)
    name = match.group(1) if match else exercise
    return get_set(name)
