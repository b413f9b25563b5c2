"""A second "host" on this machine: a network namespace joined to this one by a veth pair.

Traffic stays on this machine: the two ends of the pair are the only addresses, both made
here, and the namespace is deleted afterwards.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class NetNs:
    name: str
    host_ip: str  # this side of the veth pair
    ns_ip: str  # the namespace's side


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network namespace needs root and iproute2's `ip`")
    used = _ip("-o", "addr").stdout
    subnet = next(n for n in random.sample(range(256), 256) if f"10.213.{n}." not in used)
    tag = f"{os.getpid() % 100000}{subnet}"
    ns = NetNs(f"orch-test-{tag}", f"10.213.{subnet}.1", f"10.213.{subnet}.2")
    host_end, ns_end = f"oh{tag}"[:15], f"on{tag}"[:15]
    steps = [
        ("netns", "add", ns.name),
        ("link", "add", host_end, "type", "veth", "peer", "name", ns_end),
        ("link", "set", ns_end, "netns", ns.name),
        ("addr", "add", f"{ns.host_ip}/30", "dev", host_end),
        ("link", "set", host_end, "up"),
        ("-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns_end),
        ("-n", ns.name, "link", "set", ns_end, "up"),
        ("-n", ns.name, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(f"cannot make a network namespace here (ip {' '.join(step)}): "
                            f"{done.stderr.strip()}")  # fmt: skip
        yield ns
    finally:
        _ip("netns", "del", ns.name)  # takes its end of the pair, and so the pair, with it
        _ip("link", "del", host_end)
