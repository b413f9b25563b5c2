"""Parsing what the box's tools print, and running tools safely."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from facts_fakes import FIXTURES, FakeTools

from worker.facts._common import FactLog
from worker.facts.cpu import cpu_from_blocks, parse_cpuinfo
from worker.facts.engines import engine_versions, version_line
from worker.facts.nvidia import normalize_bus_id, parse_nvidia_smi, probe_nvidia
from worker.facts.pciids import lookup_pci_name
from worker.facts.rocm import detect_rocm
from worker.facts.ryzenadj import parse_ryzenadj_info, probe_ryzenadj
from worker.facts.system import parse_os_release
from worker.facts.tools import ToolError, ToolOutput, Tools, run_tool
from worker.facts.vulkan import parse_vulkan_summary, vulkan_label
from worker.sysfs import parse_meminfo


def tools_answering(**outputs: ToolOutput) -> Tools:
    """Tools where each named program exists and prints the given output."""

    def run(argv: object, timeout_s: float) -> ToolOutput:
        assert isinstance(argv, list)
        return outputs[Path(argv[0]).name]

    return Tools(which=lambda name: f"/usr/bin/{name}" if name in outputs else None, run=run)


def test_ryzenadj_table_keeps_limits_and_drops_nan() -> None:
    values = parse_ryzenadj_info((FIXTURES / "strix-halo/tools/ryzenadj.stdout").read_text())
    assert values["STAPM LIMIT"] == 120.0
    assert values["PPT LIMIT FAST"] == 140.0
    assert values["PPT LIMIT SLOW"] == 120.0
    assert values["STAPM VALUE"] == 12.42  # the parser keeps readings; detection drops them
    assert "StapmTimeConst" not in values  # printed as nan on this family
    assert "Name" not in values and "PM Table Version" not in values


def test_ryzenadj_without_root_says_so() -> None:
    # main.c prints "Unable to init ryzenadj" on stdout and returns -1 (exit status 255).
    log = FactLog()
    tools = tools_answering(
        ryzenadj=ToolOutput(
            255,
            "Unable to init ryzenadj\n",
            "no compatible ryzen_smu kernel module found, fallback to /dev/mem\n",
        )
    )
    assert probe_ryzenadj(tools, log) == {}
    assert log.notes == [
        "ryzenadj: `ryzenadj -i` printed no power table (exit 255: Unable to init ryzenadj); "
        "it needs root or the ryzen_smu module"
    ]


def test_vulkan_summary_lists_gpus_and_skips_llvmpipe() -> None:
    devices = parse_vulkan_summary((FIXTURES / "strix-halo/tools/vulkaninfo.stdout").read_text())
    assert [(d.pci_id, d.is_gpu, d.is_integrated) for d in devices] == [
        ("1002:1586", True, True),
        (None, False, False),  # llvmpipe: vendorID 0x10005 is Mesa's, not a PCI vendor
    ]
    assert vulkan_label(devices) == "radv Mesa 25.0.7-0ubuntu0.24.04.2"


def test_vulkan_label_names_each_driver_once() -> None:
    devices = parse_vulkan_summary((FIXTURES / "nvidia/tools/vulkaninfo.stdout").read_text())
    assert len([d for d in devices if d.is_gpu]) == 2
    assert vulkan_label(devices) == "NVIDIA 570.133.07"


def test_nvidia_smi_csv() -> None:
    text = (
        "00000000:4F:00.0, NVIDIA A40, 550.127.05, 46068, 300.00\n"
        "00000009:01:00.0, NVIDIA GH200 480GB, 560.35.03, 97871, [N/A]\n"
    )
    a40, gh200 = parse_nvidia_smi(text)
    assert (a40.pci_slot, a40.name, a40.driver_version) == (
        "0000:4f:00.0",
        "NVIDIA A40",
        "550.127.05",
    )
    assert a40.memory_total_bytes == 46068 * 1024**2 and a40.power_limit_w == 300.0
    assert gh200.pci_slot == "0009:01:00.0" and gh200.power_limit_w is None
    assert normalize_bus_id("0000:01:00.0") == "0000:01:00.0"


def test_nvidia_smi_failure_is_a_note() -> None:
    log = FactLog()
    failing = ToolOutput(
        9,
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running.\n",
        "",
    )
    assert probe_nvidia(tools_answering(**{"nvidia-smi": failing}), log) == []
    assert log.notes[0].startswith("nvidia: nvidia-smi listed no GPU (exit 9: NVIDIA-SMI has")


def test_rocm_version_from_a_versioned_install_folder(tmp_path: Path) -> None:
    log = FactLog()
    tools = Tools(which=lambda name: "/opt/rocm-6.4.1/bin/rocminfo", run=run_tool)
    assert detect_rocm(tmp_path, tools, log) == "6.4.1"  # no /opt/rocm/.info/version under root
    assert log.sources == {"rocm_version": "install folder of /opt/rocm-6.4.1/bin/rocminfo"}


LLAMA_VULKAN_STDERR = (FIXTURES / "strix-halo/tools/llama-bench.stderr").read_text()
LLAMA_SDIST_STDERR = "version: 0.5.0-dev (build 1, commit 0c1e570)\nbuilt with GNU 12.2.0\n"
OLLAMA_WARNING = "Warning: could not connect to a running Ollama instance\n"


@pytest.mark.parametrize(
    ("stdout", "stderr", "line"),
    [
        ("", LLAMA_VULKAN_STDERR, "version: 6134 (de2192b8)"),
        ("", LLAMA_SDIST_STDERR, "version: 0.5.0-dev (build 1, commit 0c1e570)"),
        ("ollama version is 0.5.7\n", OLLAMA_WARNING, "ollama version is 0.5.7"),
        ("", "", None),
    ],
)
def test_engine_version_line(stdout: str, stderr: str, line: str | None) -> None:
    assert version_line(stdout, stderr) == line


def test_engine_that_fails_is_a_note_not_a_version() -> None:
    log = FactLog()
    tools = FakeTools(FIXTURES / "no-gpu" / "tools")
    binary = Path("/opt/llama.cpp/bin/llama-server")
    versions = engine_versions({"llama-server/cpu": binary}, Tools(tools.which, tools.run), log)
    assert versions == {}
    assert log.notes == [
        f"engines: llama-server/cpu: `{binary}` cannot be run: No such file or directory"
    ]


def test_real_runner_times_out_and_reports_missing_programs() -> None:
    with pytest.raises(ToolError, match="did not finish within 0.2 s"):
        run_tool([sys.executable, "-c", "import time; time.sleep(5)"], 0.2)
    with pytest.raises(ToolError, match="cannot be run"):
        run_tool(["/nonexistent/vulkaninfo", "--summary"], 1.0)
    done = run_tool([sys.executable, "-c", "import sys; sys.stderr.write('version: 1 (x)')"], 5.0)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "version: 1 (x)")


def test_cpuinfo_counts_cores_by_core_id() -> None:
    text = (FIXTURES / "strix-halo/root/proc/cpuinfo").read_text()
    info = cpu_from_blocks(parse_cpuinfo(text))
    assert (info.cores, info.threads) == (16, 32)


def test_meminfo_units() -> None:
    values = parse_meminfo("MemTotal:       131891232 kB\nHugePages_Total:       0\n")
    assert values == {"MemTotal": 131891232 * 1024, "HugePages_Total": 0}


def test_os_release_quoting() -> None:
    text = 'NAME=Plain\nPRETTY_NAME="Quoted \\"name\\" 1.0"\n# comment\nBROKEN="unbalanced\n'
    assert parse_os_release(text) == {
        "NAME": "Plain",
        "PRETTY_NAME": 'Quoted "name" 1.0',
        "BROKEN": "unbalanced",
    }


def test_pci_ids_lookup_is_scoped_to_the_vendor() -> None:
    table = (FIXTURES / "strix-halo/root/usr/share/hwdata/pci.ids").read_text()
    assert lookup_pci_name(table, "1002:744c") == (
        "Navi 31 [Radeon RX 7900 XT/7900 XTX/7900 GRE/7900M]"
    )
    assert lookup_pci_name(table, "10de:2684") == "AD102 [GeForce RTX 4090]"
    assert lookup_pci_name(table, "10de:1586") is None  # 1586 is an AMD device id
    assert lookup_pci_name(table, "1a03:15d9") is None  # a subsystem line, not a device
