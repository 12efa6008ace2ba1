"""The built book in a real browser: Playwright drives Debian's headless Chromium over the site
served on 127.0.0.1, as a reader would see it.

Each page of the table of contents is opened once (light theme, then dark theme); what the
checks need is collected during that visit and each test then reads its part. Screenshots of
every page, in both themes, are saved in _build/screenshots for a person to look at.

Needs the `playwright` package (the `dev` extra) and Debian's `chromium`; Playwright's own
browsers are never downloaded. Without either, these tests skip on a user's machine and fail in
CI (where COURSEPKG_REQUIRE_BROWSER=1), so a missing browser can never pass silently.

To check an earlier build without rebuilding: COURSEPKG_BUILT_BOOK=_build/html pytest tests/book/test_browser.py
(COURSEPKG_BROWSER_PAGES=N sets how many pages are open at once; default: the number of CPUs, at
least 2). The fixture prints how long each page took, step by step (pytest -s shows it).
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from .conftest import ROOT, toc_files

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PAGES = toc_files()
CHAPTERS = [page for page in PAGES if re.match(r"book/\d\d_", page)]
# Words the search page must find, and the chapter it must find each in.
SEARCHES = {"Jacobian": "book/02_jacobians", "Glow": "book/06_glow"}
VIEWPORT = {"width": 1280, "height": 1400}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    # Offline, as a reader without network would be: every host but the local server is
    # unresolvable at once (a remote request is still seen, and reported, by the tests).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


def _missing(what: str) -> None:
    message = f"{what}, so the rendered book is not checked in a browser."
    if os.environ.get("COURSEPKG_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " COURSEPKG_REQUIRE_BROWSER=1 demands it.", pytrace=False)
    pytest.skip(message)


def repository() -> tuple[str, str]:
    """(owner/name, branch) of the repository configured in _config.yml."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    return config["url"].rstrip("/").removeprefix("https://github.com/"), config.get("branch", "main")


# --- the browser and the served site ---------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, and Playwright to drive it; a clear skip (or failure in CI) without."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("headless Chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
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


# --- one visit per page ----------------------------------------------------------------------

# Waits for MathJax's first typesetting (pages without math do not load MathJax).
WAIT_FOR_MATH = """async () => {
    if (!document.querySelector('script[src*="mathjax"]')) return 'no mathjax';
    for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
        await new Promise(r => setTimeout(r, 50));
    if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return 'mathjax did not start';
    await MathJax.startup.promise;
    return 'typeset';
}"""

# Text of the prose a reader sees, without code, outputs' text and typeset math.
PROSE = """() => {
    const skip = 'PRE, CODE, SCRIPT, STYLE, MJX-CONTAINER, TEXTAREA';
    const walker = document.createTreeWalker(document.querySelector('main') || document.body,
                                             NodeFilter.SHOW_TEXT);
    const parts = [];
    while (walker.nextNode()) {
        if (!walker.currentNode.parentElement.closest(skip)) parts.push(walker.currentNode.data);
    }
    return parts.join(' ');
}"""

# Cell outputs that show a failure: a traceback, or text written to stderr.
ERROR_OUTPUTS = """() => {
    const shown = [...document.querySelectorAll('.bd-article .traceback, .bd-article .stderr,'
                                              + ' .bd-article .output.error')];
    const text = (document.querySelector('.bd-article') || document.body).innerText;
    if (text.includes('Traceback (most recent call last)')) shown.push({innerText: 'Traceback'});
    return shown.map(e => e.innerText.slice(0, 200));
}"""

