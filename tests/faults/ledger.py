"""A ledger of engine runs, written by the engines themselves, for the fault-injection suite.

`engine_bin` makes a bin/ folder whose `llama-bench` is a thin wrapper around the real one: for
every benchmark run (an argv with `-m`) it appends JSON lines to the ledger (O_APPEND, one
write each, so lines from several processes never interleave) and runs the real binary as its
child, which gets SIGKILL when the wrapper dies (as the wrapper does when its agent dies):

    {"event": "start", "pid": WRAPPER, "at": WALL_S, "box": HOST, "model": PATH, "depth": D}
    {"event": "child", "pid": WRAPPER, "at": ..., "child": REAL_PID}
    {"event": "end",   "pid": WRAPPER, "at": ..., "exit": CODE}
    {"event": "spawned", "pid": HELPER, "at": ..., "of": WRAPPER}   (the `orphan` behaviour)

"start" is written before the real run starts and "end" after it was reaped, so the interval
between them holds the real run. A run killed with its agent writes no "end": `Watch` (a thread
in the test process) notices when the wrapper and its child are gone and takes that moment as
the run's end, which is never earlier than the real one. So an overlap computed from the ledger
may be a false alarm on a very slow poll, never a miss.

Behaviours make the engine misbehave for one job (chosen by its `-d` depth): `hang` (ignores
SIGTERM, never returns), `garbage` (prints junk, exits 0), `flood-stdout` (24 MiB on stdout,
exit 0), `flood-stderr` (24 MiB on stderr, then the real run), `orphan` (leaves a helper that
keeps the pipes open and outlives the engine, then the real run).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from jobs.protocol import BROKER_ID_KEY, RESULTS_KEY
from jobs.result import RunResult

BEHAVIOURS = ("hang", "garbage", "flood-stdout", "flood-stderr", "orphan")
FLOOD_BYTES = 24 * 1024 * 1024  # past the agent's 16 MiB stdout cap and 256 KiB stderr tail

_WRAPPER = '''#!{python} -IS
"""llama-bench for the fault suite (tests/faults/ledger.py): the ledger, then the real run."""
import ctypes, json, os, signal, subprocess, sys, time

REAL, LEDGER, BOX, HOLD, HOLD_FROM = {real!r}, {ledger!r}, {box!r}, {hold!r}, {hold_from}
BEHAVIOURS = {behaviours!r}
FLOOD = {flood}
args = sys.argv[1:]
if "-m" not in args:  # a version or device probe, not a benchmark run
    os.execv(REAL, [REAL, *args])


def note(event, **fields):
    line = json.dumps({{"event": event, "pid": os.getpid(), "at": time.time(), **fields}})
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)


def value(flag):
    return args[args.index(flag) + 1] if flag in args[:-1] else ""


depth = int(value("-d") or 0)
earlier = open(LEDGER).read().count('"event": "start"') if os.path.exists(LEDGER) else 0
note("start", box=BOX, model=value("-m"), depth=depth)
while HOLD and earlier >= HOLD_FROM and os.path.exists(HOLD):  # the test says when it goes on
    time.sleep(0.05)
mode = BEHAVIOURS.get(depth, "real")
if mode == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(60)
if mode == "garbage":
    sys.stdout.write("\\x00{{not json]] \\ufffd" * 1000 + "\\n")
    sys.stdout.flush()
    note("end", exit=0)
    sys.exit(0)
if mode == "flood-stdout":
    sys.stdout.write("[" * FLOOD)
    sys.stdout.flush()
    note("end", exit=0)
    sys.exit(0)
if mode == "flood-stderr":
    sys.stderr.write("e" * FLOOD)
    sys.stderr.flush()
if mode == "orphan":
    wrapper, first = os.getpid(), os.fork()
    if first == 0:
        if os.fork() == 0:  # reparented once its parent exits; keeps stdout and stderr open
            note("spawned", of=wrapper)
            os.execvp("sleep", ["sleep", "600"])
        os._exit(0)
    os.waitpid(first, 0)
libc = ctypes.CDLL(None)
proc = subprocess.Popen([REAL, *args], preexec_fn=lambda: libc.prctl(1, signal.SIGKILL))
note("child", child=proc.pid)
code = proc.wait()
note("end", exit=code)
sys.exit(code)
'''


def engine_bin(
    folder: Path,
    box: str,
    real_bin: Path,
    ledger: Path,
    *,
    hold: Path | None = None,
    hold_from_run: int = 0,
    behaviours: dict[int, str] | None = None,
) -> Path:
    """A bin/ folder for one box: the ledger-writing llama-bench and the real llama-server.

    `hold`: while that file exists, every benchmark run waits after its "start" line, from
    the ledger's run number `hold_from_run` on (0: the first).
    `behaviours`: -d depth -> one of BEHAVIOURS, for the runs of that depth."""
    unknown = set((behaviours or {}).values()) - set(BEHAVIOURS)
    assert not unknown, f"unknown behaviours {unknown}"
    folder.mkdir(parents=True)
    wrapper = folder / "llama-bench"
    wrapper.write_text(
        _WRAPPER.format(
            python=sys.executable,
            real=str(real_bin / "llama-bench"),
            ledger=str(ledger),
            box=box,
            hold=str(hold) if hold else "",
            hold_from=hold_from_run,
            behaviours=dict(behaviours or {}),
            flood=FLOOD_BYTES,
        )
    )
    wrapper.chmod(0o755)
    (folder / "llama-server").symlink_to(real_bin / "llama-server")
    return folder


@dataclass
class Run:
    """One benchmark run of the ledger, as the engine wrapper reported it."""

    pid: int
    box: str
    model: str
    depth: int
    start: float
    child: int | None = None
    end: float | None = None  # written by the wrapper once the real run was reaped
    exit: int | None = None
    gone: float | None = None  # seen dead by `Watch` with no "end": killed

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.box, self.model, self.depth)

    @property
    def completed(self) -> bool:
        """Ran to its end and exited 0 (a killed or timed-out run did not complete)."""
        return self.end is not None and self.exit == 0

    @property
    def until(self) -> float:
        """The latest the run can have lasted until (infinite while nobody saw it end)."""
        for at in (self.end, self.gone):
            if at is not None:
                return at
        return float("inf")


@dataclass
class Ledger:
    runs: dict[int, Run] = field(default_factory=dict)  # by wrapper pid
    helpers: list[int] = field(default_factory=list)  # pids of "spawned" helpers

    @classmethod
    def read(cls, path: Path) -> Ledger:
        ledger = cls()
        text = path.read_text() if path.exists() else ""
        for line in text.split("\n")[:-1]:  # a line still being written has no newline yet
            event = json.loads(line)
            pid, at = int(event["pid"]), float(event["at"])
            if event["event"] == "start":
                ledger.runs[pid] = Run(pid, event["box"], event["model"], event["depth"], at)
            elif event["event"] == "child":
                ledger.runs[pid].child = int(event["child"])
            elif event["event"] == "end":
                ledger.runs[pid].end, ledger.runs[pid].exit = at, int(event["exit"])
            elif event["event"] == "spawned":
                ledger.helpers.append(pid)
        return ledger

    def ordered(self) -> list[Run]:
        return sorted(self.runs.values(), key=lambda r: r.start)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def overlaps(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs on one box whose intervals intersect."""
    pairs = []
    ordered = sorted(runs, key=lambda r: r.start)
    for i, first in enumerate(ordered):
        for later in ordered[i + 1 :]:
            if later.box == first.box and later.start < first.until:
                pairs.append((first, later))
    return pairs


