"""Tests of the grading machinery on the toy exercise set of conftest.py (ch99)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coursepkg.grade import grade_notebook, main, recognise
from coursepkg.grading import check
from coursepkg.grading.generate import GenerateError, strip_solutions
from coursepkg.grading.generate import main as generate_main
from coursepkg.grading.notebook import NotebookError, extract_program, parse_notebook, read_notebook
from coursepkg.grading.sandbox import Limits
from coursepkg.grading.spec import SpecError, default_compare, load_set

ROOT = Path(__file__).resolve().parents[2]


def _notebook(*cells, metadata=None) -> bytes:
    """A notebook's JSON from ``(source, tags)`` pairs (or plain sources) of code cells."""
    data = []
    for cell in cells:
        source, tags = cell if isinstance(cell, tuple) else (cell, [])
        data.append(
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {"tags": tags},
                "outputs": [],
                "source": source,
            }
        )
    return json.dumps(
        {"cells": data, "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 4}
    ).encode()


# -- reading notebooks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b'{"cells": [', "not valid JSON at line 1, column 12"),
        (b"print('hello')\n", "not valid JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
        (b"[1, 2, 3]", "without the list of `cells`"),
        (b'{"metadata": {}}', "without the list of `cells`"),
        (b'{"cells": [], "metadata": {}, "nbformat": 4}', "has no cells"),
        (b'{"cells": [{"cell_type": "code", "source": 3}], "nbformat": 4}', "source of cell 1 is not text"),
    ],
)
def test_unreadable_notebooks_get_a_clear_message(tmp_path, content, message):
    path = tmp_path / "sub.ipynb"
    path.write_bytes(content)
    with pytest.raises(NotebookError, match=re.escape(message)):
        read_notebook(path)


def test_a_folder_is_not_a_notebook(tmp_path):
    with pytest.raises(NotebookError, match="is a folder"):
        read_notebook(tmp_path)


def test_cells_are_found_by_first_line_or_tag():
    notebook = parse_notebook(
        _notebook(
            ("# EXERCISE ch99-a (2 points)\ndef f(): pass", []),
            ("def g(): pass", ["exercise:ch99-b"]),
            ("%%time\n# CHECK ch99-a\nprint(f())", []),
            ("print(g())", ["check:ch99-b"]),
            ("x = 1", []),
            ("# EXERCISE ch99-typo (1 point)\ndef h(): pass", ["exercise:ch99-c"]),
        )
    )
    found = [(c.kind, c.exercise, c.points) for c in notebook.cells]
    assert found == [
        ("exercise", "ch99-a", 2.0),
        ("exercise", "ch99-b", None),
        ("check", "ch99-a", None),
        ("check", "ch99-b", None),
        (None, None, None),
        ("exercise", "ch99-c", 1.0),  # the tag wins over an edited first line
    ]


