"""The hub's settings: precedence, durations, and errors that name the key and the value."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.durations import format_duration, parse_duration
from cloud_hub.errors import HubConfigError
from cloud_hub.settings import load_settings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(minutes=90)),
        (" 1H 30M ", timedelta(minutes=90)),
        ("0.5h", timedelta(minutes=30)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "1y", "1h-5m", "soon", "m30"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration .* 30m, 1h, 7d"):
        parse_duration(text)


def test_durations_format_back() -> None:
    assert [format_duration(parse_duration(t)) for t in ("7d", "90s", "1h30m", "0s")] == [
        "7d",
        "1m30s",
        "1h30m",
        "0s",
    ]


@pytest.fixture(autouse=True)
def _no_hub_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("EDGELOOP_HUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == tmp_path / "xdg" / "edgeloop-hub"
    assert settings.database_url == f"sqlite:///{tmp_path / 'xdg' / 'edgeloop-hub' / 'hub.db'}"
    assert (settings.mqtt_host, settings.mqtt_port) == ("127.0.0.1", 1883)
    assert (settings.http_host, settings.http_port) == ("127.0.0.1", 8080)
    assert (settings.grpc_host, settings.grpc_port) == ("127.0.0.1", 50051)
    assert settings.raw_retention == timedelta(days=7)
    assert settings.artifacts_dir == settings.data_dir / "artifacts"


def test_flags_beat_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "etc" / "hub.toml"
    config.parent.mkdir()
    config.write_text(
        'data_dir = "data"\nhttp_port = 9001\ngrpc_port = 9002\nraw_retention = "2d"\n'
        'broker_acl_file = "acl"\n'
    )
    from_file = load_settings(config)
    assert from_file.data_dir == tmp_path / "etc" / "data"  # relative to the file
    assert from_file.broker_acl_file == tmp_path / "etc" / "acl"
    assert (from_file.http_port, from_file.grpc_port) == (9001, 9002)
    assert from_file.raw_retention == timedelta(days=2)
    monkeypatch.setenv("EDGELOOP_HUB_HTTP_PORT", "9101")
    monkeypatch.setenv("EDGELOOP_HUB_GRPC_PORT", "9102")
    both = load_settings(config, grpc_port=9202)
    assert (both.http_port, both.grpc_port) == (9101, 9202)


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        ({"mqtt_port": 70000}, {}, "mqtt_port = 70000 (from the command line): expected less"),
        ({}, {"EDGELOOP_HUB_HTTP_PORT": "web"}, "http_port = 'web' (from EDGELOOP_HUB_HTTP_PORT)"),
        (
            {"raw_retention": "forever"},
            {},
            "raw_retention = 'forever' (from the command line): expected a duration such as 90s",
        ),
        ({"raw_retention": "0s"}, {}, "expected a duration longer than 0s"),
        ({"database_url": "mysql://db/hub"}, {}, "a SQLite or PostgreSQL URL"),
        (
            {"database_url": "postgresql://hub:pw-secret@db/hub"},
            {"EDGELOOP_HUB_MQTT_PORT": "x"},
            "mqtt_port = 'x'",
        ),
        ({"colour": "blue"}, {}, "unknown hub setting(s): colour"),
    ],
)
def test_bad_settings_name_the_key_the_value_and_what_was_expected(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(HubConfigError) as caught:
        load_settings(**overrides)
    assert message in str(caught.value)
    assert "pw-secret" not in str(caught.value)


def test_a_database_url_in_an_error_hides_its_password() -> None:
    with pytest.raises(HubConfigError) as caught:
        load_settings(database_url="mysql://hub:pw-secret@db/hub")
    assert "pw-secret" not in str(caught.value) and "hub:***@db" in str(caught.value)


def test_bad_files_are_refused_with_the_path(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("http_port = \n")
    with pytest.raises(HubConfigError, match=f"config file {broken} is not valid TOML"):
        load_settings(broken)
    typo = tmp_path / "typo.toml"
    typo.write_text("htp_port = 1\n")
    with pytest.raises(HubConfigError, match=r"unknown key\(s\) htp_port"):
        load_settings(typo)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('grpc_port = "fast"\n')
    with pytest.raises(HubConfigError, match=f"grpc_port = 'fast' \\(from {wrong}\\)"):
        load_settings(wrong)
