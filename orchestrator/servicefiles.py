"""The files that make macOS's launchd or Windows' Task Scheduler start an orch command, made
and checked before anything is written.

- launchd agent (`~/Library/LaunchAgents/<label>.plist`): written with plistlib, and checked by
  reading it back and by the key types launchd.plist(5) gives (Apple's manual page, as in
  launchd-842 and current macOS). `ProcessType` is `Interactive`: left out, launchd applies
  "light resource limits ... throttling its CPU usage and I/O bandwidth" (launchd.plist(5)),
  which would slow the benchmarks the agent runs.
- Scheduled Task: Task Scheduler XML, schema version 1.2 (Microsoft: "Task Scheduler Schema",
  learn.microsoft.com/windows/win32/taskschd/task-scheduler-schema, and [MS-TSCH] 2.5), a
  LogonTrigger for one user, a principal with LogonType InteractiveToken (runs in the user's
  session once they log on: no password is stored), registered with `schtasks /Create /XML`.
  Settings that would stop a benchmark box are turned off: the 72-hour ExecutionTimeLimit
  (PT0S: none), starting only on AC power, and the default priority 7 (below normal; 4 is
  normal). Written as UTF-16 with a byte-order mark, as Task Scheduler exports tasks.

Both are pure functions of their inputs; the checks raise ValueError with what is wrong.
"""

from __future__ import annotations

import plistlib
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Mapping

TASK_NS = "http://schemas.microsoft.com/windows/2004/02/mit/task"
NORMAL_PRIORITY = 4  # Task Scheduler priorityType: 4-6 normal, 7-8 (the default) below normal

# launchd.plist(5): the keys used here and the types they take
_LAUNCHD_TYPES: dict[str, type | tuple[type, ...]] = {
    "Label": str,
    "ProgramArguments": list,
    "EnvironmentVariables": dict,
    "WorkingDirectory": str,
    "RunAtLoad": bool,
    "KeepAlive": (bool, dict),
    "StandardOutPath": str,
    "StandardErrorPath": str,
    "Umask": int,
    "ProcessType": str,
    "ThrottleInterval": int,
}
_KEEPALIVE_KEYS = {"SuccessfulExit", "Crashed", "NetworkState", "PathState", "OtherJobEnabled",
                   "AfterInitialDemand"}  # fmt: skip
_PROCESS_TYPES = {"Background", "Standard", "Adaptive", "Interactive"}

# Task Scheduler schema 1.2: the children each element used here may have
_TASK_CHILDREN = {
    "Task": {"RegistrationInfo", "Triggers", "Settings", "Data", "Principals", "Actions"},
    "Settings": {
        "AllowStartOnDemand",
        "RestartOnFailure",
        "MultipleInstancesPolicy",
        "DisallowStartIfOnBatteries",
        "StopIfGoingOnBatteries",
        "AllowHardTerminate",
        "StartWhenAvailable",
        "NetworkProfileName",
        "RunOnlyIfNetworkAvailable",
        "WakeToRun",
        "Enabled",
        "Hidden",
        "DeleteExpiredTaskAfter",
        "IdleSettings",
        "NetworkSettings",
        "ExecutionTimeLimit",
        "Priority",
        "RunOnlyIfIdle",
        "UseUnifiedSchedulingEngine",
        "DisallowStartOnRemoteAppSession",
        "MaintenanceSettings",
        "Volatile",
    },  # fmt: skip
    "Principal": {
        "UserId",
        "LogonType",
        "GroupId",
        "DisplayName",
        "RunLevel",
        "ProcessTokenSidType",
        "RequiredPrivileges",
    },  # fmt: skip
    "Exec": {"Command", "Arguments", "WorkingDirectory"},
    "LogonTrigger": {
        "Enabled",
        "StartBoundary",
        "EndBoundary",
        "ExecutionTimeLimit",
        "Repetition",
        "UserId",
        "Delay",
    },  # fmt: skip
}


def launchd_plist(
    label: str, argv: list[str], env: Mapping[str, str], workdir: str, log_path: str
) -> bytes:
    """A launchd agent running `argv` at load (login), restarted when it exits with an error."""
    body = {
        "Label": label,
        "ProgramArguments": argv,
        "EnvironmentVariables": dict(env),
        "WorkingDirectory": workdir,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": log_path,
        "StandardErrorPath": log_path,
        "Umask": 0o077,
        "ProcessType": "Interactive",
    }
    try:
        data = plistlib.dumps(body)
    except (TypeError, ValueError) as exc:  # e.g. a control character in a path or variable
        raise ValueError(f"cannot write a launchd property list: {exc}") from exc
    check_launchd_plist(data, label)
    return data


