"""Build the executed book into _build/html (used by `make book` and by the book tests).

Jupyter Book's execution cache is keyed on each notebook's code only, so a change to coursepkg
would go unnoticed; this script clears the cache whenever the package's source changes. It
also turns off progress bars, which a static page cannot animate, and runs each notebook's
torch on one thread unless OMP_NUM_THREADS says otherwise.

    python tools/build_book.py [--strict] [--if-stale]

--strict    Sphinx warnings are errors (-W -n --keep-going), as in CI.
--if-stale  do nothing when _build/html was built from the current sources.
--jobs N    notebooks executed at the same time (default: the number of CPUs in quick mode, 1 in
            full mode, where the notebooks share one GPU).
--cell-limit S, --notebook-limit S
            seconds a cell, and a notebook, may run (defaults by mode: 180/420 quick, 7200/21600
            full); a cell past its limit fails the build, naming the notebook and the cell.

The notebooks are executed first by `tools/execute_book.py` (in parallel, with those limits,
recording each cell's time in _build/execution-times.json) into Jupyter Book's execution cache;
`jupyter-book build` then takes every notebook from the cache and executes nothing itself.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
HTML = BUILD / "html"
CACHE = BUILD / ".jupyter_cache"
PACKAGE_STAMP = BUILD / ".coursepkg-hash"
SOURCES_STAMP = BUILD / ".sources-hash"
TIMINGS = BUILD / "execution-times.json"
BOOK_INPUTS = ("book", "coursepkg", "_config.yml", "_toc.yml", "references.bib")
LIMITS = {"quick": (180, 420), "full": (7200, 21600)}  # seconds per cell, per notebook


def _digest(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _files(*names: str):
    for name in names:
        path = ROOT / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for p in path.rglob("*"):
                if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts:
                    yield p


def sources_hash() -> str:
    """Hash of everything the built book depends on (chapters, package, configuration)."""
    return _digest(_files(*BOOK_INPUTS))


def toc_pages() -> list[str]:
    """Every page of _toc.yml (root first), as paths without suffix relative to the root."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return pages


def toc_notebooks() -> list[Path]:
    """The notebooks of _toc.yml, in order."""
    return [ROOT / f"{page}.ipynb" for page in toc_pages() if (ROOT / f"{page}.ipynb").exists()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strict", action="store_true", help="treat Sphinx warnings as errors")
    parser.add_argument("--if-stale", action="store_true", help="skip when the build is up to date")
    parser.add_argument("--jobs", type=int, default=None, help="notebooks executed at the same time")
    parser.add_argument("--cell-limit", type=float, default=None, help="seconds a cell may run")
    parser.add_argument("--notebook-limit", type=float, default=None, help="seconds a notebook may run")
    args = parser.parse_args(argv)

    # A lenient build must not stand in for a strict one.
    current = sources_hash() + (" strict" if args.strict else "")
    if args.if_stale and SOURCES_STAMP.exists() and SOURCES_STAMP.read_text() == current:
        if (HTML / "index.html").exists():
            print(f"book is up to date: {HTML / 'index.html'}")
            return 0

    package = _digest(_files("coursepkg"))
    if PACKAGE_STAMP.exists() and PACKAGE_STAMP.read_text() != package and CACHE.exists():
        print("coursepkg changed since the last build: clearing the execution cache")
        shutil.rmtree(CACHE)
    BUILD.mkdir(exist_ok=True)
    SOURCES_STAMP.unlink(missing_ok=True)

    env = dict(os.environ, COURSEPKG_PROGRESS="0", PYDEVD_DISABLE_FILE_VALIDATION="1")
    # The book's models are small: one thread per kernel was measured 3x faster than two on a
    # 2-core machine (thread hand-offs dominate). A reader's own setting wins.
    env.setdefault("OMP_NUM_THREADS", "1")

    from execute_book import ExecutionFailed, execute_notebooks

    from coursepkg.runtime import mode

    cell_limit, notebook_limit = LIMITS[mode()]
    jobs = args.jobs or ((os.cpu_count() or 1) if mode() == "quick" else 1)
    try:
        execute_notebooks(
            toc_notebooks(),
            CACHE,
            jobs=jobs,
            cell_limit=args.cell_limit or cell_limit,
            notebook_limit=args.notebook_limit or notebook_limit,
            env=env,
            timings=TIMINGS,
        )
    except ExecutionFailed as error:
        print(f"\n{error}\n\nThe book build failed: a notebook did not execute.", file=sys.stderr)
        return 1

    command = [
        sys.executable,
        "-c",
        "from jupyter_book.cli.main import main; main()",
        "build",
        str(ROOT),
        "--all",
    ]
    if args.strict:
        command += ["-W", "-n", "--keep-going"]
    print("+", " ".join(command), flush=True)
    # Every notebook is in the cache now; an execution by Jupyter Book itself would bypass the
    # limits above, so it is an error.
    executed_here = []
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as result:
        for line in result.stdout:
            print(line, end="", flush=True)
            if "Executing notebook using" in line:
                executed_here.append(line.strip())
    if executed_here and result.returncode == 0:
        print(
            "\nJupyter Book executed a notebook that tools/execute_book.py had cached: the cache key "
            f"differs ({executed_here[0]})",
            file=sys.stderr,
        )
        return 1
    if result.returncode != 0:
        reports = sorted((HTML / "reports").glob("**/*.err.log")) if (HTML / "reports").exists() else []
        for report in reports:
            print(f"\n--- {report.relative_to(ROOT)} ---\n{report.read_text()[-4000:]}", file=sys.stderr)
        print("\nThe book build failed: see the warnings above.", file=sys.stderr)
        return result.returncode
    PACKAGE_STAMP.write_text(package)
    SOURCES_STAMP.write_text(current)
    print(f"\nThe book is ready: open file://{HTML / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
