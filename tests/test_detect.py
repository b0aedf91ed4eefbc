"""Hardware detection on fake root trees, on this machine, and reading thermal zones."""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import pytest

from edge_agent.detect import Detection, detect, detect_profile, read_temperatures
from edge_agent.errors import ConfigError
from edge_agent.profiles import list_profiles, load_profile

MODEL = "proc/device-tree/model"
COMPATIBLE = "proc/device-tree/compatible"
TEGRA = "etc/nv_tegra_release"
R32 = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64\n"
R35 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64\n"
R36 = "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64\n"
PI4 = "Raspberry Pi 4 Model B Rev 1.4\0"
PI5 = "Raspberry Pi 5 Model B Rev 1.0\0"

Tree = Mapping[str, str | bytes]


def usb(port: str, vendor: str, product: str) -> dict[str, str | bytes]:
    base = f"sys/bus/usb/devices/{port}"
    return {f"{base}/idVendor": f"{vendor}\n", f"{base}/idProduct": f"{product}\n"}


def pci(slot: str, vendor: str, klass: str) -> dict[str, str | bytes]:
    base = f"sys/bus/pci/devices/{slot}"
    return {f"{base}/vendor": f"{vendor}\n", f"{base}/class": f"{klass}\n"}


def build(root: Path, files: Tree) -> Path:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


# (case id, machine, files under the root, expected profile)
CASES: list[tuple[str, str, Tree, str]] = [
    ("pi4", "aarch64", {MODEL: PI4}, "raspberry-pi-4"),
    ("pi4-32-bit-os", "armv7l", {MODEL: PI4}, "raspberry-pi-4"),
    ("pi400", "aarch64", {MODEL: "Raspberry Pi 400 Rev 1.0\0"}, "raspberry-pi-4"),
    ("cm4", "aarch64", {MODEL: "Raspberry Pi Compute Module 4 Rev 1.0\0"}, "raspberry-pi-4"),
    ("pi4-sysfs-model", "aarch64", {"sys/firmware/devicetree/base/model": PI4}, "raspberry-pi-4"),
    ("pi5", "aarch64", {MODEL: PI5}, "raspberry-pi-5"),
    ("pi4-usb-hub-only", "aarch64", {MODEL: PI4, **usb("1-1", "2109", "3431")}, "raspberry-pi-4"),
    (
        "pi4-coral-before-firmware",
        "aarch64",
        {MODEL: PI4, **usb("1-1", "2109", "3431"), **usb("2-2", "1a6e", "089a")},
        "raspberry-pi-coral-usb",
    ),
    (
        "pi4-coral-after-firmware",
        "aarch64",
        {MODEL: PI4, **usb("2-1", "18d1", "9302")},
        "raspberry-pi-coral-usb",
    ),
    ("pi5-coral", "aarch64", {MODEL: PI5, **usb("3-1", "18d1", "9302")}, "raspberry-pi-coral-usb"),
    ("pi3", "aarch64", {MODEL: "Raspberry Pi 3 Model B Plus Rev 1.3\0"}, "generic-arm64"),
    ("coral-dev-board", "aarch64", {MODEL: "Freescale i.MX8MQ Phanbell\0"}, "coral-dev-board"),
    ("coral-by-name", "aarch64", {MODEL: "Coral Dev Board\0"}, "coral-dev-board"),
    (
        "coral-apex-on-imx8",
        "aarch64",
        {MODEL: "NXP i.MX8MQ EVK\0", COMPATIBLE: "fsl,imx8mq-evk\0fsl,imx8mq\0", "dev/apex_0": ""},
        "coral-dev-board",
    ),
    ("imx8-without-apex", "aarch64", {MODEL: "NXP i.MX8MQ EVK\0"}, "generic-arm64"),
    (
        "jetson-nano",
        "aarch64",
        {TEGRA: R32, MODEL: "NVIDIA Jetson Nano Developer Kit\0"},
        "jetson-nano",
    ),
    ("jetson-nano-release-only", "aarch64", {TEGRA: R32}, "jetson-nano"),
    ("jetson-orin-r36", "aarch64", {TEGRA: R36}, "jetson-orin-nano"),
    ("jetson-orin-r35", "aarch64", {TEGRA: R35}, "jetson-orin-nano"),
    (
        "jetson-orin-model-only",
        "aarch64",
        {MODEL: "NVIDIA Jetson Orin Nano Developer Kit\0"},
        "jetson-orin-nano",
    ),
    (
        "jetson-orin-compatible-only",
        "aarch64",
        {COMPATIBLE: "nvidia,p3768-0000+p3767-0005\0nvidia,tegra234\0"},
        "jetson-orin-nano",
    ),
    (
        "x86-nvidia-driver",
        "x86_64",
        {"proc/driver/nvidia/version": "NVRM version: 550\n"},
        "x86-64-nvidia-gpu",
    ),
    ("x86-nvidia-dev-node", "x86_64", {"dev/nvidia0": ""}, "x86-64-nvidia-gpu"),
    (
        "x86-nvidia-pci-vga",
        "x86_64",
        pci("0000:01:00.0", "0x10de", "0x030000"),
        "x86-64-nvidia-gpu",
    ),
    ("x86-nvidia-pci-3d", "x86_64", pci("0000:65:00.0", "0x10de", "0x030200"), "x86-64-nvidia-gpu"),
    ("x86-nvidia-audio-only", "x86_64", pci("0000:01:00.1", "0x10de", "0x040300"), "x86-64-cpu"),
    ("x86-intel-gpu", "x86_64", pci("0000:00:02.0", "0x8086", "0x030000"), "x86-64-cpu"),
    ("x86-plain", "x86_64", {}, "x86-64-cpu"),
    ("x86-windows-name", "AMD64", {}, "x86-64-cpu"),
    ("x86-pcie-coral", "x86_64", {"dev/apex_0": ""}, "x86-64-cpu"),
    ("unknown-aarch64", "aarch64", {}, "generic-arm64"),
    ("unknown-aarch64-model", "aarch64", {MODEL: "Pine64 RockPro64 v2.1\0"}, "generic-arm64"),
    ("unknown-aarch64-coral-usb", "aarch64", usb("1-1", "1a6e", "089a"), "generic-arm64"),
    ("macos-arm64-name", "arm64", {}, "generic-arm64"),
    ("unknown-armv7l", "armv7l", {}, "generic-armv7l"),
    ("unknown-machine", "riscv64", {}, "x86-64-cpu"),
]