def test_only_definitions_of_graded_cells_are_kept():
    graded = """\
# EXERCISE ch99-a (1 point)
import math
%matplotlib inline
!pip install nothing

SCALE = torch.tensor([1.0, 2.0]) * 2
LIMIT: float = math.log(2)
NAMES = ("a", "b")
trained = fit(Model(), steps=10_000)
print("training...")
for i in range(10**9):
    pass


def f(x):
    return x * SCALE


class Model(nn.Module):
    pass


while True:
    pass
"""
    other = "import torch\nfrom torch import nn\nfrom coursepkg.layers import ElementwiseAffine, Planar\nimport coursepkg.grading\n\ndef fit(m, steps): pass\nfit(None, 1)\n"
    notebook = parse_notebook(_notebook(other, (graded, ["exercise:ch99-a"])), "sub.ipynb")
    program = extract_program(notebook, forbidden=("ElementwiseAffine",))
    imports, definitions = program.units
    assert "ElementwiseAffine" not in imports.source and "Planar" in imports.source
    assert "coursepkg.grading" not in imports.source
    assert imports.filename == "sub.ipynb#cell1"
    namespace: dict = {}
    from coursepkg.grading.notebook import compile_unit

    exec(compile_unit(imports), namespace)
    exec(compile_unit(definitions), namespace)  # no training, no loop, no magic
    assert {"f", "Model", "SCALE", "LIMIT", "NAMES"} <= set(namespace)
    assert "trained" not in namespace and "i" not in namespace
    assert program.defined_elsewhere == {"fit": 1}
    assert not program.problems


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("def f(x)\n    return x", "syntax error on line 2: expected ':'"),
        ("from coursepkg.layers import ElementwiseAffine\n", "imports `ElementwiseAffine` from coursepkg"),
        (
            "import coursepkg\nF = coursepkg.layers.ElementwiseAffine\n",
            "uses `coursepkg.layers.ElementwiseAffine`",
        ),
        ("from coursepkg.layers import *\n", "imports everything from `coursepkg.layers`"),
        ("from coursepkg.layers import Planar as P, ElementwiseAffine as E\n", "imports `ElementwiseAffine`"),
        ("from coursepkg.grading.references import ch99\n", "the grader"),
        (
            "def f(x):\n    from coursepkg.layers import ElementwiseAffine\n    return ElementwiseAffine(2)(x)\n",
            "imports `ElementwiseAffine` from coursepkg",
        ),
        (
            "class A:\n    def f(self, x):\n        import coursepkg.layers as cl\n"
            "        return cl.ElementwiseAffine(2)(x)\n",
            "uses `cl.ElementwiseAffine`",
        ),
    ],
)
def test_graded_cells_that_cannot_be_graded(cell, problem):
    notebook = parse_notebook(_notebook(("# EXERCISE ch99-a (1 point)\n" + cell, [])))
    program = extract_program(notebook, forbidden=("ElementwiseAffine",))
    assert problem in program.problems["ch99-a"]


def test_forbidden_name_imported_in_another_cell_is_refused():
    notebook = parse_notebook(
        _notebook(
            "from coursepkg.layers import ElementwiseAffine\n",
            ("# EXERCISE ch99-a (1 point)\nclass A(ElementwiseAffine):\n    pass\n", []),
        )
    )
    program = extract_program(notebook, forbidden=("ElementwiseAffine",))
    assert "uses `ElementwiseAffine` from coursepkg" in program.problems["ch99-a"]


# -- generating exercises -----------------------------------------------------------------------