class Watch:
    """A thread of the test process that (1) times the death of killed runs and (2) reads every
    result the agents publish to the broker's stream, as one more store would, without taking
    or acknowledging anything. It rides out broker restarts, and a broker that came back empty
    (another broker id) is read from its start again."""

    def __init__(self, ledger: Path, broker_url: str, poll_s: float = 0.05) -> None:
        self.ledger_path = ledger
        self.poll_s = poll_s
        self.gone: dict[int, float] = {}
        self.results: dict[tuple[Any, ...], RunResult] = {}  # distinct reports, by identity
        self._client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=2)
        self._broker_id: bytes | None = None
        self._cursor = "0-0"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="fault-watch", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            self._time_deaths()
            try:
                self._read_stream()
            except redis.RedisError:
                pass  # the broker is down or restarting: read on once it is back

    def _time_deaths(self) -> None:
        now = time.time()
        for run in Ledger.read(self.ledger_path).runs.values():
            if run.end is not None or run.pid in self.gone:
                continue
            if not alive(run.pid) and (run.child is None or not alive(run.child)):
                self.gone[run.pid] = now

    def _read_stream(self) -> None:
        broker_id = self._client.get(BROKER_ID_KEY)
        if broker_id != self._broker_id:
            self._broker_id, self._cursor = broker_id, "0-0"
        while entries := self._client.xrange(RESULTS_KEY, min=f"({self._cursor}", count=500):
            for entry_id, fields in entries:
                result = RunResult.model_validate_json(fields[b"result"])
                identity = (
                    result.job_id,
                    result.attempt,
                    result.lease_generation,
                    result.status,
                    result.started_at,
                )
                self.results.setdefault(identity, result)
                self._cursor = entry_id.decode()

    def ledger(self) -> Ledger:
        """The ledger now, with the deaths this watch timed."""
        self.poll()
        with self._lock:
            ledger = Ledger.read(self.ledger_path)
            for pid, at in self.gone.items():
                if pid in ledger.runs and ledger.runs[pid].end is None:
                    ledger.runs[pid].gone = at
            return ledger

    def published(self) -> list[RunResult]:
        with self._lock:
            return list(self.results.values())
