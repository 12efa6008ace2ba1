"""Execute reference solutions and store the outputs of their check cells (the nbval references).

    python -m coursepkg.grading.record solutions/01_change_of_variables.ipynb [...]

Each notebook is executed in its own folder. Afterwards only the check cells (tag
``check:<id>``) keep their outputs and execution counts; every other output is removed, so the
committed solution carries exactly the reference outputs that nbval and the grader compare with.
Consecutive stream outputs are merged: the kernel splits printed text by timing, which would make
the stored file change from run to run. A cell that raises or writes to stderr stops the command.
Run ``make exercises`` afterwards to regenerate exercises/ and the grader's references.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

__all__ = ["record"]


def _is_check(cell) -> bool:
    return any(tag.startswith("check:") for tag in cell.metadata.get("tags", []))


def _merged_streams(outputs):
    merged = []
    for out in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and out.output_type == "stream"
            and previous.output_type == "stream"
            and previous.name == out.name
        ):
            previous.text += out.text
        else:
            merged.append(out)
    return merged


def record(path: str | os.PathLike, timeout: int = 600) -> None:
    """Execute the solution notebook at ``path`` and keep only its check cells' outputs."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # The kernel fills in language_info (with its Python version): keep the file machine-neutral.
    metadata = copy.deepcopy(nb.metadata)
    env_before = os.environ.get("COURSEPKG_PROGRESS")
    os.environ["COURSEPKG_PROGRESS"] = "0"  # progress bars would differ from run to run
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(path.parent)}},
        ).execute()
    finally:
        if env_before is None:
            os.environ.pop("COURSEPKG_PROGRESS", None)
        else:
            os.environ["COURSEPKG_PROGRESS"] = env_before
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)  # timestamps of a previous run
        if cell.cell_type != "code":
            continue
        for out in cell.outputs:
            if out.output_type == "error" or (out.output_type == "stream" and out.name == "stderr"):
                raise RuntimeError(
                    f"{path.name}, cell {index}: the solution wrote an error or to stderr: {out}"
                )
        if _is_check(cell):
            cell.outputs = _merged_streams(cell.outputs)
        else:
            cell.outputs = []
            cell.execution_count = None
    nb.metadata = metadata
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        print(f"recording the check outputs of {path}", flush=True)
        record(path, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