# Every image of the page's content: loaded, its alt text, and its corners' colour over what
# lies behind it (its own CSS background, else the page's), to judge readability in a theme.
FIGURES = """() => {
    const parse = css => (css.match(/[\\d.]+/g) || [0, 0, 0, 0]).map(Number);
    const behind = el => {
        for (let e = el; e; e = e.parentElement) {
            const c = parse(getComputedStyle(e).backgroundColor);
            if (c.length === 4 ? c[3] > 0.99 : c.length === 3) return c.slice(0, 3);
        }
        return [255, 255, 255];
    };
    return [...document.querySelectorAll('.bd-article img')].map(img => {
        const out = {src: img.currentSrc || img.src, alt: img.getAttribute('alt'), id: img.id,
                     output: img.closest('.cell_output') !== null,
                     width: img.naturalWidth, complete: img.complete, corners: null};
        if (img.naturalWidth > 0) {
            const w = img.naturalWidth, h = img.naturalHeight;
            const canvas = document.createElement('canvas');
            canvas.width = w; canvas.height = h;
            const g = canvas.getContext('2d');
            g.drawImage(img, 0, 0);
            const back = behind(img);
            try {
                out.corners = [[1, 1], [w - 2, 1], [1, h - 2], [w - 2, h - 2]].map(([x, y]) => {
                    const [r, gr, b, a] = g.getImageData(Math.max(x, 0), Math.max(y, 0), 1, 1).data;
                    const f = a / 255;
                    return [r * f + back[0] * (1 - f), gr * f + back[1] * (1 - f), b * f + back[2] * (1 - f)];
                });
            } catch (e) { out.corners = null; }  // a cross-origin image cannot be read
        }
        return out;
    });
}"""

# Plays each matplotlib animation (coursepkg.widgets.slider_animation) and moves its slider.
ANIMATIONS = """async () => {
    const results = [];
    const sleep = ms => new Promise(r => setTimeout(r, ms));
    for (const box of document.querySelectorAll('div.animation')) {
        const img = box.querySelector('img'), slider = box.querySelector('input[type=range]');
        const play = box.querySelector('button[title=Play]');
        const result = {id: img && img.id, frames: slider ? Number(slider.max) + 1 : 0,
                        first: img && img.src, played: null, slid: null};
        if (img && slider && play) {
            box.querySelector('button[title="First frame"]').click();
            const first = img.src;
            play.click();
            for (let i = 0; i < 40 && img.src === first; i++) await sleep(50);
            result.played = img.src !== first;
            box.querySelector('button[title=Pause]').click();
            box.querySelector('button[title="First frame"]').click();
            slider.value = slider.max;
            slider.dispatchEvent(new Event('input', {bubbles: true}));
            await sleep(50);
            result.slid = img.src !== first && slider.value === slider.max;
            box.querySelector('button[title="First frame"]').click();
        }
        results.push(result);
    }
    return results;
}"""


def _is_local(url: str, base: str) -> bool:
    return url.startswith(base)


@dataclass
class Visit:
    """What one page showed in the browser."""

    url: str
    status: int | None = None
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    math: str = ""
    math_count: int = 0
    math_errors: int = 0
    prose: str = ""
    error_outputs: list[str] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    dark_figures: list[dict] = field(default_factory=list)
    animations: list[dict] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per step, to see where time goes


