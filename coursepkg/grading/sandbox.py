"""The sandbox in which student code runs: limits, process handling, framing and bounded output.

Two kinds of sandboxed processes use it: the probe child (:mod:`coursepkg.grading.child`, driven by
:mod:`coursepkg.grading.runner`) and pytest running nbval on a copy of the notebook
(:mod:`coursepkg.grading.nbval_check`). Both are started the same way, by :func:`spawn` of a
:func:`limited_command`:

* this file run as a script (``python -I sandbox.py --memory-mb M --cpu-s S -- CMD ...``) caps
  the process with :func:`apply_limits`, then replaces itself by ``CMD``: the limits are in force
  before the command's interpreter imports anything. ``-I`` keeps the script's folder off
  ``sys.path``, and nothing here imports more than the standard library, so pytest starts
  without importing coursepkg (and torch);
* the limits: a memory cap (``RLIMIT_DATA``, which covers the heap and anonymous ``mmap`` on Linux
  but not the address space that torch's libraries reserve, so ``import torch`` still works), a
  CPU-time backstop (``RLIMIT_CPU``), a file-size cap and no core dumps;
* a new session, an empty working folder, stdin from ``/dev/null``, stdout and stderr drained
  into a bounded buffer (:class:`OutputDrain`: a flood costs nothing), the environment of
  :func:`child_env` (CPU only, quick mode, one thread);
* :func:`kill_tree` ends the process, its process group and every descendant it forked.

The grader and the probe child talk over two pipes in length-prefixed frames (:func:`send_frame`):
a JSON header, then optional bytes. :class:`FrameReader` reads them with a deadline on every read,
so a child that writes half a frame and hangs cannot block the grader.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Limits",
    "GRACE_S",
    "MAX_DATA",
    "ChildGone",
    "FrameReader",
    "OutputDrain",
    "send_frame",
    "read_command",
    "child_env",
    "apply_limits",
    "limited_command",
    "spawn",
    "kill_tree",
    "finish",
]

GRACE_S = 5.0  # how long past its soft time limit a test may take before its process is killed
MAX_HEADER = 1 << 20
MAX_DATA = 512 << 20
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Limits:
    """Time and memory limits of one notebook's grading (seconds, MiB)."""

    test_timeout: float = 60.0  # per test (and per graded cell's definitions)
    notebook_timeout: float = 300.0  # all the probes of one notebook
    nbval_timeout: float = 600.0  # executing the notebook with nbval
    cell_timeout: float = 120.0  # one cell under nbval
    memory_mb: int = 4096
    startup_timeout: float = 120.0  # starting a child and importing torch
    output_bytes: int = 20_000  # kept of a child's stdout/stderr


# -- limits -------------------------------------------------------------------------------------


def apply_limits(memory_mb: int, cpu_s: int, file_mb: int = 1024) -> None:
    """Cap this process (and what it starts): data memory, CPU time, file size, core dumps."""
    import resource

    wanted = [
        ("RLIMIT_DATA", memory_mb << 20),
        ("RLIMIT_CPU", cpu_s),
        ("RLIMIT_FSIZE", file_mb << 20),
        ("RLIMIT_CORE", 0),
    ]
    for name, value in wanted:
        limit = getattr(resource, name, None)
        if limit is None or (value <= 0 and name != "RLIMIT_CORE"):
            continue
        try:
            _, hard = resource.getrlimit(limit)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


def limited_command(command: list[str], memory_mb: int, cpu_s: float) -> list[str]:
    """``command`` run under :func:`apply_limits` (this file as a script, see the module doc)."""
    return [
        sys.executable,
        "-I",
        str(Path(__file__).resolve()),
        "--memory-mb",
        str(int(memory_mb)),
        "--cpu-s",
        str(int(cpu_s)),
        "--",
        *command,
    ]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a sandboxed process: CPU, quick mode, one thread, this coursepkg first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_CORE"))}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        COURSEPKG_DEVICE="cpu",
        COURSEPKG_MODE="quick",
        COURSEPKG_PROGRESS="0",
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        PYTHONHASHSEED="0",
        PYTHONWARNINGS="ignore",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    if extra:
        env.update(extra)
    return env


# -- processes ----------------------------------------------------------------------------------