def test_solution_regions_become_stubs():
    source = """\
# EXERCISE ch99-a (1 point)
def f(x):
    ### HINT: use torch.exp
    ### HINT: and mind the sign
    ### BEGIN SOLUTION
    y = torch.exp(-x)
    ### END SOLUTION
    return y
### BEGIN SOLUTION
C = 3
### END SOLUTION"""
    assert strip_solutions(source, "ch99-a") == (
        "# EXERCISE ch99-a (1 point)\n"
        "def f(x):\n"
        "    # Hint: use torch.exp\n"
        "    # Hint: and mind the sign\n"
        '    raise NotImplementedError("Exercise ch99-a: replace this line with your solution. '
        'Hint: use torch.exp and mind the sign")\n'
        "    return y\n"
        'raise NotImplementedError("Exercise ch99-a: replace this line with your solution.")'
    )
    for broken, why in [
        ("### BEGIN SOLUTION\nx = 1\n", "without `### END SOLUTION`"),
        ("x = 1\n### END SOLUTION\n", "without `### BEGIN SOLUTION`"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION\n", "inside another"),
        ("x = 1\n", "needs at least one"),
    ]:
        with pytest.raises(GenerateError, match=re.escape(why)):
            strip_solutions(broken, "ch99-a")


def test_generated_files_are_deterministic_and_checked(toy, tmp_path, capsys):
    exercises = tmp_path / "exercises"
    references = tmp_path / "references"
    shutil.copytree(toy.root / "exercises", exercises)
    shutil.copytree(toy.references, references)
    options = [
        "--solutions",
        str(toy.root / "solutions"),
        "--exercises",
        str(exercises),
        "--references",
        str(references),
    ]
    assert generate_main(["--check", *options]) == 0
    exercise = json.loads((exercises / "99_toy.ipynb").read_text())
    assert exercise["metadata"]["coursepkg"] == {"exercise_set": "ch99", "kind": "exercise"}
    code = [c for c in exercise["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert (exercises / "99_toy.ipynb").read_text().endswith("}\n")

    text = (exercises / "99_toy.ipynb").read_text()
    (exercises / "99_toy.ipynb").write_text(text.replace("Hint: divide", "Hint: multiply"))
    (exercises / "00_stale.ipynb").write_text("{}")
    capsys.readouterr()
    assert generate_main(["--check", *options]) == 1
    err = capsys.readouterr().err
    assert (
        "99_toy.ipynb differs" in err and "00_stale.ipynb has no solution" in err and "make exercises" in err
    )
    (exercises / "00_stale.ipynb").unlink()
    assert generate_main(options) == 0
    assert (exercises / "99_toy.ipynb").read_text() == text


def test_reference_module_is_lint_clean(toy):
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    reference = str(toy.references / "ch99.py")
    for command in (
        [ruff, "check", "--no-cache", reference],
        [ruff, "format", "--check", "--no-cache", reference],
    ):
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_solution_without_check_output_is_refused(toy, tmp_path, edit_notebook):
    from coursepkg.grading.generate import generate

    data = json.loads(toy.solution.read_text())
    for cell in data["cells"]:
        if "check:ch99-affine" in cell.get("metadata", {}).get("tags", []):
            cell["outputs"] = []
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "99_toy.ipynb").write_text(json.dumps(data))
    with pytest.raises(GenerateError, match="check cell ch99-affine has no stored output"):
        generate(tmp_path / "solutions", tmp_path / "exercises", tmp_path / "references")


# -- specs and comparisons ----------------------------------------------------------------------


def test_spec_points_must_match_the_notebook(toy, tmp_path):
    spec = toy.spec.read_text()
    spec = spec.replace(
        'references=Path(__file__).resolve().parent / "references"', f"references={str(toy.references)!r}"
    )
    wrong = tmp_path / "spec_points.py"
    wrong.write_text(
        spec.replace('@SET.test("ch99-constant", points=1,', '@SET.test("ch99-constant", points=2,')
    )
    with pytest.raises(
        SpecError, match="ch99-constant: its graded cell says 1 point, its tests and check cell give 2 points"
    ):
        load_set(wrong)
    wrong.write_text(spec.replace('requires=("LOG_TWO_PI",)', 'requires=("LOG_2PI",)'))
    with pytest.raises(SpecError, match="requires `LOG_2PI`, which the reference lacks"):
        load_set(wrong)
    wrong.write_text(spec.replace('"ElementwiseAffine")', '"ElementwiseAffin")'))
    with pytest.raises(SpecError, match="forbidden answer coursepkg.layers.ElementwiseAffin does not exist"):
        load_set(wrong)
    wrong.write_text(
        spec + '\nSET.variant("ch99-constant", "2 * math.pi", "math.pi", fails="logpdf_values")\n'
    )
    with pytest.raises(SpecError, match="variant of ch99-constant: 'logpdf_values' is not one of its tests"):
        load_set(wrong)
    load_set(toy.spec)  # registered again for the other tests


@pytest.mark.parametrize(
    ("student", "reference", "message"),
    [
        (torch.zeros(3), torch.zeros(4), "p: expected shape (4,), got (3,)"),
        (
            torch.zeros(3),
            torch.zeros(3, dtype=torch.float64),
            "p: expected dtype torch.float64, got torch.float32",
        ),
        (torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0]), "p: max abs error 0.5"),
        (torch.tensor([1.0, 2.0, 3.5]), torch.tensor([1.0, 2.0, 3.0]), "index [2]: expected 3, got 3.5"),
        (
            [1, 2],
            torch.zeros(2),
            "p: expected a tensor of shape (2,) (torch.float32), got a list of length 2",
        ),
        (torch.tensor([1, 3]), torch.tensor([1, 2]), "p: first mismatch at index [1]: expected 2, got 3"),
        (1.5, 1.0, "p: expected 1, got 1.5"),
        (True, False, "p: expected False, got bool True"),
    ],
)
def test_default_comparison_says_what_and_where(student, reference, message):
    with pytest.raises(AssertionError) as error:
        default_compare({"p": student}, {"p": reference})
    assert message in str(error.value)


def test_default_comparison_tolerates_float_noise():
    reference = torch.linspace(-3, 3, 101, dtype=torch.float64)
    default_compare(
        {"p": reference * (1 + 5e-5) + 1e-6, "n": 2.0 + 1e-7, "k": 3}, {"p": reference, "n": 2.0, "k": 3}
    )
    with pytest.raises(AssertionError, match="missing entries"):
        default_compare({}, {"p": reference})


