"""Execute the book's notebooks into Jupyter Book's execution cache, with time limits per cell.

`tools/build_book.py` calls this before `jupyter-book build`, which then finds every notebook in
the cache and executes nothing itself. Doing the execution here gives three things that Jupyter
Book's own executor does not:

* **No stalls.** nbclient waits for a cell's reply with one ``poll(timeout)`` on an asyncio ZMQ
  socket. When that socket's (edge-triggered) wake-up is missed, the reply sits in the socket
  until the poll's timer fires, and pyzmq's final ``poll(0)`` finds it: the cell then "succeeds"
  exactly one cell timeout (600 s) late, having computed nothing meanwhile. This is what held
  chapter 3 for ~600 s in CI (its widget cell floods the kernel's channels with comm messages;
  nbclient issue 312 reports the same symptom with ipywidgets). :class:`SlicedPollChannel` polls
  in slices of at most a second, so a missed wake-up costs at most a second.
* **Limits that name the cell.** A cell that runs longer than the per-cell limit fails the build
  with the notebook, the cell's index and its first line; a notebook longer than its limit too.
* **Timings.** Each cell's wall time is recorded; ``_build/execution-times.json`` keeps them and
  the slowest cells are printed.

Notebooks run side by side (``jobs``), each kernel on one thread in quick mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty

import nbformat
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets import Type, default

__all__ = [
    "CellTiming",
    "ExecutionFailed",
    "NotebookRun",
    "SlicedPollChannel",
    "SlicedPollKernelClient",
    "SlicedPollKernelManager",
    "execute_notebooks",
    "first_line",
]

POLL_SLICE_S = 1.0


class SlicedPollChannel(AsyncZMQSocketChannel):
    """An asyncio ZMQ channel whose ``get_msg(timeout)`` polls in slices of at most a second.

    Each slice ends with pyzmq's ``poll(0)``, which sees a message whose wake-up was missed, so a
    message waits at most one slice instead of the caller's whole timeout.
    """

    async def get_msg(self, timeout: float | None = None) -> dict:  # type: ignore[override]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = POLL_SLICE_S if remaining is None else min(POLL_SLICE_S, remaining)
            if await self.socket.poll(int(step * 1000)):
                return await self._recv()
            if remaining is not None and remaining <= step:
                raise Empty


class SlicedPollKernelClient(AsyncKernelClient):
    """nbclient's kernel client, with :class:`SlicedPollChannel` for replies and outputs."""

    shell_channel_class = Type(SlicedPollChannel)
    iopub_channel_class = Type(SlicedPollChannel)


class SlicedPollKernelManager(AsyncKernelManager):
    """The kernel manager nbclient starts (and shuts down) for each notebook, with our client."""

    @default("client_factory")
    def _sliced_poll_client(self):
        return SlicedPollKernelClient


class ExecutionFailed(RuntimeError):
    """A notebook failed, ran past a time limit, or its kernel died."""


@dataclass
class CellTiming:
    index: int
    first_line: str
    seconds: float


@dataclass
class NotebookRun:
    path: Path
    notebook: nbformat.NotebookNode | None = None
    seconds: float = 0.0
    cells: list[CellTiming] = field(default_factory=list)
    error: str | None = None

    def slowest(self, count: int = 3) -> list[CellTiming]:
        return sorted(self.cells, key=lambda c: -c.seconds)[:count]


def first_line(source: str) -> str:
    """The first non-empty line of a cell's source, shortened for messages."""
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:80]
    return "(empty cell)"


