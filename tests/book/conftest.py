"""Fixtures for the checks of the book: its notebooks and the built HTML."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _build_script():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def toc_files() -> list[str]:
    """Every page of _toc.yml (root first), as paths without suffix: the build's own list."""
    return _build_script().toc_pages()


def chapter_notebooks() -> list[Path]:
    return [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


class BookBuild:
    """The strict book build, started in the background as soon as pytest knows a test needs it.

    Executing the chapters keeps one core busy for minutes (a kernel per notebook, one thread
    each); the rest of the suite runs meanwhile, and the tests that read the built book run last
    (see the root conftest).
    """

    process: subprocess.Popen | None = None
    log: Path | None = None

    @classmethod
    def start(cls) -> None:
        if cls.process is None:
            (ROOT / "_build").mkdir(exist_ok=True)
            cls.log = ROOT / "_build" / "build-book.log"
            with cls.log.open("w") as log:
                cls.process = subprocess.Popen(
                    [sys.executable, str(ROOT / "tools" / "build_book.py"), "--strict", "--if-stale"],
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,  # its kernels can be stopped with it, as a group
                )

    @classmethod
    def wait(cls) -> tuple[int, str]:
        cls.start()
        returncode = cls.process.wait()
        return returncode, cls.log.read_text()


def existing_build() -> Path | None:
    """The folder named by COURSEPKG_BUILT_BOOK: a book built earlier, checked as it is.

    For working on the checks of the built site (or checking a published copy) without the
    minutes of a rebuild; unset, the tests build the book from the current sources.
    """
    folder = os.environ.get("COURSEPKG_BUILT_BOOK")
    return Path(folder).resolve() if folder else None


@pytest.fixture(scope="session")
def built_book() -> Path:
    """_build/html, built strictly from the current sources (skipped when already up to date),
    or the earlier build named by COURSEPKG_BUILT_BOOK."""
    folder = existing_build()
    if folder is not None:
        if not (folder / "index.html").is_file():
            pytest.fail(f"COURSEPKG_BUILT_BOOK={folder} holds no built book (no index.html)", pytrace=False)
        return folder
    returncode, output = BookBuild.wait()
    if returncode != 0:
        problems = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
        problems = [line for line in problems if "without encryption" not in line]  # kernel noise
        pytest.fail(
            "the book does not build with warnings as errors:\n"
            + "\n".join(problems[:40])
            + f"\n--- end of the build's output ---\n{output[-3000:]}",
            pytrace=False,
        )
    return ROOT / "_build" / "html"


def pytest_collection_modifyitems(session, config, items):
    """The tests of the built book (in any folder) go last, and the build starts now, in the
    background, so the rest of the suite runs while the chapters execute."""
    needs_book = [item for item in items if "built_book" in getattr(item, "fixturenames", ())]
    if needs_book:
        if not config.option.collectonly and existing_build() is None:
            BookBuild.start()
        others = [item for item in items if "built_book" not in getattr(item, "fixturenames", ())]
        items[:] = others + needs_book


def pytest_sessionfinish(session, exitstatus):
    """A build still running when the session ends early (-x, ^C) is stopped with it."""
    if BookBuild.process is not None and BookBuild.process.poll() is None:
        os.killpg(BookBuild.process.pid, signal.SIGTERM)
        BookBuild.process.wait(30)
