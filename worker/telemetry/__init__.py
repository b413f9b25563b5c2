"""Telemetry sampled around every measured run: one module per source, registered by name.

When two sources give the same metric the sampler keeps the one of lower precedence (see each
`@register_source`): NVML before amdgpu, so an NVIDIA dGPU's `power_w` wins over an AMD APU's
on a laptop that has both.

Each source names the platforms it exists on; `default_sources` starts only this box's (see
`platform_sources`): sysfs/procfs ones on Linux, PDH (`windows_gpu`) on Windows, `ioreg_gpu` and
`powermetrics` on macOS, NVML and psutil everywhere.
"""

from __future__ import annotations

from worker.telemetry import (  # noqa: F401  (register themselves)
    amdgpu,
    drm_fdinfo,
    macos_gpu,
    nvml,
    psutil_source,
    rapl,
    windows_gpu,
)
from worker.telemetry.base import (
    Source,
    default_sources,
    get_source,
    platform_sources,
    register_source,
    registered_sources,
)
from worker.telemetry.sampler import Sampler

__all__ = [
    "Sampler",
    "Source",
    "default_sources",
    "get_source",
    "platform_sources",
    "register_source",
    "registered_sources",
]
