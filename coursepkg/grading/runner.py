"""Run the probes of an exercise set on a notebook's definitions in a sandboxed child process.

The child is a fresh interpreter (``python -m coursepkg.grading.runner child ...``, started in a
new session and an empty temporary folder) with

* a memory cap (``RLIMIT_DATA``, which covers the heap and anonymous ``mmap`` on Linux but not the
  address space that torch's libraries reserve, so ``import torch`` still works), a CPU-time
  backstop (``RLIMIT_CPU``), a file-size cap and no core dumps;
* one torch thread, the CPU device and quick mode (``COURSEPKG_DEVICE=cpu``,
  ``COURSEPKG_MODE=quick``);
* stdin from ``/dev/null``; stdout and stderr drained by the grader into a bounded buffer;
* the grader's packaged references made unimportable (``coursepkg.grading.references``).

The grader drives it over two pipes: it sends the definitions (see
:func:`coursepkg.grading.notebook.extract_program`), runs them unit by unit, then asks for one
test at a time. A probe's value comes back as ``torch.save`` bytes of plain data and is read with
``torch.load(weights_only=True)``, so the child can never make the grader unpickle code. A soft
``SIGALRM`` stops a slow test; a child that ignores it, hangs, dies (``os._exit``, a crash, the
memory cap) or breaks the protocol is killed with its process group and descendants, the test is
reported, and the remaining tests go on in a fresh child.

The reference solution's values come from the same machinery on the packaged reference module,
cached per exercise set in the grader's process. Comparisons happen in the grader's process, in
:func:`grade_probes`.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Limits", "Outcome", "RunResult", "run_tests", "reference_results", "grade_probes", "child_env"]

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


@dataclass
class Outcome:
    """What happened to one test in the child (before any comparison)."""

    status: str  # ok, missing, stub, error, timeout, crash, protocol, deadline, internal
    message: str = ""
    data: bytes | None = None
    duration_s: float = 0.0
    names: list[str] = field(default_factory=list)  # missing names
    available: list[str] = field(default_factory=list)  # names the notebook does define


@dataclass
class RunResult:
    outcomes: dict[str, Outcome]
    unit_errors: dict[int, str]
    output: str
    restarts: int = 0


# -- protocol -----------------------------------------------------------------------------------


class _Gone(Exception):
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


def _send(fd: int, header: dict, data: bytes | None = None) -> None:
    if data is not None:
        header = {**header, "size": len(data)}
    payload = json.dumps(header).encode()
    frame = struct.pack(">I", len(payload)) + payload
    if data is not None:
        frame += struct.pack(">Q", len(data)) + data
    _write_all(fd, frame)


class _Reader:
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
                raise _Gone("timeout")
            if not self.poller.poll(min(remaining, 1.0) * 1000):
                continue
            try:
                chunk = os.read(self.fd, min(max(n - len(self.buffer), 65536), 1 << 22))
            except OSError as error:
                raise _Gone("eof", str(error)) from None
            if not chunk:
                raise _Gone("eof")
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    def frame(self, deadline: float) -> tuple[dict, bytes | None]:
        (length,) = struct.unpack(">I", self._exact(4, deadline))
        if length > MAX_HEADER:
            raise _Gone("protocol", "oversized message")
        try:
            header = json.loads(self._exact(length, deadline))
        except ValueError:
            raise _Gone("protocol", "garbled message") from None
        if not isinstance(header, dict):
            raise _Gone("protocol", "garbled message")
        data = None
        if header.get("size") is not None:
            (size,) = struct.unpack(">Q", self._exact(8, deadline))
            if size > MAX_DATA:
                raise _Gone("protocol", f"a result of {size / 2**20:.0f} MB is too large")
            data = self._exact(size, deadline)
        return header, data


class _Drain(threading.Thread):
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
    if proc.poll() is None:
        below = _descendants(proc.pid)
    else:
        below = []
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


class _Child:
    """One sandboxed interpreter (the grader's handle)."""

    def __init__(self, limits: Limits, workdir: str, cpu_s: float):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coursepkg.grading.runner",
                    "child",
                    str(cmd_r),
                    str(res_w),
                    str(limits.memory_mb),
                    str(int(cpu_s)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(cmd_r, res_w),
                cwd=workdir,
                env=child_env(),
                start_new_session=True,
            )
        finally:
            os.close(cmd_r)
            os.close(res_w)
        self.cmd = cmd_w
        self.reader = _Reader(res_r)
        self.drain = _Drain(self.proc.stdout.fileno(), limits.output_bytes)
        self.drain.start()

    def request(self, header: dict, timeout: float) -> tuple[dict, bytes | None]:
        try:
            _send(self.cmd, header)
        except OSError:
            raise _Gone("eof") from None
        return self.reader.frame(time.monotonic() + timeout)

    def exit_description(self) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return ""
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def close(self) -> str:
        try:
            _send(self.cmd, {"op": "quit"})
        except OSError:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        kill_tree(self.proc)
        for fd in (self.cmd, self.reader.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.drain.join(timeout=5)
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        return self.drain.text()


def _test_seconds(test, limits: Limits) -> float:
    return float(test.timeout or limits.test_timeout)


def run_tests(
    exercise_set, units: list[dict], tests: list, limits: Limits, role: str = "student"
) -> RunResult:
    """Run ``units`` (definitions, as dicts) then each test's probe in sandboxed children.

    Returns one :class:`Outcome` per test name; a test that kills or hangs its child is reported
    and the remaining tests run in a fresh child (which re-runs the definitions, except those
    that hung or crashed).
    """
    outcomes: dict[str, Outcome] = {}
    unit_errors: dict[int, str] = {}
    hopeless: set[int] = set()
    pending = list(tests)
    outputs: list[str] = []
    restarts = 0
    start = time.monotonic()
    deadline = start + limits.notebook_timeout
    cpu_s = limits.notebook_timeout + limits.startup_timeout + 60
    init = {
        "op": "init",
        "spec": exercise_set.origin,
        "role": role,
        "units": units,
        "memory_mb": limits.memory_mb,
    }
    with tempfile.TemporaryDirectory(prefix="coursepkg-probe-") as workdir:
        while pending:
            if time.monotonic() >= deadline:
                break
            child = _Child(limits, workdir, cpu_s)
            step: tuple[str, Any] = ("init", None)
            failed_start: str | None = None
            began = time.monotonic()
            try:
                remaining = deadline - time.monotonic()
                header, _ = child.request(init, min(limits.startup_timeout, remaining))
                if header.get("status") != "ready":
                    message = header.get("message", "the grader's child process failed to start")
                    for test in pending:
                        outcomes[test.name] = Outcome("internal", message)
                    pending = []
                    break
                for index in range(len(units)):
                    if index in hopeless or index in unit_errors:
                        continue
                    step = ("unit", index)
                    remaining = deadline - time.monotonic()
                    header, _ = child.request(
                        {"op": "exec", "unit": index, "timeout": limits.test_timeout},
                        min(limits.test_timeout + GRACE_S, remaining),
                    )
                    if header.get("status") == "timeout":
                        hopeless.add(index)
                        unit_errors[index] = f"did not finish within {limits.test_timeout:g} s"
                    elif header.get("status") != "ok":
                        unit_errors[index] = header.get("message", "failed")
                while pending:
                    test = pending[0]
                    step = ("test", test)
                    seconds = _test_seconds(test, limits)
                    began = time.monotonic()
                    remaining = deadline - began
                    header, data = child.request(
                        {"op": "test", "name": test.name, "timeout": seconds},
                        min(seconds + GRACE_S, remaining),
                    )
                    outcomes[test.name] = Outcome(
                        status=str(header.get("status", "internal")),
                        message=str(header.get("message", ""))[:2000],
                        data=data,
                        duration_s=time.monotonic() - began,
                        names=[str(n) for n in header.get("names", [])][:20],
                        available=[str(n) for n in header.get("available", [])][:500],
                    )
                    pending.pop(0)
            except _Gone as gone:
                restarts += 1
                out_of_time = time.monotonic() >= deadline - 0.05
                what = "timeout" if gone.reason == "timeout" else "crash"
                if gone.reason != "eof":  # hung, or garbled the protocol: it may still run
                    kill_tree(child.proc)
                exit_info = child.exit_description() if what == "crash" else ""
                kind, subject = step
                if kind == "init":
                    if not out_of_time:
                        failed_start = f"{gone.reason} {gone.detail} {exit_info}".strip()
                elif kind == "unit":
                    hopeless.add(subject)
                    if what == "timeout":
                        unit_errors[subject] = f"did not finish within {limits.test_timeout:g} s"
                    elif gone.reason == "protocol":
                        unit_errors[subject] = f"wrote into the grader's private channel ({gone.detail})"
                    else:
                        unit_errors[subject] = (
                            f"ended the Python process running it ({exit_info or gone.reason})"
                        )
                elif not (out_of_time and what == "timeout"):
                    seconds = _test_seconds(subject, limits)
                    if what == "timeout":
                        outcome = Outcome("timeout", f"did not finish within {seconds:g} s")
                    elif gone.reason == "protocol":
                        detail = f"your code wrote into the grader's private channel ({gone.detail})"
                        outcome = Outcome("protocol", detail)
                    else:
                        outcome = Outcome("crash", exit_info)
                    outcome.duration_s = time.monotonic() - began
                    outcomes[subject.name] = outcome
                    pending.pop(0)
            finally:
                outputs.append(child.close())
            if failed_start is not None:
                reason = f"internal error: the grader's child process did not start ({failed_start})"
                for test in pending:
                    outcomes[test.name] = Outcome("internal", reason + "\n" + outputs[-1][-2000:])
                pending = []
    for test in pending:
        outcomes[test.name] = Outcome(
            "deadline",
            f"not run: the time limit for all tests of a notebook ({limits.notebook_timeout:g} s) ran out",
        )
    text = "\n".join(o for o in outputs if o)
    if len(text) > limits.output_bytes * 2:
        text = text[: limits.output_bytes] + "\n...\n" + text[-limits.output_bytes :]
    return RunResult(outcomes, unit_errors, text, restarts)


# -- the reference ------------------------------------------------------------------------------

_REFERENCE_CACHE: dict[tuple, RunResult] = {}
_REFERENCE_LOCKS: dict[tuple, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


def _stamp(path: Path | str | None) -> tuple:
    try:
        stat = Path(path).stat()  # type: ignore[arg-type]
        return (str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, TypeError):
        return (str(path),)


def reference_unit(exercise_set) -> dict:
    return {
        "filename": f"<reference {exercise_set.name}>",
        "source": exercise_set.reference_source(),
        "keep": None,
        "exercise": None,
        "cell": 0,
    }


def reference_results(exercise_set, limits: Limits) -> RunResult:
    """The reference's outcome of every test of the set (computed once per process and set)."""
    origin = exercise_set.origin or ""
    key = (
        exercise_set.name,
        origin,
        _stamp(exercise_set.reference_path),
        _stamp(origin if origin.endswith(".py") else None),
    )
    with _CACHE_LOCK:
        lock = _REFERENCE_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _REFERENCE_CACHE:
            generous = Limits(
                test_timeout=max(limits.test_timeout, 120),
                notebook_timeout=max(limits.notebook_timeout, 600),
                memory_mb=max(limits.memory_mb, 4096),
                startup_timeout=limits.startup_timeout,
                output_bytes=limits.output_bytes,
            )
            result = run_tests(
                exercise_set, [reference_unit(exercise_set)], exercise_set.tests, generous, "reference"
            )
            if all(o.status == "ok" for o in result.outcomes.values()) and not result.unit_errors:
                _REFERENCE_CACHE[key] = result
            return result
        return _REFERENCE_CACHE[key]


def clear_reference_cache() -> None:
    with _CACHE_LOCK:
        _REFERENCE_CACHE.clear()


# -- comparing (in the grader's process) --------------------------------------------------------

_STUB = re.compile(r"Exercise (\S+): replace this line with your solution")


def _load(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def grade_probes(
    exercise_set, program, limits: Limits, tests: list | None = None
) -> tuple[list, list[str], str]:
    """Run and compare every test of ``exercise_set`` on ``program``.

    Returns ``(results, errors, output)``: one :class:`~coursepkg.grading.report.TestResult` per
    test, notebook-level messages, and the tail of the student code's output.
    """
    from .report import TestResult

    tests = list(exercise_set.tests if tests is None else tests)
    meta = exercise_set.metadata()
    kinds: dict[str, str] = {}
    for info in meta["exercises"].values():
        names = info.get("names", {})
        if isinstance(names, dict):
            kinds.update(names)
    runnable = [t for t in tests if t.exercise not in program.problems]
    units = [u.to_dict() for u in program.units]

    reference_box: dict[str, Any] = {}

    def compute_reference() -> None:
        try:
            reference_box["result"] = reference_results(exercise_set, limits)
        except Exception as error:  # reported below, never raised
            reference_box["error"] = f"{type(error).__name__}: {error}"

    thread = threading.Thread(target=compute_reference, daemon=True)
    thread.start()
    student = (
        run_tests(exercise_set, units, runnable, limits, "student") if runnable else RunResult({}, {}, "")
    )
    thread.join()
    reference = reference_box.get("result")
    errors: list[str] = []
    if reference is None:
        errors.append(f"internal error: the reference could not run: {reference_box.get('error')}")
    exercise_of_unit = {i: u.exercise for i, u in enumerate(program.units)}
    cell_of_unit = {i: u.cell for i, u in enumerate(program.units)}
    for index, message in sorted(student.unit_errors.items()):
        exercise = exercise_of_unit.get(index)
        what = f"the definitions of exercise {exercise}" if exercise else "the imports"
        errors.append(f"cell {cell_of_unit.get(index)}: running {what} failed: {message}")
    for problem in program.problems.values():
        errors.append(problem)

    results = []
    for test in tests:
        base = dict(name=test.name, exercise=test.exercise, max_points=float(test.points))
        if test.exercise in program.problems:
            results.append(
                TestResult(**base, points=0.0, passed=False, message=program.problems[test.exercise])
            )
            continue
        outcome = student.outcomes.get(test.name, Outcome("internal", "not run"))
        ref = reference.outcomes.get(test.name) if reference else None
        message = _message(test, outcome, program, student, exercise_of_unit, kinds, limits)
        passed = False
        if outcome.status == "ok":
            if ref is None or ref.status != "ok" or ref.data is None:
                detail = ref.message if ref else reference_box.get("error", "")
                message = (
                    f"internal error: the reference solution fails this test ({detail}); tell the instructors"
                )
                errors.append(f"{test.name}: {message}")
            else:
                try:
                    student_value = _load(outcome.data or b"")
                except Exception as error:
                    message = f"your code returned a value the grader cannot read ({type(error).__name__})"
                else:
                    try:
                        test.check(student_value, _load(ref.data))
                        passed, message = True, ""
                    except AssertionError as error:
                        message = str(error) or "your result differs from the reference"
                    except Exception as error:
                        message = (
                            f"your result could not be compared with the reference "
                            f"({type(error).__name__}: {error})"
                        )
        results.append(
            TestResult(
                **base,
                points=float(test.points) if passed else 0.0,
                passed=passed,
                message=message[:2000],
                duration_s=round(outcome.duration_s, 3),
            )
        )
    return results, errors, student.output


def _message(test, outcome: Outcome, program, student: RunResult, exercise_of_unit, kinds, limits) -> str:
    status = outcome.status
    if status == "ok":
        return ""
    if status == "stub":
        match = _STUB.search(outcome.message)
        exercise = match.group(1) if match else test.exercise
        return f"Exercise {exercise} still raises NotImplementedError: replace the stub with your solution"
    if status == "missing":
        from .spec import missing_message

        if test.exercise in program.stubs:
            return f"Exercise {test.exercise} still raises NotImplementedError: replace the stub with your solution"
        parts = []
        for name in outcome.names or list(test.requires):
            kind = {"function": "function", "class": "class", "constant": "constant"}.get(
                kinds.get(name, ""), "function or class"
            )
            text = missing_message(name, outcome.available, kind)
            if name in program.defined_elsewhere:
                text += (
                    f"; it is defined in cell {program.defined_elsewhere[name]}, which is not a graded "
                    f"cell: define it in the cell that starts with `# EXERCISE {test.exercise}`"
                )
            parts.append(text)
        if test.exercise not in program.exercise_cells:
            parts.append(
                f"the cell that starts with `# EXERCISE {test.exercise}` is missing from your notebook"
            )
        for index, error in student.unit_errors.items():
            if exercise_of_unit.get(index) == test.exercise:
                parts.append(f"running that cell's definitions failed: {error}")
        return "; ".join(parts)
    if status == "error":
        message = f"your code raised {outcome.message}"
        undefined = re.match(r"NameError: name '(\w+)' is not defined", outcome.message)
        if undefined:
            name = undefined.group(1)
            if name in test.exercise_set.forbidden_imports:
                message += f"; `{name}` comes from coursepkg, which this exercise set does not allow"
            elif name in program.defined_elsewhere:
                message += (
                    f"; `{name}` is defined in cell {program.defined_elsewhere[name]}, which is not a graded "
                    "cell: the grader only runs the graded cells, so move it into one"
                )
            else:
                close = difflib.get_close_matches(name, sorted(program.graded_names), n=2, cutoff=0.6)
                if close:
                    message += f" (did you mean {', '.join(f'`{c}`' for c in close)}?)"
        return message
    if status == "timeout":
        return f"{outcome.message} (an infinite loop, or much too slow?)"
    if status == "crash":
        why = f" ({outcome.message})" if outcome.message else ""
        return (
            "the Python process running your code ended during this test"
            f"{why}: os._exit(), a crash, or more memory than the {limits.memory_mb} MB allowed"
        )
    return outcome.message or status


# -- the child's side ---------------------------------------------------------------------------


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
        if limit is None or value <= 0 and name != "RLIMIT_CORE":
            continue
        try:
            _, hard = resource.getrlimit(limit)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


class _SoftTimeout(BaseException):
    """Raised in the child by SIGALRM; a BaseException so ``except Exception`` cannot swallow it."""


def _alarm(signum, frame):
    raise _SoftTimeout()


def _read_command(fd: int) -> dict | None:
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


def _format_exception(error: BaseException, memory_mb: int, is_student=lambda f: "#cell" in f) -> str:
    import traceback

    text = str(error)
    if len(text) > 400:
        text = text[:400] + " ..."
    message = f"{type(error).__name__}: {text}" if text else type(error).__name__
    if isinstance(error, MemoryError) or "can't allocate memory" in text or "DefaultCPUAllocator" in text:
        limit = f" (the grader allows {memory_mb} MB)" if memory_mb else ""
        message = f"{type(error).__name__}: out of memory{limit}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if is_student(f.filename)]
    if frames:
        frame = frames[-1]
        where = (
            frame.filename.rsplit("#", 1)[-1].replace("cell", "cell ")
            if "#cell" in frame.filename
            else "your code"
        )
        line = (frame.line or "").strip()
        code = f": `{line[:120]}`" if line else ""
        message += f" (in `{frame.name}`, {where}, line {frame.lineno}{code})"
    return message


def _plain(value: Any, depth: int = 0) -> Any:
    """A copy of a probe's value made only of tensors, numbers, strings and containers."""
    import torch

    if depth > 32:
        raise ValueError("the value is nested too deeply")
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if type(tensor) is not torch.Tensor:
            tensor = tensor.as_subclass(torch.Tensor)
        if tensor.is_quantized:
            tensor = tensor.dequantize()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        return tensor.to("cpu").clone().contiguous()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, complex):
        return complex(value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.ndarray):
            if value.dtype.kind in "biufc":
                return torch.from_numpy(numpy.ascontiguousarray(value)).clone()
            return {"__unsupported__": f"numpy array of {value.dtype}"}
        if isinstance(value, numpy.generic):
            return _plain(value.item(), depth + 1)
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, (str, int, float, bool)) else str(k)): _plain(v, depth + 1)
            for k, v in value.items()
        }
    return {"__unsupported__": type(value).__qualname__}


