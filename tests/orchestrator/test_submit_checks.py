"""Submit refuses runtime settings a host's owner did not allow, naming matrix line and host."""

from __future__ import annotations

from pathlib import Path

from jobs.inventory import SetterInfo, WorkerInventory
from orchestrator.broker import Fleet
from orchestrator.matrixfile import load_matrix_file
from orchestrator.submit import check_against_fleet

MATRIX = """\
campaign: caps
hosts: [laptop-80w, minipc-120w]
workload: {prompt_tokens: 16, gen_tokens: 8}
configurations:
  quiet: {platform_profile: quiet}
matrix:
  model: [m]
  context: [64]
  configuration: [quiet]
  power_limit_w: [45]
"""


def _inventory(host: str, setters: dict[str, SetterInfo]) -> WorkerInventory:
    return WorkerInventory(
        host=host, queue=f"orch.{host}.default", engines={"llama-bench": ["cpu"]}, models=["m"],
        setters=setters, version="t", instance_id="i", pid=1, started_at=0, last_seen=0,
    )  # fmt: skip


def test_settings_outside_what_each_host_allows_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MATRIX)
    mf = load_matrix_file(path)
    fleet = Fleet(
        inventories={
            "laptop-80w": _inventory("laptop-80w", {
                "platform_profile": SetterInfo(method="sysfs", choices=["low-power", "balanced"]),
                "power_limit_w": SetterInfo(method="command", min_w=50, max_w=120),
            }),
            "minipc-120w": _inventory("minipc-120w", {}),
        }
    )  # fmt: skip
    assert check_against_fleet(mf, mf.jobs, fleet) == [
        f"{path}:5: configurations.quiet.platform_profile: host laptop-80w offers "
        "platform_profile low-power, balanced, not 'quiet'",
        f"{path}:10: matrix.power_limit_w[0]: host laptop-80w allows power_limit_w 50-120 W, "
        "not 45 W",
        f"{path}:5: configurations.quiet.platform_profile: host minipc-120w does not allow setting "
        "platform_profile (add it under `setters:` in its worker config)",
        f"{path}:10: matrix.power_limit_w[0]: host minipc-120w does not allow setting "
        "power_limit_w (add it under `setters:` in its worker config)",
    ]


def test_a_missing_image_points_at_the_named_workload_that_sends_it(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "campaign: vision\nhosts: [laptop-80w]\nworkloads:\n"
        "  short: {prompt_tokens: 16, gen_tokens: 8}\n"
        "  look: {prompt_text: 'What is this?', image: cat, gen_tokens: 8}\n"
        "matrix: {model: [m], context: [1K], engine: [lmstudio], backend: [vulkan],\n"
        "         workload: [short, look]}\n"
    )
    mf = load_matrix_file(path)
    inventory = _inventory("laptop-80w", {}).model_copy(
        update={"engines": {"lmstudio": ["vulkan"]}, "images": ["dog"]}
    )
    assert check_against_fleet(mf, mf.jobs, Fleet(inventories={"laptop-80w": inventory})) == [
        f"{path}:5: workloads.look.image: host laptop-80w has no image 'cat' (it has: dog; add "
        "it under `images:` in its config)"
    ]
