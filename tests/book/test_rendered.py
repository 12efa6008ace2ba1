"""The built book, opened in headless Chromium: pages render with math, figures and widgets.

Needs Debian's `chromium`. Without it these tests skip on a user's machine and fail in CI
(where COURSEPKG_REQUIRE_BROWSER=1), so a missing browser can never pass silently.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

import pytest

from .conftest import toc_files

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHAPTERS = [page for page in toc_files() if re.match(r"book/\d\d_", page)]


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = (
            "headless Chromium is not installed, so the rendered book is not checked. "
            "Install it (Debian/Ubuntu: apt-get install chromium) to run these tests."
        )
        if os.environ.get("COURSEPKG_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " COURSEPKG_REQUIRE_BROWSER=1 demands it.", pytrace=False)
        pytest.skip(message)
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def served_book(built_book: Path):
    """Serve _build/html on 127.0.0.1 (file:// would block MathJax's own script loading)."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _chromium_args(chromium: str, profile: str) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
        # Lets scripts (MathJax, the animation player) finish before the page is captured.
        "--virtual-time-budget=20000",
    ]


def rendered_dom(chromium: str, url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            _chromium_args(chromium, profile) + ["--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert result.returncode == 0, f"chromium failed on {url}: {result.stderr[-2000:]}"
    return result.stdout


class _Page(HTMLParser):
    """Collects what the checks need from a rendered DOM: images, classes, tags, prose text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.classes: list[str] = []
        self.tags: list[str] = []
        self.ranges = 0
        self.text: list[str] = []  # prose
        self.all_text: list[str] = []  # prose, code and outputs
        self._skip = 0
        self._script = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.classes.extend((attrs.get("class") or "").split())
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        if tag == "input" and attrs.get("type") == "range":
            self.ranges += 1
        # Prose only: code listings legitimately contain TeX strings and the word Traceback.
        if tag in ("script", "style", "pre", "code"):
            self._skip += 1
        if tag in ("script", "style"):
            self._script += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "pre", "code") and self._skip:
            self._skip -= 1
        if tag in ("script", "style") and self._script:
            self._script -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)
        if not self._script:
            self.all_text.append(data)


def _parse(dom: str) -> _Page:
    page = _Page()
    page.feed(dom)
    return page


def _in_parallel(fn, items) -> list:
    # Each Chromium waits on its own renderer much of the time: two at once per core keep the
    # cores busy.
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


@pytest.fixture(scope="session")
def pages(chromium, served_book):
    pages = toc_files()
    doms = _in_parallel(lambda page: rendered_dom(chromium, f"{served_book}/{page}.html"), pages)
    return {page: _parse(dom) for page, dom in zip(pages, doms, strict=True)}


def test_every_page_renders_without_error_output(pages):
    for name, page in pages.items():
        text = " ".join(page.all_text)
        assert "Traceback (most recent call last)" not in text, f"{name} shows a traceback"
        bad = {"traceback", "stderr", "mjx-merror"} & set(page.classes) | {"mjx-merror"} & set(page.tags)
        assert not bad, f"{name} shows error output: {bad}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_math_is_typeset_offline(pages, chapter):
    page = pages[chapter]
    assert page.tags.count("mjx-container") >= 10, f"{chapter}: math was not typeset by MathJax"
    text = " ".join(page.text)
    assert "\\frac" not in text and "\\log" not in text, f"{chapter}: raw TeX left on the page"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_are_present_and_load(pages, built_book, chapter):
    page = pages[chapter]
    local = [src for src in page.images if not src.startswith(("http:", "https:", "data:"))]
    inline = [src for src in page.images if src.startswith("data:image/png")]
    assert len(local) + len(inline) >= 3, f"{chapter}: expected figures, found {page.images}"
    base = (built_book / chapter).parent
    for src in local:
        target = (base / src.split("#")[0]).resolve()
        assert target.is_file() and target.stat().st_size > 500, f"{chapter}: image {src} is missing"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_widget_works_in_the_static_page(pages, chapter):
    page = pages[chapter]
    # The animation player's own slider, and its frame drawn by its script (a data: PNG).
    assert page.ranges >= 1, f"{chapter}: no slider of a static animation"
    assert any(src.startswith("data:image/png") for src in page.images), (
        f"{chapter}: the animation player did not draw a frame"
    )


def test_screenshots_for_people(chromium, served_book, built_book):
    """Screenshots of each chapter in _build/screenshots, to look at what a reader sees."""
    out = built_book.parent / "screenshots"
    out.mkdir(exist_ok=True)

    def screenshot(chapter: str) -> Path:
        target = out / f"{Path(chapter).name}.png"
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                _chromium_args(chromium, profile)
                + [f"--screenshot={target}", f"{served_book}/{chapter}.html"],
                capture_output=True,
                timeout=180,
                check=True,
            )
        return target

    for chapter, target in zip(CHAPTERS, _in_parallel(screenshot, CHAPTERS), strict=True):
        assert target.stat().st_size > 10_000, f"blank screenshot of {chapter}"
