"""BIOS settings through the kernel's firmware-attributes class, read, checked and written.

The contract is the kernel's `Documentation/ABI/testing/sysfs-class-firmware-attributes`
(torvalds/linux, read at commit 00d4b35212351d1c49a3068a8ba73253c476a3d2)::

    /sys/class/firmware-attributes/<driver>/attributes/<name>/
        type              enumeration | integer | string | ordered-list (HP only)
        current_value     read; written to change the setting (applied at the next boot)
        possible_values   enumeration: values separated by ";"
        min_value, max_value, scalar_increment          integer
        min_length, max_length                          string
    /sys/class/firmware-attributes/<driver>/attributes/pending_reboot    1: a change awaits a boot
    /sys/class/firmware-attributes/<driver>/authentication/<auth>/
        is_enabled (0/1), role (bios-admin, power-on...), mechanism ("password"),
        current_password (write-only)

"If Admin password is set, same password must be written into current_password ... and must
be cleared once the session is over" (the doc's example: write it, write the attribute, write
an empty line). On Dell, Lenovo and HP systems every attribute needs it once one is set.

What differs between the drivers (doc, and the drivers' sources where the doc is silent):
- dell-wmi-sysman: the reference; Dell adds `dell_modifier`/`dell_value_modifier` rules
  (an attribute can be read-only while another has some value) that this module does not
  evaluate: a refused write or the read-back says so.
- think-lmi (class device `thinklmi`; drivers/platform/x86/think-lmi.c at commit
  01df1385ec4ec699ad6a63007e7f1081089e83a0): attributes have `display_name`, `current_value`
  and `possible_values` only, no `type`; the driver turns the BIOS's `item,value` into the bare
  value on read; `possible_values` fails when the BIOS cannot list choices. Folder names are the
  BIOS names with `/` replaced by `\\`. The doc: a changed admin password is active only after
  the next boot.
- hp-bioscfg (hp-bioscfg/passwdobj-attributes.c at 08f1f212576c882e6584573f735aee28faaf7c78):
  adds the `ordered-list` type (not supported here) and the SPM certificate role
  `enhanced-bios-auth`; its admin password folder is `Setup Password` (role `bios-admin`), not
  `Admin`, so the admin entry is found by `role`. Its password store checks the length on every
  write, so clearing may be refused: that is logged, not fatal.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from worker.errors import ReconfigureError
from worker.sysfs import read_text

log = logging.getLogger("orch.worker")

FIRMWARE_CLASS = Path("sys/class/firmware-attributes")  # below the agent's root
DRIVERS = ("dell-wmi-sysman", "thinklmi", "hp-bioscfg")  # class devices as named by the drivers


class Secret:
    """The BIOS password, kept out of every repr, log line and exception text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def password_problem(path: Path | None) -> str | None:
    """Why the password file cannot be used (never its content), or None."""
    if path is None:
        return (
            "the BIOS has an admin password: set reconfigure.bios_password_file to a file "
            "holding it (mode 600)"
        )
    try:
        info = path.stat()
    except OSError as exc:
        return f"bios_password_file {path}: cannot read: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"bios_password_file {path}: not a regular file"
    if info.st_mode & 0o077:
        return (
            f"bios_password_file {path} has mode {stat.S_IMODE(info.st_mode):04o}: it must be "
            "readable by its owner only (chmod 600)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"bios_password_file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
    password = _strip_newline(text)
    if not password:
        return f"bios_password_file {path} is empty"
    if "\n" in password or "\r" in password:
        return f"bios_password_file {path}: the password must be one line"
    return None


def read_password(path: Path | None) -> Secret:
    problem = password_problem(path)
    if problem is not None or path is None:
        raise ReconfigureError(problem or "no bios_password_file")
    return Secret(_strip_newline(path.read_text(encoding="utf-8")))


def _strip_newline(text: str) -> str:
    return text.removesuffix("\n").removesuffix("\r")


def write_attribute(path: Path, text: str) -> None:
    """One write() into an existing sysfs file: the driver parses the whole value at once.

    Never O_CREAT: a missing attribute must fail, not become a new file. O_TRUNC does nothing
    to sysfs but keeps a plain-file copy of a tree (tests, a container) correct.
    """
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.EIO, "short write")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class FirmwareAttribute:
    """One BIOS setting under `<root>/sys/class/firmware-attributes/<driver>/attributes/`."""

    driver: str
    name: str
    path: Path

    def _read(self, name: str) -> str | None:
        text = read_text(self.path / name)
        return None if text is None else text.strip()

    @property
    def kind(self) -> str | None:
        """`type`; None where the driver has none (think-lmi)."""
        return self._read("type")

    def current(self) -> str | None:
        return self._read("current_value")

    def possible_values(self) -> list[str] | None:
        text = self._read("possible_values")
        if text is None:
            return None
        return [v.strip() for v in text.split(";") if v.strip()]

    def check(self, value: str) -> str | None:
        """Why the firmware would not take `value`, from what the attribute itself declares."""
        where = f"firmware attribute {self.name!r} ({self.driver})"
        if self.current() is None:
            return f"{where}: current_value cannot be read"
        if not os.access(self.path / "current_value", os.W_OK):
            return (
                f"{where}: current_value is not writable by this agent (firmware attributes "
                "need root: run the agent as root)"
            )
        kind = self.kind
        if kind in (None, "enumeration"):
            choices = self.possible_values()
            if choices is None:
                # think-lmi without the BIOS's list: nothing to check against; the read-back
                # after the write and the boot itself still verify.
                return f"{where}: no possible_values" if kind == "enumeration" else None
            if value not in choices:
                return (
                    f"{where}: {value!r} is not one of its possible_values ({', '.join(choices)})"
                )
            return None
        if kind == "integer":
            return self._check_integer(value, where)
        if kind == "string":
            low, high = (
                _int_or_none(self._read("min_length")),
                _int_or_none(self._read("max_length")),
            )
            if (low is not None and len(value) < low) or (high is not None and len(value) > high):
                return f"{where}: {value!r} is not {low}-{high} characters long"
            return None
        return (
            f"{where}: attributes of type {kind!r} are not supported (enumeration, integer, string)"
        )

    def _check_integer(self, value: str, where: str) -> str | None:
        number = _int_or_none(value)
        if number is None:
            return f"{where}: {value!r} is not an integer"
        low, high = _int_or_none(self._read("min_value")), _int_or_none(self._read("max_value"))
        if low is not None and number < low:
            return f"{where}: {number} is below its min_value {low}"
        if high is not None and number > high:
            return f"{where}: {number} is above its max_value {high}"
        step = _int_or_none(self._read("scalar_increment"))
        # Steps counted from min_value (0 when absent): the settings a BIOS menu offers.
        if step and step > 0 and (number - (low or 0)) % step:
            return f"{where}: {number} is not min_value {low or 0} plus a multiple of {step}"
        return None

    def write(self, value: str) -> None:
        try:
            write_attribute(self.path / "current_value", value)
        except OSError as exc:
            raise ReconfigureError(
                f"firmware attribute {self.name!r} ({self.driver}) refused {value!r}: "
                f"{exc.strerror or exc}"
            ) from None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def find_attribute(root: Path, name: str, driver: str | None) -> FirmwareAttribute | str:
    """The attribute folder `name`, under `driver` or the one driver that has it; else why not."""
    base = root / FIRMWARE_CLASS
    if driver is not None:
        candidates = [base / driver]
    else:
        try:
            candidates = sorted(p for p in base.iterdir() if p.is_dir())
        except OSError:
            candidates = []
    found = [d for d in candidates if (d / "attributes" / name).is_dir()]
    if not found:
        under = f"/{FIRMWARE_CLASS}/{driver or '*'}/attributes"
        return (
            f"firmware attribute {name!r} not found under {under} (is the BIOS driver "
            f"({', '.join(DRIVERS)}) loaded, and is the name the folder's?)"
        )
    if len(found) > 1:
        drivers = ", ".join(d.name for d in found)
        return (
            f"firmware attribute {name!r} is found under several drivers ({drivers}): "
            "say which in `driver`"
        )
    return FirmwareAttribute(driver=found[0].name, name=name, path=found[0] / "attributes" / name)