async def visit(browser, base: str, page_name: str, screenshots: Path) -> Visit:
    url = f"{base}/{page_name}.html"
    result = Visit(url=url)
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()

    def on_console(message):
        if message.type == "error":
            where = message.location.get("url", "")
            result.console_errors.append(f"{message.text} ({where})" if where else message.text)

    def on_response(response):
        if _is_local(response.url, base) and response.status >= 400:
            result.failed_requests.append(f"{response.status} {response.url}")

    def on_request(request):
        if not _is_local(request.url, base) and not request.url.startswith(("data:", "blob:")):
            result.remote_requests.append(request.url)

    def on_failed(request):
        if _is_local(request.url, base):
            result.failed_requests.append(f"{request.failure} {request.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: result.console_errors.append(f"uncaught: {error}"))
    page.on("response", on_response)
    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.seconds[name] = round(now - clock, 3)
        clock = now

    try:
        response = await page.goto(url, wait_until="load")
        result.status = response.status if response else None
        step("load")
        result.math = await page.evaluate(WAIT_FOR_MATH)
        result.math_count = await page.locator("mjx-container").count()
        result.math_errors = await page.locator("mjx-merror").count()
        step("math")
        result.prose = await page.evaluate(PROSE)
        result.error_outputs = await page.evaluate(ERROR_OUTPUTS)
        result.figures = await page.evaluate(FIGURES)
        result.links = await page.evaluate("() => [...document.querySelectorAll('a[href]')].map(a => a.href)")
        step("read")
        await page.screenshot(path=screenshots / f"{Path(page_name).name}.png")
        step("screenshot")
        result.animations = await page.evaluate(ANIMATIONS)
        step("animations")
        # The theme's own switch stores the choice in localStorage and sets data-theme on <html>.
        await page.evaluate(
            "() => { localStorage.setItem('theme', 'dark');"
            " document.documentElement.dataset.theme = 'dark';"
            " document.documentElement.dataset.mode = 'dark'; }"
        )
        await page.wait_for_timeout(100)
        result.dark_figures = await page.evaluate(FIGURES)
        # The dark screenshot shows the first figure, to see how plots look in that theme.
        await page.evaluate(
            "() => { const f = document.querySelector('.cell_output img, div.animation');"
            " if (f) f.scrollIntoView({block: 'center'}); }"
        )
        await page.screenshot(path=screenshots / f"{Path(page_name).name}-dark.png")
        step("dark")
    finally:
        await context.close()
    return result


async def search(browser, base: str, word: str) -> list[str]:
    """The pages Sphinx's search page lists for `word`."""
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        page = await context.new_page()
        await page.goto(f"{base}/search.html?q={word}", wait_until="load")
        # The list is filled once searchindex.js has loaded and the query has run.
        await page.wait_for_function(
            "() => document.querySelector('#search-results .search-summary')", timeout=20_000
        )
        return await page.evaluate(
            "() => [...document.querySelectorAll('#search-results a')].map(a => a.href)"
        )
    finally:
        await context.close()


@dataclass
class Site:
    visits: dict[str, Visit]
    searches: dict[str, list[str]]
    seconds: float


async def _look_at_site(chromium: str, base: str, screenshots: Path) -> Site:
    from playwright.async_api import async_playwright

    start = time.perf_counter()
    # Pages are opened a few at a time: each waits on its own renderer much of the time.
    gate = asyncio.Semaphore(int(os.environ.get("COURSEPKG_BROWSER_PAGES", max(2, os.cpu_count() or 1))))

    async def gated(job):
        async with gate:
            return await job

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            visits = await asyncio.gather(*(gated(visit(browser, base, name, screenshots)) for name in PAGES))
            found = await asyncio.gather(*(gated(search(browser, base, word)) for word in SEARCHES))
        finally:
            await browser.close()
    return Site(
        dict(zip(PAGES, visits, strict=True)),
        dict(zip(SEARCHES, found, strict=True)),
        time.perf_counter() - start,
    )


@pytest.fixture(scope="session")
def site(chromium, served_book, built_book) -> Site:
    screenshots = built_book.parent / "screenshots"
    screenshots.mkdir(exist_ok=True)
    site = asyncio.run(_look_at_site(chromium, served_book, screenshots))
    print(f"\nthe browser looked at {len(site.visits)} pages in {site.seconds:.1f} s")
    for name, page in site.visits.items():
        print(f"  {name}: {sum(page.seconds.values()):.1f} s {page.seconds}")
    return site


@pytest.fixture(scope="session")
def visits(site) -> dict[str, Visit]:
    return site.visits


# --- the checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAGES)
def test_page_loads_without_console_errors_or_failed_requests(visits, name):
    page = visits[name]
    assert page.status == 200, f"{name}: HTTP {page.status} for {page.url}"
    # A remote resource cannot load offline; the next test reports those by themselves.
    errors = [e for e in page.console_errors if not any(r in e for r in page.remote_requests)]
    assert not errors, f"{name}: console errors:\n" + "\n".join(errors)
    assert not page.failed_requests, f"{name}: failed requests:\n" + "\n".join(page.failed_requests)


@pytest.mark.parametrize("name", PAGES)
def test_page_shows_no_error_output(visits, name):
    """The book is built with cell errors fatal and stderr removed: a failure that still reaches
    a page (a traceback in a printed string, a widget's error) is caught here."""
    assert not visits[name].error_outputs, f"{name} shows error output: {visits[name].error_outputs}"


@pytest.mark.parametrize("name", PAGES)
def test_page_needs_nothing_from_the_network(visits, name):
    """The book reads offline, and nothing a reader sees depends on a remote server (badges
    included): every script, style and image is served from the site itself."""
    remote = visits[name].remote_requests
    assert not remote, f"{name} loads remote resources:\n" + "\n".join(sorted(set(remote)))


@pytest.mark.parametrize("name", PAGES)
def test_math_is_typeset_offline(visits, name):
    page = visits[name]
    raw = [tex for tex in ("$$", "\\frac", "\\begin{", "\\(", "\\[", "\\mathbb") if tex in page.prose]
    assert not raw, f"{name}: raw TeX left in the text: {raw}"
    assert page.math_errors == 0, f"{name}: {page.math_errors} formulas MathJax could not typeset"
    if name in CHAPTERS:
        assert page.math == "typeset" and page.math_count >= 10, (
            f"{name}: math was not typeset offline ({page.math}, {page.math_count} formulas)"
        )


def _described(alt: str | None, src: str) -> bool:
    """Alt text that says something: Sphinx fills a missing one with the image's path."""
    if not alt or not alt.strip():
        return False
    name = unquote(urlsplit(src).path).rsplit("/", 1)[-1]
    return not (alt.endswith((".png", ".svg", ".jpg", ".jpeg", ".gif")) or (name and name in alt))


@pytest.mark.parametrize("name", PAGES)
def test_every_figure_loads_and_has_alt_text(visits, name):
    page = visits[name]
    broken = [f["src"][:120] for f in page.figures if not f["complete"] or f["width"] == 0]
    assert not broken, f"{name}: figures that did not load: {broken}"
    if name in CHAPTERS:
        assert len(page.figures) >= 3, f"{name}: expected figures, found {len(page.figures)}"
    undescribed = [
        f"#{f['id']}" if f["id"] else f["src"].rsplit("/", 1)[-1][:40]
        for f in page.figures
        if not _described(f["alt"], f["src"])
    ]
    assert not undescribed, (
        f"{name}: {len(undescribed)} of {len(page.figures)} figures have no alt text "
        f"(set it in the cell's metadata: mystnb.image.alt): {undescribed[:10]}"
    )


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_animation_plays_and_follows_its_slider(visits, chapter):
    animations = visits[chapter].animations
    assert animations, f"{chapter}: no animation (each chapter has a static counterpart of its widget)"
    for animation in animations:
        assert animation["frames"] >= 2, f"{chapter}: animation {animation['id']} has one frame"
        assert animation["played"], f"{chapter}: animation {animation['id']} did not advance on Play"
        assert animation["slid"], f"{chapter}: animation {animation['id']} ignores its slider"


def _luminance(rgb) -> float:
    red, green, blue = rgb
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


@pytest.mark.parametrize("name", PAGES)
def test_figures_stay_readable_in_dark_mode(visits, name):
    """In the theme's dark mode a plot (an image a cell printed) must still show on a light
    ground: either drawn on an opaque light background or given one by the page's CSS. Badges
    and logos are drawn with their own contrast and are not judged."""
    dark = [
        f["src"].rsplit("/", 1)[-1][:40] if not f["id"] else f"#{f['id']}"
        for f in visits[name].dark_figures
        if f["output"] and f["corners"] is not None and min(_luminance(c) for c in f["corners"]) < 0.6
    ]
    assert not dark, f"{name}: figures on a dark ground in dark mode: {dark}"


def _target_file(built_book: Path, base: str, url: str) -> Path:
    path = unquote(urlsplit(url).path.removeprefix(urlsplit(base).path)).lstrip("/")
    target = built_book / path
    return target / "index.html" if target.is_dir() or not path else target


@functools.cache
def _ids(path: Path) -> frozenset[str]:
    return frozenset(re.findall(r'\bid="([^"]+)"', path.read_text(errors="replace")))


@pytest.mark.parametrize("name", PAGES)
def test_internal_links_and_cross_references_resolve(visits, built_book, served_book, name):
    broken = []
    for url in visits[name].links:
        if not url.startswith(served_book):
            continue
        target = _target_file(built_book, served_book, url)
        fragment = unquote(urlsplit(url).fragment)
        if not target.is_file():
            broken.append(f"{url} (no such file)")
        elif fragment and target.suffix == ".html" and fragment not in _ids(target):
            broken.append(f"{url} (no id {fragment!r} on that page)")
    assert not broken, f"{name}: broken links:\n" + "\n".join(sorted(set(broken)))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_colab_and_binder_links_open_this_chapter_in_the_configured_repository(visits, chapter):
    slug, branch = repository()
    colab = f"https://colab.research.google.com/github/{slug}/blob/{branch}/"
    name = Path(chapter).name
    links = [url for url in visits[chapter].links if "colab.research.google.com" in url]
    assert f"{colab}{chapter}.ipynb" in links, f"{chapter}: no Colab link to {colab}{chapter}.ipynb: {links}"
    allowed = {f"{colab}{chapter}.ipynb", f"{colab}exercises/{name}.ipynb"}
    wrong = sorted(set(links) - allowed)
    assert not wrong, f"{chapter}: Colab links that are not this chapter's ({colab}): {wrong}"
    binder = [url for url in visits[chapter].links if "mybinder.org" in url]
    expected = f"https://mybinder.org/v2/gh/{slug}/{branch}?urlpath=tree/{chapter}.ipynb"
    assert all(url == expected for url in binder), f"{chapter}: Binder links {binder}, expected {expected}"


@pytest.mark.parametrize("word", SEARCHES)
def test_search_finds_the_chapter(site, word):
    found, chapter = site.searches[word], SEARCHES[word]
    assert any(f"/{chapter}.html" in url for url in found), f"search for {word!r} misses {chapter}: {found}"


def test_screenshots_of_every_page(visits, built_book):
    """Screenshots in _build/screenshots (light and dark) for a person to look at."""
    for name in visits:
        for suffix in ("", "-dark"):
            shot = built_book.parent / "screenshots" / f"{Path(name).name}{suffix}.png"
            assert shot.is_file() and shot.stat().st_size > 10_000, f"blank screenshot {shot}"


# --- the checks themselves can fail ----------------------------------------------------------


def test_alt_text_that_only_repeats_the_file_name_is_not_a_description():
    src = "http://127.0.0.1:1/_images/4e04a8.png"
    assert not _described("../_images/4e04a8.png", src)  # what Sphinx writes when alt is missing
    assert not _described("", src) and not _described(None, src)
    assert _described("Histogram of the samples against the density", src)


# A transparent 8x8 image (a plot saved with transparent=True) on a dark page, then the same
# image given a light background by CSS: the dark-mode check must reject the first only.
_TRANSPARENT_PLOT = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAYAAADED76LAAAADUlEQVR4nGNgGAUgAAABCAABgukLHQAAAABJRU5ErkJggg=="
)


def test_dark_mode_check_rejects_a_transparent_plot_on_a_dark_page(chromium):
    from playwright.async_api import async_playwright

    async def corners(style: str) -> list:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            await page.set_content(
                f'<body style="background:#111"><article class="bd-article"><div class="cell_output">'
                f'<img src="{_TRANSPARENT_PLOT}" style="{style}"></div></article></body>'
            )
            await page.wait_for_function("() => document.querySelector('img').complete")
            figures = await page.evaluate(FIGURES)
            await browser.close()
        return figures[0]["corners"]

    assert min(_luminance(c) for c in asyncio.run(corners(""))) < 0.6
    assert min(_luminance(c) for c in asyncio.run(corners("background:#fff"))) > 0.6
