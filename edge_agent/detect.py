"""Hardware detection: which bundled device profile fits the machine we run on.

Detection reads a few small files under a root directory (``/`` on a device, a fake tree
in tests) and never raises for a file that is missing or unreadable: that is simply
evidence that is not there. Probing (:func:`_probe`) is kept apart from the decision
(:func:`_classify`), a pure function of what was found and the machine's architecture.

What is read, relative to the root:

- ``proc/device-tree/model`` (or ``sys/firmware/devicetree/base/model``) and ``compatible``:
  Raspberry Pi, Jetson and Coral boards name themselves there (NUL-terminated strings);
- ``etc/nv_tegra_release``: the L4T release of a Jetson (R32 = JetPack 4, R35/R36 = Orin era);
- ``dev/apex_0``: the PCIe Edge TPU of a Coral Dev Board;
- ``sys/bus/usb/devices/*/idVendor`` and ``idProduct``: a Coral USB Accelerator
  (1a6e:089a before its firmware is loaded, 18d1:9302 after);
- ``proc/driver/nvidia/version``, ``dev/nvidia0`` and ``sys/bus/pci/devices/*/{vendor,class}``:
  an NVIDIA GPU on an x86-64 machine.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from edge_agent.profiles import DeviceProfile, load_profile

__all__ = ["CORAL_USB_IDS", "Detection", "detect", "detect_profile", "read_temperatures"]

# Coral USB Accelerator: Global Unichip before the runtime loads its firmware, Google after.
CORAL_USB_IDS = frozenset({("1a6e", "089a"), ("18d1", "9302")})
_NVIDIA_PCI_VENDOR = "0x10de"
_DISPLAY_CLASS_PREFIX = "0x03"  # PCI base class 03: display controllers (VGA, 3D)
_MAX_READ = 4096
_RELEASE_RE = re.compile(r"#\s*R(\d+)\b")
_PI_RE = re.compile(r"raspberry pi (?:compute module )?(\d)")
_MACHINES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv8l": "armv7l",
    "armv7l": "armv7l",
    "armv6l": "armv7l",
}


@dataclass(frozen=True)
class Detection:
    """The profile detection chose, and the lines saying what it read to choose it."""

    profile_name: str
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class _Facts:
    """What probing found under the root directory."""

    model: str = ""
    compatible: tuple[str, ...] = ()
    tegra_release: str = ""
    apex: bool = False
    coral_usb: bool = False
    nvidia_gpu: bool = False


def detect(root: str | os.PathLike[str] = "/", machine: str | None = None) -> Detection:
    """Choose a bundled profile for the machine whose filesystem is at ``root``.

    ``machine`` is ``platform.machine()`` unless given (tests pass the one they fake).
    """
    arch = machine if machine is not None else platform.machine()
    evidence = [f"machine: {arch!r}"]
    facts = _probe(Path(root), evidence)
    name, reason = _classify(facts, _MACHINES.get(arch.lower(), arch.lower()))
    evidence.append(f"chose {name}: {reason}")
    return Detection(profile_name=name, evidence=tuple(evidence))


def detect_profile(
    root: str | os.PathLike[str] = "/",
    machine: str | None = None,
    override: str | None = None,
) -> tuple[DeviceProfile, Detection]:
    """Detect and load the profile; ``override`` (a name or path from config) wins."""
    detected = detect(root, machine)
    if override is None:
        return load_profile(detected.profile_name), detected
    profile = load_profile(override)
    evidence = (
        f"override from config: {override!r}",
        *detected.evidence,
        f"used {profile.name} instead of the detected {detected.profile_name}",
    )
    return profile, Detection(profile_name=profile.name, evidence=evidence)


def read_temperatures(
    profile: DeviceProfile, root: str | os.PathLike[str] = "/"
) -> dict[str, float]:
    """Each readable thermal zone of ``profile`` in degrees Celsius (files hold millidegrees)."""
    temperatures: dict[str, float] = {}
    for zone in profile.thermal_zones:
        text = _read_text(Path(root), zone)
        if text is None:
            continue
        try:
            temperatures[zone] = int(text) / 1000.0
        except ValueError:
            continue
    return temperatures


# -- probing -------------------------------------------------------------------------------


def _probe(root: Path, evidence: list[str]) -> _Facts:
    model = _device_tree(root, "model", evidence)
    compatible = tuple(c for c in _device_tree(root, "compatible", evidence).split("\0") if c)
    release = _read_text(root, "etc/nv_tegra_release") or ""
    release = release.splitlines()[0] if release else ""
    if release:
        evidence.append(f"etc/nv_tegra_release: {release!r}")
    return _Facts(
        model=model,
        compatible=compatible,
        tegra_release=release,
        apex=_present(root, "dev/apex_0", evidence),
        coral_usb=_coral_usb(root, evidence),
        nvidia_gpu=_nvidia_gpu(root, evidence),
    )


def _device_tree(root: Path, name: str, evidence: list[str]) -> str:
    for base in ("proc/device-tree", "sys/firmware/devicetree/base"):
        text = _read_text(root, f"{base}/{name}")
        if text:
            # Device-tree strings end with NUL; "compatible" is a NUL-separated list.
            value = text.strip("\0")
            shown = ", ".join(part for part in value.split("\0") if part)
            evidence.append(f"{base}/{name}: {shown!r}")
            return value
    return ""


def _coral_usb(root: Path, evidence: list[str]) -> bool:
    found = False
    for device in _children(root, "sys/bus/usb/devices"):
        vendor = (_read_text(root, f"sys/bus/usb/devices/{device}/idVendor") or "").lower()
        product = (_read_text(root, f"sys/bus/usb/devices/{device}/idProduct") or "").lower()
        if (vendor, product) in CORAL_USB_IDS:
            evidence.append(
                f"sys/bus/usb/devices/{device}: Coral USB Accelerator {vendor}:{product}"
            )
            found = True
    return found


def _nvidia_gpu(root: Path, evidence: list[str]) -> bool:
    found = False
    version = _read_text(root, "proc/driver/nvidia/version")
    if version is not None:
        first = version.splitlines()[0] if version else ""
        evidence.append(f"proc/driver/nvidia/version: {first!r}")
        found = True
    found = _present(root, "dev/nvidia0", evidence) or found
    for device in _children(root, "sys/bus/pci/devices"):
        vendor = (_read_text(root, f"sys/bus/pci/devices/{device}/vendor") or "").lower()
        klass = (_read_text(root, f"sys/bus/pci/devices/{device}/class") or "").lower()
        if vendor == _NVIDIA_PCI_VENDOR and klass.startswith(_DISPLAY_CLASS_PREFIX):
            evidence.append(f"sys/bus/pci/devices/{device}: NVIDIA GPU (class {klass})")
            found = True
    return found


def _read_text(root: Path, relative: str) -> str | None:
    """The file's text stripped of whitespace, or None when it cannot be read."""
    try:
        with open(root / relative, "rb") as handle:
            data = handle.read(_MAX_READ)
    except (OSError, ValueError):
        return None
    return data.decode("utf-8", errors="replace").strip()