class _BlockReferences:
    """A meta-path finder that keeps the grader's reference solutions away from submissions."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "coursepkg.grading.references" or fullname.startswith("coursepkg.grading.references."):
            raise ImportError("the grader's reference solutions are not available to submissions")
        return None


def _child_main(cmd_fd: int, res_fd: int, memory_mb: int, cpu_s: int) -> None:
    apply_limits(memory_mb, cpu_s)
    import builtins
    import linecache

    try:
        init = _read_command(cmd_fd)
        if not init:
            return
        import torch

        torch.set_num_threads(1)
        from coursepkg.grading.notebook import compile_unit
        from coursepkg.grading.spec import MissingName, Namespace, load_set

        exercise_set = load_set(init["spec"])
        units = init["units"]
        for unit in units:
            lines = unit["source"].splitlines(True)
            linecache.cache[unit["filename"]] = (len(unit["source"]), None, lines, unit["filename"])
        if init["role"] == "student":
            for name in [m for m in sys.modules if m.startswith("coursepkg.grading.references")]:
                del sys.modules[name]
            sys.meta_path.insert(0, _BlockReferences())
    except BaseException as error:
        _send(res_fd, {"status": "fatal", "message": f"the grader could not start: {error!r}"})
        return
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    _send(res_fd, {"status": "ready"})

    def timed(fn, seconds: float):
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def public_names() -> list[str]:
        return sorted(
            n for n, v in namespace.items() if not n.startswith("_") and type(v).__name__ != "module"
        )

    while True:
        command = _read_command(cmd_fd)
        if command is None or command.get("op") == "quit":
            return
        seconds = float(command.get("timeout", 60))
        if command["op"] == "exec":
            unit = units[command["unit"]]
            try:
                code = compile_unit(unit)
                timed(lambda code=code: exec(code, namespace), seconds)
                reply = {"status": "ok"}
            except _SoftTimeout:
                reply = {"status": "timeout"}
            except BaseException as error:  # the student's code may raise anything
                reply = {"status": "error", "message": _format_exception(error, memory_mb)}
            _send(res_fd, reply)
            continue
        test = exercise_set.get_test(command["name"])
        missing = [n for n in test.requires if n not in namespace]
        if missing:
            _send(res_fd, {"status": "missing", "names": missing, "available": public_names()})
            continue
        data = None
        try:
            value = timed(lambda test=test: _plain(test(Namespace(namespace))), seconds)
            buffer = io.BytesIO()
            torch.save(value, buffer)
            data = buffer.getvalue()
            reply = {"status": "ok"}
        except _SoftTimeout:
            reply = {"status": "timeout", "message": f"did not finish within {seconds:g} s"}
        except MissingName as error:
            reply = {"status": "missing", "names": [error.name_missing], "available": public_names()}
        except NotImplementedError as error:
            stub = str(error).startswith("Exercise ")
            reply = {"status": "stub" if stub else "error", "message": _format_exception(error, memory_mb)}
        except SystemExit as error:
            reply = {"status": "error", "message": f"your code called exit() or sys.exit({error.code!r})"}
        except BaseException as error:
            reply = {"status": "error", "message": _format_exception(error, memory_mb)}
        if data is not None and len(data) > MAX_DATA:
            reply, data = (
                {"status": "error", "message": "your code returned a result that is far too large"},
                None,
            )
        _send(res_fd, reply, data)


def exec_with_limits(argv: list[str]) -> None:
    """``exec --memory-mb M --cpu-s S -- CMD...``: apply the limits, then become CMD."""
    memory_mb, cpu_s = 4096, 3600
    while argv and argv[0] != "--":
        option, value, *argv = argv
        if option == "--memory-mb":
            memory_mb = int(value)
        elif option == "--cpu-s":
            cpu_s = int(value)
    command = argv[1:]
    apply_limits(memory_mb, cpu_s)
    os.execvp(command[0], command)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "child":
        _child_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        sys.stdout.flush()
        os._exit(0)  # skip interpreter teardown: the student's objects may misbehave in __del__
    elif len(sys.argv) >= 2 and sys.argv[1] == "exec":
        exec_with_limits(sys.argv[2:])
    else:
        sys.exit("usage: python -m coursepkg.grading.runner child|exec ...")