class OutputDrain(threading.Thread):
    """Reads a child's stdout+stderr, keeping only its head and tail (a flood costs nothing)."""

    def __init__(self, fd: int, limit: int):
        super().__init__(daemon=True)
        self.fd = fd
        self.half = max(limit // 2, 1)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def run(self) -> None:
        try:
            while True:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    break
                self.total += len(chunk)
                room = self.half - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                if chunk:
                    self.tail += chunk
                    if len(self.tail) > 2 * self.half:
                        del self.tail[: len(self.tail) - self.half]
        except OSError:
            pass

    def text(self) -> str:
        tail = bytes(self.tail[-self.half :])
        omitted = self.total - len(self.head) - len(tail)
        middle = f"\n... [{omitted} bytes of output omitted] ...\n" if omitted > 0 else ""
        return (
            bytes(self.head).decode("utf-8", "replace") + middle + tail.decode("utf-8", "replace")
        ).strip()


def spawn(
    command: list[str], *, cwd: str | Path, env: dict[str, str], output_bytes: int, pass_fds=()
) -> tuple[subprocess.Popen, OutputDrain]:
    """Start ``command`` in a new session with its output drained (see the module doc)."""
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=tuple(pass_fds),
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    drain = OutputDrain(proc.stdout.fileno(), output_bytes)
    drain.start()
    return proc, drain


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a process started in its own session, its process group and all its descendants."""
    below = _descendants(proc.pid) if proc.poll() is None else []
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), lambda: proc.kill()):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def finish(proc: subprocess.Popen, drain: OutputDrain) -> str:
    """Kill what is left of a spawned process and return the kept part of its output."""
    kill_tree(proc)
    drain.join(timeout=5)
    try:
        proc.stdout.close()
    except OSError:
        pass
    return drain.text()


# -- framing ------------------------------------------------------------------------------------


class ChildGone(Exception):
    """The child stopped answering: ``reason`` is timeout, eof or protocol."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def send_frame(fd: int, header: dict, data: bytes | None = None) -> None:
    """Write one frame: a JSON ``header`` (with ``size`` when ``data`` follows), then ``data``."""
    if data is not None:
        header = {**header, "size": len(data)}
    payload = json.dumps(header).encode()
    frame = struct.pack(">I", len(payload)) + payload
    if data is not None:
        frame += struct.pack(">Q", len(data)) + data
    _write_all(fd, frame)


def read_command(fd: int) -> dict | None:
    """The child's side: the next header from the grader (blocking), None once the pipe closes."""

    def exact(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    raw = exact(4)
    if raw is None:
        return None
    (length,) = struct.unpack(">I", raw)
    body = exact(length)
    return None if body is None else json.loads(body)


class FrameReader:
    """Reads frames from a pipe with deadlines (the grader's side)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()
        self.poller = select.poll()
        self.poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _exact(self, n: int, deadline: float) -> bytes:
        while len(self.buffer) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildGone("timeout")
            if not self.poller.poll(min(remaining, 1.0) * 1000):
                continue
            try:
                chunk = os.read(self.fd, min(max(n - len(self.buffer), 65536), 1 << 22))
            except OSError as error:
                raise ChildGone("eof", str(error)) from None
            if not chunk:
                raise ChildGone("eof")
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def frame(self, deadline: float) -> tuple[dict, bytes | None]:
        """The next ``(header, data)``; :class:`ChildGone` past ``deadline`` or on a bad frame."""
        (length,) = struct.unpack(">I", self._exact(4, deadline))
        if length > MAX_HEADER:
            raise ChildGone("protocol", "oversized message")
        try:
            header = json.loads(self._exact(length, deadline))
        except ValueError:
            raise ChildGone("protocol", "garbled message") from None
        if not isinstance(header, dict):
            raise ChildGone("protocol", "garbled message")
        data = None
        if header.get("size") is not None:
            (size,) = struct.unpack(">Q", self._exact(8, deadline))
            if size > MAX_DATA:
                raise ChildGone("protocol", f"a result of {size / 2**20:.0f} MB is too large")
            data = self._exact(size, deadline)
        return header, data


def main(argv: list[str]) -> None:
    """``--memory-mb M --cpu-s S -- CMD...``: apply the limits, then become ``CMD``."""
    memory_mb, cpu_s = 4096, 3600
    while argv and argv[0] != "--":
        option, value, *argv = argv
        if option == "--memory-mb":
            memory_mb = int(value)
        elif option == "--cpu-s":
            cpu_s = int(value)
        else:
            sys.exit(f"sandbox: unknown option {option}")
    command = argv[1:]
    if not command:
        sys.exit("usage: python -I sandbox.py --memory-mb M --cpu-s S -- COMMAND [ARGS...]")
    apply_limits(memory_mb, cpu_s)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
