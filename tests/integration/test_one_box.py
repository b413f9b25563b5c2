"""One box, every configuration (issue: the first user's carve-out comparison on one laptop).

Real processes throughout: the one-box service (`orch local start`: a Valkey from the wheel
with AOF, the supervisor, a real `orch worker`), real llama-bench on the tiny models. The box
is this machine with a writable copy of the Strix Halo /sys fixture as its `facts_root`; a
"reboot" is the service stopping, the fixture changing as firmware would change the box, and
the service starting again.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from jobs.protocol import RESULTS_KEY
from orchestrator.localservice import LocalService, pid_alive
from orchestrator.store import Store
from tests.integration.conftest import orch, write_worker_config

FACTS = Path(__file__).resolve().parent.parent / "fixtures" / "facts"
FIRMWARE = Path(__file__).resolve().parent.parent / "fixtures" / "firmware-attributes"
VRAM_TOTAL = "sys/class/drm/card1/device/mem_info_vram_total"
GiB = 2**30

MATRIX = """\
campaign: {campaign}
repetitions: 2
engine: llama-bench
workload: {{prompt_tokens: 16, gen_tokens: 8}}
hosts: [halo]
matrix:
  model: ['tiny:q8_0', 'tiny:q4_k_m']
  context: [64, 128]
  vram_split: {splits}
"""


def _box(tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], **extra: Any) -> Path:
    """worker.yaml for host `halo` on a copy of the Strix Halo tree (512M), nothing declared:
    the agent detects its carve-out (`detect_configuration`)."""
    root = tmp_path / "root"
    if not root.exists():
        shutil.copytree(FACTS / "strix-halo" / "root", root, symlinks=True)
    config = write_worker_config(tmp_path / "worker.yaml", "halo", llama_bin, tiny_models)
    data = yaml.safe_load(config.read_text())
    data.update(facts_root=str(root), telemetry_interval_s=0, detect_configuration=True, **extra)
    config.write_text(yaml.safe_dump(data))
    return config


def _set_carve_out(root: Path, size_bytes: int) -> None:
    (root / VRAM_TOTAL).write_text(f"{size_bytes}\n")


@pytest.fixture
def service_env(tmp_path: Path) -> dict[str, str]:
    """The environment of every `orch` here: its own ORCH_HOME (spool, reconfiguration state)
    and store; ORCH_LOCAL_DIR comes from the autouse fixture."""
    return {"ORCH_HOME": str(tmp_path / "home"), "ORCH_STORE": str(tmp_path / "orch.db")}


@pytest.fixture
def local_service(service_env: dict[str, str]) -> Any:
    """`orch local ...` with this test's environment; the service is stopped at the end."""

    def run(*args: str, timeout: float = 300) -> Any:
        return orch(*args, env=service_env, timeout=timeout)

    yield run
    orch("local", "stop", env=service_env, timeout=120)


def _stored_once(store: Store, client: Any, campaign: str) -> None:
    """Every job of `campaign` has exactly one result in the store and in the broker's stream."""
    rows = store.campaign_jobs(campaign)
    assert rows and all(r.result is not None and r.result.status.value == "ok" for r in rows), [
        (r.spec.configuration, r.result and r.result.error) for r in rows
    ]
    # A job whose message came back after a kill between its result and its ack announces the
    # same result again (its final mark): the same run. A second run would have another start.
    runs = Counter(
        (result["job_id"], result["started_at"])
        for result in (json.loads(fields[b"result"]) for _id, fields in client.xrange(RESULTS_KEY))
        if result["campaign"] == campaign
    )
    per_job = Counter(job_id for job_id, _started in runs)
    assert sorted(per_job) == sorted(r.spec.job_id for r in rows)
    assert set(per_job.values()) == {1}, runs  # nothing ran twice


