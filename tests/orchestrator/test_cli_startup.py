"""Every `orch` command imports the command modules; they must not import the heavy parts
(numpy, gguf, paramiko, fabric, Celery, kombu, redis-py, the pydantic models...) before a
command uses them (issue 15: start-up under 0.3 s). Timing is `benchmarks/startup.py`'s job:
these tests check which modules a fresh process imported, and that the commands still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Never needed to start a command, parse its options or print its help.
HEAVY = ("numpy", "gguf", "matplotlib", "paramiko", "fabric", "invoke", "celery", "kombu", "redis")
# Needed only by the commands that parse jobs and results, print tables or read YAML.
MODELS = ("pydantic", "jobs.spec", "jobs.result", "tabulate", "yaml")

# Runs `orch ARGS...` in this interpreter, then prints (on stderr's last line) which of the
# named modules it imported.
_PROBE = """
import json, sys
args, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.argv = ["orch", *args]
code = 0
try:
    from orchestrator.cli import main
    main()
except SystemExit as exc:
    code = exc.code
finally:
    print(json.dumps({"code": code, "loaded": sorted(m for m in names if m in sys.modules)}),
          file=sys.stderr)
"""


def _env(tmp_path: Path) -> dict[str, str]:
    """An empty store, no broker, no one-box service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env |= {"ORCH_STORE": str(tmp_path / "orch.db"), "ORCH_LOCAL_DIR": str(tmp_path / "local")}
    return env


def _probe(tmp_path: Path, *args: str) -> tuple[str, int, list[str]]:
    """`orch ARGS...`'s stdout, exit code and the modules of HEAVY and MODELS it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(args), json.dumps([*HEAVY, *MODELS])],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stderr.strip().splitlines()[-1])
    return done.stdout, found["code"] or 0, found["loaded"]


def test_importing_the_command_line_imports_nothing_heavy() -> None:
    names = [*HEAVY, *MODELS]
    code = (
        "import sys; import orchestrator.cli, worker.cli; "
        f"print(sorted(m for m in {names!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


COMMANDS = (
    "submit", "status", "plan", "retry", "cancel", "hosts", "demo", "report", "compare",
    "campaigns", "import", "fleet", "local", "dlq", "worker", "engines", "models", "doctor",
    "export",
)  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], *([c, "--help"] for c in COMMANDS)], ids=" ".join)
def test_help_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    out, code, loaded = _probe(tmp_path, *args)
    assert code == 0 and "Usage:" in out
    # `orch report|compare --help` name the axes and metrics, which the report's modules define.
    allowed = (*MODELS, "numpy") if args[0] in ("report", "compare") else ()
    assert [m for m in loaded if m not in allowed] == []


def test_orch_help_still_lists_every_command(tmp_path: Path) -> None:
    out, _, _ = _probe(tmp_path, "--help")
    commands = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert commands == set(COMMANDS)


def test_report_help_names_the_axes_and_metrics(tmp_path: Path) -> None:
    from orchestrator.report.metrics import METRICS
    from orchestrator.report.pivot import AXES, METRIC

    out, code, _ = _probe(tmp_path, "report", "--help")
    flat = " ".join(out.split())  # click wraps the help text
    assert code == 0
    assert all(f"{name}," in flat or f"{name}." in flat for name in (*AXES, METRIC, *METRICS))


@pytest.mark.parametrize(
    ("command", "says"), [("status", "no campaigns yet"), ("campaigns", "no campaigns in")]
)
def test_a_command_with_nothing_to_do_reads_only_the_store(
    tmp_path: Path, command: str, says: str
) -> None:
    out, code, loaded = _probe(tmp_path, command)
    assert code == 0 and says in out
    assert loaded == []  # no broker client, no models: an empty store is only counted


@pytest.mark.parametrize("kind", ["redis", "kombu", "os"])
def test_a_broker_failure_is_still_reported_as_one(
    kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """main() catches redis-py's and kombu's errors (the broker went away mid-command)
    without importing them itself: a command that raises one has imported it."""
    import kombu.exceptions
    import redis

    from orchestrator import cli

    failure = {
        "redis": redis.ConnectionError("Connection refused"),
        "kombu": kombu.exceptions.OperationalError("Connection refused"),
        "os": ConnectionResetError("Connection reset"),
    }[kind]

    def command(**_kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(cli, "cli", command)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 3
    assert capsys.readouterr().err.startswith("error: broker or network failure")


def test_other_errors_are_not_taken_for_broker_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import cli

    def command(**_kwargs: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cli", command)
    with pytest.raises(KeyError):
        cli.main()


def test_sizing_a_plan_imports_neither_gguf_nor_numpy() -> None:
    """`orch submit` and `orch plan` estimate every job's memory from the shapes workers
    published: that must not pay for gguf and numpy (only reading a GGUF file does)."""
    code = (
        "import sys\n"
        "from jobs.modelshape import ModelShape\n"
        "from orchestrator import plan, submit\n"
        "from orchestrator.planner import estimate\n"
        "shape = ModelShape(architecture='llama', n_layer=2, n_embd=64, n_head=4,\n"
        "    n_head_kv_per_layer=(2, 2), key_length=16, value_length=16, n_ff=128, n_vocab=256,\n"
        "    context_length=4096, expert_count=None, expert_used_count=None, expert_ff=None,\n"
        "    weight_bytes=10**6, file_bytes=10**6)\n"
        "need = estimate(shape, context=4096, cache_type_k='q8_0', cache_type_v='q4_0')\n"
        "assert need.total_bytes > 0\n"
        "print(sorted(m for m in ('numpy', 'gguf') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
