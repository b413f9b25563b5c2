"""What differs between the platforms a test box runs (Linux, Windows, macOS), in one place.

Everything else in `worker/` is shared: it asks this package which platform it is on and calls
the small modules here (`proc`: process trees; `pipes`: reading a child's output) instead of
calling POSIX-only or Windows-only functions itself. Every function takes an optional
`platform` (a `sys.platform` value) so tests on Linux can ask what a Windows or macOS box would do.

Example::

    from worker.platform import current_platform
    current_platform()            # "linux", "windows", "macos" or "other"
    current_platform("win32")     # "windows"
"""

from __future__ import annotations

import sys
from typing import Literal

Platform = Literal["linux", "windows", "macos", "other"]


def current_platform(sys_platform: str | None = None) -> Platform:
    """This box's platform family (or the one `sys_platform` names)."""
    name = sys.platform if sys_platform is None else sys_platform
    if name.startswith("linux"):
        return "linux"
    if name == "win32":
        return "windows"
    if name == "darwin":
        return "macos"
    return "other"


def is_windows(sys_platform: str | None = None) -> bool:
    return current_platform(sys_platform) == "windows"
