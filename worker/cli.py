"""Box-side commands of the `orch` CLI: `worker`, `engines install`, `models tiny`, `doctor`.

The coordinator's CLI finds these through the `orch.commands` entry-point group, so the two
packages never import each other.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from urllib.parse import quote

import click

from jobs.brokerurl import (
    CONNECT_TIMEOUT_S,
    canonical_url,
    connection_problem,
    has_password,
    redact_text,
    redact_url,
    remember_secrets,
)
from worker.errors import ConfigError, WorkerError


def _fail(exc: Exception) -> None:
    click.echo(f"error: {redact_text(str(exc))}", err=True)
    sys.exit(2)


class _RedactingFilter(logging.Filter):
    """Hides broker secrets in every log line (Celery and kombu print the URL, too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _broker_url(
    ctx: click.Context, broker: str | None, password_file: Path | None, allow_argv: bool
) -> str:
    """The broker URL, from --broker or $ORCH_BROKER_URL, with the --broker-password-file
    password; a password typed in --broker (where `ps` shows it) is refused unless allowed."""
    if not broker:
        raise WorkerError("no broker: pass --broker redis://HOST:6379/0 or set ORCH_BROKER_URL")
    remember_secrets(broker)
    source = ctx.get_parameter_source("broker")
    if has_password(broker) and source == click.core.ParameterSource.COMMANDLINE and not allow_argv:
        raise WorkerError(
            f"--broker {redact_url(broker)} holds a password, which every user of this box can "
            "read in `ps`: set ORCH_BROKER_URL in the environment instead (the fleet's "
            "agent.env does), or give the URL without it and --broker-password-file FILE "
            "(or pass --allow-password-in-argv)"
        )
    url = canonical_url(broker)
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise WorkerError(f"--broker-password-file {password_file}: {exc.strerror}") from exc
        if not password:
            raise WorkerError(f"--broker-password-file {password_file} is empty")
        scheme, _, rest = url.partition("://")
        creds, _, where = rest.rpartition("@")
        user = creds.partition(":")[0]  # the file's password replaces the URL's
        url = f"{scheme}://{user}:{quote(password, safe='')}@{where}"
    remember_secrets(url)
    return url


def _check_broker(url: str) -> None:
    """Fail in seconds, with why, on a broker URL that can never work (a wrong password, TLS
    to a plain port, a refused certificate); a broker that is down is the agent's to wait for."""
    # redis-py is imported by the commands that talk to the broker, not by this module: the
    # coordinator's `orch --help` imports it to list these commands.
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=2 * CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )  # fmt: skip
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        problem = connection_problem(url, exc)
        if problem is not None:
            raise WorkerError(f"cannot use the broker at {redact_url(url)}: {problem}") from exc
    finally:
        client.close()


@click.command("worker")
@click.option("--host", help="This box's name (must match the config file's `host`).")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    required=True,
    help="worker.yaml: declared facts, engines, models.",
)
@click.option(
    "--broker",
    envvar="ORCH_BROKER_URL",
    help="redis://... URL; default $ORCH_BROKER_URL (put a password there, not here).",
)
@click.option(
    "--broker-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A file holding the broker's password (the URL then has none).",
)
@click.option(
    "--allow-password-in-argv",
    is_flag=True,
    help="Accept a password in --broker although `ps` shows it to every user of this box.",
)
@click.option(
    "--lease-wait",
    type=float,
    default=40.0,
    show_default=True,
    help="Seconds to wait for a dead predecessor's queue lease to lapse before giving up.",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Check the config (keys, binaries and model files exist) and exit; no broker needed.",
)
@click.pass_context
def worker_command(
    ctx: click.Context,
    host: str | None,
    config_path: Path,
    broker: str | None,
    broker_password_file: Path | None,
    allow_password_in_argv: bool,
    lease_wait: float,
    check_config: bool,
) -> None:
    """Run the agent: consume this host's queue, one job at a time."""
    import redis

    from worker.agent import Agent
    from worker.config import load_worker_config

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RedactingFilter())
    try:
        config = load_worker_config(config_path, host)
        if check_config:
            click.echo(f"{config_path}: ok ({config.host}, queue {config.queue})")
            return
        broker = _broker_url(ctx, broker, broker_password_file, allow_password_in_argv)
        _check_broker(broker)
        try:
            Agent(config, broker).run(lease_wait_s=lease_wait)
        except ConfigError as exc:  # e.g. a declared fact the box contradicts: say which file
            raise ConfigError(f"{config_path}: {exc}") from exc
    except WorkerError as exc:
        _fail(exc)
    except (redis.RedisError, ValueError) as exc:
        # e.g. a wrong password, an unreachable host, a URL that is not redis://
        _fail(WorkerError(f"cannot use the broker at {redact_url(broker or '')}: {exc}"))