# -- grading ------------------------------------------------------------------------------------


def test_recognise_the_exercise_set(toy):
    for name in ("99_toy.ipynb", "alice_99_toy.ipynb", "ch99-bob.ipynb", "carol toy.ipynb"):
        assert recognise(name).name == "ch99", name
    with pytest.raises(LookupError, match="cannot tell which exercise set"):
        recognise("homework.ipynb")
    notebook = parse_notebook(_notebook("x = 1", metadata={"coursepkg": {"exercise_set": "ch99"}}))
    assert recognise("homework.ipynb", notebook).name == "ch99"


def test_solution_gets_full_marks_and_exercise_zero(toy):
    solution = grade_notebook(toy.solution, nbval=False)
    assert (solution.status, solution.score, solution.max_score) == ("ok", 4, 4), solution.table()
    exercise = grade_notebook(toy.exercise, nbval=False)
    assert (exercise.status, exercise.score, exercise.max_score) == ("ok", 0, 4)
    for test in exercise.tests:
        assert re.match(r"Exercise ch99-\w+ still raises NotImplementedError: replace the stub", test.message)


def test_check_cells_count_when_the_notebook_runs_top_to_bottom(toy, tmp_path, edit_notebook):
    """One nbval run of a wrong notebook that stores the right outputs, then hangs.

    The first check cell is compared with the reference's outputs (never the stored ones); the
    cell that hangs after it stops the run, so the second check cell gets nothing and its message
    names that cell.
    """
    folder = tmp_path / "nbval"
    folder.mkdir()
    forged = edit_notebook(
        toy.solution, folder / "forged.ipynb", {"ch99-logpdf": [(" - math.log(abs(scale))", "")]}
    )
    data = json.loads(forged.read_text())
    loop = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        # A hang that leaves the CPU to the other tests; the marker does not dodge the run.
        "source": "# NBVAL_SKIP\nimport time\n\ntime.sleep(600)\n",
    }
    data["cells"].insert(6, loop)  # after the first check cell, before the second exercise
    forged.write_text(json.dumps(data))
    limits = Limits(test_timeout=20, cell_timeout=6, nbval_timeout=120)  # importing torch takes seconds
    bad = grade_notebook(forged, nbval=True, limits=limits)
    checks = {t.name: t for t in bad.tests if t.kind == "check"}
    assert set(checks) == {"check ch99-logpdf", "check ch99-affine"}
    logpdf, affine = checks["check ch99-logpdf"], checks["check ch99-affine"]
    assert not logpdf.passed and logpdf.max_points == 1
    assert "where the reference prints `[-1.612, -1.737, -2.112] (3,)`" in logpdf.message, logpdf.message
    assert not affine.passed and affine.max_points == 0
    assert affine.message == (
        "not run: cell 7 (`# NBVAL_SKIP`) did not finish within 6 s (an infinite loop, or much too "
        "slow?); the check cells after it did not run"
    ), affine.message
    assert any("when the notebook ran from top to bottom, cell 7" in e for e in bad.errors), bad.errors
    assert (bad.score, bad.max_score) == (3, 5), bad.table()


def test_what_stops_the_run():
    from coursepkg.grading.nbval_plugin import stops_the_run

    assert stops_the_run(is_check_cell=False, error_name="ValueError", timed_out=False)
    assert stops_the_run(is_check_cell=False, error_name=None, timed_out=False)  # a dead kernel
    assert stops_the_run(is_check_cell=True, error_name=None, timed_out=True)
    assert not stops_the_run(is_check_cell=False, error_name="NotImplementedError", timed_out=False)
    assert not stops_the_run(is_check_cell=True, error_name="ValueError", timed_out=False)
    assert not stops_the_run(is_check_cell=True, error_name=None, timed_out=False)  # output differs


