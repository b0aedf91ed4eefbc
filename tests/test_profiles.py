"""Device profiles: every bundled file loads, and every kind of mistake is reported clearly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.profiles import (
    BackendChoice,
    DeviceProfile,
    list_profiles,
    load_profile,
    parse_profile,
)

REQUIRED = [
    "raspberry-pi-4",
    "raspberry-pi-5",
    "raspberry-pi-coral-usb",
    "coral-dev-board",
    "jetson-nano",
    "jetson-orin-nano",
    "x86-64-cpu",
    "x86-64-nvidia-gpu",
    "generic-arm64",
]

REPO_PROFILES = Path(__file__).resolve().parent.parent / "device_profiles"

VALID = """\
schema = 1
name = "bad-profile"
description = "A test board"
arch = "aarch64"
accelerators = []

[threads]
intra_op = 4
inter_op = 1

[memory]
budget_mb = 1024
max_model_bytes = 1048576

[thermal]
zones = ["sys/class/thermal/thermal_zone0/temp"]
throttle_c = 80.0

[telemetry]
interval_s = 10.0

[[backends]]
name = "litert"
delegates = ["xnnpack"]

[[backends]]
name = "onnxruntime"
providers = ["CPUExecutionProvider"]
"""


def test_required_profiles_are_bundled() -> None:
    missing = set(REQUIRED) - set(list_profiles())
    assert not missing


def test_list_profiles_is_sorted_and_matches_the_folder() -> None:
    names = list_profiles()
    assert names == sorted(names)
    assert names == sorted(path.stem for path in REPO_PROFILES.glob("*.toml"))


@pytest.mark.parametrize("name", list_profiles())
def test_every_bundled_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert Path(profile.source).name == f"{name}.toml"
    assert profile.backends
    assert profile.intra_op_threads >= 1
    assert profile.max_model_bytes <= profile.memory_budget_mb * 1024 * 1024


@pytest.mark.parametrize(
    ("name", "first_backend", "first_delegate", "accelerators", "intra_op"),
    [
        ("raspberry-pi-4", "litert", "xnnpack", (), 4),
        ("raspberry-pi-5", "litert", "xnnpack", (), 4),
        ("raspberry-pi-coral-usb", "litert", "edgetpu", ("edgetpu",), 4),
        ("coral-dev-board", "litert", "edgetpu", ("edgetpu",), 4),
        ("jetson-nano", "tensorrt", None, ("cuda", "tensorrt"), 4),
        ("jetson-orin-nano", "tensorrt", None, ("cuda", "tensorrt"), 6),
        ("x86-64-nvidia-gpu", "tensorrt", None, ("cuda", "tensorrt"), 8),
        ("x86-64-cpu", "litert", "xnnpack", (), 4),
        ("generic-arm64", "litert", "xnnpack", (), 4),
    ],
)
def test_bundled_profile_contents(
    name: str,
    first_backend: str,
    first_delegate: str | None,
    accelerators: tuple[str, ...],
    intra_op: int,
) -> None:
    profile = load_profile(name)
    assert profile.backends[0].name == first_backend
    assert profile.accelerators == accelerators
    assert profile.intra_op_threads == intra_op
    if first_delegate is not None:
        litert = profile.backend("litert")
        assert litert is not None
        assert litert.delegates[0] == first_delegate
    if "cuda" in accelerators:
        onnx = profile.backend("onnxruntime")
        assert onnx is not None
        assert onnx.providers[-1] == "CPUExecutionProvider"


def test_load_by_path_equals_load_by_name() -> None:
    path = REPO_PROFILES / "jetson-orin-nano.toml"
    by_path = load_profile(path)
    by_str = load_profile(str(path))
    by_name = load_profile("jetson-orin-nano")
    assert by_path == by_str
    assert dataclasses.replace(by_path, source=by_name.source) == by_name


def test_backend_lookup() -> None:
    profile = parse_profile(VALID, "bad-profile.toml")
    assert profile.backend("litert") == BackendChoice("litert", delegates=("xnnpack",))
    assert profile.backend("onnxruntime") == BackendChoice(
        "onnxruntime", providers=("CPUExecutionProvider",)
    )
    assert profile.backend("tensorrt") is None


def test_parse_valid_text() -> None:
    profile = parse_profile(VALID, "somewhere/bad-profile.toml")
    assert profile == DeviceProfile(
        name="bad-profile",
        description="A test board",
        arch="aarch64",
        accelerators=(),
        backends=(
            BackendChoice("litert", delegates=("xnnpack",)),
            BackendChoice("onnxruntime", providers=("CPUExecutionProvider",)),
        ),
        intra_op_threads=4,
        inter_op_threads=1,
        memory_budget_mb=1024,
        max_model_bytes=1048576,
        thermal_zones=("sys/class/thermal/thermal_zone0/temp",),
        throttle_temp_c=80.0,
        telemetry_interval_s=10.0,
        source="somewhere/bad-profile.toml",
    )


def test_profile_is_frozen() -> None:
    profile = load_profile("raspberry-pi-4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.intra_op_threads = 8  # type: ignore[misc]


def test_integer_throttle_is_accepted_as_float() -> None:
    profile = parse_profile(VALID.replace("throttle_c = 80.0", "throttle_c = 80"), "<text>")
    assert profile.throttle_temp_c == 80.0
    assert isinstance(profile.throttle_temp_c, float)


def test_exact_message_format() -> None:
    text = VALID.replace("intra_op = 4", "intra_op = 0")
    with pytest.raises(ConfigError) as info:
        parse_profile(text, "device_profiles/bad-profile.toml")
    assert str(info.value) == (
        "device_profiles/bad-profile.toml: threads.intra_op = 0: expected an integer >= 1"
    )


# (case id, old text, new text, dotted key the message must name)
MALFORMED = [
    ("bad-syntax", "intra_op = 4", "intra_op = = 4", "line 8"),
    ("unknown-top-key", "schema = 1", "schema = 1\ncolour = 'red'", "colour"),
    ("unknown-table-key", "inter_op = 1", "inter_op = 1\nturbo = true", "threads.turbo"),
    ("unknown-backend-key", 'name = "litert"', 'name = "litert"\nrank = 1', "backends[0].rank"),
    ("missing-key", "inter_op = 1\n", "", "threads.inter_op"),
    ("missing-table", "[telemetry]\ninterval_s = 10.0\n", "", "telemetry"),
    ("missing-schema", "schema = 1\n", "", "schema"),
    ("missing-providers", 'providers = ["CPUExecutionProvider"]\n', "", "backends[1].providers"),
    ("wrong-type-int", "budget_mb = 1024", 'budget_mb = "1024"', "memory.budget_mb"),
    ("wrong-type-float", "throttle_c = 80.0", 'throttle_c = "hot"', "thermal.throttle_c"),
    ("wrong-type-str", 'description = "A test board"', "description = 3", "description"),
    ("wrong-type-list", "accelerators = []", 'accelerators = "cuda"', "accelerators"),
    ("bool-for-int", "intra_op = 4", "intra_op = true", "threads.intra_op"),
    ("bool-for-float", "interval_s = 10.0", "interval_s = true", "telemetry.interval_s"),
    ("float-for-int", "inter_op = 1", "inter_op = 1.0", "threads.inter_op"),
    ("thread-zero", "intra_op = 4", "intra_op = 0", "threads.intra_op"),
    ("budget-negative", "budget_mb = 1024", "budget_mb = -1", "memory.budget_mb"),
    (
        "model-over-budget",
        "max_model_bytes = 1048576",
        "max_model_bytes = 2147483648",
        "memory.max_model_bytes",
    ),
    ("interval-zero", "interval_s = 10.0", "interval_s = 0.0", "telemetry.interval_s"),
    ("throttle-nan", "throttle_c = 80.0", "throttle_c = nan", "thermal.throttle_c"),
    ("schema-2", "schema = 1", "schema = 2", "schema"),
    ("unknown-arch", 'arch = "aarch64"', 'arch = "riscv64"', "arch"),
    ("unknown-accelerator", "accelerators = []", 'accelerators = ["npu"]', "accelerators[0]"),
    (
        "duplicate-accelerator",
        "accelerators = []",
        'accelerators = ["cuda", "cuda"]',
        "accelerators[1]",
    ),
    ("unknown-backend", 'name = "litert"', 'name = "tvm"', "backends[0].name"),
    (
        "unknown-delegate",
        'delegates = ["xnnpack"]',
        'delegates = ["hexagon"]',
        "backends[0].delegates[0]",
    ),
    (
        "unknown-provider",
        'providers = ["CPUExecutionProvider"]',
        'providers = ["CPU"]',
        "backends[1].providers[0]",
    ),
    ("empty-delegates", 'delegates = ["xnnpack"]', "delegates = []", "backends[0].delegates"),
    (
        "providers-on-litert",
        'delegates = ["xnnpack"]',
        'providers = ["CPUExecutionProvider"]',
        "backends[0].providers",
    ),
    (
        "edgetpu-without-accelerator",
        'delegates = ["xnnpack"]',
        'delegates = ["xnnpack", "edgetpu"]',
        "backends[0].delegates[1]",
    ),
    (
        "cuda-without-accelerator",
        'providers = ["CPUExecutionProvider"]',
        'providers = ["CUDAExecutionProvider"]',
        "backends[1].providers[0]",
    ),
    (
        "tensorrt-without-accelerator",
        'name = "litert"\ndelegates = ["xnnpack"]',
        'name = "tensorrt"',
        "backends[0].name",
    ),
    (
        "duplicate-backend",
        'name = "onnxruntime"\nproviders = ["CPUExecutionProvider"]',
        'name = "litert"\ndelegates = ["xnnpack"]',
        "backends[1].name",
    ),
    (
        "absolute-zone",
        '"sys/class/thermal/thermal_zone0/temp"',
        '"/sys/class/thermal/thermal_zone0/temp"',
        "thermal.zones[0]",
    ),
    (
        "escaping-zone",
        '"sys/class/thermal/thermal_zone0/temp"',
        '"../etc/shadow"',
        "thermal.zones[0]",
    ),
    ("name-mismatch", 'name = "bad-profile"', 'name = "other-board"', "name"),
    ("name-not-slug", 'name = "bad-profile"', 'name = "Bad Profile"', "name"),
]


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [pytest.param(old, new, key, id=case) for case, old, new, key in MALFORMED],
)
def test_malformed_profile_is_rejected(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in VALID
    path = tmp_path / "bad-profile.toml"
    path.write_text(VALID.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert key in message
    assert "expected" in message


def test_no_backends_at_all_is_rejected(tmp_path: Path) -> None:
    text = VALID[: VALID.index("[[backends]]")]
    path = tmp_path / "bad-profile.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"backends is missing: expected"):
        load_profile(path)


def test_value_where_a_table_belongs_is_rejected() -> None:
    text = VALID.replace("[telemetry]\ninterval_s = 10.0\n", "")
    text = text.replace("schema = 1", "schema = 1\ntelemetry = 5")
    with pytest.raises(ConfigError, match=r"^bad-profile\.toml: telemetry = 5: expected a table"):
        parse_profile(text, "bad-profile.toml")


def test_empty_backends_array_is_rejected() -> None:
    text = VALID[: VALID.index("[[backends]]")].replace("schema = 1", "schema = 1\nbackends = []")
    with pytest.raises(ConfigError, match=r"^bad-profile\.toml: backends = \[\]: expected a non"):
        parse_profile(text, "bad-profile.toml")


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_profile("raspberry-pi-9")
    message = str(info.value)
    assert "'raspberry-pi-9'" in message
    assert all(name in message for name in list_profiles())


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match=r"nowhere\.toml: cannot read"):
        load_profile(path)


def test_non_utf8_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad-profile.toml"
    path.write_bytes(VALID.encode() + b"\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bad-profile\.toml: not UTF-8"):
        load_profile(path)
