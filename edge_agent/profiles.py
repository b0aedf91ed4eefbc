"""Device profiles: what a kind of device can run and within which limits.

A profile is a TOML file (``device_profiles/<name>.toml``, schema in that folder's README)
read into a frozen :class:`DeviceProfile`. Loading is strict: an unknown key, a missing key,
a value of the wrong type (a bool is not an integer) or out of range raises
:class:`~edge_agent.errors.ConfigError` with one line naming the file, the dotted key, the
value found and what was expected::

    device_profiles/x.toml: threads.intra_op = 0: expected an integer >= 1

Bundled profiles ship as package data of ``edge_agent.device_profiles``; in a source
checkout that is not installed they are read from ``device_profiles/`` next to the package.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

from edge_agent.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:  # pragma: no cover
        from importlib.abc import Traversable

__all__ = [
    "ACCELERATORS",
    "ARCHES",
    "BACKENDS",
    "DELEGATES",
    "PROVIDERS",
    "SCHEMA_VERSION",
    "BackendChoice",
    "DeviceProfile",
    "list_profiles",
    "load_profile",
    "parse_profile",
]

SCHEMA_VERSION = 1
ARCHES = ("aarch64", "x86_64", "armv7l")
ACCELERATORS = ("cuda", "tensorrt", "edgetpu", "gpu-delegate")
BACKENDS = ("tensorrt", "onnxruntime", "litert")
DELEGATES = ("edgetpu", "gpu", "xnnpack")
PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "MIGraphXExecutionProvider",
    "OpenVINOExecutionProvider",
    "DnnlExecutionProvider",
    "QNNExecutionProvider",
    "ACLExecutionProvider",
    "ArmNNExecutionProvider",
    "XnnpackExecutionProvider",
    "CPUExecutionProvider",
)
# What a backend, provider or delegate needs listed in ``accelerators`` to make sense.
_NEEDS_ACCELERATOR = {
    "tensorrt": "tensorrt",
    "TensorrtExecutionProvider": "tensorrt",
    "CUDAExecutionProvider": "cuda",
    "edgetpu": "edgetpu",
}
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
_MAX_THROTTLE_C = 150.0
_MAX_INTERVAL_S = 86400.0
_MIB = 1024 * 1024

_TOP_KEYS = {
    "schema",
    "name",
    "description",
    "arch",
    "accelerators",
    "threads",
    "memory",
    "thermal",
    "telemetry",
    "backends",
}
_TABLE_KEYS = {
    "threads": {"intra_op", "inter_op"},
    "memory": {"budget_mb", "max_model_bytes"},
    "thermal": {"zones", "throttle_c"},
    "telemetry": {"interval_s"},
}
# For each backend: the list key it must have (None: neither), the allowed values.
_BACKEND_LISTS: dict[str, tuple[str, tuple[str, ...]] | None] = {
    "tensorrt": None,
    "onnxruntime": ("providers", PROVIDERS),
    "litert": ("delegates", DELEGATES),
}


@dataclass(frozen=True)
class BackendChoice:
    """One backend a profile allows, with its providers or delegates in order."""

    name: str  # "onnxruntime" | "litert" | "tensorrt"
    providers: tuple[str, ...] = ()  # onnxruntime execution providers in order
    delegates: tuple[str, ...] = ()  # litert delegates in order


@dataclass(frozen=True)
class DeviceProfile:
    """A device kind's accelerators, backend preference and limits."""

    name: str
    description: str
    arch: str
    accelerators: tuple[str, ...]
    backends: tuple[BackendChoice, ...]  # in order of preference
    intra_op_threads: int
    inter_op_threads: int
    memory_budget_mb: int
    max_model_bytes: int
    thermal_zones: tuple[str, ...]  # paths relative to the root directory
    throttle_temp_c: float
    telemetry_interval_s: float
    source: str  # the file it was read from

    def backend(self, name: str) -> BackendChoice | None:
        """The choice for backend ``name``, or None when the profile does not allow it."""
        for choice in self.backends:
            if choice.name == name:
                return choice
        return None


def list_profiles() -> list[str]:
    """Names of the bundled profiles, sorted."""
    return sorted(
        entry.name[: -len(".toml")]
        for entry in _profiles_dir().iterdir()
        if entry.name.endswith(".toml") and entry.is_file()
    )


