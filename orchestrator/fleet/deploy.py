"""`orch fleet deploy`: install the agent on every box of the inventory, in parallel.

Per box: connect, check it can take the agent (Python 3.11+, venv, disk), upload and install
this orch's wheel into a venv (only when it changed), write worker.yaml and agent.env (mode
600: the broker password is in it), check the config with the box's own `orch worker
--check-config`, install the service (systemd unit, user unit or supervisor loop, see
`units`) and (re)start it only if something changed or it is not running. A second run on an
unchanged box changes nothing and says `unchanged`.

One box failing (unreachable, auth failed, no Python 3.11, disk full) is that box's row; the
others go on. Each box gets its own Fabric `Connection` in a thread: the steps differ per box
(what changed, which service mode), which a `ThreadingGroup` running one command on all boxes
at a time cannot express.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from orchestrator.errors import HostError
from orchestrator.fleet import service
from orchestrator.fleet.boxfacts import BoxFacts, check_installable, read_facts
from orchestrator.fleet.bundle import Bundle, build_bundle
from orchestrator.fleet.inventory import FleetFile, Target
from orchestrator.fleet.registry import instance_ids, try_connect, wait_registered
from orchestrator.fleet.remote import Box, for_each_host
from orchestrator.fleet.state import DeployState, read_state
from orchestrator.fleet.units import (
    Layout,
    Mode,
    choose_mode,
    env_file_text,
    supervisor_script,
    systemd_unit,
    unit_path,
)

INSTALL_TIMEOUT_S = 1800.0


@dataclass
class HostOutcome:
    """One row of a fleet command's table."""

    host: str
    ok: bool
    mode: str = "-"
    changes: list[str] = field(default_factory=list)
    error: HostError | None = None
    broker: str = "-"  # registered / not checked (why)

    @property
    def result(self) -> str:
        if self.error is not None:
            return f"FAILED: {self.error.reason}"
        return "changed" if self.changes else "unchanged"

    @property
    def detail(self) -> str:
        if self.error is not None:
            return self.error.detail
        return ", ".join(self.changes) if self.changes else "nothing to do"


def failed_outcome(error: HostError) -> HostOutcome:
    return HostOutcome(error.host, ok=False, error=error)


def deploy_fleet(
    fleet: FleetFile, targets: list[Target], work_dir: Path, wheelhouse: Path | None, wait_s: float
) -> list[HostOutcome]:
    """Build the wheel, deploy to every target in parallel, then wait until each box's agent
    registers on the broker (when this machine can reach it); a box whose agent does not
    register in `wait_s` fails."""
    bundle = build_bundle(work_dir, wheelhouse)
    client, why = try_connect(fleet.broker_url(fleet.local_ca()))
    before = instance_ids(client) if client is not None else {}
    outcomes = deploy(fleet, targets, bundle)
    done = [o for o in outcomes if o.ok]
    if client is None:
        for o in done:
            o.broker = f"not checked ({why})"
        return outcomes
    want = {
        o.host: before.get(o.host) if {"started", "restarted"} & set(o.changes) else None
        for o in done
    }
    seen = wait_registered(client, want, wait_s)
    for o in done:
        o.broker = "registered" if seen[o.host] else "not registered"
        if not seen[o.host]:
            o.ok = False
            o.error = HostError(
                o.host,
                "not registered",
                f"the agent runs but did not register on the broker within {wait_s:.0f} s: "
                f"see `orch fleet logs {o.host}` (can the box reach the broker?)",
            )
    return outcomes


def deploy(fleet: FleetFile, targets: list[Target], bundle: Bundle) -> list[HostOutcome]:
    known_hosts = fleet.local_path(fleet.inventory.known_hosts)
    return for_each_host(
        targets, lambda t: deploy_host(fleet, t, bundle, known_hosts), failed_outcome
    )


def deploy_host(
    fleet: FleetFile, target: Target, bundle: Bundle, known_hosts: Path | None
) -> HostOutcome:
    with Box.open(target, known_hosts) as box:
        facts = read_facts(box)
        layout = Layout(facts.deploy_root(target.deploy_dir))
        if target.sudo and not facts.privileged:
            raise HostError(
                target.name,
                "sudo failed",
                f"sudo is on for {target.user} but `sudo -n true` fails on the box: allow "
                f"passwordless sudo, or set sudo: false for a user unit ({target.where})",
            )
        try:
            mode = choose_mode(facts.systemd, target.sudo or facts.uid == 0, target.service)
        except ValueError as exc:
            raise HostError(target.name, "service mode", f"{exc} ({target.where})") from exc
        if mode is Mode.SUPERVISOR and not facts.setsid:
            raise HostError(
                target.name,
                "no service manager",
                f"neither systemd nor setsid on the box ({facts.os}): orch fleet cannot keep "
                "the agent running there yet; start `orch worker` with the box's own service "
                "manager",
            )
        outcome = HostOutcome(target.name, ok=True, mode=mode.value)
        state = read_state(box, layout)
        wanted = DeployState(
            orch_version=bundle.version,
            orch_fingerprint=bundle.fingerprint,
            wheelhouse=sorted(p.name for p in bundle.wheelhouse),
            python=target.python,
            mode=mode.value,
        )
        installed = state is None or not state.same_install(wanted) or not _installed(box, layout)
        if installed:  # checked before anything is written on the box
            check_installable(
                facts, target.name, target.python, target.where, fleet.inventory.min_free_mb
            )
        box.run(f"mkdir -p {shlex.quote(layout.root)} && chmod 700 {shlex.quote(layout.root)}")
        if installed:
            _install(box, layout, target.python, bundle)
            outcome.changes.append(f"installed orch {bundle.version} ({bundle.fingerprint[:12]})")
        if _write_config(box, target, layout, check=installed):
            outcome.changes.append("worker.yaml")
        outcome.changes += _write_files(box, fleet, layout, mode, facts)
        if state is not None and state.mode != mode.value:
            service.stop(box, layout, Mode(state.mode))
        running = service.is_running(box, layout, mode)
        if outcome.changes or not running:
            service.restart(box, layout, mode)
            outcome.changes.append("restarted" if running else "started")
            service.wait_running(box, layout, mode)
        if state is None or state.model_dump(exclude={"deployed_at"}) != wanted.model_dump(
            exclude={"deployed_at"}
        ):
            box.write(layout.state, wanted.model_dump_json(indent=2).encode(), mode=0o600)
        return outcome


