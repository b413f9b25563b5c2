"""Bad input: a clear message naming where, a non-zero exit, and nothing enqueued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import orch, write_worker_config

GOOD = """\
campaign: c1
repetitions: 2
workload: {prompt_tokens: 16, gen_tokens: 8}
hosts: [laptop-80w]
matrix:
  model: ["tiny:q8_0"]
  backend: [cpu]
  context: [128, 256]
"""

CASES = {
    "malformed-yaml": (
        GOOD.replace("[128, 256]", "[128, 256"),
        ["matrix.yaml:9: invalid YAML"],
    ),
    "negative-context": (
        GOOD.replace("[128, 256]", "[128, -256]"),
        [
            "matrix.yaml:8: matrix.context[1]: a context must be a positive number of tokens "
            "(got -256)"
        ],
    ),
    "unknown-host": (
        GOOD.replace("[laptop-80w]", "[laptop-80w, minipc-120w]"),
        [
            "matrix.yaml:4: hosts[1]: unknown host 'minipc-120w'",
            "hosts that registered: laptop-80w",
        ],
    ),
    "unknown-model": (
        GOOD.replace('["tiny:q8_0"]', '["tiny:q8_0", "glm-4.7-flash:q4_k_m"]'),
        [
            "matrix.yaml:6: matrix.model[1]: host laptop-80w has no model 'glm-4.7-flash:q4_k_m'",
            "(it has: tiny:q4_k_m, tiny:q8_0)",
        ],
    ),
    "unknown-backend": (
        GOOD.replace("[cpu]", "[cpu, rocm]"),
        ["matrix.yaml:7: matrix.backend[1]: host laptop-80w has no 'rocm' backend for llama-bench"],
    ),
    # Hostile files (issue 16): refused before anything is expanded or queued.
    "duplicate-key": (
        GOOD + "campaign: c2\n",
        ["matrix.yaml:9: duplicate key 'campaign' (first at line 1)"],
    ),
    "alias-bomb": (
        GOOD
        + "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        ["matrix.yaml:14: more than 200,000 values once aliases are expanded"],
    ),
    "too-many-jobs": (
        GOOD.replace("[128, 256]", "[" + ", ".join(str(c) for c in range(128, 1128)) + "]").replace(
            '["tiny:q8_0"]', "[" + ", ".join(f"m{i}" for i in range(101)) + "]"
        ),
        ["matrix.yaml:5: matrix: expands to 101,000 jobs (model 101 x context 1,000)"],
    ),
    "binary": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        ["matrix.yaml:1: not UTF-8 text (byte 0x89)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_matrix_is_refused_and_enqueues_nothing(
    case: str,
    tmp_path: Path,
    broker: str,
    start_worker: Any,
    llama_bin: Path,
    tiny_models: dict[str, Path],
) -> None:
    text, expected = CASES[case]
    start_worker(write_worker_config(tmp_path / "w.yaml", "laptop-80w", llama_bin, tiny_models))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_bytes(text if isinstance(text, bytes) else text.encode())
    client = redis.Redis.from_url(broker)

    done = orch("--store", str(tmp_path / "orch.db"), "submit", str(matrix), "--broker", broker)

    assert done.returncode != 0
    for fragment in expected:
        assert fragment in done.stderr, done.stderr
    assert str(tmp_path) in done.stderr  # the file is named
    assert not any(key.startswith(b"orch.") for key in client.keys())  # no queue was created
    assert client.llen("orch.laptop-80w.default") == 0
    # Celery messages live in lists: none exists anywhere on the broker.
    assert [key for key in client.keys() if client.type(key) == b"list"] == []
    assert "Traceback" not in done.stderr


def test_no_broker_is_a_clear_error(tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(GOOD)
    done = orch("--store", str(tmp_path / "orch.db"), "submit", str(matrix))
    assert done.returncode == 2
    assert "no broker" in done.stderr and "ORCH_BROKER_URL" in done.stderr


def test_unreachable_broker_is_named_without_its_password(tmp_path: Path) -> None:
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(GOOD)
    url = "redis://:hunter2@127.0.0.1:1/0"
    # No broker will ever answer there: give up at once instead of riding out an outage.
    done = orch("--store", str(tmp_path / "orch.db"), "submit", str(matrix), "--broker", url,
                env={"ORCH_BROKER_OUTAGE_S": "0"})  # fmt: skip
    assert done.returncode == 2
    assert "cannot reach the broker at redis://:***@127.0.0.1:1/0" in done.stderr
    assert "hunter2" not in done.stderr
