"""The sandbox's parts on their own: limits, output drain, process tree, framing, nbval plugin."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from coursepkg.grading.nbval_plugin import printed_text
from coursepkg.grading.sandbox import (
    ChildGone,
    FrameReader,
    OutputDrain,
    finish,
    kill_tree,
    limited_command,
    send_frame,
    spawn,
)


def _run(code: str, tmp_path, memory_mb: int = 1234, cpu_s: int = 77) -> str:
    proc, drain = spawn(
        limited_command([sys.executable, "-c", code], memory_mb, cpu_s),
        cwd=tmp_path,
        env=dict(os.environ),
        output_bytes=10_000,
    )
    proc.wait(timeout=60)
    return finish(proc, drain)


def test_limits_are_in_force_before_the_command_starts(tmp_path):
    code = (
        "import resource, sys\n"
        "print(resource.getrlimit(resource.RLIMIT_CPU)[0], resource.getrlimit(resource.RLIMIT_DATA)[0] >> 20,"
        " resource.getrlimit(resource.RLIMIT_CORE)[0], 'torch' in sys.modules)"
    )
    assert _run(code, tmp_path) == "77 1234 0 False"


def test_the_limits_script_imports_only_the_standard_library(tmp_path):
    """pytest under nbval starts through it: importing coursepkg would import torch first."""
    command = limited_command(["/bin/true"], 1024, 10)
    result = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert imported and not [m for m in imported if m.split(".")[0] in ("coursepkg", "torch", "numpy")]


def test_output_drain_keeps_head_and_tail():
    read, write = os.pipe()
    drain = OutputDrain(read, 1000)
    drain.start()
    os.write(write, b"head" + b"x" * 100_000 + b"tail")
    os.close(write)
    drain.join(timeout=10)
    text = drain.text()
    assert text.startswith("head") and text.endswith("tail") and "bytes of output omitted" in text
    assert len(text) < 1100
    os.close(read)


def test_kill_tree_ends_forked_descendants(tmp_path):
    grandchild = tmp_path / "grandchild.pid"
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # out of the process group: only the descendant walk finds it\n"
        f"    open({str(grandchild)!r}, 'w').write(str(os.getpid()))\n"
        "    time.sleep(60)\n"
        "time.sleep(60)\n"
    )
    proc, drain = spawn([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ), output_bytes=100)
    deadline = time.monotonic() + 20
    while not grandchild.exists() or not grandchild.read_text():
        assert time.monotonic() < deadline, "the grandchild did not start"
        time.sleep(0.05)
    pid = int(grandchild.read_text())
    kill_tree(proc)
    finish(proc, drain)
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "the grandchild survived kill_tree"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_frames_round_trip_and_half_a_frame_times_out():
    read, write = os.pipe()
    reader = FrameReader(read)
    send_frame(write, {"status": "ok"}, b"\x00\x01")
    assert reader.frame(time.monotonic() + 5) == ({"status": "ok", "size": 2}, b"\x00\x01")
    os.write(write, b"\x00\x00")  # half of a frame's length, then nothing
    started = time.monotonic()
    with pytest.raises(ChildGone) as gone:
        reader.frame(time.monotonic() + 0.3)
    assert gone.value.reason == "timeout" and time.monotonic() - started < 5
    os.close(write)
    os.close(read)


def test_printed_text_is_stdout_and_displayed_text():
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "a\n"},
        {"output_type": "stream", "name": "stderr", "text": "warning\n"},
        {"output_type": "execute_result", "data": {"text/plain": "42"}},
    ]
    assert printed_text(outputs) == "a\n42\n"
