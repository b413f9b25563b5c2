"""Live progress from a real agent running a real llama-server job, and `orch status --watch`
under a pseudo-terminal and into a pipe."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from jobs.progress import Phase, Progress, progress_key, read_progress
from tests.integration.conftest import orch, write_worker_config

_REPETITIONS = 6
# The order an agent goes through a llama-server job on a fresh server (no cool-down here).
_ORDER = [Phase.SETTINGS, Phase.LOADING, Phase.WARMUP, Phase.REPETITION, Phase.RESTORING,
          Phase.PUBLISHING, Phase.IDLE]  # fmt: skip


def _matrix(path: Path, campaign: str) -> Path:
    # Long generations (about 20,000 tokens in all), so that later repetitions are seen with the
    # previous one's tokens/s; the assertions below are on the order of what is seen, not on
    # how long anything takes.
    path.write_text(
        f"campaign: {campaign}\nrepetitions: {_REPETITIONS}\n"
        "workload: {prompt_tokens: 16, gen_tokens: 3000}\nhosts: [live-box]\n"
        "matrix: {engine: [llama-server], model: ['tiny:q8_0'], context: [4096]}\n"
    )
    return path


class _Sampler(threading.Thread):
    """Reads the host's progress key as fast as it can until stopped; keeps each change."""

    def __init__(self, client: redis.Redis, host: str) -> None:
        super().__init__(daemon=True)
        self.client, self.host = client, host
        self.seen: list[Progress] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            got = read_progress(self.client, self.host)
            if got is not None and (not self.seen or got != self.seen[-1]):
                self.seen.append(got)
            time.sleep(0.005)


def _last_frame(screen: str) -> str:
    """What a terminal shows after the last complete redraw: from the last cursor-home to the
    clear-below that ends a frame (a frame may arrive in several reads: a half one is not it)."""
    complete = screen.rsplit("\x1b[J", 1)[0] if "\x1b[J" in screen else ""
    frame = complete.rsplit("\x1b[H", 1)[-1]
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", frame)


def test_an_agent_publishes_its_phases_in_order_and_watch_shows_them(
    tmp_path: Path,
    broker: str,
    start_worker: Any,
    redis_client: redis.Redis,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "live-box", llama_bin, tiny_models)
    # The server starts only once the test has seen the job running in the watch view: the
    # agent is "loading" until then, however fast the box (nothing here depends on timing).
    release = tmp_path / "release"
    gate = tmp_path / "llama-server"
    gate.write_text(f"#!/bin/sh\nwhile [ ! -e '{release}' ]; do sleep 0.05; done\n"
                    f"exec '{llama_bin / 'llama-server'}' \"$@\"\n")  # fmt: skip
    gate.chmod(0o755)
    data = yaml.safe_load(config.read_text())
    data["engines"]["llama-server"]["backends"]["cpu"] = str(gate)
    config.write_text(yaml.safe_dump(data))
    worker = start_worker(config)
    store = tmp_path / "orch.db"
    sampler = _Sampler(redis_client, "live-box")
    sampler.start()
    done = orch("--store", str(store), "submit", str(_matrix(tmp_path / "m.yaml", "live")),
                "--broker", broker)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The watch view of the campaign, under a pseudo-terminal, until it is over.
    primary, secondary = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "LINES": "60"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--store", str(store), "status", "--watch",
         "live", "--interval", "0.3", "--broker", broker],
        stdin=secondary, stdout=secondary, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(secondary)
    screen = ""

    def read_screen(until: str, timeout_s: float) -> str:
        nonlocal screen
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(primary, 65536).decode(errors="replace")
                except OSError:
                    break
            frame = _last_frame(screen)
            if re.search(until, frame, re.MULTILINE):
                return frame
        raise AssertionError(f"never shown: {until!r}; last frame:\n{_last_frame(screen)}\n"
                             f"worker log:\n{worker.log_text()[-3000:]}")  # fmt: skip

    try:
        running = read_screen(r"^live-box: job \w+ \(live\): loading", timeout_s=300)
        assert "live" in running
        release.touch()  # the server may start now
        finished = read_screen(r"^campaign live: 1/1 jobs finished", timeout_s=600)
        assert "ETA: done" in finished and "[####################]  1/1" in finished
        watch.send_signal(signal.SIGINT)  # Ctrl-C
        assert watch.wait(timeout=30) == 0, watch.stderr.read() if watch.stderr else ""
    finally:
        sampler.halt.set()
        sampler.join(timeout=10)
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        os.close(primary)

    seen = sampler.seen
    phases = [p.phase for p in seen]
    assert phases[-1] is Phase.IDLE
    job_phases = [p for p in phases if p is not Phase.IDLE]
    # In the agent's order, each at most once in a run (repetitions are one phase here);
    # a phase shorter than a read may be missed, never reordered.
    deduped = [p for i, p in enumerate(job_phases) if i == 0 or p is not job_phases[i - 1]]
    assert deduped == [p for p in _ORDER if p in deduped], deduped
    assert Phase.REPETITION in deduped and Phase.SETTINGS in deduped
    reps = [p for p in seen if p.phase is Phase.REPETITION]
    ks = [p.repetition for p in reps]
    # k never goes back (the heartbeat writes the same k again); faster ones may be held back
    assert ks == sorted(ks) and ks[0] == 1 and ks[-1] <= _REPETITIONS, ks
    assert all(p.repetitions == _REPETITIONS and p.campaign == "live" for p in reps)
    # tokens/s comes from a finished repetition: none before the first one ends
    assert all(p.tokens_per_s is None for p in reps if p.repetition == 1)
    later = [p for p in reps if p.repetition is not None and p.repetition > 1]
    assert all(p.tokens_per_s is not None and p.tokens_per_s > 0 for p in later)
    assert all(b.updated_at >= a.updated_at for a, b in zip(seen, seen[1:], strict=False))
    assert redis_client.ttl(progress_key("live-box")) > 0  # a dead agent's record expires


def test_watch_into_a_pipe_prints_plain_snapshots_and_ctrl_c_exits_0(
    tmp_path: Path, broker: str
) -> None:
    watch = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--store", str(tmp_path / "s.db"), "status",
         "--watch", "--interval", "0.2", "--broker", broker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert watch.stdout is not None
    out = b""
    deadline = time.monotonic() + 120
    while out.count(b"orch status --watch:") < 3 and time.monotonic() < deadline:
        ready, _, _ = select.select([watch.stdout], [], [], 0.5)
        if ready:
            out += os.read(watch.stdout.fileno(), 65536)
    watch.send_signal(signal.SIGINT)
    rest, err = watch.communicate(timeout=30)
    out += rest
    assert watch.returncode == 0, err
    assert out.count(b"orch status --watch:") >= 3
    assert b"\x1b" not in out
    assert b"no campaigns yet" in out