def test_power_cut_mid_campaign_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], local_service: Any,
    service_env: dict[str, str],
) -> None:  # fmt: skip
    config = _box(tmp_path, llama_bin, tiny_models)
    started = local_service("local", "start", "--worker-config", str(config))
    assert started.returncode == 0, started.stderr + started.stdout
    assert "one-box service started" in started.stdout
    again = local_service("local", "start")  # idempotent
    assert again.returncode == 0 and "already running" in again.stdout

    service = LocalService()
    state = service.read_state()
    url = service.url()
    client = redis.Redis.from_url(url)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "always"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert (service.dir / "broker.password").stat().st_mode & 0o777 == 0o600
    assert url.split("@")[0].split(":")[-1] not in " ".join(
        Path(f"/proc/{state.agent_pid}/cmdline").read_text().split("\0")
    )  # the broker password is not in the agent's argv

    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX.format(campaign="cut", splits="[512M, 32G]"))
    sent = local_service("submit", str(matrix), "--json")  # no --broker: the service's
    assert sent.returncode == 0, sent.stderr
    assert "broker: the one-box service redis://:***@127.0.0.1" in sent.stderr
    queued = json.loads(sent.stdout)
    assert sorted(queued["queues"]) == ["orch.halo.vram-32G", "orch.halo.vram-512M"]
    assert len(queued["published"]) == 8

    # Power cut once a result is in the broker and not yet read by any store.
    deadline = time.monotonic() + 300
    while client.xlen(RESULTS_KEY) < 1:
        assert time.monotonic() < deadline, service.agent_log.read_text()[-3000:]
        time.sleep(0.05)
    unread = client.xlen(RESULTS_KEY)  # appendfsync always: on disk before it answered
    state = service.read_state()
    for pid in (state.supervisor_pid, state.agent_pid, state.broker_pid):
        os.kill(pid, signal.SIGKILL)
    client.close()

    # The box comes back in the other carve-out.
    _set_carve_out(tmp_path / "root", 32 * GiB)
    back = local_service("local", "start")  # remembers the worker config
    assert back.returncode == 0, back.stderr + back.stdout
    assert service.url() == url  # the same broker, on the same port
    assert redis.Redis.from_url(url).xlen(RESULTS_KEY) >= unread >= 1  # still there, unread
    status = local_service("local", "status")
    assert status.returncode == 0 and "consumes orch.halo.vram-32G" in status.stdout

    waited = local_service("status", "cut", "--wait", "--timeout", "600")
    # The 32G jobs ran; what is left of 512M needs the box back in 512M: exit 4, instruction.
    store = Store.open(tmp_path / "orch.db")
    rows = store.campaign_jobs("cut")
    left = [r for r in rows if r.result is None]
    if left:
        assert waited.returncode == 4, waited.stderr
        assert "reboot into vram_split=512M" in waited.stderr
        assert all(r.spec.configuration == {"vram_split": "512M"} for r in left)
    assert all(r.result is not None for r in rows if r.spec.configuration["vram_split"] == "32G")

    stopped = local_service("local", "stop")
    assert stopped.returncode == 0 and "supervisor" in stopped.stdout
    _set_carve_out(tmp_path / "root", 512 * 2**20)
    assert local_service("local", "start").returncode == 0
    done = local_service("status", "cut", "--wait", "--timeout", "600")
    assert done.returncode == 0, done.stderr
    _stored_once(store, redis.Redis.from_url(service.url()), "cut")
    campaigns = local_service("campaigns")
    assert campaigns.returncode == 0 and " done" in campaigns.stdout


def test_submit_wait_returns_with_the_instruction_when_no_worker_can_run_the_jobs(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], local_service: Any,
) -> None:  # fmt: skip
    config = _box(tmp_path, llama_bin, tiny_models)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX.format(campaign="elsewhere", splits="[32G]"))
    # submit --local starts the service (512M) and waits: nothing can run without a reboot.
    sent = local_service("submit", str(matrix), "--local", "--worker-config", str(config),
                         timeout=600)  # fmt: skip
    assert sent.returncode == 4, sent.stderr
    assert "halo: 4 job(s) wait for vram_split=32G (now vram_split=512M)" in sent.stderr
    assert "reboot into vram_split=32G" in sent.stderr
    campaigns = local_service("campaigns")
    assert campaigns.returncode == 0, campaigns.stderr
    assert "waiting for reboot into vram_split=32G" in campaigns.stdout

    status = local_service("status")
    assert "vram-512M (now)" in status.stdout
    assert (
        "halo: configurations to visit: vram_split=32G; 1 reboot(s) still needed from "
        "vram_split=512M\n"
    ) in status.stdout
    assert local_service("local", "stop").returncode == 0
    # The agent is gone: its host is never shown as being in a configuration "now".
    service = LocalService()
    assert not service.running()
    offline = local_service("status")
    assert "stopped: showing the store only" in offline.stderr
    for command in (("hosts",), ("cancel", "elsewhere"), ("retry", "elsewhere", "--failed")):
        refused = local_service(*command)
        assert refused.returncode == 2, refused.stderr
        assert "the one-box service in" in refused.stderr and "is stopped" in refused.stderr