@pytest.mark.parametrize(
    ("machine", "files", "expected"),
    [pytest.param(machine, files, expected, id=case) for case, machine, files, expected in CASES],
)
def test_detect_on_fake_root(tmp_path: Path, machine: str, files: Tree, expected: str) -> None:
    detection = detect(build(tmp_path, files), machine=machine)
    assert detection.profile_name == expected
    assert detection.profile_name in list_profiles()
    assert detection.evidence[0] == f"machine: {machine!r}"
    assert detection.evidence[-1].startswith(f"chose {expected}: ")


def test_detection_is_frozen() -> None:
    detection = Detection("x86-64-cpu", ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        detection.profile_name = "jetson-nano"  # type: ignore[misc]


def test_device_tree_nul_is_stripped_in_evidence(tmp_path: Path) -> None:
    detection = detect(build(tmp_path, {MODEL: PI4}), machine="aarch64")
    assert "proc/device-tree/model: 'Raspberry Pi 4 Model B Rev 1.4'" in detection.evidence


def test_evidence_names_what_was_found(tmp_path: Path) -> None:
    files = {MODEL: PI4, TEGRA: R36, **usb("1-1.2", "1a6e", "089a"), "dev/apex_0": ""}
    evidence = "\n".join(detect(build(tmp_path, files), machine="aarch64").evidence)
    assert "etc/nv_tegra_release: '# R36 (release)" in evidence
    assert "sys/bus/usb/devices/1-1.2: Coral USB Accelerator 1a6e:089a" in evidence
    assert "dev/apex_0: present" in evidence


def test_usb_devices_behind_symlinks_like_sysfs(tmp_path: Path) -> None:
    device = tmp_path / "sys/devices/platform/scb/usb2/2-1"
    build(device, {"idVendor": "18d1\n", "idProduct": "9302\n"})
    links = tmp_path / "sys/bus/usb/devices"
    links.mkdir(parents=True)
    os.symlink("../../../devices/platform/scb/usb2/2-1", links / "2-1")
    os.symlink("../../../devices/platform/scb/usb2/2-1:1.0", links / "2-1:1.0")  # dangling
    build(tmp_path, {MODEL: PI4})
    assert detect(tmp_path, machine="aarch64").profile_name == "raspberry-pi-coral-usb"


def test_unreadable_files_are_absent_evidence(tmp_path: Path) -> None:
    (tmp_path / MODEL).mkdir(parents=True)  # a directory where a file belongs
    (tmp_path / TEGRA).mkdir(parents=True)
    (tmp_path / "sys/bus/usb/devices").parent.mkdir(parents=True)
    (tmp_path / "sys/bus/usb/devices").write_text("not a directory")
    detection = detect(tmp_path, machine="aarch64")
    assert detection.profile_name == "generic-arm64"
    assert len(detection.evidence) == 2


def test_undecodable_model_does_not_raise(tmp_path: Path) -> None:
    detection = detect(build(tmp_path, {MODEL: b"Raspberry Pi 5 \xff\xfe\0"}), machine="aarch64")
    assert detection.profile_name == "raspberry-pi-5"


def test_missing_root_does_not_raise(tmp_path: Path) -> None:
    assert detect(tmp_path / "nowhere", machine="x86_64").profile_name == "x86-64-cpu"


def test_detect_profile_loads_the_detected_profile(tmp_path: Path) -> None:
    profile, detection = detect_profile(build(tmp_path, {TEGRA: R36}), machine="aarch64")
    assert profile.name == detection.profile_name == "jetson-orin-nano"
    assert profile.backends[0].name == "tensorrt"


def test_override_by_name_wins_and_is_recorded(tmp_path: Path) -> None:
    root = build(tmp_path, {MODEL: PI4})
    profile, detection = detect_profile(root, machine="aarch64", override="raspberry-pi-coral-usb")
    assert profile.name == detection.profile_name == "raspberry-pi-coral-usb"
    assert detection.evidence[0] == "override from config: 'raspberry-pi-coral-usb'"
    assert "chose raspberry-pi-4: Raspberry Pi 4 by its model string" in detection.evidence


def test_override_by_path(tmp_path: Path) -> None:
    source = load_profile("generic-arm64").source
    custom = tmp_path / "profiles" / "generic-arm64.toml"
    custom.parent.mkdir()
    custom.write_text(
        Path(source).read_text(encoding="utf-8").replace("intra_op = 4", "intra_op = 2")
    )
    profile, detection = detect_profile(tmp_path, machine="x86_64", override=str(custom))
    assert profile.intra_op_threads == 2
    assert profile.source == str(custom)
    assert detection.profile_name == "generic-arm64"


def test_unknown_override_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown device profile 'pi-zero'"):
        detect_profile(tmp_path, machine="x86_64", override="pi-zero")


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidia0")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="this host is not x86_64")
@pytest.mark.skipif(_has_nvidia_gpu(), reason="this x86_64 host has an NVIDIA GPU")
def test_this_machine_is_x86_64_cpu() -> None:
    assert detect().profile_name == "x86-64-cpu"
    profile, _ = detect_profile()
    assert profile.name == "x86-64-cpu"


@pytest.mark.gpu
@pytest.mark.skipif(platform.machine() != "x86_64", reason="this host is not x86_64")
@pytest.mark.skipif(not _has_nvidia_gpu(), reason="no NVIDIA GPU on this host")
def test_this_machine_is_x86_64_nvidia_gpu() -> None:
    assert detect().profile_name == "x86-64-nvidia-gpu"


def test_read_temperatures(tmp_path: Path) -> None:
    zones = (
        "sys/class/thermal/thermal_zone0/temp",
        "sys/class/thermal/thermal_zone1/temp",  # missing: skipped
        "sys/class/thermal/thermal_zone2/temp",  # garbage: skipped
        "sys/class/apex/apex_0/temp",
    )
    build(
        tmp_path,
        {zones[0]: "48312\n", zones[2]: "N/A\n", zones[3]: "-1500\n"},
    )
    profile = dataclasses.replace(load_profile("coral-dev-board"), thermal_zones=zones)
    assert read_temperatures(profile, tmp_path) == {zones[0]: 48.312, zones[3]: -1.5}


def test_read_temperatures_of_a_bundled_profile_on_a_fake_pi(tmp_path: Path) -> None:
    build(tmp_path, {"sys/class/thermal/thermal_zone0/temp": "61000\n"})
    temperatures = read_temperatures(load_profile("raspberry-pi-4"), root=tmp_path)
    assert temperatures == {"sys/class/thermal/thermal_zone0/temp": 61.0}
