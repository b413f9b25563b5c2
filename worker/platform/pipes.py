"""Read a child's pipes on threads: for Windows, where `select` waits on sockets only.

On POSIX `worker.engines.process` reads stdout and stderr on the agent's own thread with a
selector. Windows' `select` refuses pipes, so there each pipe gets a daemon thread that reads
it to its end into a sink (the process module's bounded capture). `finish(deadline)` waits for
the threads until the pipes close or the deadline passes; after it no chunk reaches a sink, so
a process that escaped every kill and still holds a pipe cannot change what was returned.
Each thread closes its own pipe when it ends: closing it from outside while the thread is
blocked in a read could hand the fd number to a new file that the thread would then read.

The same code runs on Linux in tests (the dispatch is `proc.pipes_need_threads`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import IO, Protocol

_READ_CHUNK = 64 * 1024


class Sink(Protocol):
    def add(self, chunk: bytes) -> None: ...


class PipeThreads:
    """One reader thread per pipe, each adding what it reads to that pipe's sink."""

    def __init__(self, pipes: Mapping[IO[bytes], Sink]) -> None:
        self._lock = threading.Lock()
        self._open = True
        self._threads = [
            threading.Thread(target=self._read, args=(pipe, sink), daemon=True, name="orch-pipe")
            for pipe, sink in pipes.items()
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, pipe: IO[bytes], sink: Sink) -> None:
        with pipe:
            fileno = pipe.fileno()
            while True:
                try:
                    chunk = os.read(fileno, _READ_CHUNK)
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    if not self._open:
                        return
                    sink.add(chunk)

    def closed(self) -> bool:
        """True once every pipe reached its end."""
        return not any(thread.is_alive() for thread in self._threads)

    def finish(self, deadline: float) -> None:
        """Wait for the pipes to close until `deadline` (time.monotonic()); then stop adding."""
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._open = False