def pending_reboot(root: Path, driver: str) -> bool | None:
    """`attributes/pending_reboot`: True when a change awaits a boot; None when unreadable."""
    text = read_text(root / FIRMWARE_CLASS / driver / "attributes" / "pending_reboot")
    return None if text is None else text.strip() == "1"


@dataclass(frozen=True)
class AdminAuth:
    """The driver's BIOS admin authentication entry (Dell/Lenovo `Admin`, HP `Setup Password`)."""

    path: Path
    enabled: bool
    mechanism: str | None


def admin_auth(root: Path, driver: str) -> AdminAuth | None:
    """The entry whose `role` is bios-admin (or, with no role file, the one named `Admin`)."""
    base = root / FIRMWARE_CLASS / driver / "authentication"
    try:
        entries = sorted(p for p in base.iterdir() if p.is_dir())
    except OSError:
        return None
    for entry in entries:
        role = read_text(entry / "role")
        if (role.strip() == "bios-admin") if role is not None else entry.name == "Admin":
            enabled = (read_text(entry / "is_enabled") or "0").strip() == "1"
            mechanism = read_text(entry / "mechanism")
            return AdminAuth(entry, enabled, mechanism.strip() if mechanism else None)
    return None


def auth_problem(auth: AdminAuth | None, password_file: Path | None) -> str | None:
    """Why this driver's settings cannot be written with what the owner gave, or None."""
    if auth is None or not auth.enabled:
        return None
    if auth.mechanism not in (None, "password"):
        return (
            f"the BIOS admin authentication ({auth.path.name}) uses {auth.mechanism!r}: only "
            "password authentication is supported"
        )
    return password_problem(password_file)


class PasswordSession:
    """Context manager: the admin password written before the changes, cleared after.

    A no-op when the driver has no admin password set.
    """

    def __init__(self, auth: AdminAuth | None, password: Secret | None) -> None:
        self.auth = auth if auth is not None and auth.enabled else None
        self.password = password

    def __enter__(self) -> PasswordSession:
        if self.auth is None:
            return self
        if self.password is None:
            raise ReconfigureError("the BIOS admin password is needed and was not given")
        try:
            write_attribute(self.auth.path / "current_password", self.password.reveal())
        except OSError as exc:
            raise ReconfigureError(
                f"writing the BIOS admin password ({self.auth.path.name}/current_password) "
                f"failed: {exc.strerror or 'error'}"
            ) from None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.auth is None:
            return
        try:
            # An empty line, as the doc's `echo "" > current_password`: a zero-byte write may
            # never reach the driver.
            write_attribute(self.auth.path / "current_password", "\n")
        except OSError as error:
            log.warning(
                "could not clear %s/current_password (%s): the driver keeps the password in "
                "memory until it is cleared or the box reboots",
                self.auth.path.name,
                error.strerror or "error",
            )
