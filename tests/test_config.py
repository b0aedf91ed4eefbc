"""The agent's config file: defaults, path resolution, precedence, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import DEFAULT_STATE_DIR, STATE_DIR_ENV, load_config, parse_config
from edge_agent.errors import ConfigError
from edge_agent.identity import Identity, MqttIdentity
from edge_agent.model_card import ModelCard
from edge_agent.profiles import load_profile
from edge_agent.service.commands import example_config
from edge_agent.service.resolve import (
    resolve_broker,
    resolve_device,
    resolve_interval,
    resolve_model,
)

MINIMAL = '[model]\npath = "m.onnx"\n'


def _parse(text: str, base: Path = Path("/etc/edgeloop")) -> object:
    return parse_config(text, "agent.toml", base_dir=base)


def test_minimal_config_takes_the_defaults() -> None:
    config = parse_config(MINIMAL, "agent.toml", base_dir=Path("/etc/edgeloop"))
    assert config.model.path == Path("/etc/edgeloop/m.onnx")
    assert config.model.backend == "auto"
    assert (config.model.name, config.model.version) == (None, None)
    assert config.agent.state_dir == DEFAULT_STATE_DIR
    assert config.agent.profile == "auto"
    assert (config.agent.device_id, config.agent.fleet) == (None, None)
    assert (config.http.enabled, config.http.host, config.http.port) == (True, "127.0.0.1", 8000)
    assert config.mqtt.enabled is True
    assert config.mqtt.host is None and config.mqtt.tls is None
    assert config.telemetry.interval_s is None
    assert config.spool.max_bytes == 16 * 1024 * 1024
    assert config.shutdown.drain_timeout_s == 5.0
    assert (config.ota.enabled, config.ota.check_in_interval_s) == (True, 300.0)


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "agent.toml").write_text(
        '[agent]\nstate_dir = "state"\nprofile = "profiles/mine.toml"\n'
        '[model]\npath = "models/m.onnx"\n'
        '[mqtt]\nusername = "u"\npassword_file = "secret"\ntls = true\nca_file = "ca.pem"\n'
    )
    monkeypatch.chdir("/")  # the process's folder must not matter
    config = load_config(tmp_path / "agent.toml", environ={})
    assert config.agent.state_dir == tmp_path / "state"
    assert config.agent.profile == str(tmp_path / "profiles/mine.toml")
    assert config.model.path == tmp_path / "models/m.onnx"
    assert config.mqtt.password == "s3cret"
    assert config.mqtt.ca_file == tmp_path / "ca.pem"
    assert "s3cret" not in repr(config)


def test_absolute_paths_and_profile_names_stay_as_written() -> None:
    config = parse_config(
        '[agent]\nprofile = "raspberry-pi-5"\nstate_dir = "/srv/el"\n[model]\npath = "/m.tflite"\n',
        "agent.toml",
        base_dir=Path("/etc"),
    )
    assert config.agent.profile == "raspberry-pi-5"
    assert config.agent.state_dir == Path("/srv/el")
    assert config.model.path == Path("/m.tflite")


def test_state_dir_precedence_flag_then_env_then_file(tmp_path: Path) -> None:
    file = tmp_path / "agent.toml"
    file.write_text('[agent]\nstate_dir = "from-file"\n' + MINIMAL)
    assert load_config(file, environ={}).agent.state_dir == tmp_path / "from-file"
    env = {STATE_DIR_ENV: "/env/state"}
    assert load_config(file, environ=env).agent.state_dir == Path("/env/state")
    flagged = load_config(file, state_dir="/flag/state", environ=env)
    assert flagged.agent.state_dir == Path("/flag/state")
    assert load_config(file, environ={STATE_DIR_ENV: ""}).agent.state_dir == tmp_path / "from-file"


def test_the_shipped_example_config_is_valid() -> None:
    config = parse_config(example_config(), "agent.example.toml", base_dir=Path("/etc/edgeloop"))
    assert config.model.path == Path("/etc/edgeloop/models/digits-edge-int8.onnx")
    assert config.http.max_request_bytes == 16777216
    assert config.spool.max_age_s == 604800.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\ndevice = 'x'\n" + MINIMAL, "agent.device = 'x': expected one of device_id,"),
        ("[server]\nport = 1\n" + MINIMAL, "server = {'port': 1}: expected one of the sections"),
        ("agent = 3\n" + MINIMAL, "agent = 3: expected a table [agent]"),
        ("[http]\nport = 70000\n" + MINIMAL, "http.port = 70000: expected an integer from 0 to"),
        ("[http]\nport = '80'\n" + MINIMAL, "http.port = '80': expected an integer"),
        ("[http]\nport = true\n" + MINIMAL, "http.port = true: expected an integer"),
        ("[http]\nenabled = 1\n" + MINIMAL, "http.enabled = 1: expected true or false"),
        ("[http]\nhost = ''\n" + MINIMAL, "http.host = '': expected a non-empty string"),
        ("[model]\npath = 'm.onnx'\nbackend = 'trt'\n", "model.backend = 'trt': expected one of"),
        ("[model]\nname = 'x'\n", "model.path is missing: expected the path to a model file"),
        ("[agent]\nfleet = 'a'\n", "[model] is missing"),
        ("[model]\npath = 5\n", "model.path = 5: expected a non-empty string"),
        ("[agent]\ndevice_id = 'a/b'\n" + MINIMAL, "agent.device_id = 'a/b': expected a name"),
        ("[agent]\nfleet = 'x#'\n" + MINIMAL, "agent.fleet = 'x#': expected a name"),
        ("[telemetry]\ninterval_s = 0\n" + MINIMAL, "telemetry.interval_s = 0: expected a number"),
        ("[telemetry]\ninterval_s = nan\n" + MINIMAL, "telemetry.interval_s = nan: expected"),
        ("[spool]\nmax_bytes = 10\n" + MINIMAL, "spool.max_bytes = 10: expected an integer from"),
        ("[spool]\nmax_age_s = -1\n" + MINIMAL, "spool.max_age_s = -1: expected a number > 0"),
        ("[shutdown]\ndrain_timeout_s = 'x'\n" + MINIMAL, "shutdown.drain_timeout_s = 'x'"),
        ("[ota]\nenabled = 'no'\n" + MINIMAL, "ota.enabled = 'no': expected true or false"),
        ("[ota]\ncheck_in_interval_s = 0\n" + MINIMAL, "ota.check_in_interval_s = 0: expected"),
        ("[ota]\nurl = 'x'\n" + MINIMAL, "ota.url"),
        ("[mqtt]\nkeepalive = 1\n" + MINIMAL, "mqtt.keepalive = 1: expected an integer from 5"),
        ("[mqtt]\nport = 0\n" + MINIMAL, "mqtt.port = 0: expected an integer from 1 to 65535"),
        ("[mqtt]\ntls = 'yes'\n" + MINIMAL, "mqtt.tls = 'yes': expected true or false"),
        ("[mqtt]\nca_file = '/nonexistent.pem'\n" + MINIMAL, "mqtt.ca_file = '/nonexistent.pem'"),
        (
            "[mqtt]\npassword = 'a'\npassword_file = '/x'\n" + MINIMAL,
            "mqtt.password_file = '/x': expected either password or password_file",
        ),
        (
            "[mqtt]\npassword_file = '/nonexistent'\n" + MINIMAL,
            "mqtt.password_file = '/nonexistent': expected a readable file",
        ),
        ("[model\npath = 1\n", "invalid TOML"),
    ],
)
def test_a_bad_config_fails_with_the_key_the_value_and_what_was_expected(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    line = str(caught.value)
    assert line.startswith("agent.toml: ")
    assert message in line
    assert "\n" not in line


def test_a_missing_or_unreadable_config_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path, environ={})  # a directory
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "bin.toml", environ={})


# -- what the config leaves open --------------------------------------------------------

IDENTITY = Identity(
    device_id="pi-17",
    fleet="lab",
    hub="hub:443",
    credential="c",
    mqtt=MqttIdentity(host="broker", port=8883, username="pi-17", password="pw", tls=True),
)


@pytest.mark.parametrize(
    ("agent", "identity", "expected"),
    [
        ("", None, ("myhost", "default")),
        ("", IDENTITY, ("pi-17", "lab")),
        ("device_id = 'cfg'\nfleet = 'f'\n", IDENTITY, ("cfg", "f")),
        ("fleet = 'f'\n", None, ("myhost", "f")),
    ],
)
def test_device_id_and_fleet_come_from_config_then_identity_then_hostname(
    agent: str, identity: Identity | None, expected: tuple[str, str]
) -> None:
    config = parse_config(f"[agent]\n{agent}" + MINIMAL, "a.toml", base_dir=Path("/"))
    assert resolve_device(config, identity, "myhost.example.com") == expected


def test_broker_fields_come_from_config_then_the_enrolled_identity() -> None:
    bare = parse_config(MINIMAL, "a.toml", base_dir=Path("/"))
    with pytest.raises(ConfigError, match=r"mqtt\.host is not set and the device has not enrolled"):
        resolve_broker(bare.mqtt, None, "d", "a.toml")
    enrolled = resolve_broker(bare.mqtt, IDENTITY, "pi-17", "a.toml")
    assert (enrolled.host, enrolled.port, enrolled.tls) == ("broker", 8883, True)
    assert (enrolled.username, enrolled.password) == ("pi-17", "pw")
    assert (enrolled.topic_prefix, enrolled.client_id) == ("edgeloop/v1", "edgeloop-pi-17")
    assert "pw" not in repr(enrolled)
    mixed = parse_config("[mqtt]\nhost = 'local'\ntls = false\n" + MINIMAL, "a", base_dir=Path("/"))
    local = resolve_broker(mixed.mqtt, IDENTITY, "pi-17", "a")
    assert (local.host, local.port, local.tls, local.username) == ("local", 8883, False, "pi-17")
    plain = parse_config("[mqtt]\nhost = 'h'\n" + MINIMAL, "a", base_dir=Path("/"))
    assert resolve_broker(plain.mqtt, None, "d", "a").port == 1883


def test_model_name_version_and_interval_fall_back_in_order() -> None:
    config = parse_config(MINIMAL, "a.toml", base_dir=Path("/m"))
    assert resolve_model(config, None) == ("m", "0")
    card = ModelCard(
        name="digits", version="3", format="onnx-int8", file="m.onnx", sha256="", bytes=1,
        inputs=[], outputs=[],
    )  # fmt: skip
    assert resolve_model(config, card) == ("digits", "3")
    named = parse_config(
        '[model]\npath = "m.onnx"\nname = "n"\nversion = "9"\n', "a", base_dir=Path("/")
    )
    assert resolve_model(named, card) == ("n", "9")
    profile = load_profile("raspberry-pi-5")
    assert resolve_interval(config, profile) == profile.telemetry_interval_s
    timed = parse_config("[telemetry]\ninterval_s = 2\n" + MINIMAL, "a", base_dir=Path("/"))
    assert resolve_interval(timed, profile) == 2.0
