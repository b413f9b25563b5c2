"""Host fingerprint: what a test box is, detected on the box, checked against its config.

    detect_host_facts(root, *, binaries, models, cache_dir) -> jobs.facts.HostFacts
    conflicts(declared, facts) -> list[str]   # one sentence per contradicted declared fact

One module per source: system (hostname, kernel, OS), cpu, memory, gpu (DRM sysfs + hwmon),
pciids, acpi (platform profile), vulkan, rocm, nvidia, ryzenadj, engines (--version), models
(sha256 cache); detect puts them together.
"""

from __future__ import annotations

from worker.facts.conflicts import conflicts
from worker.facts.detect import detect_host_facts

__all__ = ["conflicts", "detect_host_facts"]
