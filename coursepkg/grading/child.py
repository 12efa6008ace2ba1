"""The sandboxed child that runs a notebook's definitions and the probes of an exercise set.

Started by :mod:`coursepkg.grading.runner` as
``python -I sandbox.py ... -- python -m coursepkg.grading.child CMD_FD RES_FD MEMORY_MB`` (the
limits are applied before this interpreter starts; see :mod:`coursepkg.grading.sandbox`). It
reads commands from ``CMD_FD`` and answers on ``RES_FD`` in frames:

* ``init`` (the spec module, the role, the units to run): loads the exercise set and, for a
  student's notebook, makes the grader's references unimportable; answers ``ready``;
* ``exec`` (a unit index, a time limit): runs that unit's code in the namespace;
* ``test`` (a test name, a time limit): runs the probe on the namespace and answers with its
  value, as ``torch.save`` bytes of :func:`plain` data, or with what went wrong;
* ``quit``.

A soft ``SIGALRM`` (:class:`SoftTimeout`) stops a slow unit or test; whatever ignores it is
killed by the grader. :func:`plain` and :func:`format_exception` also serve the in-notebook
self-check.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .judge import internal_error, stub_exercise
from .sandbox import MAX_DATA, read_command, send_frame

__all__ = ["plain", "format_exception", "SoftTimeout", "BlockReferences", "main"]


class SoftTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that ``except Exception`` cannot swallow it."""


def _alarm(signum, frame):
    raise SoftTimeout()


def format_exception(
    error: BaseException, memory_mb: int, is_student: Callable[[str], bool] = lambda f: "#cell" in f
) -> str:
    """``ValueError: bad (in `f`, cell 5, line 3: `raise ValueError("bad")`)``, for a student."""
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


def plain(value: Any, depth: int = 0) -> Any:
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
            return plain(value.item(), depth + 1)
    if isinstance(value, (list, tuple)):
        items = [plain(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {
            (k if isinstance(k, (str, int, float, bool)) else str(k)): plain(v, depth + 1)
            for k, v in value.items()
        }
    return {"__unsupported__": type(value).__qualname__}


class BlockReferences:
    """A meta-path finder that keeps the grader's reference solutions away from submissions."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "coursepkg.grading.references" or fullname.startswith("coursepkg.grading.references."):
            raise ImportError("the grader's reference solutions are not available to submissions")
        return None


def _timed(fn: Callable[[], Any], seconds: float) -> Any:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main(cmd_fd: int, res_fd: int, memory_mb: int) -> None:
    """Serve the grader's commands until ``quit`` or a closed pipe (see the module doc)."""
    import builtins
    import linecache

    try:
        init = read_command(cmd_fd)
        if not init:
            return
        import torch

        torch.set_num_threads(1)
        from .notebook import compile_unit
        from .spec import MissingName, Namespace, SpecError, load_set

        exercise_set = load_set(init["spec"])
        units = init["units"]
        for unit in units:
            lines = unit["source"].splitlines(True)
            linecache.cache[unit["filename"]] = (len(unit["source"]), None, lines, unit["filename"])
        if init["role"] == "student":
            for name in [m for m in sys.modules if m.startswith("coursepkg.grading.references")]:
                del sys.modules[name]
            sys.meta_path.insert(0, BlockReferences())
    except BaseException as error:
        send_frame(res_fd, {"status": "fatal", "message": f"the grader could not start: {error!r}"})
        return
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    send_frame(res_fd, {"status": "ready"})

    def public_names() -> list[str]:
        return sorted(
            n for n, v in namespace.items() if not n.startswith("_") and type(v).__name__ != "module"
        )

    while True:
        command = read_command(cmd_fd)
        if command is None or command.get("op") == "quit":
            return
        seconds = float(command.get("timeout", 60))
        if command["op"] == "exec":
            unit = units[command["unit"]]
            try:
                code = compile_unit(unit)
                _timed(lambda code=code: exec(code, namespace), seconds)
                reply = {"status": "ok"}
            except SoftTimeout:
                reply = {"status": "timeout"}
            except BaseException as error:  # the student's code may raise anything
                reply = {"status": "error", "message": format_exception(error, memory_mb)}
            send_frame(res_fd, reply)
            continue
        test = exercise_set.get_test(command["name"])
        missing = [n for n in test.requires if n not in namespace]
        if missing:
            send_frame(res_fd, {"status": "missing", "names": missing, "available": public_names()})
            continue
        data = None
        try:
            value = _timed(lambda test=test: plain(test(Namespace(namespace))), seconds)
            buffer = io.BytesIO()
            torch.save(value, buffer)
            data = buffer.getvalue()
            reply = {"status": "ok"}
        except SoftTimeout:
            reply = {"status": "timeout", "message": f"did not finish within {seconds:g} s"}
        except MissingName as error:
            reply = {"status": "missing", "names": [error.name_missing], "available": public_names()}
        except SpecError as error:
            reply = {"status": "internal", "message": internal_error(error)}
        except NotImplementedError as error:
            stub = stub_exercise(str(error)) is not None
            reply = {"status": "stub" if stub else "error", "message": format_exception(error, memory_mb)}
        except SystemExit as error:
            reply = {"status": "error", "message": f"your code called exit() or sys.exit({error.code!r})"}
        except BaseException as error:
            reply = {"status": "error", "message": format_exception(error, memory_mb)}
        if data is not None and len(data) > MAX_DATA:
            reply, data = (
                {"status": "error", "message": "your code returned a result that is far too large"},
                None,
            )
        send_frame(res_fd, reply, data)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m coursepkg.grading.child CMD_FD RES_FD MEMORY_MB")
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: the student's objects may misbehave in __del__
