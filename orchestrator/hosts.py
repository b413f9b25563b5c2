"""`orch hosts`: every registered box, what it declares and what its agent detected."""

from __future__ import annotations

from typing import Any

from jobs.inventory import WorkerInventory
from orchestrator.broker import broker_time, read_fleet


def render_hosts(client: Any) -> str:
    fleet = read_fleet(client)
    now = broker_time(client)
    if not fleet.inventories and not fleet.unreadable:
        return "no hosts registered yet (start `orch worker` on each box)"
    blocks = [_block(inv, now) for _, inv in sorted(fleet.inventories.items())]
    blocks += [f"{host}\n  unreadable: {why}" for host, why in sorted(fleet.unreadable.items())]
    return "\n\n".join(blocks)


def _block(inv: WorkerInventory, now: float) -> str:
    state = "online" if inv.online(now) else f"offline, last seen {now - inv.last_seen:.0f} s ago"
    if inv.online(now) and inv.waiting_for:
        state = f"online, waiting for {inv.waiting_for} to exit: it lost the lease, still runs"
    lines = [
        f"{inv.host}  ({state}; orch {inv.version}, pid {inv.pid})",
        f"  queue        {inv.queue}",
        f"  declared     {_kv(inv.declared) or '-'}",
        "  engines      "
        + ("; ".join(f"{e} [{', '.join(b)}]" for e, b in sorted(inv.engines.items())) or "-"),
        f"  models       {', '.join(inv.models) or '-'}",
        f"  settable     {_setters(inv) or '- (no `setters:` in its worker config)'}",
    ]
    if inv.clock_skew_s is not None:
        lines.append(f"  clock skew   {inv.clock_skew_s:+.3f} s against the broker")
    lines += _facts_lines(inv)
    return "\n".join(lines)


def _facts_lines(inv: WorkerInventory) -> list[str]:
    facts = inv.facts
    if facts is None:
        return ["  detected     - (this agent did not report host facts)"]
    out = [
        f"  os           {facts.os or '?'} (kernel {facts.kernel or '?'})",
        f"  cpu          {facts.cpu_model or '?'}: {facts.cpu_cores or '?'} cores, "
        f"{facts.cpu_threads or '?'} threads; RAM {_gib(facts.ram_bytes)}",
    ]
    for gpu in facts.gpus:
        out.append(
            f"  gpu          {gpu.name or '?'} ({gpu.driver or '?'}): VRAM "
            f"{_gib(gpu.vram_total_bytes)}, GTT {_gib(gpu.gtt_total_bytes)}"
        )
    extra = {
        "vram_split": facts.vram_split,
        "power_cap_w": facts.power_cap_w,
        "platform_profile": facts.platform_profile,
        "rocm": facts.rocm_version,
        "vulkan": facts.vulkan,
        "nvidia": facts.nvidia,
    }
    detected = _kv({k: v for k, v in extra.items() if v})
    if detected:
        out.append(f"  detected     {detected}")
    for binary, version in sorted(facts.engines.items()):
        out.append(f"  engine build {binary}: {version}")
    for note in facts.notes:
        out.append(f"  note         {note}")
    return out


def _setters(inv: WorkerInventory) -> str:
    parts = []
    for axis, info in sorted(inv.setters.items()):
        if info.choices:
            allowed = ", ".join(info.choices)
        elif info.min_w is not None or info.max_w is not None:
            allowed = f"{info.min_w or 0:g}-{info.max_w or float('inf'):g} W"
        else:
            allowed = "any value"
        parts.append(f"{axis} ({info.method}: {allowed})")
    return "; ".join(parts)


def _kv(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"
