"""Hard examples: the recorder on real SQLite and PostgreSQL, the REST routes over real
HTTP, the ``cloud-hub hard-examples`` commands as real processes. No mocks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import hub_db
import numpy as np
import pytest
from sqlalchemy import select

from cloud_hub.api import create_app
from cloud_hub.api.server import HttpServer
from cloud_hub.db import models as orm
from cloud_hub.errors import HubConfigError, InvalidRequest, NotFound
from cloud_hub.hard_examples import (
    Answer,
    HardExampleRecorder,
    cloud_answers,
    count_hard_examples,
    decode_inputs,
    encode_inputs,
    samples,
)
from cloud_hub.hard_examples.answers import edge_answer
from cloud_hub.offload.sink import HardExampleSink, OffloadedInput
from cloud_hub.registry import Registry
from cloud_hub.settings import HubSettings, load_settings

database_url = hub_db.database_url_fixture("hardex")
clock = hub_db.clock_fixture()
registry = hub_db.registry_fixture()

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
CLASSES = 10


def _enroll(registry: Registry, fleet: str, hostname: str = "pi") -> str:
    issued = registry.create_enrollment_token(fleet, ttl=timedelta(hours=1), uses=1)
    enrolled = registry.redeem_enrollment_token(
        issued.token, public_key_pem=None, hostname=hostname
    )
    return enrolled.device.id


def _probs(label: int, score: float = 0.9, rows: int = 1) -> np.ndarray:
    p = np.full((rows, CLASSES), (1.0 - score) / (CLASSES - 1), dtype=np.float32)
    p[:, label] = score
    return p


def _example(
    device_id: str | None,
    *,
    label: int = 3,
    edge: dict[str, Any] | None = None,
    model: str = "digits",
    version: str = "2",
    seq: int = 0,
    x: np.ndarray | None = None,
) -> OffloadedInput:
    if x is None:
        x = np.full((1, 64), seq, dtype=np.float32)
    return OffloadedInput(
        device_id=device_id,
        model=model,
        version=version,
        inputs={"x": x},
        outputs={"probabilities": _probs(label, rows=x.shape[0])},
        edge_answer=edge,
        received_at=T0 + timedelta(seconds=seq),
    )


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> HubSettings:
    return load_settings(data_dir=tmp_path / "hub", database_url=database_url)


RecorderFactory = Callable[..., HardExampleRecorder]


@pytest.fixture
def recorder_for(
    registry: Registry, tmp_path: Path, database_url: str
) -> Iterator[RecorderFactory]:
    """Make recorders (bounds as settings, the rest as options); all stopped afterwards."""
    made: list[HardExampleRecorder] = []

    def make(*, start: bool = True, **options: Any) -> HardExampleRecorder:
        bounds = {k: options.pop(k) for k in list(options) if k.startswith("hard_examples_")}
        settings = load_settings(data_dir=tmp_path / "hub", database_url=database_url, **bounds)
        recorder = HardExampleRecorder(registry, settings, **options)
        made.append(recorder)
        if start:
            recorder.start()
        return recorder

    yield make
    for recorder in made:
        recorder.stop()


def _rows(registry: Registry) -> list[orm.HardExample]:
    with registry.db.transaction() as session:
        return list(session.scalars(select(orm.HardExample).order_by(orm.HardExample.id)))


# -- requests to rows: pure ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ({"p": np.array([[0.1, 0.75, 0.15]], np.float32)}, [Answer(1, 0.75)]),
        ({"ids": np.array([[4]], np.int64), "p": np.array([[0.6, 0.4]])}, [Answer(0, 0.6)]),
        ({"p": np.array([0.1, 0.9], np.float32)}, None),  # 1-D: not an answer
        ({"p": np.zeros((1, 2, 3), np.float32)}, None),
        ({}, None),
        ({"p": np.array([[np.nan, 0.5]], np.float32)}, [Answer()]),
        ({"p": np.array([[0.5, np.inf]], np.float32)}, [Answer(1, None)]),
    ],
)
def test_the_cloud_answer_is_the_first_2d_float_output(
    outputs: dict[str, np.ndarray], expected: list[Answer] | None
) -> None:
    assert cloud_answers(outputs) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, (Answer(), None)),
        ({"label": 3, "score": 0.5, "version": "7"}, (Answer(3, 0.5), "7")),
        ({"label": True, "score": "high", "version": 7}, (Answer(), None)),
        ({"label": 2**40, "score": float("nan")}, (Answer(), None)),
        ({"label": np.int64(4), "score": np.float32(0.25)}, (Answer(4, 0.25), None)),
    ],
)
def test_the_edge_answer_keeps_only_well_typed_values(
    given: dict[str, Any] | None, expected: tuple[Answer, str | None]
) -> None:
    assert edge_answer(given) == expected


def test_a_batched_request_becomes_one_row_per_sample() -> None:
    x = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    example = OffloadedInput(
        "dev-1", "m", "1", {"x": x}, {"p": _probs(5, rows=3)}, {"label": 5}, T0
    )
    rows = samples(example)
    assert [r.cloud.label for r in rows] == [5, 5, 5]
    assert [r.inputs["x"].tolist() for r in rows] == [[row] for row in x.tolist()]
    assert all(r.edge == Answer() and r.agreed is None for r in rows)  # one answer, 3 samples


def test_a_batched_request_with_edge_lists_keeps_an_edge_answer_per_sample() -> None:
    x = np.zeros((3, 4), np.float32)
    edge = {"labels": [5, 2, 7], "scores": [0.4, 0.3, 0.2], "version": "9"}
    rows = samples(OffloadedInput("dev-1", "m", "1", {"x": x}, {"p": _probs(5, rows=3)}, edge, T0))
    assert [r.edge for r in rows] == [Answer(5, 0.4), Answer(2, 0.3), Answer(7, 0.2)]
    assert [r.agreed for r in rows] == [True, False, False]
    assert {r.edge_version for r in rows} == {"9"}
    # Lists of another length than the batch say nothing; missing scores leave labels.
    wrong = {"labels": [5, 2], "version": "9"}
    rows = samples(OffloadedInput("dev-1", "m", "1", {"x": x}, {"p": _probs(5, rows=3)}, wrong, T0))
    assert all(r.edge == Answer() and r.edge_version is None for r in rows)
    labels_only = {"labels": [5, 5, 5], "scores": [0.1]}
    rows = samples(
        OffloadedInput("dev-1", "m", "1", {"x": x}, {"p": _probs(5, rows=3)}, labels_only, T0)
    )
    assert [r.edge for r in rows] == [Answer(5, None)] * 3


def test_inputs_round_trip_through_npz_without_pickles() -> None:
    inputs: dict[str, np.ndarray] = {
        "file": np.ones((1, 2), np.uint8),
        "a/b": np.zeros((1, 3), np.float16),
    }
    decoded = decode_inputs(encode_inputs(inputs))
    assert {k: (v.dtype, v.shape) for k, v in decoded.items()} == {
        k: (v.dtype, v.shape) for k, v in inputs.items()
    }
    with pytest.raises(ValueError, match="pickle"):
        encode_inputs({"x": np.array([object()])})


# -- the recorder on SQLite and PostgreSQL ------------------------------------------------


def test_the_package_is_light_and_the_recorder_a_sink(
    registry: Registry, settings: HubSettings
) -> None:
    sink: HardExampleSink = HardExampleRecorder(registry, settings)
    assert callable(sink.submit)
    code = (
        "import sys, cloud_hub.hard_examples; "
        "print(sorted(m for m in ('cloud_hub.offload', 'cloud_hub.registry') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"  # neither the offload server nor an import cycle


def test_a_submitted_example_is_stored_with_both_answers(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("lab")
    device = _enroll(registry, "lab")
    recorder = recorder_for()
    x = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
    recorder.submit(_example(device, label=7, x=x, edge={"label": 2, "score": 0.4, "version": "1"}))
    assert recorder.stop()
    (row,) = _rows(registry)
    assert (row.device_id, row.model, row.model_version) == (device, "digits", "2")
    assert row.received_at == T0
    assert (row.cloud_label, row.edge_label, row.edge_version, row.agreed) == (7, 2, "1", False)
    assert row.cloud_score == pytest.approx(0.9) and row.edge_score == pytest.approx(0.4)
    assert row.inputs is not None and row.input_bytes == len(row.inputs)
    np.testing.assert_array_equal(decode_inputs(row.inputs)["x"], x)
    (listed,) = registry.list_hard_examples(fleet="lab")
    assert listed.fleet == "lab" and listed.has_inputs and listed.id == row.id
    stats = recorder.stats()
    assert stats["submitted"] == 1 and stats["stored"] == 1 and stats["dropped"] == 0


def test_a_fleet_that_keeps_no_inputs_keeps_only_the_answers(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("private", keep_inputs=False)
    device = _enroll(registry, "private")
    recorder = recorder_for()
    recorder.submit(_example(device, label=3, edge={"label": 3}))
    recorder.stop()
    (row,) = _rows(registry)
    assert row.inputs is None and row.input_bytes == 0
    assert (row.cloud_label, row.edge_label, row.agreed) == (3, 3, True)
    assert recorder.stats()["inputs_withheld"] == 1
    assert b"\x00\x00\x80?" not in hub_db.dump(registry.db).encode()  # no float32 1.0s
    assert registry.export_hard_examples(fleet="private").count == 0


def test_a_change_of_keep_inputs_reaches_the_recorder(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("lab")
    device = _enroll(registry, "lab")
    recorder = recorder_for()  # caches the fleet as keeping inputs (for 30 s)
    recorder.submit(_example(device, seq=1))
    assert recorder.flush()
    assert registry.update_fleet("lab", keep_inputs=False).keep_inputs is False
    recorder.submit(_example(device, seq=2))  # applies at once, whatever the cache says
    assert recorder.flush()
    assert registry.update_fleet("lab", keep_inputs=True).keep_inputs is True
    recorder.submit(_example(device, seq=3))
    recorder.stop()
    assert [row.inputs is not None for row in _rows(registry)] == [True, False, True]
    assert [row.input_bytes > 0 for row in _rows(registry)] == [True, False, True]


def test_requests_without_a_known_device_are_counted_not_stored(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    recorder = recorder_for()
    recorder.submit(_example(None))
    recorder.submit(_example("dev-000000000000"))
    recorder.stop()
    assert _rows(registry) == []
    stats = recorder.stats()
    assert (stats["no_device"], stats["unknown_device"], stats["stored"]) == (1, 1, 0)


def test_the_count_bound_evicts_the_oldest_of_that_fleet_only(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("lab")
    registry.create_fleet("other")
    lab, other = _enroll(registry, "lab", "a"), _enroll(registry, "other", "b")
    recorder = recorder_for(hard_examples_max_count=3, batch_max=2)
    for seq in range(7):
        recorder.submit(_example(lab, seq=seq, label=seq))
    recorder.submit(_example(other, seq=9, label=9))
    recorder.stop()
    kept = registry.list_hard_examples(fleet="lab")
    assert [e.cloud_label for e in kept] == [6, 5, 4]  # newest first
    assert registry.count_hard_examples(fleet="other") == 1
    assert recorder.stats()["evicted"] == 4


def test_the_byte_bound_evicts_the_oldest(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("lab")
    device = _enroll(registry, "lab")
    size = len(encode_inputs({"x": np.zeros((1, 64), np.float32)}))
    recorder = recorder_for(hard_examples_max_bytes=size * 2 + size // 2)
    for seq in range(5):
        recorder.submit(_example(device, seq=seq, label=seq))
        assert recorder.flush()
    recorder.stop()
    rows = _rows(registry)
    assert [r.cloud_label for r in rows] == [3, 4]
    assert sum(r.input_bytes for r in rows) <= size * 2 + size // 2


def test_a_full_queue_drops_and_counts_without_blocking(
    registry: Registry, recorder_for: RecorderFactory, caplog: pytest.LogCaptureFixture
) -> None:
    registry.create_fleet("lab")
    device = _enroll(registry, "lab")
    recorder = recorder_for(start=False, queue_size=3)
    began = time.monotonic()
    for seq in range(50):
        recorder.submit(_example(device, seq=seq))
    assert time.monotonic() - began < 1.0
    stats = recorder.stats()
    assert (stats["submitted"], stats["queued"], stats["dropped"]) == (50, 3, 47)
    assert "dropped" in caplog.text and "queue full" in caplog.text
    recorder.start()
    assert recorder.stop()
    assert len(_rows(registry)) == 3


def test_the_queue_is_bounded_by_bytes_too(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    recorder = recorder_for(start=False, queue_max_bytes=1000)
    big = np.zeros((1, 200), np.float32)  # 800 bytes
    for seq in range(3):
        recorder.submit(_example("dev-x", seq=seq, x=big))
    assert (recorder.stats()["queued"], recorder.stats()["dropped"]) == (1, 2)


def test_stop_stores_what_is_queued_and_refuses_more(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("lab")
    device = _enroll(registry, "lab")
    recorder = recorder_for(batch_wait_s=1.0, batch_max=16)
    for seq in range(100):
        recorder.submit(_example(device, seq=seq))
    assert recorder.stop(timeout=30)
    assert len(_rows(registry)) == 100
    recorder.submit(_example(device, seq=101))
    stats = recorder.stats()
    assert (stats["stored"], stats["queued"], stats["dropped"]) == (100, 0, 1)


def test_a_row_that_cannot_be_stored_does_not_stop_the_rest(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    registry.create_fleet("lab")
    device = _enroll(registry, "lab")
    recorder = recorder_for(batch_wait_s=0.5)
    naive = _example(device, seq=1)
    naive = OffloadedInput(**{**naive.__dict__, "received_at": datetime(2030, 1, 1)})
    recorder.submit(_example(device, seq=0))
    recorder.submit(naive)  # a naive datetime is refused by the database layer
    recorder.submit(_example(device, seq=2))
    recorder.stop()
    assert len(_rows(registry)) == 2
    assert recorder.stats()["failed"] == 1


# -- listing and export -------------------------------------------------------------------


def _fill(registry: Registry, recorder_for: RecorderFactory) -> str:
    registry.create_fleet("lab")
    registry.create_fleet("other")
    device = _enroll(registry, "lab", "a")
    elsewhere = _enroll(registry, "other", "b")
    recorder = recorder_for()
    for seq in range(5):
        edge = {"label": seq % 2, "score": 0.5}
        recorder.submit(_example(device, seq=seq, label=seq, edge=edge))
    recorder.submit(_example(device, seq=5, model="speech", x=np.zeros((1, 16), np.int8)))
    recorder.submit(_example(elsewhere, seq=6, label=6))
    recorder.stop()
    return device


def test_listing_filters_and_pages(registry: Registry, recorder_for: RecorderFactory) -> None:
    _fill(registry, recorder_for)
    assert registry.count_hard_examples() == 7
    assert count_hard_examples(registry, fleet="lab") == 6  # the same, as a function
    assert registry.count_hard_examples(fleet="lab", model="digits") == 5
    first = registry.list_hard_examples(fleet="lab", model="digits", limit=2)
    assert [e.cloud_label for e in first] == [4, 3]
    second = registry.list_hard_examples(
        fleet="lab", model="digits", limit=2, before_id=first[-1].id
    )
    assert [e.cloud_label for e in second] == [2, 1]
    assert registry.list_hard_examples(model="nothing") == []
    with pytest.raises(NotFound, match="fleet 'nowhere'"):
        registry.list_hard_examples(fleet="nowhere")
    with pytest.raises(InvalidRequest, match="limit"):
        registry.list_hard_examples(limit=0)


def test_export_stacks_inputs_with_both_labels(
    registry: Registry, recorder_for: RecorderFactory
) -> None:
    device = _fill(registry, recorder_for)
    export = registry.export_hard_examples(fleet="lab", model="digits", limit=4)
    assert (export.count, export.model, export.input_names) == (4, "digits", ("x",))
    with np.load(io.BytesIO(export.data), allow_pickle=False) as npz:
        assert npz["x_x"].shape == (4, 64)
        assert npz["x_x"][:, 0].tolist() == [1, 2, 3, 4]  # oldest first
        assert npz["cloud_label"].tolist() == [1, 2, 3, 4]
        assert npz["edge_label"].tolist() == [1, 0, 1, 0]
        assert npz["agreed"].tolist() == [1, 0, 0, 0]
        assert set(npz["device_id"].tolist()) == {device}
    with pytest.raises(InvalidRequest, match="more than one model"):
        registry.export_hard_examples(fleet="lab")


# -- REST ---------------------------------------------------------------------------------


@pytest.fixture
def api(registry: Registry, settings: HubSettings) -> Iterator[httpx.Client]:
    server = HttpServer(create_app(registry, settings), "127.0.0.1", 0)
    server.start()
    token = registry.create_operator_token("tests").token
    try:
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            yield client
    finally:
        server.stop()


def test_rest_lists_and_exports_for_operators(
    registry: Registry, recorder_for: RecorderFactory, api: httpx.Client
) -> None:
    _fill(registry, recorder_for)
    anonymous = httpx.get(api.base_url.join("/api/v1/hard-examples"), timeout=30)
    assert anonymous.status_code == 401
    page = api.get("/api/v1/hard-examples", params={"fleet": "lab", "limit": 4})
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["total"] == 6 and len(body["items"]) == 4
    assert body["items"][0]["model"] == "speech" and body["items"][1]["cloud_label"] == 4
    assert body["items"][1]["agreed"] is False and body["items"][1]["has_inputs"] is True
    rest = api.get("/api/v1/hard-examples", params={"fleet": "lab", "before": body["next_before"]})
    assert [i["cloud_label"] for i in rest.json()["items"]] == [1, 0]
    assert rest.json()["next_before"] is None
    assert api.get("/api/v1/hard-examples", params={"fleet": "nowhere"}).status_code == 404
    assert api.get("/api/v1/hard-examples", params={"limit": 0}).status_code == 422
    typo = api.get("/api/v1/hard-examples", params={"fleeet": "lab"})
    assert typo.status_code == 422 and "fleeet" in typo.json()["error"]["message"]

    export = api.get("/api/v1/hard-examples/export", params={"model": "digits", "fleet": "lab"})
    assert export.status_code == 200, export.text
    assert export.headers["content-type"] == "application/octet-stream"
    assert export.headers["x-edgeloop-count"] == "5"
    with np.load(io.BytesIO(export.content), allow_pickle=False) as npz:
        assert npz["x_x"].shape == (5, 64) and npz["cloud_label"].tolist() == [0, 1, 2, 3, 4]
    mixed = api.get("/api/v1/hard-examples/export")
    assert mixed.status_code == 422 and "one model" in mixed.json()["error"]["message"]


def test_rest_changes_keep_inputs(registry: Registry, api: httpx.Client) -> None:
    registry.create_fleet("lab")
    changed = api.patch("/api/v1/fleets/lab", json={"keep_inputs": False})
    assert changed.status_code == 200, changed.text
    assert changed.json()["keep_inputs"] is False and registry.fleet("lab").keep_inputs is False
    assert api.patch("/api/v1/fleets/lab", json={}).json()["keep_inputs"] is False
    assert api.patch("/api/v1/fleets/nowhere", json={"keep_inputs": True}).status_code == 404
    assert api.patch("/api/v1/fleets/lab", json={"keep": True}).status_code == 422


# -- CLI ----------------------------------------------------------------------------------


def _hub(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_HUB_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_hub.cli",
            *args,
            *("--data-dir", str(tmp_path / "hub"), "--database-url", database_url),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**clean, "PYTHONWARNINGS": "ignore"},
    )


def test_cli_lists_and_exports(
    registry: Registry, recorder_for: RecorderFactory, tmp_path: Path, database_url: str
) -> None:
    _fill(registry, recorder_for)
    listed = _hub(tmp_path, database_url, "hard-examples", "list", "--fleet", "lab", "--limit", "3")
    assert listed.returncode == 0, listed.stderr
    assert "CLOUD" in listed.stdout and "digits@2" in listed.stdout
    assert "3 of 6 shown" in listed.stderr
    as_json = _hub(tmp_path, database_url, "hard-examples", "list", "--model", "digits", "--json")
    assert [e["cloud_label"] for e in json.loads(as_json.stdout)] == [6, 4, 3, 2, 1, 0]

    out = tmp_path / "out" / "hard.npz"
    exported = _hub(
        tmp_path, database_url, "hard-examples", "export", "--out", str(out), "--model", "digits"
    )
    assert exported.returncode == 0, exported.stderr
    assert "wrote 6 hard examples" in exported.stdout  # both fleets
    with np.load(out, allow_pickle=False) as npz:
        assert npz["x_x"].shape == (6, 64)
    refused = _hub(tmp_path, database_url, "hard-examples", "export", "--out", str(out))
    assert refused.returncode != 0 and "one model at a time" in refused.stderr
    missing = _hub(tmp_path, database_url, "hard-examples", "list", "--fleet", "nowhere")
    assert missing.returncode != 0 and "nowhere" in missing.stderr


def test_cli_sets_keep_inputs(registry: Registry, tmp_path: Path, database_url: str) -> None:
    registry.create_fleet("lab")
    done = _hub(tmp_path, database_url, "fleet", "set", "lab", "--no-keep-inputs")
    assert done.returncode == 0, done.stderr
    assert "keep inputs no" in done.stdout and registry.fleet("lab").keep_inputs is False
    done = _hub(tmp_path, database_url, "fleet", "set", "lab", "--keep-inputs", "--json")
    assert json.loads(done.stdout)["keep_inputs"] is True
    assert _hub(tmp_path, database_url, "fleet", "set", "lab").returncode != 0  # which one?
    helped = _hub(tmp_path, database_url, "hard-examples", "--help")
    assert "keep_inputs" in helped.stdout and "export" in helped.stdout


def test_the_bounds_are_hub_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_HUB_HARD_EXAMPLES_MAX_BYTES", "4096")
    loaded = load_settings(data_dir=tmp_path, hard_examples_max_count=5)
    assert (loaded.hard_examples_max_count, loaded.hard_examples_max_bytes) == (5, 4096)
    with pytest.raises(HubConfigError, match=r"hard_examples_max_count = 0 .*greater than"):
        load_settings(data_dir=tmp_path, hard_examples_max_count=0)
    monkeypatch.setenv("EDGELOOP_HUB_HARD_EXAMPLES_MAX_BYTES", "lots")
    with pytest.raises(HubConfigError, match="EDGELOOP_HUB_HARD_EXAMPLES_MAX_BYTES"):
        load_settings(data_dir=tmp_path)
