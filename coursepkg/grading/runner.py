"""Run the probes of an exercise set on a notebook's definitions in sandboxed child processes.

The grader sends a child (:mod:`coursepkg.grading.child`, in the sandbox of
:mod:`coursepkg.grading.sandbox`) the definitions of the notebook (see
:func:`coursepkg.grading.notebook.extract_program`), runs them unit by unit, then asks for one
test at a time. A probe's value comes back as ``torch.save`` bytes of plain data and is read with
``torch.load(weights_only=True)``, so the child can never make the grader unpickle code. A child
that ignores its soft time limit, hangs, dies (``os._exit``, a crash, the memory cap) or breaks
the protocol is killed with its process group and descendants, the test is reported, and the
remaining tests go on in a fresh child.

The reference solution's values come from the same machinery on the packaged reference module,
cached per exercise set in the grader's process. :func:`grade_probes` runs both and judges each
test in the grader's process (:func:`coursepkg.grading.judge.verdict`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judge import NotebookContext, Outcome, verdict
from .sandbox import (
    GRACE_S,
    ChildGone,
    FrameReader,
    Limits,
    child_env,
    finish,
    kill_tree,
    limited_command,
    send_frame,
    spawn,
)

__all__ = ["RunResult", "run_tests", "reference_results", "clear_reference_cache", "grade_probes"]


@dataclass
class RunResult:
    outcomes: dict[str, Outcome]
    unit_errors: dict[int, str]
    output: str
    restarts: int = 0


class _ProbeChild:
    """One sandboxed :mod:`coursepkg.grading.child` process (the grader's handle)."""

    def __init__(self, limits: Limits, workdir: str, cpu_s: float):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        command = [
            sys.executable,
            "-m",
            "coursepkg.grading.child",
            str(cmd_r),
            str(res_w),
            str(limits.memory_mb),
        ]
        try:
            self.proc, self.drain = spawn(
                limited_command(command, limits.memory_mb, cpu_s),
                cwd=workdir,
                env=child_env(),
                output_bytes=limits.output_bytes,
                pass_fds=(cmd_r, res_w),
            )
        finally:
            os.close(cmd_r)
            os.close(res_w)
        self.cmd = cmd_w
        self.reader = FrameReader(res_r)

    def request(self, header: dict, timeout: float) -> tuple[dict, bytes | None]:
        try:
            send_frame(self.cmd, header)
        except OSError:
            raise ChildGone("eof") from None
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
            send_frame(self.cmd, {"op": "quit"})
        except OSError:
            pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        for fd in (self.cmd, self.reader.fd):
            try:
                os.close(fd)
            except OSError:
                pass
        return finish(self.proc, self.drain)


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
            child = _ProbeChild(limits, workdir, cpu_s)
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
            except ChildGone as gone:
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


def grade_probes(
    exercise_set, program, limits: Limits, tests: list | None = None
) -> tuple[list, list[str], str]:
    """Run and judge every test of ``exercise_set`` on ``program``.

    Returns ``(results, errors, output)``: one :class:`~coursepkg.grading.report.TestResult` per
    test, notebook-level messages, and the tail of the student code's output.
    """
    from .report import TestResult

    tests = list(exercise_set.tests if tests is None else tests)
    kinds: dict[str, str] = {}
    for info in exercise_set.metadata()["exercises"].values():
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
    for index, message in sorted(student.unit_errors.items()):
        unit = program.units[index]
        what = f"the definitions of exercise {unit.exercise}" if unit.exercise else "the imports"
        errors.append(f"cell {unit.cell}: running {what} failed: {message}")
    errors += program.problems.values()

    context = NotebookContext(program, kinds, student.unit_errors, limits.memory_mb)
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
        if ref is None and reference is None:
            ref = Outcome("internal", reference_box.get("error", ""))
        passed, message = verdict(test, outcome, ref, context)
        if outcome.status == "ok" and message.startswith("internal error"):
            errors.append(f"{test.name}: {message}")
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