@click.group("engines")
def engines_group() -> None:
    """Build or list inference engines on this box."""


@engines_group.command("install")
@click.argument("engine", type=click.Choice(["llama.cpp"]))
@click.option("--backend", default="cpu", show_default=True, help="cpu, vulkan, cuda or rocm.")
@click.option("--jobs", "-j", type=int, default=None, help="Parallel compile jobs.")
@click.option(
    "--cmake-flag",
    "cmake_flags",
    multiple=True,
    help="Extra cmake flag, repeatable (e.g. -DCMAKE_CUDA_ARCHITECTURES=90).",
)
@click.option(
    "--amx",
    is_flag=True,
    help="Build llama.cpp's Intel AMX path too (off by default on x86-64: it segfaults in this "
    "llama.cpp version, ggml-org/llama.cpp#20824).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the binaries' paths as JSON.")
def engines_install(
    engine: str,
    backend: str,
    jobs: int | None,
    cmake_flags: tuple[str, ...],
    amx: bool,
    as_json: bool,
) -> None:
    """Build llama-bench and llama-server from the llama.cpp source vendored on PyPI."""
    from worker.provision.llamacpp import install_llamacpp

    def progress(line: str) -> None:
        click.echo(line, err=True)

    try:
        built = install_llamacpp(
            backend, jobs=jobs, extra_cmake_flags=list(cmake_flags), amx=amx, progress=progress
        )
    except WorkerError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({k: str(v) for k, v in built.binaries.items()}))
        return
    state = "cached" if built.cached else "built"
    click.echo(f"llama.cpp {built.version} ({built.backend}) {state}:")
    for name, path in built.binaries.items():
        click.echo(f"  {name}: {path}")


@click.group("models")
def models_group() -> None:
    """Make models for tests and demos."""


@models_group.command("tiny")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--quant", "quants", multiple=True, default=["q8_0", "q4_k_m"], show_default=True)
@click.option(
    "--llama-quantize",
    type=click.Path(path_type=Path),
    default=None,
    help="llama-quantize binary (for q4_k_m); default: the one `orch engines install` built.",
)
@click.option("--json", "as_json", is_flag=True, help="Print name -> path as JSON.")
def models_tiny(
    out_dir: Path, quants: tuple[str, ...], llama_quantize: Path | None, as_json: bool
) -> None:
    """Write tiny random-weight llama GGUF files (real files llama.cpp loads in milliseconds)."""
    from jobs.paths import orch_home
    from worker.provision.llamacpp import LLAMA_CPP_PYTHON_VERSION
    from worker.provision.tiny_model import write_tiny_models

    if llama_quantize is None:
        candidate = orch_home() / "llama.cpp" / f"{LLAMA_CPP_PYTHON_VERSION}-cpu" / "bin"
        llama_quantize = candidate / "llama-quantize"
    try:
        models = write_tiny_models(
            out_dir,
            quants=quants,
            llama_quantize=llama_quantize if llama_quantize.is_file() else None,
            progress=lambda line: click.echo(line, err=True),
        )
    except WorkerError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps({m.name: str(m.path) for m in models}))
        return
    for m in models:
        click.echo(f"{m.name}: {m.path} ({os.path.getsize(m.path)} bytes)")


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON (for bug reports).")
def doctor_command(as_json: bool) -> None:
    """Say which engines, telemetry sources and setters work on this box, and why not."""
    from worker.doctor import format_report, run_doctor

    report = run_doctor()
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_report(report))
