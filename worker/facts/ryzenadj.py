"""Power limits of Ryzen mobile/APU parts from `ryzenadj -i`.

RyzenAdj (FlyGoat/RyzenAdj, main.c `show_info_table`) prints a GitHub-markdown table after a
short header::

    |        Name         |   Value   |     Parameter      |
    |---------------------|-----------|--------------------|
    | STAPM LIMIT         |    80.000 | stapm-limit        |
    | PPT LIMIT FAST      |    80.000 | fast-limit         |

Values use `%9.3lf`: watts for limits, degrees C for THM/STT rows, seconds for time constants;
a metric the family lacks prints `nan` and is left out. Only the settings (LIMIT rows, time
constants, the boost setpoint) become facts: the VALUE rows are momentary readings, which would
make two fingerprints of an unchanged box differ (the telemetry sampler records those).
It needs root (or the ryzen_smu module), so on most boxes it fails and the note says so.
"""

from __future__ import annotations

import math

from worker.facts._common import FactLog
from worker.facts.tools import ToolError, Tools, last_words

ARGV_INFO = ("-i",)
# The sustained limit: what "an 80 W laptop" means.
SUSTAINED_LIMIT = "STAPM LIMIT"


def is_setting(name: str) -> bool:
    return "LIMIT" in name or "TimeConst" in name or "SETPOINT" in name


def parse_ryzenadj_info(text: str) -> dict[str, float]:
    """Every finite row of the table, readings included: name -> value."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[0] in ("Name", "") or set(cells[0]) <= {"-"}:
            continue
        try:
            value = float(cells[1])
        except ValueError:
            continue
        if math.isfinite(value):
            values[cells[0]] = value
    return values


def probe_ryzenadj(tools: Tools, log: FactLog) -> dict[str, float]:
    binary = tools.which("ryzenadj")
    if binary is None:
        log.note("ryzenadj: not on PATH (no STAPM/PPT limits; only Ryzen APUs have them)")
        return {}
    argv = [binary, *ARGV_INFO]
    try:
        output = tools.call(argv)
    except ToolError as exc:
        log.note(f"ryzenadj: {exc}")
        return {}
    values = {k: v for k, v in parse_ryzenadj_info(output.stdout).items() if is_setting(k)}
    if not values:
        log.note(
            f"ryzenadj: `ryzenadj -i` printed no power table (exit {output.returncode}: "
            f"{last_words(output, stdout_first=True)}); it needs root or the ryzen_smu module"
        )
        return {}
    if SUSTAINED_LIMIT in values:
        log.source("ryzenadj", f"ryzenadj -i: {SUSTAINED_LIMIT} = {values[SUSTAINED_LIMIT]:.3f}")
    return values
