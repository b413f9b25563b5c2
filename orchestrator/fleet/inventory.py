"""The fleet inventory (`fleet.yaml`): which boxes to deploy the agent to, and how to reach them.

Example::

    broker:
      url: redis://broker.lan:6379/0            # the password is never written here:
      password_file: ~/.config/orch/redis-password   # (or password_env: ORCH_REDIS_PASSWORD)
    defaults: {user: bench, key: ~/.ssh/id_ed25519}
    worker_template:                            # shared by every host's worker.yaml
      engines: {llama-bench: {backends: {cpu: ~/llama.cpp/bin/llama-bench}}}
    hosts:
      laptop-80w:
        address: 192.168.1.20
        worker: {declared: {form_factor: laptop, power_limit_w: 80}}

    inv = load_inventory(Path("fleet.yaml"))     # InventoryError names file:line: key
    inv.targets(["laptop-80w"])                  # -> [Target(...)], defaults applied

Paths on this machine (key, known_hosts, wheelhouse, ca_file, password_file) may use `~` or be
relative to the inventory file. `deploy_dir` and the worker config's paths are on the box.
"""

from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from jobs.spec import Name
from jobs.yamlfile import KeyPath, describe, dotted, line_of, parse_yaml, read_text
from orchestrator.errors import FleetError, InventoryError

# Environment values go into a single-quoted shell/systemd EnvironmentFile line.
_ENV_VALUE = r"^[^'\n\\]*$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
# Values that reach a shell on the box or a systemd unit: a conservative character set, so
# that no quoting mistake can turn them into a command or a unit directive.
_DEPLOY_DIR = r"^(~|~/[A-Za-z0-9_./@+-]*|/[A-Za-z0-9_./@+-]*)$"
_PYTHON = r"^[A-Za-z0-9_./@+-]+$"
_USER = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
_ADDRESS = r"^[A-Za-z0-9_.:%-]+$"  # a host name, IPv4 or IPv6 (with %zone)
# Options that redis-py and kombu read from the broker URL's query and that weaken nothing;
# any other (ssl_check_hostname=false, ssl_ca_certs=..., ...) is refused.
_URL_KEYS = (
    "db",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "retry_on_timeout",
    "client_name",
)
# env: cannot set these: the broker URL (and its password) come from the broker section.
_RESERVED_ENV = ("ORCH_BROKER_URL", "ORCH_REDIS_PASSWORD", "ORCH_FLOWER_PASSWORD")
_PLAIN = {
    "deploy_dir": (
        _DEPLOY_DIR,
        "an absolute path or one under ~/, of letters, digits and _ . / @ + -",
    ),
    "python": (_PYTHON, "a command or path of letters, digits and _ . / @ + -"),
    "user": (_USER, "a user name of letters, digits and _ . -"),
}