def _present(root: Path, relative: str, evidence: list[str]) -> bool:
    if os.path.exists(root / relative):
        evidence.append(f"{relative}: present")
        return True
    return False


def _children(root: Path, relative: str) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(root / relative))
    except OSError:
        return []


# -- decision ------------------------------------------------------------------------------


def _classify(facts: _Facts, arch: str) -> tuple[str, str]:
    """The profile name and the reason, from what was found and the normalised machine."""
    for rule in (_jetson, _coral_board, _raspberry_pi):
        chosen = rule(facts)
        if chosen is not None:
            return chosen
    if arch == "x86_64":
        if facts.nvidia_gpu:
            return "x86-64-nvidia-gpu", "x86-64 with an NVIDIA GPU"
        return "x86-64-cpu", "x86-64 without an NVIDIA GPU"
    if arch == "aarch64":
        return "generic-arm64", "64-bit ARM board that no rule recognises"
    if arch == "armv7l":
        return "generic-armv7l", "32-bit ARM board that no rule recognises"
    return "x86-64-cpu", f"no rule for machine {arch!r}: the CPU-only profile x86-64-cpu"


def _jetson(facts: _Facts) -> tuple[str, str] | None:
    model = facts.model.lower()
    tegra = any(c.startswith("nvidia,tegra") for c in facts.compatible)
    if not (facts.tegra_release or "jetson" in model or tegra):
        return None
    match = _RELEASE_RE.search(facts.tegra_release)
    major = int(match.group(1)) if match else 0
    if "orin" in model or "nvidia,tegra234" in facts.compatible or major >= 35:
        return "jetson-orin-nano", "Jetson of the Orin era (model, tegra234 or L4T R35+)"
    return "jetson-nano", "Jetson before Orin (L4T R32 / JetPack 4)"


def _coral_board(facts: _Facts) -> tuple[str, str] | None:
    model = facts.model.lower()
    if "coral dev board" in model or "phanbell" in model:
        return "coral-dev-board", "device-tree model names the Coral Dev Board"
    imx8 = "i.mx8" in model or any(c.startswith("fsl,imx8") for c in facts.compatible)
    if facts.apex and imx8:
        return "coral-dev-board", "Edge TPU at dev/apex_0 on an i.MX8 board"
    return None


def _raspberry_pi(facts: _Facts) -> tuple[str, str] | None:
    model = facts.model.lower()
    if not model.startswith("raspberry pi"):
        return None
    if facts.coral_usb:
        return "raspberry-pi-coral-usb", "Raspberry Pi with a Coral USB Accelerator"
    match = _PI_RE.match(model)
    generation = match.group(1) if match else ""
    if generation in ("4", "5"):
        return f"raspberry-pi-{generation}", f"Raspberry Pi {generation} by its model string"
    return None
