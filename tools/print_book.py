"""Print the built book (_build/html) to one PDF with the machine's Chromium: `make pdf`.

    python tools/print_book.py [--output _build/pdf/book.pdf] [--html _build/html]

Each page of _toc.yml is opened in headless Chromium (driven by Playwright, which downloads no
browser of its own here), its math typeset by the book's own MathJax, and printed with the
theme's print style (no sidebars); the pages are then joined with pypdf, one bookmark per page.
Animations print their current (first) frame. Jupyter Book's own `--builder pdfhtml` would do
the same through pyppeteer, which downloads a Chromium of its own; LaTeX would need a TeX
installation of about a gigabyte.

Needs `pip install -e '.[pdf]'` (playwright, pypdf) and Chromium (Debian/Ubuntu:
apt-get install chromium).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from build_book import toc_pages  # noqa: E402

WAIT_FOR_MATH = """async () => {
    if (!document.querySelector('script[src*="mathjax"]')) return;
    for (let i = 0; i < 200 && !(window.MathJax && MathJax.startup && MathJax.startup.promise); i++)
        await new Promise(r => setTimeout(r, 50));
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
}"""


PRINT_CSS = "@media print { pre { white-space: pre-wrap !important; overflow-wrap: anywhere; } }"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        sys.exit("error: Chromium is not installed (Debian/Ubuntu: apt-get install chromium)")
    return path


def print_book(html: Path, output: Path, allow_missing: bool = False) -> tuple[int, float]:
    """Write the PDF; return its number of pages and the seconds it took."""
    try:
        from playwright.sync_api import sync_playwright
        from pypdf import PdfReader, PdfWriter
    except ImportError as error:
        sys.exit(f"error: {error.name} is not installed: pip install -e '.[pdf]'")
    pages = toc_pages()
    missing = [page for page in pages if not (html / f"{page}.html").is_file()]
    if missing and not allow_missing:
        sys.exit(f"error: {html} lacks {', '.join(missing)}: run `make book` first")
    pages = [page for page in pages if page not in missing]

    start = time.perf_counter()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    writer = PdfWriter()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=_chromium(),
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            for name in pages:
                page.goto(f"{base}/{name}.html", wait_until="load")
                page.evaluate(WAIT_FOR_MATH)
                # Long code lines wrap on paper instead of running off the page's edge.
                page.add_style_tag(content=PRINT_CSS)
                title = page.title().split("—")[0].split(" | ")[0].strip() or name
                document = page.pdf(
                    format="A4",
                    print_background=True,
                    margin={"top": "15mm", "bottom": "15mm", "left": "12mm", "right": "12mm"},
                    scale=0.8,  # the theme is laid out for a screen: fit its width to A4
                    display_header_footer=True,
                    header_template="<span></span>",
                    footer_template=(
                        '<div style="font-size:8px;width:100%;text-align:center;color:#666">'
                        f'{title} · <span class="pageNumber"></span></div>'
                    ),
                )
                first = len(writer.pages)
                writer.append(PdfReader(io.BytesIO(document)))
                writer.add_outline_item(title=title, page_number=first)
                print(f"{name}: {len(writer.pages) - first} pages", flush=True)
            browser.close()
    finally:
        server.shutdown()
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as file:
        writer.write(file)
    return len(writer.pages), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built book")
    parser.add_argument("--output", type=Path, default=ROOT / "_build" / "pdf" / "book.pdf")
    parser.add_argument(
        "--allow-missing", action="store_true", help="print the pages that were built, skip the others"
    )
    args = parser.parse_args(argv)
    count, seconds = print_book(args.html.resolve(), args.output, args.allow_missing)
    print(f"wrote {args.output} ({count} pages, {seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