class BrokerSettings(BaseModel):
    """Where the agents find Redis. The password comes from a file or the environment."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^rediss?://")
    password_file: Path | None = None
    password_env: str | None = Field(default=None, pattern=_ENV_NAME)
    # With rediss://: the CA that signed the broker's certificate (uploaded to each box).
    # Certificates are always verified; without ca_file, against the box's system CAs.
    ca_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _secure_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.password:
            raise ValueError(
                "the URL holds a password: remove it and use password_file or password_env, "
                "so that the inventory can be shared and printed"
            )
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "ssl_cert_reqs" and value.lower() in ("required", "cert_required"):
                continue
            if key.startswith("ssl") or "verify" in key or "cert" in key:
                raise ValueError(
                    f"{key}={value}: certificate and host name verification cannot be turned "
                    "off or changed in the URL (give the broker's CA as ca_file)"
                )
            if key not in _URL_KEYS:
                raise ValueError(
                    f"unknown URL option {key!r}: the inventory takes {', '.join(_URL_KEYS)}"
                )
        return url

    @model_validator(mode="after")
    def _one_secret_source(self) -> BrokerSettings:
        if self.password_file and self.password_env:
            raise ValueError("give password_file or password_env, not both")
        if self.ca_file is not None and urlsplit(self.url).scheme != "rediss":
            raise ValueError("ca_file needs a rediss:// (TLS) URL")
        return self


class HostSettings(BaseModel):
    """How to reach a box and where the agent lives there; `defaults` fills what a host omits."""

    model_config = ConfigDict(extra="forbid")

    user: str | None = None  # default: the user running `orch fleet`
    port: int | None = Field(default=None, ge=1, le=65535)
    key: Path | None = None  # private key; default: ssh-agent and ~/.ssh keys
    python: str | None = None  # Python 3.11+ on the box; default python3
    sudo: bool | None = None  # passwordless sudo: a system systemd unit with User=
    # default ~/.local/share/orch-agent; absolute or under ~, letters, digits and _ . / @ + -
    deploy_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)  # extra environment for the agent
    connect_timeout_s: float | None = Field(default=None, gt=0)
    # How the agent is kept running (units.Mode); auto: a system unit where we may, else a
    # user unit, else the supervisor loop where systemd does not run.
    service: Literal["auto", "systemd", "systemd-user", "supervisor"] | None = None

    @field_validator("user", "python", "deploy_dir")
    @classmethod
    def _plain(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, what = _PLAIN[info.field_name or ""]
        if value is not None and not re.match(pattern, value):
            raise ValueError(f"{value!r} is not allowed here: {what}")
        return value

    @model_validator(mode="after")
    def _env_is_safe(self) -> HostSettings:
        for name, value in self.env.items():
            if not re.match(_ENV_NAME, name) or not re.match(_ENV_VALUE, value):
                raise ValueError(
                    f"env.{name}: names are A-Z, 0-9, _; values cannot hold ', \\ or newlines"
                )
        return self


class HostEntry(HostSettings):
    address: str

    @field_validator("address")
    @classmethod
    def _plain_address(cls, value: str) -> str:
        if not re.match(_ADDRESS, value):
            raise ValueError(f"{value!r} is not a host name or IP address")
        return value

    worker: dict[str, Any] = Field(default_factory=dict)  # this host's worker.yaml


class Inventory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    broker: BrokerSettings
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts; unknown host keys refused
    # A folder of wheels (orch's dependencies, and setuptools to build orch): boxes install
    # with `pip --no-index` from it, for boxes (and tests) without internet.
    wheelhouse: Path | None = None
    min_free_mb: int = Field(default=1024, ge=0)  # refuse to install on a fuller disk
    defaults: HostSettings = HostSettings()
    worker_template: dict[str, Any] = Field(default_factory=dict)
    hosts: dict[Name, HostEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Target:
    """One box, defaults applied: everything `orch fleet` needs to reach and set it up."""

    name: str
    address: str
    port: int
    user: str
    key: Path | None
    python: str
    sudo: bool
    deploy_dir: str  # may start with ~ (the box's home)
    env: dict[str, str]
    connect_timeout_s: float
    worker: dict[str, Any]  # the worker.yaml to write, `host` included
    where: str  # `fleet.yaml:12` for messages
    service: str = "auto"  # auto, or a units.Mode the inventory asks for


@dataclass(frozen=True)
class FleetFile:
    path: Path
    inventory: Inventory
    lines: dict[KeyPath, int]

    def where(self, loc: KeyPath) -> str:
        return f"{self.path}:{line_of(self.lines, loc)}: {dotted(loc)}"

    def targets(self, names: list[str] | None = None) -> list[Target]:
        """The hosts named (all when None), in file order; FleetError for an unknown name."""
        hosts = self.inventory.hosts
        unknown = [n for n in names or [] if n not in hosts]
        if unknown:
            raise FleetError(
                f"no host {', '.join(map(repr, unknown))} in {self.path} "
                f"(hosts: {', '.join(hosts)})"
            )
        return [self._target(n) for n in hosts if names is None or n in names]

    def _target(self, name: str) -> Target:
        entry, d = self.inventory.hosts[name], self.inventory.defaults

        def pick(key: str, fallback: Any) -> Any:
            value = getattr(entry, key)
            if value is None:
                value = getattr(d, key)
            return fallback if value is None else value

        worker = _merged(self.inventory.worker_template, entry.worker)
        worker["host"] = name
        key = pick("key", None)
        return Target(
            name=name,
            address=entry.address,
            port=pick("port", 22),
            user=pick("user", getpass.getuser()),
            key=_local_path(key, self.path.parent) if key is not None else None,
            python=pick("python", "python3"),
            sudo=pick("sudo", False),
            deploy_dir=pick("deploy_dir", "~/.local/share/orch-agent").rstrip("/"),
            env={**d.env, **entry.env},
            connect_timeout_s=pick("connect_timeout_s", 10.0),
            worker=worker,
            where=f"{self.path}:{line_of(self.lines, ('hosts', name))}",
            service=pick("service", "auto"),
        )

    def local_path(self, path: Path | None) -> Path | None:
        return None if path is None else _local_path(path, self.path.parent)

    def local_ca(self) -> str | None:
        """The broker's CA file on this machine, for the coordinator's own connection."""
        ca = self.local_path(self.inventory.broker.ca_file)
        return None if ca is None else str(ca)

    def broker_url(self, ca_path: str | None = None) -> str:
        """The broker URL with its password (from the file or environment) and TLS settings.

        `ca_path` is where the CA file is (on the box, or here): certificates are verified.
        The result holds a secret: print it only through `redact_url`.
        """
        b = self.inventory.broker
        parts = urlsplit(b.url)
        password = self._password()
        netloc = parts.netloc
        if password is not None:
            user = parts.username or ""
            netloc = (
                f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc.rpartition('@')[2]}"
            )
        query = dict(parse_qsl(parts.query))
        if parts.scheme == "rediss":
            query["ssl_cert_reqs"] = "required"
            if ca_path is not None:
                query["ssl_ca_certs"] = ca_path
        return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))

    def _password(self) -> str | None:
        b = self.inventory.broker
        if b.password_env is not None:
            value = os.environ.get(b.password_env)
            if not value:
                raise InventoryError(
                    [f"{self.where(('broker', 'password_env'))}: ${b.password_env} is not set"]
                )
            return value
        file = self.local_path(b.password_file)
        if file is None:
            return None
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise InventoryError(
                [f"{self.where(('broker', 'password_file'))}: cannot read {file}: {exc.strerror}"]
            ) from exc


def load_inventory(path: Path) -> FleetFile:
    """Read and check fleet.yaml; every problem is reported at once, with file:line: key."""
    data, lines = parse_yaml(path, read_text(path, InventoryError), InventoryError)
    if not isinstance(data, dict):
        raise InventoryError([f"{path}:1: expected a mapping with broker and hosts keys"])
    try:
        inventory = Inventory.model_validate(data)
    except ValidationError as exc:
        problems = describe(path, exc, lines)
        raw_url = (
            data.get("broker", {}).get("url") if isinstance(data.get("broker"), dict) else None
        )
        secret = urlsplit(raw_url).password if isinstance(raw_url, str) else None
        if secret:  # the messages quote the URL: never its password
            problems = [p.replace(secret, "***") for p in problems]
        raise InventoryError(problems) from exc
    fleet = FleetFile(path, inventory, lines)
    problems = [
        f"{fleet.where(('hosts', name, 'worker', 'host'))}: is {entry.worker['host']!r}; "
        f"leave it out (the inventory's host name is used)"
        for name, entry in inventory.hosts.items()
        if entry.worker.get("host", name) != name
    ]
    password_env = inventory.broker.password_env
    reserved = {*_RESERVED_ENV, *([password_env] if password_env else [])}
    owners: list[tuple[KeyPath, HostSettings]] = [(("defaults",), inventory.defaults)]
    owners += [(("hosts", name), entry) for name, entry in inventory.hosts.items()]
    for loc, settings in owners:
        problems += [
            f"{fleet.where((*loc, 'env', name))}: the agent's broker URL and passwords come "
            "from the broker section only; remove it from env"
            for name in settings.env
            if name in reserved
        ]
    for key in ("known_hosts", "wheelhouse"):
        local = fleet.local_path(getattr(inventory, key))
        if local is not None and not local.exists():
            problems.append(f"{fleet.where((key,))}: {local} does not exist")
    for key in ("ca_file", "password_file"):
        local = fleet.local_path(getattr(inventory.broker, key))
        if local is not None and not local.is_file():
            problems.append(f"{fleet.where(('broker', key))}: {local} does not exist")
    for name in inventory.hosts:
        target = fleet._target(name)
        if target.key is not None and not target.key.is_file():
            loc = ("hosts", name, "key") if inventory.hosts[name].key else ("defaults", "key")
            problems.append(f"{fleet.where(loc)}: key file {target.key} does not exist")
    if problems:
        raise InventoryError(problems)
    return fleet


def _local_path(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _merged(template: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """`own` over `template`, mappings merged key by key (a host adds to the shared engines)."""
    out = dict(template)
    for key, value in own.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out