def test_an_offline_host_is_never_shown_in_a_configuration_now(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = _box(tmp_path, llama_bin, tiny_models)
    worker = start_worker(config)
    online = orch("status", "--broker", broker)
    assert online.returncode == 0, online.stderr
    assert "vram-512M (now)" in online.stdout
    worker.stop()
    offline = orch("status", "--broker", broker)
    assert offline.returncode == 0, offline.stderr
    assert "(now)" not in offline.stdout
    assert "vram-512M (last seen)" in offline.stdout


# -- unattended: the box walks through its configurations by itself ---------------------------

UMA = "sys/class/firmware-attributes/hp-bioscfg/attributes/UMA Frame Buffer Size"
TTM = "sys/module/ttm/parameters/pages_limit"
BOOT_ID = "proc/sys/kernel/random/boot_id"
PASSWORD = "Bios-Secret-7f3a9c"

# What a reboot does to the box, played by the test: the agent runs this as its
# `reboot_command`. It detaches (as `systemctl reboot` returns at once), stops the service,
# lets the "firmware" apply what was written (unless told to ignore it, as broken firmware
# does), gives the kernel a new boot id, and starts the service again, as a boot would.
FAKE_REBOOT = r"""
import json, os, subprocess, sys, time, uuid
from pathlib import Path

cfg = json.loads(Path(sys.argv[1]).read_text())
if "--detached" not in sys.argv:
    with open(cfg["log"], "ab") as log:
        subprocess.Popen([sys.executable, __file__, sys.argv[1], "--detached"],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    sys.exit(0)
orch = [sys.executable, "-m", "orchestrator", "local"]
subprocess.run(orch + ["stop"], check=True)
root = Path(cfg["root"])
uma = root / cfg["uma"]
if cfg["firmware_applies"]:
    value = (uma / "current_value").read_text().strip()
    size = int(value[:-2]) * (2**30 if value.endswith("GB") else 2**20)
    (root / cfg["vram_total"]).write_text(f"{size}\n")
else:
    (uma / "current_value").write_text(cfg["boot_value"] + "\n")
pending_ttm = Path(cfg["ttm_pending"])
if pending_ttm.exists():
    (root / cfg["ttm"]).write_text(pending_ttm.read_text())
    pending_ttm.unlink()
(uma.parent / "pending_reboot").write_text("0\n")
(root / cfg["boot_id"]).write_text(f"{uuid.uuid4()}\n")
with open(cfg["reboots"], "a") as out:
    out.write(f"{time.time()}\n")
subprocess.run(orch + ["start"], check=True)
"""

# The owner's kernel-parameter command (grubby, kernelstub...): here it notes the value the
# next boot will have, and every argv it was given.
SET_TTM = r"""
import json, sys
from pathlib import Path
cfg = json.loads(Path(sys.argv[1]).read_text())
Path(cfg["ttm_pending"]).write_text(sys.argv[2] + "\n")
with open(cfg["argv_log"], "a") as out:
    out.write(json.dumps(sys.argv) + "\n")
"""

WALK = """\
campaign: {campaign}
repetitions: 1
engine: llama-bench
workload: {{prompt_tokens: 16, gen_tokens: 8}}
hosts: [halo]
matrix:
  model: ['tiny:q8_0']
  context: [64]
  vram_split: [512M, 32G]
{ttm}"""


def _unattended_box(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], *, firmware_applies: bool
) -> tuple[Path, dict[str, Any]]:
    root = tmp_path / "root"
    shutil.copytree(FACTS / "strix-halo" / "root", root, symlinks=True)
    firmware = root / "sys/class/firmware-attributes"
    firmware.mkdir(parents=True)
    shutil.copytree(FIRMWARE / "hp-bioscfg", firmware / "hp-bioscfg")
    (root / BOOT_ID).parent.mkdir(parents=True, exist_ok=True)
    (root / BOOT_ID).write_text("5f1d3c1e-0000-4000-8000-000000000001\n")
    (root / UMA / "current_value").write_text("512MB\n")
    password = tmp_path / "bios-password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    cfg = {
        "root": str(root), "uma": UMA, "vram_total": VRAM_TOTAL, "ttm": TTM, "boot_id": BOOT_ID,
        "firmware_applies": firmware_applies, "boot_value": "512MB",
        "ttm_pending": str(tmp_path / "ttm-pending"), "argv_log": str(tmp_path / "argv.log"),
        "reboots": str(tmp_path / "reboots.log"), "log": str(tmp_path / "reboot-script.log"),
    }  # fmt: skip
    (tmp_path / "box.json").write_text(json.dumps(cfg))
    (tmp_path / "fake_reboot.py").write_text(FAKE_REBOOT)
    (tmp_path / "set_ttm.py").write_text(SET_TTM)
    box = str(tmp_path / "box.json")
    config = _box(
        tmp_path, llama_bin, tiny_models,
        reconfigure={
            "vram_split": {"firmware_attribute": "UMA Frame Buffer Size",
                           "values": {"512M": "512MB", "32G": "32GB"}},
            "ttm_pages_limit": {"command": [sys.executable, str(tmp_path / "set_ttm.py"), box,
                                            "{value}"]},
            "bios_password_file": str(password),
            "reboot_command": [sys.executable, str(tmp_path / "fake_reboot.py"), box],
            "max_reboots_per_campaign": 4,
        },
    )  # fmt: skip
    return config, cfg


