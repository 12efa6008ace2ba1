"""Fixtures for the checks of the book: its notebooks and the built HTML."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def toc_files() -> list[str]:
    """Every page of _toc.yml (root first), as paths without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def chapter_notebooks() -> list[Path]:
    return [ROOT / f"{f}.ipynb" for f in toc_files() if (ROOT / f"{f}.ipynb").exists()]


@pytest.fixture(scope="session")
def built_book() -> Path:
    """_build/html, built strictly from the current sources (skipped when already up to date)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_book.py"), "--strict", "--if-stale"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        problems = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
        problems = [line for line in problems if "without encryption" not in line]  # kernel noise
        pytest.fail(
            "the book does not build with warnings as errors:\n"
            + "\n".join(problems[:40])
            + f"\n--- end of the build's output ---\n{result.stderr[-3000:]}",
            pytrace=False,
        )
    return ROOT / "_build" / "html"
