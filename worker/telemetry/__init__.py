"""Telemetry sampled around every measured run: one module per source, registered by name.

When two sources give the same metric the sampler keeps the one of lower precedence (see each
`@register_source`): NVML before amdgpu, so an NVIDIA dGPU's `power_w` wins over an AMD APU's
on a laptop that has both.
"""

from __future__ import annotations

from worker.telemetry import (  # noqa: F401  (register themselves)
    amdgpu,
    drm_fdinfo,
    nvml,
    psutil_source,
    rapl,
)
from worker.telemetry.base import (
    Source,
    default_sources,
    get_source,
    register_source,
    registered_sources,
)
from worker.telemetry.sampler import Sampler

__all__ = [
    "Sampler",
    "Source",
    "default_sources",
    "get_source",
    "register_source",
    "registered_sources",
]
