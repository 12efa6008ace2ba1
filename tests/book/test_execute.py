"""tools/execute_book.py: the book's executor polls without stalling, and names a slow or broken cell."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
import time

import nbformat
import pytest

from .conftest import ROOT


def _load():
    spec = importlib.util.spec_from_file_location("execute_book", ROOT / "tools" / "execute_book.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("execute_book", module)
    spec.loader.exec_module(module)
    return module


execute_book = _load()


class _MissedWakeUpSocket:
    """A socket that receives a message at ``arrival`` but never wakes a waiting poll: like a
    missed edge-triggered event, a poll only sees the message when its own timer runs out."""

    def __init__(self, arrival: float):
        self.arrival = arrival

    async def poll(self, timeout_ms):
        await asyncio.sleep(timeout_ms / 1000)
        return int(time.monotonic() >= self.arrival)


def test_sliced_poll_finds_a_message_whose_wake_up_was_missed():
    channel = execute_book.SlicedPollChannel.__new__(execute_book.SlicedPollChannel)
    channel.socket = _MissedWakeUpSocket(arrival=time.monotonic() + 0.3)

    async def receive():
        return {"msg": "reply"}

    channel._recv = receive
    start = time.monotonic()
    # One plain poll(60 s) would return after 60 s; slices of a second find it within a second.
    assert asyncio.run(channel.get_msg(timeout=60)) == {"msg": "reply"}
    assert time.monotonic() - start < 1.0 + execute_book.POLL_SLICE_S


def test_sliced_poll_still_times_out():
    from queue import Empty

    channel = execute_book.SlicedPollChannel.__new__(execute_book.SlicedPollChannel)
    channel.socket = _MissedWakeUpSocket(arrival=float("inf"))
    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(channel.get_msg(timeout=0.5))
    assert time.monotonic() - start < 1.5


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
def test_executes_caches_and_names_slow_or_failing_cells(tmp_path):
    good = _notebook(tmp_path / "good.ipynb", "x = 1 + 1", "print(x)")
    slow = _notebook(tmp_path / "slow.ipynb", "x = 1", "import time\ntime.sleep(30)", "print(x)")
    broken = _notebook(tmp_path / "broken.ipynb", "x = 1", "\n# divide\n1 / 0")
    # Each cell is under the per-cell limit, the notebook is not.
    long = _notebook(tmp_path / "long.ipynb", "import time", *["time.sleep(1.5)"] * 8)
    cache, timings = tmp_path / "cache", tmp_path / "times.json"
    with pytest.raises(execute_book.ExecutionFailed) as failure:
        execute_book.execute_notebooks(
            [good, slow, broken, long], cache, jobs=4, cell_limit=2, notebook_limit=4, timings=timings
        )
    message = str(failure.value)
    assert "slow.ipynb: cell 1 (`import time`) ran past the per-cell limit of 2 s" in message
    assert "broken.ipynb: cell 1 (`# divide`) raised an error" in message and "ZeroDivisionError" in message
    assert re.search(
        r"long.ipynb: cell [2-4] \(`time.sleep\(1.5\)`\) ran past the notebook's 4 s limit", message
    )
    assert "good.ipynb" not in message
    times = json.loads(timings.read_text())
    assert [cell[0] for cell in times["good.ipynb"]["cells"]] == [0, 1]
    # The good notebook was cached with its outputs: it is not executed again.
    from jupyter_cache import get_cache

    _, merged = get_cache(str(cache)).merge_match_into_notebook(nbformat.read(good, as_version=4))
    assert merged.cells[1].outputs[0]["text"] == "2\n"
    assert execute_book.execute_notebooks([good], cache) == []