def load_profile(name_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """Load a bundled profile by name, or a profile file by path.

    A ``PathLike``, or a string with a slash or ending in ``.toml``, is a path; anything
    else is the name of a bundled profile (see :func:`list_profiles`).
    """
    if _is_path(name_or_path):
        path = Path(name_or_path)
        return parse_profile(_read(path, str(path)), str(path))
    name = str(name_or_path)
    entry = _profiles_dir() / f"{name}.toml"
    if not _NAME_RE.match(name) or not entry.is_file():
        known = ", ".join(list_profiles())
        raise ConfigError(
            f"unknown device profile {name!r}: expected one of {known}, or a path to a .toml file"
        )
    return parse_profile(_read(entry, str(entry)), str(entry))


def parse_profile(text: str, source: str) -> DeviceProfile:
    """Parse and validate a profile's TOML text; ``source`` names the file in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{source}: invalid TOML ({detail}): expected TOML 1.0 syntax") from exc
    return _Checker(source).profile(data)


def _profiles_dir() -> Traversable:
    """The folder of bundled profiles: package data, or the checkout's device_profiles/."""
    try:
        return importlib.resources.files("edge_agent.device_profiles")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "device_profiles"


def _is_path(name_or_path: str | os.PathLike[str]) -> bool:
    if not isinstance(name_or_path, str):
        return True
    return "/" in name_or_path or os.sep in name_or_path or name_or_path.endswith(".toml")


def _read(entry: Traversable, source: str) -> str:
    try:
        return entry.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{source}: not UTF-8 ({exc.reason}): expected a UTF-8 TOML file"
        ) from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{source}: cannot read ({reason}): expected a readable file") from exc


