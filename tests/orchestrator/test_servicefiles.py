"""orchestrator.servicefiles: the launchd agent and the Scheduled Task, checked as documents.

Neither launchd nor Task Scheduler runs here, so what is verified is the format only: the
plist against the key types of Apple's launchd.plist(5) (ProcessType values quoted from the
manual page in launchd-842), the task against Microsoft's Task Scheduler schema 1.2 ("Task
Scheduler Schema" on learn.microsoft.com; [MS-TSCH] 2.5.4 for the Settings defaults: Priority
7, DisallowStartIfOnBatteries true, and ExecutionTimeLimit 72 hours when absent). The
fixture tests/fixtures/windows/logon-task.xml is the shape of Microsoft's "Logon Trigger
Example (XML)" (learn.microsoft.com/windows/win32/taskschd/logon-trigger-example--xml-) with
an InteractiveToken principal (its comment cannot hold that address: "--" ends an XML
comment); the checker must accept it.
"""

from __future__ import annotations

import plistlib
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator import servicefiles

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "windows"
NS = {"t": servicefiles.TASK_NS}
ARGV = [r"C:\Program Files\Python311\python.exe", "-m", "orchestrator", "local", "run",
        "--dir", r"C:\Users\Ann Lee\orch local", 'a "quoted" arg', ""]  # fmt: skip


def _task(argv: list[str] = ARGV, user: str = r"LAPTOP\ann") -> ET.Element:
    data = servicefiles.task_xml("orch-local", argv, r"C:\Users\Ann Lee\orch", user, "about")
    assert data.startswith((b"\xff\xfe", b"\xfe\xff"))  # UTF-16, with a BOM
    assert data.decode("utf-16").startswith('<?xml version="1.0" encoding="UTF-16"?>')
    return ET.fromstring(data.decode("utf-16"))


def _windows_split(cmdline: str) -> list[str]:
    """How the Microsoft C runtime splits a command line (documented rules: "Parsing C++
    command-line arguments"): backslashes are literal unless they precede a quote."""
    args: list[str] = []
    current, quoted, in_arg, i = "", False, False, 0
    while i < len(cmdline):
        c = cmdline[i]
        if c == "\\":
            n = len(cmdline[i:]) - len(cmdline[i:].lstrip("\\"))
            if i + n < len(cmdline) and cmdline[i + n] == '"':
                current += "\\" * (n // 2)
                if n % 2:
                    current += '"'
                    i += n + 1
                else:
                    i += n
                in_arg = True
                continue
            current += "\\" * n
            i += n
            in_arg = True
            continue
        if c == '"':
            quoted = not quoted
            in_arg = True
        elif c in " \t" and not quoted:
            if in_arg:
                args.append(current)
            current, in_arg = "", False
        else:
            current += c
            in_arg = True
        i += 1
    if in_arg:
        args.append(current)
    return args


def test_the_task_runs_the_command_at_logon_in_the_users_session() -> None:
    task = _task()
    assert task.get("version") == "1.2"
    exec_ = task.find("t:Actions/t:Exec", NS)
    assert exec_ is not None
    assert exec_.findtext("t:Command", namespaces=NS) == ARGV[0]
    assert _windows_split(exec_.findtext("t:Arguments", namespaces=NS) or "") == ARGV[1:]
    assert task.findtext("t:Triggers/t:LogonTrigger/t:UserId", namespaces=NS) == r"LAPTOP\ann"
    principal = task.find("t:Principals/t:Principal", NS)
    assert principal is not None
    assert principal.findtext("t:LogonType", namespaces=NS) == "InteractiveToken"
    assert principal.findtext("t:RunLevel", namespaces=NS) == "LeastPrivilege"
    assert "Password" not in ET.tostring(task, encoding="unicode")


def test_the_settings_that_would_stop_a_benchmark_box_are_off() -> None:
    settings = _task().find("t:Settings", NS)
    assert settings is not None
    got = {child.tag.rpartition("}")[2]: child.text for child in settings}
    assert got["ExecutionTimeLimit"] == "PT0S"  # not the 72-hour default
    assert got["Priority"] == "4"  # normal, not the default 7 (below normal)
    assert got["DisallowStartIfOnBatteries"] == got["StopIfGoingOnBatteries"] == "false"
    assert got["MultipleInstancesPolicy"] == "IgnoreNew"


def test_the_checker_accepts_microsofts_example_and_refuses_broken_tasks() -> None:
    example = (FIXTURES / "logon-task.xml").read_text()
    servicefiles.check_task_xml(example.encode("utf-16"))
    broken = {
        "an unknown element in Exec": example.replace("<Exec>", "<Exec><Unknown/>"),
        "a password logon": example.replace("InteractiveToken", "Password"),
        "unknown setting": example.replace("<Settings>", "<Settings><Foo/>"),
        "no namespace": example.replace(f' xmlns="{servicefiles.TASK_NS}"', ""),
        "not XML": example[:-20],
    }
    for what, text in broken.items():
        assert text != example, what
        with pytest.raises(ValueError):
            servicefiles.check_task_xml(text.encode("utf-16"))


def test_a_path_xml_cannot_hold_is_refused_before_anything_is_written() -> None:
    with pytest.raises(ValueError, match="not a Task Scheduler XML"):
        servicefiles.task_xml("orch-local", ["python.exe", "a\x01b"], "C:\\", "ann", "about")
    with pytest.raises(ValueError, match="launchd"):
        servicefiles.launchd_plist("org.orch.local", ["orch", "a\x01b"], {}, "/", "/log")


def test_the_launchd_agent_reads_back_with_the_documented_types() -> None:
    env = {"ORCH_HOME": "/Users/ann/o <&> h", "PATH": "/usr/bin:/bin"}
    argv = ["/usr/bin/python3", "-m", "orchestrator", "local", "run", "--dir", "/x y"]
    data = servicefiles.launchd_plist("org.orch.local", argv, env, "/x y", "/x y/service.log")
    plist = plistlib.loads(data)
    assert plist["ProgramArguments"] == argv and plist["EnvironmentVariables"] == env
    assert plist["ProcessType"] == "Interactive"  # left out, launchd throttles CPU and I/O
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["Umask"] == 0o077
    assert shlex.join(argv)  # nothing here is a shell string: launchd execs the list


@pytest.mark.parametrize(
    "change",
    [
        {"RunAtLoad": "yes"},  # a string where launchd wants a boolean
        {"ProcessType": "Fast"},
        {"KeepAlive": {"OnCrash": True}},
        {"ProgramArguments": []},
        {"Label": "other"},
        {"Unknown": 1},
    ],
)
def test_the_launchd_checker_refuses_what_launchd_would(change: dict[str, object]) -> None:
    good = plistlib.loads(servicefiles.launchd_plist("org.orch.local", ["a"], {}, "/", "/l"))
    with pytest.raises(ValueError):
        servicefiles.check_launchd_plist(plistlib.dumps({**good, **change}), "org.orch.local")