def _reboots(cfg: dict[str, Any]) -> int:
    path = Path(cfg["reboots"])
    return len(path.read_text().splitlines()) if path.exists() else 0


def _password_nowhere(tmp_path: Path, client: Any) -> None:
    """Not in any log, argv, state file or store here, nor in anything the broker holds."""
    for path in tmp_path.rglob("*"):
        if path.is_file() and "root" not in path.relative_to(tmp_path).parts[:1]:
            if path.name == "bios-password":
                continue
            assert PASSWORD.encode() not in path.read_bytes(), path
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = list(client.hgetall(key).values())
        elif kind == "stream":
            values = [v for _id, fields in client.xrange(key) for v in fields.values()]
        else:
            values = [repr(client.dump(key)).encode()]
        assert not any(PASSWORD.encode() in (v or b"") for v in values), key
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert PASSWORD.encode() not in proc.read_bytes(), proc
        except OSError:
            continue


def test_unattended_campaign_over_two_carve_outs_and_two_ttm_limits_needs_no_human(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], local_service: Any,
) -> None:  # fmt: skip
    config, cfg = _unattended_box(tmp_path, llama_bin, tiny_models, firmware_applies=True)
    assert local_service("local", "start", "--worker-config", str(config)).returncode == 0
    matrix = tmp_path / "walk.yaml"
    matrix.write_text(WALK.format(campaign="walk", ttm="  ttm_pages_limit: [27648000, 8388608]\n"))
    plan = local_service("plan", str(matrix))
    assert plan.returncode == 0, plan.stderr
    assert (
        "halo: configurations to visit: vram_split=512M, ttm_pages_limit=27648000 -> "
        "vram_split=512M, ttm_pages_limit=8388608 -> vram_split=32G, ttm_pages_limit=8388608 "
        "-> vram_split=32G, ttm_pages_limit=27648000; 3 reboot(s) still needed from "
        "vram_split=512M, ttm_pages_limit=27648000 (unattended: its agent switches by itself)"
    ) in plan.stdout
    sent = local_service("submit", str(matrix), "--json")
    assert sent.returncode == 0, sent.stderr
    assert len(json.loads(sent.stdout)["queues"]) == 4
    assert json.loads(sent.stdout)["notes"] == []  # nothing waits for a human

    done = local_service("status", "walk", "--wait", "--timeout", "900", timeout=1000)
    assert done.returncode == 0, done.stderr + LocalService().agent_log.read_text()[-4000:]
    assert _reboots(cfg) == 3  # four configurations, starting in one of them
    store = Store.open(tmp_path / "orch.db")
    url = LocalService().url()
    client = redis.Redis.from_url(url)
    _stored_once(store, client, "walk")
    for row in store.campaign_jobs("walk"):
        assert row.result is not None and row.result.host_facts is not None
        # each job ran with the box really in its configuration
        assert row.result.host_facts.vram_split == row.spec.configuration["vram_split"]
        assert (
            str(row.result.host_facts.ttm_pages_limit) == row.spec.configuration["ttm_pages_limit"]
        )
    argv = [json.loads(line) for line in Path(cfg["argv_log"]).read_text().splitlines()]
    assert [a[-1] for a in argv] == ["8388608", "27648000"]  # the TTM limit set twice
    assert (tmp_path / "root" / UMA / "current_value").read_text().strip() == "32GB"
    _password_nowhere(tmp_path, client)