def test_messages_of_a_run_that_stopped():
    """nbval's results mapped to check cells, without running a kernel."""
    from coursepkg.grading.nbval_check import NbvalRun, judge_checks

    notebook = parse_notebook(
        _notebook(
            (
                "# EXERCISE ch99-a (1 point)\ndef f(): raise NotImplementedError('Exercise ch99-a: replace this line with your solution.')",
                [],
            ),
            ("# CHECK ch99-a\nprint(f())", []),
            "model = build(0)\nmodel.fit()",
            ("# CHECK ch99-b\nprint(1)", []),
        )
    )
    checks = {1: "ch99-a", 3: "ch99-b"}
    stub = "Cell execution caused an exception\nNotImplementedError: Exercise ch99-a: replace this line with your solution."
    results = {
        0: ("passed", "", 0.1),
        1: ("failed", stub, 0.1),
        2: ("failed", "Cell execution caused an exception\nTraceback...\nValueError: no data", 0.1),
        3: ("skipped", "", 0.0),
    }
    reference = {"ch99-a": [], "ch99-b": [{"output_type": "stream", "name": "stdout", "text": "1\n"}]}
    run = NbvalRun(results, printed={}, stopped_at=2, timed_out=False, output="")
    outcomes, notes = judge_checks(notebook, checks, reference, run, Limits())
    assert outcomes["ch99-a"].message == (
        "Exercise ch99-a still raises NotImplementedError: replace the stub with your solution (cell 2)"
    )
    assert outcomes["ch99-b"].message == (
        "not run: cell 3 (`model = build(0)`) raised ValueError: no data; the check cells after it did not run"
    )
    assert notes == [
        "when the notebook ran from top to bottom, cell 3 (`model = build(0)`) raised ValueError: no data; "
        "the check cells after it did not run"
    ]


def test_cli_writes_table_json_and_gradescope(toy, tmp_path, capsys, edit_notebook):
    wrong = edit_notebook(
        toy.solution,
        tmp_path / "99_toy.ipynb",
        {
            "ch99-constant": [("2 * math.pi", "math.pi")],
            "ch99-logpdf": [("    z = x / scale\n", "    z = rescale(x, scale)\n")],
        },
        append=["def rescale(x, scale):\n    return x / scale\n"],
    )
    report, scope = tmp_path / "report.json", tmp_path / "results.json"
    options = ["--json", str(report), "--gradescope", str(scope), "--no-nbval", "--spec", str(toy.spec)]
    assert main([str(wrong), *options]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"constant_value\s+ch99-constant\s+0/1\s+FAIL\s+LOG_TWO_PI: expected 1.83788, got 1.14473", out
    )
    assert "score: 2 / 4 points" in out, out
    data = json.loads(report.read_text())
    assert (data["score"], data["max_score"], data["exercise_set"], data["status"]) == (2, 4, "ch99", "ok")
    keys = {"name", "exercise", "points", "max_points", "passed", "message", "duration_s"}
    assert keys <= set(data["tests"][0])
    assert len(data["tests"]) == 4 and data["notebook"] == "99_toy.ipynb" and data["errors"] == []
    (logpdf,) = [t for t in data["tests"] if t["name"] == "logpdf_values"]
    assert (
        "NameError: name 'rescale' is not defined (in `scaled_logpdf`, cell 5, line 6: `z = rescale(x, scale)`)"
        in logpdf["message"]
    )
    assert "`rescale` is defined in cell 13, which is not a graded cell" in logpdf["message"]
    results = json.loads(scope.read_text())
    assert results["score"] == 2 and {t["status"] for t in results["tests"]} == {"passed", "failed"}
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.ipynb")])
    assert exit_info.value.code == 2


def test_never_crashes_on_internal_errors(toy, tmp_path, monkeypatch):
    import coursepkg.grading.runner as runner

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "grade_probes", broken)
    report = grade_notebook(toy.solution, nbval=False)
    assert report.status == "error" and "internal error in the grader: RuntimeError: boom" in report.message


# -- the self-check -----------------------------------------------------------------------------


