"""Static checks of the chapter notebooks: what every chapter must have, before any execution."""

from __future__ import annotations

import re

import nbformat
import pytest
import yaml

from .conftest import ROOT, chapter_notebooks, toc_files

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
REPO_SLUG = REPO_URL.removeprefix("https://github.com/")
NOTEBOOKS = chapter_notebooks()
IDS = [nb.stem for nb in NOTEBOOKS]


def _read(path):
    return nbformat.read(path, as_version=4)


def test_toc_pages_exist_and_chapters_are_notebooks():
    for page in toc_files():
        candidates = [ROOT / f"{page}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(c.exists() for c in candidates), f"_toc.yml lists {page}, which does not exist"
    # Colab opens only .ipynb: every numbered chapter must be one.
    for page in toc_files():
        if re.match(r"book/\d\d_", page):
            assert (ROOT / f"{page}.ipynb").exists(), f"chapter {page} must be a notebook"
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_valid_clean_and_on_python3(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "kernelspec must be python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"cell {i} has stored outputs: the book executes notebooks itself"
            assert cell.execution_count is None, f"cell {i} has an execution count"
        tags = cell.metadata.get("tags", [])
        assert "raises-exception" not in tags, f"cell {i}: chapters never rely on errors"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_cell_installs_coursepkg_on_colab_only(path):
    first = _read(path).cells[0]
    assert first.cell_type == "code"
    assert '"google.colab" in sys.modules' in first.source
    assert f"coursepkg @ git+{REPO_URL}" in first.source, "install URL must match _config.yml"
    assert "torch" not in first.source and "numpy" not in first.source, "never pin Colab's torch/numpy"
    assert "remove-cell" in first.metadata.get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_has_the_standard_sections_and_badges(path):
    nb = _read(path)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    number = int(path.stem[:2])
    assert re.search(rf"^# {number}\. \S", markdown, re.M), f"title must be '# {number}. ...'"
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    for required in ("Learning goals", "Summary", "Exercises", "References"):
        assert required in headings, f"missing section '## {required}'"
    assert headings[0] == "Learning goals" and headings[-1] == "References"
    assert "{footbibliography}" in markdown
    colab = f"https://colab.research.google.com/github/{REPO_SLUG}/blob/main"
    assert f"{colab}/book/{path.name}" in markdown, "badge to open this chapter in Colab"
    if (ROOT / "solutions" / path.name).exists():
        assert f"{colab}/exercises/{path.name}" in markdown, "badge to open the exercises in Colab"
    else:  # a chapter without a graded set must not point to one
        assert f"/exercises/{path.name}" not in markdown, f"exercises/{path.name} does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_chapter_uses_coursepkg_and_pairs_every_widget_with_a_static_one(path):
    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(re.search(r"^\s*(import coursepkg|from coursepkg)", c.source, re.M) for c in code)
    widget_cells = [c for c in code if "interactive(" in c.source]
    assert widget_cells, "every chapter has an interactive demo"
    for cell in widget_cells:
        assert "remove-output" in cell.metadata.get("tags", []), (
            "an ipywidgets cell shows a dead widget in the static book: tag it remove-output"
        )
    assert any("slider_animation(" in c.source for c in code), "static counterpart of the widget"


def test_cited_keys_exist_in_references_bib():
    known = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(), re.M))
    for path in NOTEBOOKS + [ROOT / f"{page}.md" for page in toc_files()]:
        if not path.exists():
            continue
        text = path.read_text()
        for keys in re.findall(r"\{(?:foot)?cite(?::\w+)?\}`([^`]+)`", text):
            for key in keys.split(","):
                assert key.strip() in known, f"{path.name} cites {key.strip()!r}, not in references.bib"


def test_every_theorem_and_definition_has_a_unique_label():
    # sphinx-proof numbers unlabeled directives per page and then reports duplicates across pages.
    seen = {}
    for path in NOTEBOOKS:
        for cell in _read(path).cells:
            lines = cell.source.split("\n") if cell.cell_type == "markdown" else []
            for i, line in enumerate(lines):
                if re.match(r"^\s*(```+|:::+)\{prf:(?!proof)", line):
                    label = lines[i + 1].strip() if i + 1 < len(lines) else ""
                    assert label.startswith(":label:"), f"{path.name}: `{line.strip()}` needs a :label:"
                    assert label not in seen, f"{label} is used in {seen[label]} and {path.name}"
                    seen[label] = path.name