def check_launchd_plist(data: bytes, label: str) -> None:
    """The plist reads back as a launchd job for `label` with the key types of launchd.plist(5)."""
    try:
        plist = plistlib.loads(data)
    except (plistlib.InvalidFileException, ValueError) as exc:
        raise ValueError(f"not a property list: {exc}") from exc
    if not isinstance(plist, dict):
        raise ValueError("a launchd job is a dictionary")
    unknown = set(plist) - set(_LAUNCHD_TYPES)
    if unknown:
        raise ValueError(f"keys launchd.plist(5) does not know: {sorted(unknown)}")
    for key, value in plist.items():
        if not isinstance(value, _LAUNCHD_TYPES[key]):
            raise ValueError(f"{key}: {type(value).__name__} where launchd wants another type")
    if plist.get("Label") != label or not label:
        raise ValueError(f"Label is {plist.get('Label')!r}, not {label!r}")
    argv = plist.get("ProgramArguments")
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("ProgramArguments must be a non-empty list of strings")
    env = plist.get("EnvironmentVariables", {})
    if not all(isinstance(v, str) for v in env.values()):
        raise ValueError("EnvironmentVariables must map strings to strings")
    keep = plist.get("KeepAlive")
    if isinstance(keep, dict) and not set(keep) <= _KEEPALIVE_KEYS:
        raise ValueError(
            f"KeepAlive keys launchd does not know: {sorted(set(keep) - _KEEPALIVE_KEYS)}"
        )
    if plist.get("ProcessType", "Standard") not in _PROCESS_TYPES:
        raise ValueError(f"ProcessType must be one of {sorted(_PROCESS_TYPES)}")


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, f"{{{TASK_NS}}}{tag}")
    if text is not None:
        element.text = text
    return element


def task_xml(name: str, argv: list[str], workdir: str, user: str, description: str) -> bytes:
    """A Scheduled Task that runs `argv` when `user` logs on, in their session (no password)."""
    ET.register_namespace("", TASK_NS)
    task = ET.Element(f"{{{TASK_NS}}}Task", {"version": "1.2"})
    info = _sub(task, "RegistrationInfo")
    _sub(info, "Description", description)
    _sub(info, "URI", "\\" + name)
    trigger = _sub(_sub(task, "Triggers"), "LogonTrigger")
    _sub(trigger, "Enabled", "true")
    _sub(trigger, "UserId", user)
    principal = _sub(_sub(task, "Principals"), "Principal")
    principal.set("id", "Author")
    _sub(principal, "UserId", user)
    _sub(principal, "LogonType", "InteractiveToken")  # the user's own session: no password
    _sub(principal, "RunLevel", "LeastPrivilege")
    settings = _sub(task, "Settings")
    for tag, value in (
        ("MultipleInstancesPolicy", "IgnoreNew"),  # the supervisor's lock says the same
        ("DisallowStartIfOnBatteries", "false"),  # a laptop under test may be on battery
        ("StopIfGoingOnBatteries", "false"),
        ("AllowHardTerminate", "true"),
        ("AllowStartOnDemand", "true"),  # `schtasks /Run` right after install
        ("Enabled", "true"),
        ("ExecutionTimeLimit", "PT0S"),  # the default stops a task after 72 hours
        ("Priority", str(NORMAL_PRIORITY)),  # the default (7) is below normal
    ):
        _sub(settings, tag, value)
    restart = _sub(settings, "RestartOnFailure")
    _sub(restart, "Interval", "PT1M")  # the schema's shortest
    _sub(restart, "Count", "3")
    actions = _sub(task, "Actions")
    actions.set("Context", "Author")
    run = _sub(actions, "Exec")
    _sub(run, "Command", argv[0])
    if argv[1:]:
        # how the C runtime splits a command line, which python.exe does (subprocess's rules)
        _sub(run, "Arguments", subprocess.list2cmdline(argv[1:]))
    _sub(run, "WorkingDirectory", workdir)
    text = '<?xml version="1.0" encoding="UTF-16"?>\n' + ET.tostring(task, encoding="unicode")
    data = text.encode("utf-16")  # with a byte-order mark
    check_task_xml(data)
    return data


def check_task_xml(data: bytes) -> None:
    """The XML parses as a schema 1.2 task with an Exec action, run by a logon trigger in the
    user's session, with only the children the schema allows where this module writes."""
    try:
        root = ET.fromstring(data.decode("utf-16"))
    except (UnicodeDecodeError, ET.ParseError) as exc:  # e.g. a control character in a path
        raise ValueError(f"not a Task Scheduler XML document: {exc}") from exc

    def local(element: ET.Element) -> str:
        namespace, _, tag = element.tag.rpartition("}")
        if namespace != "{" + TASK_NS:
            raise ValueError(f"<{element.tag}> is outside the Task Scheduler namespace")
        return tag

    if local(root) != "Task" or root.get("version") != "1.2":
        raise ValueError('the root must be <Task version="1.2">')
    for element in root.iter():
        allowed = _TASK_CHILDREN.get(local(element))
        children = [local(child) for child in element]
        if allowed is not None and not set(children) <= allowed:
            raise ValueError(f"<{local(element)}> may not hold {sorted(set(children) - allowed)}")
        if len(children) != len(set(children)) and local(element) != "Triggers":
            raise ValueError(f"<{local(element)}> holds an element twice")
    ns = {"t": TASK_NS}
    command = root.findtext("t:Actions/t:Exec/t:Command", namespaces=ns)
    if not command:
        raise ValueError("the task has no <Exec><Command>")
    if root.findtext("t:Principals/t:Principal/t:LogonType", namespaces=ns) != "InteractiveToken":
        raise ValueError("the task must run in the user's session (LogonType InteractiveToken)")
    if root.find("t:Triggers/t:LogonTrigger", ns) is None:
        raise ValueError("the task must start at logon (<LogonTrigger>)")
    priority = root.findtext("t:Settings/t:Priority", default="7", namespaces=ns)
    if not priority.isdigit() or not 0 <= int(priority) <= 10:
        raise ValueError(f"Priority {priority!r} is not 0-10")
