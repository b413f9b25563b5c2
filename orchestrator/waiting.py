"""Why queued jobs do not run: the one rule `submit --wait`, `status` and `campaigns` apply.

A job waits *by itself* when a worker will pick it up without anyone's help: its host is online
in the job's configuration, or its host may switch into it unattended (worker.yaml
`reconfigure:`), or it announced such a reboot recently. Otherwise it waits *for a human*:
a reboot into another BIOS setting, or a worker to be started. `orch submit --wait` stops
waiting when every remaining job waits for a human (exit code 4, errors.WaitingForHumanError).

Example::

    blocked = [b for j in pending if (b := blocked_on(j, fleet.inventories.get(j.host), now))]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from jobs.inventory import WorkerInventory
from jobs.spec import JobSpec, configuration_label, reconfiguration_sequence


@dataclass(frozen=True)
class Blocked:
    """Why one job will not start without a human."""

    host: str
    kind: str  # "reboot", "offline", "unknown host"
    wanted: str  # the configuration it waits for, in words
    now: str  # the configuration the host is in (or was last seen in)
    why: str = ""  # for a reboot: why the box will not switch itself, when it could


def blocked_on(job: JobSpec, inv: WorkerInventory | None, now: float) -> Blocked | None:
    """None when `job` will run without anyone's help; else what it waits for."""
    wanted = configuration_label(job.configuration)
    if inv is None:
        return Blocked(job.host, "unknown host", wanted, "-")
    current = configuration_label(inv.configuration)
    rec = inv.reconfigure
    if not inv.online(now):
        if rec is not None and rec.rebooting(now):
            return None
        return Blocked(job.host, "offline", wanted, current)
    if job.queue == inv.queue:
        return None
    why = None
    if rec is not None:
        why = rec.stalled or rec.refusal(job.configuration, inv.configuration, job.campaign)
        if why is None:
            return None
    return Blocked(job.host, "reboot", wanted, current, why or "")


def blocked_notes(
    pending: list[JobSpec], inventories: dict[str, WorkerInventory], now: float
) -> list[str]:
    """One line per host and wanted configuration whose jobs wait for a human, saying what
    to do (the reboot instruction), in a stable order."""
    counts: Counter[Blocked] = Counter()
    for job in pending:
        blocked = blocked_on(job, inventories.get(job.host), now)
        if blocked is not None:
            counts[blocked] += 1
    notes = []
    for b, count in sorted(counts.items(), key=lambda item: (item[0].host, item[0].wanted)):
        if b.kind == "reboot":
            why = f"; it will not switch by itself: {b.why}" if b.why else ""
            notes.append(
                f"{b.host}: {count} job(s) wait for {b.wanted} (now {b.now}) — reboot into "
                f"{b.wanted} and start its worker again{why}"
            )
        elif b.kind == "offline":
            seen = now - inventories[b.host].last_seen
            notes.append(
                f"{b.host}: offline (last seen {seen:.0f} s ago, in {b.now}): {count} job(s) "
                f"for {b.wanted} wait for its worker"
            )
        else:
            notes.append(f"{b.host}: {count} job(s) for a host no worker ever registered")
    return notes


def reboot_plan(
    pending: list[JobSpec], inventories: dict[str, WorkerInventory]
) -> dict[str, list[str]]:
    """host -> the configurations it still has to visit, in the order its agent (or its owner)
    goes through them: where it is now first, then the others once each."""
    out: dict[str, list[str]] = {}
    for host in sorted({j.host for j in pending}):
        inv = inventories.get(host)
        configs = [j.configuration for j in pending if j.host == host]
        current = inv.configuration if inv is not None else {}
        out[host] = [configuration_label(c) for c in reconfiguration_sequence(current, configs)]
    return out


def reboots_needed(sequence: list[str], now: str) -> int:
    """Reboots to go through `sequence` from configuration `now` (each one visited once)."""
    return len(sequence) - (1 if sequence and sequence[0] == now else 0)


def visit_lines(jobs: list[JobSpec], inventories: dict[str, WorkerInventory]) -> list[str]:
    """Per host with work in another configuration than it is in now (or in several): the
    order it goes through them and the reboots that takes from where it is, for `orch plan`
    and `orch status`."""
    out = []
    for host, sequence in reboot_plan(jobs, inventories).items():
        inv = inventories.get(host)
        if inv is None:
            if len(sequence) > 1:
                out.append(f"{host}: configurations to visit: {' -> '.join(sequence)} (its "
                           "worker has not registered yet)")  # fmt: skip
            continue
        now = configuration_label(inv.configuration)
        needed = reboots_needed(sequence, now)
        if needed == 0:
            continue
        by_itself = " (unattended: its agent switches by itself)" if inv.reconfigure else ""
        out.append(
            f"{host}: configurations to visit: {' -> '.join(sequence)}; "
            f"{needed} reboot(s) still needed from {now}{by_itself}"
        )
    return out
