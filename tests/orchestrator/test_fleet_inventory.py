"""The fleet inventory: defaults, the worker template, secrets, and errors naming file:line."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from jobs.protocol import redact_url
from orchestrator.errors import FleetError, InventoryError
from orchestrator.fleet.inventory import load_inventory

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with what examples/fleet.yaml names: a key, known_hosts, a password file."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("not read by these tests\n")
    (home / ".ssh" / "known_hosts").write_text("")
    (home / ".config" / "orch").mkdir(parents=True)
    (home / ".config" / "orch" / "redis-password").write_text("p@ss:w/rd\n")
    monkeypatch.setenv("HOME", str(home))
    return home


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    return path


def test_example_inventory_applies_defaults_and_merges_the_worker_template(home: Path) -> None:
    fleet = load_inventory(ROOT / "examples" / "fleet.yaml")
    laptop, minipc = fleet.targets()
    assert (laptop.name, laptop.address, laptop.user, laptop.port) == (
        "laptop-80w", "192.168.1.20", "bench", 22,
    )  # fmt: skip
    assert laptop.key == home / ".ssh" / "id_ed25519"
    assert laptop.sudo is False and minipc.sudo is True and minipc.user == "me"
    assert laptop.where == f"{ROOT / 'examples' / 'fleet.yaml'}:35"
    assert laptop.worker["host"] == "laptop-80w"
    assert laptop.worker["declared"]["vram_split"] == "32G"
    # a host's engines add to the template's, backend by backend
    assert set(minipc.worker["engines"]["llama-bench"]["backends"]) == {"cpu", "vulkan"}
    assert set(laptop.worker["engines"]["llama-bench"]["backends"]) == {"cpu"}
    assert minipc.env == {"HSA_OVERRIDE_GFX_VERSION": "11.5.1"}
    assert laptop.service == "auto"
    assert [t.name for t in fleet.targets(["minipc-120w"])] == ["minipc-120w"]
    with pytest.raises(FleetError, match="no host 'nas'.*hosts: laptop-80w, minipc-120w"):
        fleet.targets(["nas"])


def test_password_comes_from_its_file_percent_encoded_and_is_redacted(home: Path) -> None:
    fleet = load_inventory(ROOT / "examples" / "fleet.yaml")
    url = fleet.broker_url()
    assert url == "redis://:p%40ss%3Aw%2Frd@broker.lan:6379/0"
    assert "p%40ss" not in redact_url(url) and redact_url(url).endswith("@broker.lan:6379/0")


def test_tls_url_verifies_certificates_against_the_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("BROKER_PW", "s3cret")
    path = write(
        tmp_path,
        "broker:\n  url: rediss://broker.lan:6380/0\n  password_env: BROKER_PW\n"
        "  ca_file: ca.pem\nhosts:\n  a: {address: a.lan}\n",
    )
    url = load_inventory(path).broker_url("/home/bench/orch/broker-ca.pem")
    parts = urlsplit(url)
    assert parts.scheme == "rediss" and parts.password == "s3cret"
    query = parse_qs(parts.query)
    assert query == {
        "ssl_cert_reqs": ["required"],
        "ssl_ca_certs": ["/home/bench/orch/broker-ca.pem"],
    }


def test_harmless_url_options_are_kept(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broker:\n  url: rediss://b/0?ssl_cert_reqs=required&socket_timeout=5\n"
        "hosts:\n  a: {address: a}\n",
    )
    query = parse_qs(urlsplit(load_inventory(path).broker_url()).query)
    assert query == {"ssl_cert_reqs": ["required"], "socket_timeout": ["5"]}


def test_unset_password_variable_names_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BROKER_PW", raising=False)
    path = write(
        tmp_path,
        "broker:\n  url: redis://b:6379/0\n  password_env: BROKER_PW\nhosts:\n  a: {address: a}\n",
    )
    fleet = load_inventory(path)
    with pytest.raises(InventoryError, match=r"fleet.yaml:3: broker.password_env: \$BROKER_PW"):
        fleet.broker_url()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "broker:\n  url: redis://:hunter2@b:6379/0\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: the URL holds a password: remove it and use password_file",
        ),
        (
            "broker:\n  url: rediss://b/0?ssl_cert_reqs=none\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: ssl_cert_reqs=none: certificate and host name verification",
        ),
        (
            "broker:\n  url: rediss://b/0?ssl_check_hostname=false\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: ssl_check_hostname=false: certificate and host name "
            "verification cannot be turned off",
        ),
        (
            "broker:\n  url: rediss://b/0?ssl_ca_certs=/tmp/evil.pem\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: ssl_ca_certs=/tmp/evil.pem: certificate",
        ),
        (
            "broker:\n  url: rediss://b/0?ssl_verify_mode=none\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: ssl_verify_mode=none: certificate",
        ),
        (
            "broker:\n  url: rediss://b/0?x_verify=0\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: x_verify=0: certificate",
        ),
        (
            "broker:\n  url: redis://b/0?foo=1\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: broker.url: unknown URL option 'foo': the inventory takes db, ",
        ),
        (
            "broker: {url: 'redis://b/0', ca_file: ca.pem}\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:1: broker: ca_file needs a rediss:// (TLS) URL",
        ),
        (
            "broker: {url: 'http://b/0'}\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:1: broker.url: String should match pattern",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n    prot: 22\n",
            "fleet.yaml:5: hosts.a.prot: unknown key",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n    port: 0\n",
            "fleet.yaml:5: hosts.a.port: Input should be greater than or equal to 1",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    port: 22\n",
            "fleet.yaml:3: hosts.a.address: required key is missing",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n    key: nope\n",
            "fleet.yaml:5: hosts.a.key: key file",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n    worker: {host: b}\n",
            "fleet.yaml:5: hosts.a.worker.host: is 'b'; leave it out",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n    env: {X: \"it's\"}\n",
            "fleet.yaml:3: hosts.a: env.X: names are A-Z",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n"
            "    deploy_dir: '~/a\"; touch /tmp/pwned; \"'\n",
            "fleet.yaml:5: hosts.a.deploy_dir: '~/a\"; touch /tmp/pwned; \"' is not",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n"
            '    deploy_dir: "/opt/x\\nUser=root"\n',
            "fleet.yaml:5: hosts.a.deploy_dir: '/opt/x\\nUser=root' is not allowed here",
        ),
        (
            "broker: {url: 'redis://b/0'}\ndefaults: {deploy_dir: '~/$(id)'}\n"
            "hosts:\n  a: {address: a}\n",
            "fleet.yaml:2: defaults.deploy_dir: '~/$(id)' is not allowed here",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a: {address: a, deploy_dir: 'rel/dir'}\n",
            "hosts.a.deploy_dir: 'rel/dir' is not allowed here",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a: {address: a, python: 'python3; id'}\n",
            "hosts.a.python: 'python3; id' is not allowed here",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a: {address: a, user: \"root\\nx\"}\n",
            "hosts.a.user: 'root\\nx' is not allowed here",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a: {address: 'a;b'}\n",
            "hosts.a.address: 'a;b' is not a host name or IP address",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a: {address: a, service: upstart}\n",
            "hosts.a.service: Input should be 'auto', 'systemd', 'systemd-user' or 'supervisor'",
        ),
        (
            "broker: {url: 'redis://b/0'}\nhosts:\n  a:\n    address: a\n    env:\n"
            "      ORCH_BROKER_URL: redis://evil/0\n",
            "fleet.yaml:6: hosts.a.env.ORCH_BROKER_URL: the agent's broker URL and passwords",
        ),
        (
            "broker: {url: 'redis://b/0', password_env: MY_PW}\n"
            "defaults: {env: {MY_PW: x}}\nhosts:\n  a: {address: a}\n",
            "fleet.yaml:2: defaults.env.MY_PW: the agent's broker URL and passwords come from",
        ),
        (
            "broker: {url: 'redis://b/0'}\n"
            "hosts:\n  a: {address: a, env: {ORCH_REDIS_PASSWORD: x}}\n",
            "hosts.a.env.ORCH_REDIS_PASSWORD: the agent's broker URL and passwords come from",
        ),
        ("broker: {url: 'redis://b/0'}\nhosts: {}\n", "fleet.yaml:2: hosts: must not be empty"),
        ("broker: [\n", "fleet.yaml:2: invalid YAML"),
    ],
)
def test_bad_inventory_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory(write(tmp_path, text))
    assert any(p.endswith(expected) or expected in p for p in info.value.problems), str(info.value)
    assert "hunter2" not in str(info.value)
