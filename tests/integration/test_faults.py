"""A second live agent for one box is refused.

(A worker killed mid-job, run again and recorded once, is tests/faults/test_fault_agents.py's
`test_agent_sigkill_mid_job` now, with the fault suite's accounting.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.conftest import orch, write_worker_config


def test_second_live_worker_on_the_same_queue_is_refused(
    tmp_path: Path, broker: str, start_worker: Any, llama_bin: Path, tiny_models: dict[str, Path]
) -> None:
    config = write_worker_config(tmp_path / "w.yaml", "box", llama_bin, tiny_models)
    start_worker(config)
    done = orch("worker", "--config", str(config), "--broker", broker, "--lease-wait", "2")
    assert done.returncode != 0
    assert "another live worker runs host box" in done.stderr
