"""worker.engines.process and server_process with engine stand-ins (small Python scripts)
that misbehave as real engines and their helpers can: a child that keeps the output pipes open
and sleeps, a helper that detaches into a session of its own, a flood of output."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from worker.engines.process import STDERR_TAIL_BYTES, STDOUT_CAP_BYTES, ProcessOutcome, run_bounded
from worker.engines.server_process import ServerProcess, free_port

# The stand-in forks a child that inherits stdout/stderr and sleeps; it prints the child's pid.
FORKS_A_PIPE_HOLDER = """
import os, sys, time
detach = sys.argv[1] == "detach"
pid = os.fork()
if pid == 0:
    if detach:
        os.setsid()  # out of the engine's process group and session
    time.sleep(600)
    os._exit(0)
print(pid, flush=True)
time.sleep(float(sys.argv[2]))
"""


def _run_guarded(argv: list[str], timeout_s: float) -> ProcessOutcome:
    """run_bounded in a thread: a hang fails the test instead of blocking the suite."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(out=run_bounded(argv, timeout_s)))
    thread.daemon = True
    thread.start()
    thread.join(120)  # a hang detector, not a timing margin: run_bounded never gets near it
    assert not thread.is_alive(), f"run_bounded({argv[:3]}...) hung"
    outcome: ProcessOutcome = box["out"]
    return outcome


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 10  # a killed process can take a moment to be reaped by init
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


def test_timeout_with_a_detached_child_holding_the_pipes_ends_and_kills_it(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(FORKS_A_PIPE_HOLDER)
    # The child left the engine's group, so the group kill misses it and it keeps the pipes.
    outcome = _run_guarded([sys.executable, str(script), "detach", "600"], timeout_s=2)
    assert outcome.timed_out and outcome.returncode is None
    child = int(outcome.stdout.split()[0])
    assert _wait_gone(child), f"the engine's child {child} survived the timeout kill"


def test_an_engine_that_exits_leaves_no_child_behind(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(FORKS_A_PIPE_HOLDER)
    # The engine exits at once; its child still holds the pipes (communicate() waited for it).
    outcome = _run_guarded([sys.executable, str(script), "stay", "0"], timeout_s=600)
    assert not outcome.timed_out and outcome.returncode == 0
    child = int(outcome.stdout.split()[0])
    assert _wait_gone(child), f"the engine's child {child} outlived a job that ended normally"


def test_huge_output_is_kept_as_a_bounded_head_and_tail(tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(
        "import sys\n"
        f"sys.stdout.write('HEAD' + 'o' * {STDOUT_CAP_BYTES + 1_000_000})\n"
        "for _ in range(100):\n"
        "    sys.stderr.write('e' * 1_000_000)\n"
        "sys.stderr.write('\\nLAST LINE\\n')\n"
        "sys.exit(3)\n"
    )
    outcome = _run_guarded([sys.executable, str(script)], timeout_s=600)
    assert outcome.returncode == 3
    assert outcome.stdout.startswith("HEAD") and len(outcome.stdout) == STDOUT_CAP_BYTES
    assert outcome.stdout_truncated
    assert len(outcome.stderr) == STDERR_TAIL_BYTES
    assert outcome.stderr_tail(1) == "LAST LINE"


SERVER_WITH_HELPER = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()
    time.sleep(600)
    os._exit(0)
open(sys.argv[1], "w").write(str(pid))
print("x" * 3_000_000, flush=True)  # a chatty log: read back bounded
time.sleep(600)
"""


def test_stopping_a_server_kills_the_helpers_it_started(tmp_path: Path) -> None:
    script, pid_file = tmp_path / "server.py", tmp_path / "helper.pid"
    script.write_text(SERVER_WITH_HELPER)
    server = ServerProcess([sys.executable, str(script), str(pid_file), "--port", str(free_port())])
    server.start()
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    helper = int(pid_file.read_text())
    log = Path(server._log.name)  # the whole 3 MB written (a busy box writes it in pieces)
    while log.stat().st_size < 3_000_001 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.log_text()) == 1024 * 1024  # the last MiB of a 3 MB log
    server.stop()
    assert _wait_gone(server.pid) and _wait_gone(helper), "a server helper survived stop()"