def _show(value: object) -> str:
    """The value as the message shows it: Python's repr, but TOML's true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Checker:
    """Validates the parsed TOML of one file; every failure names ``source`` and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: object, expected: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {key} = {_show(value)}: expected {expected}")

    def profile(self, data: dict[str, Any]) -> DeviceProfile:
        """Check every key in document order; the first mistake raises."""
        self.only(data, "", _TOP_KEYS)
        schema = self.get(data, "", "schema", f"the integer {SCHEMA_VERSION}")
        if isinstance(schema, bool) or schema != SCHEMA_VERSION:
            self.fail("schema", schema, f"the integer {SCHEMA_VERSION}")
        name = self.name(data)
        description = self.text(data, "", "description")
        arch = self.choice(data, "", "arch", ARCHES)
        accelerators = self.names(data, "", "accelerators", ACCELERATORS, non_empty=False)
        threads = self.table(data, "threads")
        intra_op = self.integer(threads, "threads", "intra_op")
        inter_op = self.integer(threads, "threads", "inter_op")
        memory = self.table(data, "memory")
        budget_mb = self.integer(memory, "memory", "budget_mb")
        max_model_bytes = self.max_model_bytes(memory, budget_mb)
        thermal = self.table(data, "thermal")
        zones = self.zones(thermal)
        throttle_c = self.number(thermal, "thermal", "throttle_c", _MAX_THROTTLE_C)
        telemetry = self.table(data, "telemetry")
        interval_s = self.number(telemetry, "telemetry", "interval_s", _MAX_INTERVAL_S)
        return DeviceProfile(
            name=name,
            description=description,
            arch=arch,
            accelerators=accelerators,
            backends=self.backends(data, accelerators),
            intra_op_threads=intra_op,
            inter_op_threads=inter_op,
            memory_budget_mb=budget_mb,
            max_model_bytes=max_model_bytes,
            thermal_zones=zones,
            throttle_temp_c=throttle_c,
            telemetry_interval_s=interval_s,
            source=self.source,
        )

    # -- structure -------------------------------------------------------------------------

    def only(self, table: dict[str, Any], prefix: str, allowed: set[str]) -> None:
        for key, value in table.items():
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                self.fail(_join(prefix, key), value, f"one of the keys {known}")

    def get(self, table: dict[str, Any], prefix: str, key: str, expected: str) -> Any:
        if key not in table:
            raise ConfigError(
                f"{self.source}: {_join(prefix, key)} is missing: expected {expected}"
            )
        return table[key]

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        allowed = _TABLE_KEYS[key]
        expected = f"a table [{key}] with the keys {', '.join(sorted(allowed))}"
        value = self.get(data, "", key, expected)
        if not isinstance(value, dict):
            self.fail(key, value, expected)
        self.only(value, key, allowed)
        return value

    # -- scalars ---------------------------------------------------------------------------

    def integer(self, table: dict[str, Any], prefix: str, key: str, minimum: int = 1) -> int:
        expected = f"an integer >= {minimum}"
        value = self.get(table, prefix, key, expected)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(_join(prefix, key), value, expected)
        return value

    def number(self, table: dict[str, Any], prefix: str, key: str, maximum: float) -> float:
        expected = f"a number > 0 and <= {maximum:g}"
        value = self.get(table, prefix, key, expected)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(_join(prefix, key), value, expected)
        if not (math.isfinite(value) and 0 < value <= maximum):
            self.fail(_join(prefix, key), value, expected)
        return float(value)

    def text(self, table: dict[str, Any], prefix: str, key: str) -> str:
        expected = "a non-empty string"
        value = self.get(table, prefix, key, expected)
        if not isinstance(value, str) or not value.strip():
            self.fail(_join(prefix, key), value, expected)
        return value

    def choice(self, table: dict[str, Any], prefix: str, key: str, allowed: tuple[str, ...]) -> str:
        expected = f"one of {', '.join(allowed)}"
        value = self.get(table, prefix, key, expected)
        if value not in allowed:
            self.fail(_join(prefix, key), value, expected)
        return str(value)

    def name(self, data: dict[str, Any]) -> str:
        expected = "lower-case letters, digits and dashes"
        value = self.get(data, "", "name", expected)
        if not isinstance(value, str) or not _NAME_RE.match(value):
            self.fail("name", value, expected)
        source = PurePosixPath(self.source.replace(os.sep, "/"))
        if source.suffix == ".toml" and source.stem != value:
            self.fail("name", value, f"the file's stem {source.stem!r}")
        return value

    # -- lists -----------------------------------------------------------------------------

    def names(
        self,
        table: dict[str, Any],
        prefix: str,
        key: str,
        allowed: tuple[str, ...],
        non_empty: bool = True,
    ) -> tuple[str, ...]:
        dotted = _join(prefix, key)
        expected = f"a {'non-empty ' if non_empty else ''}list of names from {', '.join(allowed)}"
        value = self.get(table, prefix, key, expected)
        if not isinstance(value, list) or (non_empty and not value):
            self.fail(dotted, value, expected)
        for index, item in enumerate(value):
            if item not in allowed:
                self.fail(f"{dotted}[{index}]", item, f"one of {', '.join(allowed)}")
            if item in value[:index]:
                self.fail(f"{dotted}[{index}]", item, "each name once")
        return tuple(value)

    def zones(self, thermal: dict[str, Any]) -> tuple[str, ...]:
        expected = "a list of paths relative to the root directory"
        value = self.get(thermal, "thermal", "zones", expected)
        if not isinstance(value, list):
            self.fail("thermal.zones", value, expected)
        for index, zone in enumerate(value):
            path = PurePosixPath(zone) if isinstance(zone, str) else None
            if path is None or not zone or "\0" in zone or path.is_absolute() or ".." in path.parts:
                self.fail(f"thermal.zones[{index}]", zone, "a path relative to the root directory")
        return tuple(value)

    def max_model_bytes(self, memory: dict[str, Any], budget_mb: int) -> int:
        value = self.integer(memory, "memory", "max_model_bytes")
        if value > budget_mb * _MIB:
            limit = budget_mb * _MIB
            self.fail("memory.max_model_bytes", value, f"at most memory.budget_mb ({limit} bytes)")
        return value

    # -- backends --------------------------------------------------------------------------

    def backends(
        self, data: dict[str, Any], accelerators: tuple[str, ...]
    ) -> tuple[BackendChoice, ...]:
        expected = "a non-empty array of [[backends]] tables"
        value = self.get(data, "", "backends", expected)
        if not isinstance(value, list) or not value:
            self.fail("backends", value, expected)
        choices: list[BackendChoice] = []
        for index, item in enumerate(value):
            prefix = f"backends[{index}]"
            if not isinstance(item, dict):
                self.fail(prefix, item, "a table")
            choice = self.backend(item, prefix, accelerators)
            if any(seen.name == choice.name for seen in choices):
                self.fail(f"{prefix}.name", choice.name, "each backend once")
            choices.append(choice)
        return tuple(choices)

    def backend(
        self, item: dict[str, Any], prefix: str, accelerators: tuple[str, ...]
    ) -> BackendChoice:
        self.only(item, prefix, {"name", "providers", "delegates"})
        name = self.choice(item, prefix, "name", BACKENDS)
        self.needs(f"{prefix}.name", name, accelerators)
        spec = _BACKEND_LISTS[name]
        for key in ("providers", "delegates"):
            if key in item and (spec is None or spec[0] != key):
                self.fail(f"{prefix}.{key}", item[key], f"no {key} for backend {name!r}")
        if spec is None:
            return BackendChoice(name)
        key, allowed = spec
        entries = self.names(item, prefix, key, allowed)
        for index, entry in enumerate(entries):
            self.needs(f"{prefix}.{key}[{index}]", entry, accelerators)
        if key == "providers":
            return BackendChoice(name, providers=entries)
        return BackendChoice(name, delegates=entries)

    def needs(self, key: str, value: str, accelerators: tuple[str, ...]) -> None:
        needed = _NEEDS_ACCELERATOR.get(value)
        if needed is not None and needed not in accelerators:
            self.fail(key, value, f"{needed!r} listed in accelerators")
