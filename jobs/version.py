"""Versions of the package and of the wire format."""

from __future__ import annotations

# Wire/schema version of JobSpec, RunResult and WorkerInventory. Bump on any change a reader
# must know about, and note it here.
# History:
#   1 - first version: llama-bench, llama-server and served engines, per-repetition samples,
#       request timing, telemetry, declared and detected host facts.
#   2 - host configurations: JobSpec.settings (runtime platform_profile / power_limit_w) and
#       config_name; RunResult.settings (what was applied and restored) and cooldown;
#       RequestSample.stream_burst;
#       Status.SKIPPED (coordinator-made, never run); WorkerInventory.setters and model_shapes.
#   3 - one box: WorkerInventory.reconfigure (unattended reconfiguration: what the box may
#       switch, reboots and blocks per campaign, a reboot under way, why it is stalled).
#   4 - truth of labels: Status.MISLABELLED and RunResult.backend_check (what the engine ran
#       on), RunResult.disturbance (what else used the box); JobSpec.gpu_layers and
#       workload_name (hashed only when set, so earlier ids stand); RunResult.lease_generation
#       (the fencing token of the agent that ran it: jobs/finality.py orders results by it).
#   5 - engine options and load: JobSpec.flash_attention, kv_offload and think (hashed only
#       when set); Workload.load (serving under load; left out of the JSON when unset, so ids
#       stand); RunResult.load; WorkerInventory.waiting_for (a successor waiting for a frozen
#       predecessor to exit). Results-stream entries carry an `ack` field (jobs/acks.py).
SCHEMA_VERSION = 5


def __getattr__(name: str) -> str:
    """`ORCH_VERSION`, the installed package's version, looked up on first use: the lookup
    (importlib.metadata and a scan of sys.path) would cost every `orch` command's start-up,
    and only the sides that stamp a result or an inventory need it."""
    if name != "ORCH_VERSION":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("orch")
    except metadata.PackageNotFoundError:  # running from a source tree that was not installed
        version = "0.0.0+source"
    globals()["ORCH_VERSION"] = version  # later lookups find it without this function
    return version