async def _run(
    path: Path, cell_limit: float, notebook_limit: float, env: dict | None, start_timeout: float
) -> NotebookRun:
    run = NotebookRun(path)
    notebook = nbformat.read(path, as_version=4)
    started: dict[int, float] = {}
    begin = None  # when the first cell starts: the kernel's start-up has its own timeout

    def cell_timeout(cell) -> int:
        # The notebook's remaining budget caps each cell, so one slow notebook cannot hold a build.
        nonlocal begin
        begin = time.monotonic() if begin is None else begin
        left = notebook_limit - (time.monotonic() - begin)
        return max(1, int(min(cell_limit, left)))

    def on_start(cell, cell_index):
        started[cell_index] = time.monotonic()

    def on_executed(cell, cell_index, execute_reply):
        seconds = time.monotonic() - started.get(cell_index, time.monotonic())
        run.cells.append(CellTiming(cell_index, first_line(cell.source), seconds))

    client = NotebookClient(
        notebook,
        kernel_name="python3",
        kernel_manager_class=SlicedPollKernelManager,
        timeout_func=cell_timeout,
        startup_timeout=int(start_timeout),
        allow_errors=False,
        record_timing=False,
        raise_on_iopub_timeout=True,
        resources={"metadata": {"path": str(path.parent)}},
        on_cell_start=on_start,
        on_cell_executed=on_executed,
    )
    try:
        await client.async_execute(env=dict(os.environ) if env is None else env)
        run.notebook = notebook
    except CellTimeoutError:
        index = max(started) if started else -1
        cell = notebook.cells[index] if index >= 0 else None
        spent = time.monotonic() - (begin or time.monotonic())
        what = (
            f"the notebook's {notebook_limit:g} s limit"
            if spent >= notebook_limit - 1
            else f"the per-cell limit of {cell_limit:g} s"
        )
        run.error = (
            f"{path.name}: cell {index} (`{first_line(cell.source) if cell else '?'}`) ran past {what} "
            f"({spent:.0f} s into the notebook). Make it faster in quick mode (coursepkg.by_mode), "
            "or raise the limit with --cell-limit/--notebook-limit if it is meant to take this long."
        )
    except CellExecutionError as error:
        index = max(started) if started else -1
        cell = notebook.cells[index] if index >= 0 else None
        where = f"cell {index} (`{first_line(cell.source)}`)" if cell else "a cell"
        run.error = f"{path.name}: {where} raised an error:\n{error}"
    except DeadKernelError as error:
        run.error = f"{path.name}: the kernel died ({error}); out of memory?"
    run.seconds = time.monotonic() - (begin or time.monotonic())
    return run


async def _run_all(paths, jobs, **options) -> list[NotebookRun]:
    gate = asyncio.Semaphore(max(1, jobs))

    async def one(path):
        async with gate:
            return await _run(path, **options)

    return list(await asyncio.gather(*(one(p) for p in paths)))


def _read_timings(path: Path | None) -> dict:
    try:
        return json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}


def execute_notebooks(
    paths: list[Path],
    cache_dir: Path,
    *,
    jobs: int = 2,
    cell_limit: float = 300,
    notebook_limit: float = 600,
    env: dict | None = None,
    timings: Path | None = None,
    start_timeout: float = 120,
) -> list[NotebookRun]:
    """Execute the notebooks that the jupyter-cache at ``cache_dir`` lacks, and cache them.

    Args:
        paths: notebooks; each runs with its own folder as working directory.
        cache_dir: Jupyter Book's execution cache (``_build/.jupyter_cache``).
        jobs: notebooks executed at the same time.
        cell_limit, notebook_limit: seconds one cell, and one notebook, may take.
        env: the kernels' environment.
        timings: a JSON file that receives every notebook's and cell's time.

    Returns:
        One :class:`NotebookRun` per notebook executed (cached ones are skipped).

    Raises:
        ExecutionFailed: after every notebook ran, naming each that failed and the cell.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(cache_dir))
    stale = []
    for path in paths:
        try:
            cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            stale.append(Path(path))
    if not stale:
        return []
    # Longest first (by the last recorded times, else later chapters first: they train bigger
    # models), so the longest notebook does not start last and hold the build alone.
    previous = _read_timings(timings)
    order = {path: index for index, path in enumerate(stale)}
    stale.sort(key=lambda p: (-previous.get(p.name, {}).get("seconds", 0), -order[p]))
    print(f"executing {len(stale)} notebook(s), {min(jobs, len(stale))} at a time", flush=True)
    runs = asyncio.run(
        _run_all(
            stale,
            min(jobs, len(stale)),
            cell_limit=cell_limit,
            notebook_limit=notebook_limit,
            env=env,
            start_timeout=start_timeout,
        )
    )
    for run in runs:
        if run.error is None:
            cache.cache_notebook_bundle(
                CacheBundleIn(run.notebook, str(run.path), data={"execution_seconds": run.seconds}),
                check_validity=False,
                overwrite=True,
            )
        slow = ", ".join(f"cell {c.index} {c.seconds:.1f} s (`{c.first_line[:40]}`)" for c in run.slowest())
        status = "FAILED" if run.error else "ok"
        print(f"  {run.path.name}: {run.seconds:.1f} s, {status}; slowest: {slow}", flush=True)
    if timings is not None:
        timings.parent.mkdir(parents=True, exist_ok=True)
        record = previous | {
            run.path.name: {
                "seconds": round(run.seconds, 2),
                "error": run.error,
                "cells": [[c.index, round(c.seconds, 2), c.first_line] for c in run.cells],
            }
            for run in runs
        }
        timings.write_text(json.dumps(record, indent=1))
    failed = [run.error for run in runs if run.error]
    if failed:
        raise ExecutionFailed("\n\n".join(failed))
    return runs
