"""`pytest --nbval-lax` on the reference solutions: their check cells reproduce the stored outputs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_solutions_pass_nbval_lax():
    solutions = sorted((ROOT / "solutions").glob("*.ipynb"))
    assert solutions, "solutions/ holds no notebook"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--nbval-lax",
            "--nbval-sanitize-with",
            str(ROOT / "coursepkg" / "grading" / "sanitize.cfg"),
            *map(str, solutions),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, COURSEPKG_PROGRESS="0", OMP_NUM_THREADS="1"),
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
