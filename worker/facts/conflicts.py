"""Where the owner's declared facts disagree with what the box says about itself.

A worker whose config says `vram_split: 32G` on a box booted with a 512M carve-out would file
its results under the wrong configuration; the agent refuses that queue and prints these
sentences instead. A fact that was not detected is not a conflict (HostFacts.notes says why it
was not detected).
"""

from __future__ import annotations

from collections.abc import Mapping

from jobs.facts import HostFacts
from jobs.spec import normalize_vram_split, vram_split_bytes
from worker.facts.ryzenadj import SUSTAINED_LIMIT

# Power limits are setpoints, not measurements, so there is no noise to allow for; the slack is
# for nominal numbers: an owner writes "80" for a firmware limit of 78.5 W, or "54" for 55. The
# changes that matter are larger: platform profiles and form factors move the limit by 15-50%
# (e.g. 85 W balanced vs 120 W performance on Strix Halo mini-PCs, 45 vs 54 W laptop modes).
POWER_TOLERANCE_W = 2.0
POWER_TOLERANCE_FRACTION = 0.05


def conflicts(declared: Mapping[str, object], facts: HostFacts) -> list[str]:
    """One sentence per declared fact that a detected fact contradicts, naming both values
    and where the detected one was read."""
    return [
        *_vram_split(declared.get("vram_split"), facts),
        *_ttm_pages_limit(declared.get("ttm_pages_limit"), facts),
        *_power_limit(declared.get("power_limit_w"), facts),
        *_platform_profile(declared.get("platform_profile"), facts),
    ]


def power_tolerance_w(declared_w: float) -> float:
    return max(POWER_TOLERANCE_W, POWER_TOLERANCE_FRACTION * declared_w)


def _vram_split(value: object, facts: HostFacts) -> list[str]:
    if value is None:
        return []
    try:
        declared = normalize_vram_split(value)
    except ValueError:
        return [f"declared vram_split {value!r} is not a VRAM size such as 512M or 32G"]
    if facts.vram_split is None:
        return _no_carve_out(declared, facts)
    if vram_split_bytes(declared) == vram_split_bytes(facts.vram_split):
        return []
    where = facts.sources.get("vram_split", "detected")
    return [
        f"declared vram_split {declared} but this box has a {facts.vram_split} carve-out ({where})"
    ]


def _no_carve_out(declared: str, facts: HostFacts) -> list[str]:
    """A carve-out is the BIOS's share of RAM for an integrated AMD GPU (worker/facts/detect.py
    reads it from that card's mem_info_vram_total); a box whose GPUs were all detected and none
    can have one makes the declared size a label for nothing. An APU whose carve-out could not
    be read is not a conflict (facts.notes says why)."""
    could = [g for g in facts.gpus if g.driver == "amdgpu" and g.is_apu is not False]
    if could:
        return []
    gpus = ", ".join(f"{g.name} ({g.driver or 'no driver'}, discrete)" if g.is_apu is False
                     else f"{g.name} ({g.driver or 'no driver'})" for g in facts.gpus)  # fmt: skip
    return [
        f"declared vram_split {declared} but this box has no integrated AMD GPU (APU) that "
        f"could have a BIOS carve-out (GPUs detected: {gpus or 'none'}; /sys/class/drm)"
    ]


def _ttm_pages_limit(value: object, facts: HostFacts) -> list[str]:
    if value is None or facts.ttm_pages_limit is None or str(value) == str(facts.ttm_pages_limit):
        return []
    where = facts.sources.get("ttm_pages_limit", "detected")
    return [
        f"declared ttm_pages_limit {value} but this box boots with {facts.ttm_pages_limit} "
        f"({where})"
    ]


def _power_limit(value: object, facts: HostFacts) -> list[str]:
    if value is None:
        return []
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(value)
        declared = float(value)
    except ValueError:
        return [f"declared power_limit_w {value!r} is not a number of watts"]
    detected, where = _detected_power_limit(facts)
    if detected is None or abs(declared - detected) <= power_tolerance_w(declared):
        return []
    return [
        f"declared power_limit_w {declared:g} but this box's power limit is {detected:g} W "
        f"({where}; tolerance {power_tolerance_w(declared):g} W)"
    ]


def _detected_power_limit(facts: HostFacts) -> tuple[float | None, str]:
    if facts.power_cap_w is not None:
        return facts.power_cap_w, facts.sources.get("power_cap_w", "power_cap_w")
    stapm = facts.ryzenadj.get(SUSTAINED_LIMIT)
    if stapm is not None:
        return stapm, facts.sources.get("ryzenadj", f"ryzenadj -i: {SUSTAINED_LIMIT}")
    return None, ""


def _platform_profile(value: object, facts: HostFacts) -> list[str]:
    if value is None or facts.platform_profile is None or str(value) == facts.platform_profile:
        return []
    where = facts.sources.get("platform_profile", "platform_profile")
    return [
        f"declared platform_profile {value} but the box runs in {facts.platform_profile} ({where})"
    ]
