"""The book builds with every Sphinx warning treated as an error, and each page is produced."""

from __future__ import annotations

import re

import pytest
import yaml

from .conftest import ROOT, toc_files

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_SLUG = CONFIG["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
BRANCH = CONFIG["repository"].get("branch", "main")

pytestmark = pytest.mark.slow


def test_every_page_is_built(built_book):
    assert (built_book / "index.html").is_file()
    for page in toc_files():
        assert (built_book / f"{page}.html").is_file(), f"{page}.html was not built"


@pytest.mark.parametrize("chapter", [p for p in toc_files() if re.match(r"book/\d\d_", p)])
def test_chapter_html_has_executed_outputs_and_no_errors(built_book, chapter):
    html = (built_book / f"{chapter}.html").read_text()
    assert html.count('class="cell docutils container"') >= 5, "code cells missing"
    assert "output_png" in html or "_images/" in html, "no figure in the executed chapter"
    for marker in ("output traceback", "output stderr", "Traceback (most recent call last)"):
        assert marker not in html, f"{chapter}: found {marker!r}"
    # Launch buttons: Colab opens this very notebook.
    assert f"colab.research.google.com/github/{REPO_SLUG}/blob/{BRANCH}/{chapter}.ipynb" in html
