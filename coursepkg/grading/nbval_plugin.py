"""The pytest plugin that adapts nbval to grading (loaded inside the sandboxed pytest process).

:mod:`coursepkg.grading.nbval_check` copies this file next to the notebook's copy and starts
``pytest -p nbval.plugin -p coursepkg_nbval_plugin``: the plugin must import nothing but the
standard library, pytest and nbval (never coursepkg or torch). It patches nbval 0.11's internals
(``RunningKernel.await_reply``, ``IPyNbCell.compare_outputs``, ``IPyNbCell.setup`` and
``IPyNbCell.runtest``; ``pyproject.toml`` pins that minor version) so that

* a dead kernel (``os._exit``) fails its cell at once, not after the cell's time limit;
* a warning on stderr never costs points: only what a cell prints on stdout and displays is
  compared;
* the notebook runs from top to bottom as in *Restart & Run All*: the first cell that stops the
  run (:func:`stops_the_run`) ends it, and every later cell is skipped;
* what a check cell printed when it differs from the reference, and the cell that stopped the
  run, are written as JSON lines to the file ``$COURSEPKG_NBVAL_RECORD`` for the grader's
  messages.
"""

from __future__ import annotations

import json
import os
import time

__all__ = ["printed_text", "stops_the_run", "pytest_configure", "RECORD_VARIABLE", "CHECK_TAG"]

RECORD_VARIABLE = "COURSEPKG_NBVAL_RECORD"
CHECK_TAG = "nbval-check-output"
UNDONE_EXERCISE = "NotImplementedError"  # what the stub of an exercise left undone raises


def printed_text(outputs: list) -> str:
    """What a cell printed on stdout and displayed as text, from its outputs (dicts or nodes)."""
    text = "".join(
        o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    for o in outputs:
        if o.get("output_type") in ("execute_result", "display_data"):
            text += o.get("data", {}).get("text/plain", "") + "\n"
    return text


def stops_the_run(is_check_cell: bool, error_name: str | None, timed_out: bool) -> bool:
    """Whether a failing cell ends the top-to-bottom run.

    A cell that runs past its time limit or kills the kernel stops the run, as does an error in
    any cell but a check cell, except the ``NotImplementedError`` of an exercise left undone. A
    check cell that raises or prints something else fails on its own.

    Args:
        is_check_cell: the cell's output is compared with the reference.
        error_name: the exception the cell raised (``"ValueError"``), or None when it raised
            none (its output differs, it timed out, or the kernel died).
        timed_out: the cell ran past its time limit.
    """
    if timed_out:
        return True
    if error_name is None:
        return not is_check_cell  # a dead kernel; a check cell's output difference is its own
    return not is_check_cell and error_name != UNDONE_EXERCISE


def _record(entry: dict) -> None:
    path = os.environ.get(RECORD_VARIABLE)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_configure(config):
    import pytest
    from nbval.kernel import RunningKernel
    from nbval.plugin import IPyNbCell, NbCellError

    original_await_reply = RunningKernel.await_reply

    def await_reply(self, msg_id, timeout=None):
        # Poll the kernel: a dead kernel (os._exit) fails its cell at once, not after the time limit.
        from queue import Empty

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if step <= 0:
                raise Empty
            try:
                return original_await_reply(self, msg_id, timeout=step)
            except Empty:
                if not self.is_alive():
                    raise RuntimeError("the kernel died (os._exit(), a crash, or the memory limit)") from None

    RunningKernel.await_reply = await_reply
    original_compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        def without_stderr(outputs):
            return [
                o for o in outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")
            ]

        same = original_compare(self, without_stderr(test), without_stderr(ref), skip_compare)
        if not same:  # what the cell printed, for the grader's message only
            _record({"cell": self.cell_num, "printed": printed_text(test)[:20000]})
        return same

    IPyNbCell.compare_outputs = compare_outputs

    def setup(self):
        # Replaces nbval's, which marks every cell after a timed-out one "expected to fail".
        stopped = getattr(self.parent, "coursepkg_stopped_at", None)
        if stopped is not None:
            pytest.skip(f"the run stopped at cell {stopped}")

    IPyNbCell.setup = setup
    original_runtest = IPyNbCell.runtest

    def runtest(self):
        try:
            original_runtest(self)
        except (NbCellError, RuntimeError) as error:
            errors = [o for o in (self.test_outputs or []) if o.get("output_type") == "error"]
            error_name = errors[-1].get("ename") if errors else None
            timed_out = "Timeout of" in str(error)
            if timed_out or not self.parent.kernel.is_alive():
                error_name = None
            is_check = CHECK_TAG in self.cell.get("metadata", {}).get("tags", [])
            if stops_the_run(is_check, error_name, timed_out or error_name == "KeyboardInterrupt"):
                self.parent.coursepkg_stopped_at = self.cell_num
                _record({"cell": self.cell_num, "stopped_run": True})
            raise

    IPyNbCell.runtest = runtest