def test_self_check_in_a_live_notebook(toy, capsys):
    namespace: dict = {"__name__": "__main__"}
    exec(compile(toy.references.joinpath("ch99.py").read_text(), "notebook", "exec"), namespace)
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    summary = check("ch99-logpdf", namespace=namespace)
    assert torch.equal(torch.random.get_rng_state(), state), (
        "the self-check changed the notebook's random state"
    )
    out = capsys.readouterr().out
    assert "✓ logpdf_values  1/1" in out and "all tests pass (1 / 1 points)" in out
    assert "check cell  1 point(s)" in out
    assert (summary.score, summary.max_score, summary.passed) == (1, 1, True)

    namespace["ScaleShift"].forward = lambda self, x: (x, x.new_zeros(x.shape[0]))
    summary = check(namespace=namespace)  # the set is recognised from the names defined
    out = capsys.readouterr().out
    assert "✗ affine_values  0/1  ScaleShift(4).forward(x)[0]: max abs error" in out, out
    assert (summary.score, summary.max_score) == (2, 4)
    assert 'run check("ch99") again' in out

    def stub(x, scale):
        raise NotImplementedError("Exercise ch99-logpdf: replace this line with your solution.")

    namespace["scaled_logpdf"] = stub
    del namespace["LOG_TWO_PI"]
    check("ch99", namespace=namespace)
    out = capsys.readouterr().out
    assert "Exercise ch99-logpdf still raises NotImplementedError" in out
    assert "your notebook has no function or class named `LOG_TWO_PI`" in out
    with pytest.raises(ValueError, match="no exercise 'ch99-nope'"):
        check("ch99-nope", namespace=namespace)


def test_sanitizer_covers_devices_addresses_and_timings():
    from nbval.plugin import get_sanitize_patterns

    from coursepkg.grading.nbval_check import SANITIZE

    patterns = get_sanitize_patterns(SANITIZE.read_text())

    def clean(text):
        for regex, replace in patterns:
            text = re.sub(regex, replace, text)
        return text

    assert clean("tensor([1., 2.], device='cuda:0', grad_fn=<AddBackward0>)") == clean("tensor([1., 2.])")
    assert clean("on cuda:0") == clean("on cpu") == clean("on mps")
    assert clean("<Flow at 0x7f3a2b1c9d00>") == clean("<Flow at 0x55d1e2f3a4b0>")
    assert clean("took 1.25 s") == clean("took 980 ms")
    assert clean(" 40%|####      | 4/10 [00:01<00:02, 3.1it/s]") == clean(
        "100%|##########| 10/10 [00:03<00:00]"
    )
    assert clean("(3, 4) 0.242 True torch.float32") == "(3, 4) 0.242 True torch.float32"


# -- the course's own exercise sets -------------------------------------------------------------


def test_exercises_are_in_sync_with_solutions():
    """exercises/ and the packaged references are exactly what `make exercises` writes."""
    assert any((ROOT / "solutions").glob("*.ipynb")), "solutions/ holds no notebook"
    result = subprocess.run(
        [sys.executable, "-m", "coursepkg.grading.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- switching off the package's answers during probes ----------------------------------------------


def test_switched_off_refuses_calls_then_restores_everything():
    import types

    from coursepkg.grading.spec import ForbiddenCall, SpecError, forbid, switched_off

    class Base:
        def forward(self):
            return "base"

    class Child(Base):
        pass

    module = types.ModuleType("pkg")
    module.answer = lambda: 42
    original = module.answer
    entries = forbid(module, "answer", why="write your own") + forbid(Child, "forward")
    with pytest.raises(ZeroDivisionError), switched_off(entries):
        with pytest.raises(ForbiddenCall, match=r"^pkg.answer was called: write your own$"):
            module.answer()
        with pytest.raises(ForbiddenCall, match="Child.forward was called"):
            Child().forward()
        assert Base().forward() == "base"  # only the class named is switched off
        1 / 0  # noqa: B018 (the attributes come back even when the block fails)
    assert module.answer is original and module.answer() == 42
    assert "forward" not in vars(Child) and Child().forward() == "base"
    with pytest.raises(SpecError, match="cannot switch off pkg.absent: it does not exist"):
        with switched_off(entries + forbid(module, "absent")):
            pass
    assert module.answer is original and "forward" not in vars(Child)


def test_forbidden_answers_of_every_set_exist():
    """A renamed package function must not quietly re-open an exercise: every entry exists."""
    from coursepkg.grading.spec import available_sets, get_set

    for name in available_sets():
        exercise_set = get_set(name)
        assert exercise_set.forbidden or name == "ch99", f"{name} forbids nothing"
        for entry in exercise_set.forbidden:
            assert hasattr(entry.owner, entry.attribute), f"{name}: {entry.label} does not exist"
        for forbidden_name in exercise_set.forbidden_imports:
            assert forbidden_name.isidentifier()