def _installed(box: Box, layout: Layout) -> bool:
    return bool(box.run(f"test -x {shlex.quote(layout.orch)}", check=False).exited == 0)


def _install(box: Box, layout: Layout, python: str, bundle: Bundle) -> None:
    q = shlex.quote
    box.run(f"mkdir -p {q(layout.wheels)} {q(layout.dist)}")
    have = box.listdir(layout.wheels)
    for wheel in bundle.wheelhouse:
        if have.get(wheel.name) != wheel.stat().st_size:
            box.put(wheel, f"{layout.wheels}/{wheel.name}")
    remote_wheel = f"{layout.dist}/{bundle.wheel.name}"
    box.put(bundle.wheel, remote_wheel)
    pip = f"{q(layout.venv)}/bin/python -m pip --disable-pip-version-check install --quiet"
    if bundle.wheelhouse:
        pip += f" --no-index --find-links {q(layout.wheels)}"
    box.run(
        f"test -x {q(layout.venv)}/bin/python || {q(python)} -m venv {q(layout.venv)}\n"
        # Dependencies first, then orch itself again: a rebuilt orch keeps its version number,
        # which pip would take as already installed.
        f"{pip} {q(remote_wheel)}\n"
        f"{pip} --force-reinstall --no-deps {q(remote_wheel)}",
        timeout_s=INSTALL_TIMEOUT_S,  # dependencies from PyPI over a slow line
    )


def _write_config(box: Box, target: Target, layout: Layout, check: bool) -> bool:
    """Write worker.yaml if it differs, once the box's own orch has accepted it (binaries and
    model files exist there); a rejected config leaves the box as it was. True if written."""
    data = _worker_yaml(target)
    changed = box.read(layout.config) != data
    if not (changed or check):
        return False
    # Beside the real one: relative paths in it resolve from the same folder.
    staged = f"{layout.root}/.worker.yaml.check"
    box.write(staged, data, mode=0o600)
    q = shlex.quote
    result = box.run(f"{q(layout.orch)} worker --config {q(staged)} --check-config", check=False)
    if result.exited != 0:
        box.run(f"rm -f {q(staged)}")
        message = (result.stderr or result.stdout).strip().removeprefix("error: ")
        message = message.replace(staged, layout.config)
        raise HostError(target.name, "bad worker config", f"{message} ({target.where})")
    if changed:
        box.run(f"mv -f {q(staged)} {q(layout.config)}")
    else:
        box.run(f"rm -f {q(staged)}")
    return changed


def _write_files(
    box: Box, fleet: FleetFile, layout: Layout, mode: Mode, facts: BoxFacts
) -> list[str]:
    """Write what differs from what the box has; return the names of what was written."""
    ca_file = fleet.local_path(fleet.inventory.broker.ca_file)
    broker_url = fleet.broker_url(layout.ca_file if ca_file else None)
    files: list[tuple[str, str, bytes, int]] = [
        ("agent.env", layout.env_file, env_file_text(broker_url, box.target.env).encode(), 0o600),
    ]
    if ca_file is not None:
        files.append(("broker CA", layout.ca_file, ca_file.read_bytes(), 0o644))
    if mode is Mode.SUPERVISOR:
        files.append(("agent.sh", layout.script, supervisor_script(layout).encode(), 0o700))
    changed = []
    for name, path, data, file_mode in files:
        if box.read(path) != data:
            box.write(path, data, mode=file_mode)
            changed.append(name)
    if mode is Mode.SYSTEMD_USER:
        service.ensure_linger(box)
    if mode is not Mode.SUPERVISOR:
        unit = systemd_unit(layout, mode, facts.user).encode()
        if service.install_unit(box, mode, unit_path(mode, facts.home), unit):
            changed.append("systemd unit")
    return changed


def _worker_yaml(target: Target) -> bytes:
    header = f"# written by orch fleet deploy from the inventory ({target.where})\n"
    return (header + yaml.safe_dump(target.worker, sort_keys=False)).encode()