def test_firmware_that_ignores_the_write_gives_one_failed_attempt_and_no_loop(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], local_service: Any,
) -> None:  # fmt: skip
    config, cfg = _unattended_box(tmp_path, llama_bin, tiny_models, firmware_applies=False)
    assert local_service("local", "start", "--worker-config", str(config)).returncode == 0
    matrix = tmp_path / "walk.yaml"
    matrix.write_text(WALK.format(campaign="stuck", ttm=""))
    assert local_service("submit", str(matrix)).returncode == 0
    waited = local_service("status", "stuck", "--wait", "--timeout", "900", timeout=1000)
    assert waited.returncode == 4, waited.stderr + LocalService().agent_log.read_text()[-4000:]
    assert "will not switch by itself" in waited.stderr
    assert "did not take" in waited.stderr or "firmware" in waited.stderr, waited.stderr
    assert _reboots(cfg) == 1
    # The agent stays up, in 512M, and does not try again: a few heartbeats later, still one.
    client = redis.Redis.from_url(LocalService().url())
    inventory = json.loads(client.get("orch:inventory:halo"))
    assert inventory["queue"] == "orch.halo.vram-512M+ttm-27648000"
    assert "stuck" in inventory["reconfigure"]["blocked"]
    time.sleep(12)
    assert _reboots(cfg) == 1
    status = local_service("status", "stuck")
    assert "unattended switching stopped for stuck" in status.stdout
    rows = Store.open(tmp_path / "orch.db").campaign_jobs("stuck")
    assert [r.spec.configuration["vram_split"] for r in rows if r.result is None] == ["32G"]
    _password_nowhere(tmp_path, client)


def test_two_starts_at_once_make_one_service_and_stale_pids_are_never_signalled(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], local_service: Any,
    service_env: dict[str, str],
) -> None:  # fmt: skip
    config = _box(tmp_path, llama_bin, tiny_models)
    argv = [sys.executable, "-m", "orchestrator", "local", "start", "--worker-config", str(config)]
    env = {**os.environ, **service_env}
    both = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], outs
    said = sorted(out.split(":")[0] for out, _err in outs)
    assert said == ["one-box service already running", "one-box service started"], outs
    service = LocalService()
    state = service.read_state()
    alive = [p for p in Path("/proc").glob("[0-9]*/cmdline")
             if b"local\0run\0--dir\0" + str(service.dir).encode() in p.read_bytes()]  # fmt: skip
    assert len(alive) == 1  # one supervisor

    # A power cut: everything dies; after the "boot" an unrelated process has the agent's old
    # pid (here: a sleep whose pid we write into the state file) and another program listens
    # on the service's port. The next start must neither signal the one nor talk to the other.
    for pid in (state.supervisor_pid, state.agent_pid, state.broker_pid):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while any(pid_alive(p) for p in (state.supervisor_pid, state.agent_pid, state.broker_pid)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bystander = subprocess.Popen(["sleep", "300"])
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    while True:  # a killed multi-threaded broker shows as a zombie before its threads close
        try:  # the listening socket, so the port can stay taken for a moment after "dead"
            squatter.bind(("127.0.0.1", state.port))
            break
        except OSError:
            assert time.monotonic() < deadline, f"port {state.port} still taken after the kill"
            time.sleep(0.1)
    squatter.listen()
    try:
        data = json.loads(service.state_path.read_text())
        data["agent_pid"] = bystander.pid
        service.state_path.write_text(json.dumps(data))
        back = local_service("local", "start")
        assert back.returncode == 0, back.stderr + back.stdout
        assert bystander.poll() is None  # not ours: left alone
        assert service.read_state().port != state.port
        assert f"port {state.port} is taken by another program" in service.log_path.read_text()
    finally:
        bystander.kill()
        squatter.close()
    stopped = local_service("local", "stop")
    assert stopped.returncode == 0 and "supervisor" in stopped.stdout
    assert local_service("local", "status").returncode == 1


def test_an_install_that_fails_leaves_the_service_running_as_it_was(
    tmp_path: Path, llama_bin: Path, tiny_models: dict[str, Path], local_service: Any,
    service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from click.testing import CliRunner

    from orchestrator import localinstall
    from orchestrator.cli import cli
    from orchestrator.errors import OrchError

    config = _box(tmp_path, llama_bin, tiny_models)
    assert local_service("local", "start", "--worker-config", str(config)).returncode == 0
    for name, value in service_env.items():
        monkeypatch.setenv(name, value)

    def no_user_manager(*_args: Any, **_kwargs: Any) -> Any:
        raise OrchError("wrote the unit, but `systemctl --user daemon-reload` failed")

    monkeypatch.setattr(localinstall, "install", no_user_manager)
    before = LocalService().read_state().supervisor_pid
    done = CliRunner().invoke(cli, ["local", "install"])
    assert isinstance(done.exception, OrchError) and "daemon-reload" in str(done.exception)
    service = LocalService()
    assert service.running() and service.read_state().supervisor_pid != before  # started again
    assert local_service("local", "status").returncode == 0
