"""TUF trust end to end: the hub's real repository files, python-tuf on the device.

The seam faked here is the agent's ``fetch(path, max_length)`` (ours): :class:`RepoServer`
serves the files of a real :class:`TufRepository` and lets a test swap in what an attacker
or a broken hub would send. Everything else is real: keys, signatures, files on disk,
python-tuf's client.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import Conflict, InvalidRequest, NotFound
from cloud_hub.ota import TufRepository, health_custom, target_path_for
from edge_agent.errors import ConfigError, IntegrityError
from edge_agent.ota import TrustedUpdater, VerifiedTarget, pin_root, verify_file

CHUNK = 64 * 1024
TARGET = target_path_for("digits-edge", "1.1.0", "digits-edge-int8.onnx")


class RepoServer:
    """``fetch`` over a real repository's files, with per-path replacements (attacks)."""

    def __init__(self, repo: TufRepository) -> None:
        self.repo = repo
        self.replace: dict[str, bytes] = {}
        self.endless: set[str] = set()
        self.requests: list[tuple[str, int | None]] = []
        self.sent: dict[str, int] = {}

    def fetch(self, path: str, max_length: int | None) -> Iterator[bytes]:
        self.requests.append((path, max_length))
        data = self._data(path)
        self.sent[path] = 0
        for start in range(0, len(data), CHUNK):
            self.sent[path] += len(data[start : start + CHUNK])
            yield data[start : start + CHUNK]
        while path in self.endless:  # a hub that never stops sending
            self.sent[path] += CHUNK
            yield b"\0" * CHUNK

    def _data(self, path: str) -> bytes:
        if path in self.replace:
            return self.replace[path]
        kind, _, rest = path.partition("/")
        try:
            if kind == "metadata":
                return self.repo.read_metadata(rest)
            return self.repo.target_file(rest).read_bytes()
        except NotFound as exc:
            raise FileNotFoundError(path) from exc


def _metadata(repo: TufRepository) -> dict[str, bytes]:
    """The current timestamp, snapshot and targets, as a device would fetch them."""
    return {
        f"metadata/{role}.json": repo.read_metadata(f"{role}.json")
        for role in ("timestamp", "snapshot", "targets")
    }


def _new_repo(base: Path, clock: Callable[[], datetime] | None = None) -> TufRepository:
    repo = TufRepository(base / "data" / "tuf", clock=clock or (lambda: datetime.now(timezone.utc)))
    repo.init_keys(base / "offline-root")
    repo.create(base / "offline-root")
    return repo


def _artifact(path: Path, size: int = 300_000, seed: int = 0) -> Path:
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def _custom(version: str = "1.1.0") -> dict[str, object]:
    x = np.linspace(0, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    y = np.full((2, 10), 0.1, dtype=np.float32)
    return health_custom(
        model="digits-edge",
        version=version,
        format="onnx-int8",
        profiles=["x86-64-cpu", "raspberry-pi-4"],
        inputs={"image": x},
        outputs={"probabilities": y},
    )


@pytest.fixture
def repo(tmp_path: Path) -> TufRepository:
    return _new_repo(tmp_path / "hub")


@pytest.fixture
def device(tmp_path: Path, repo: TufRepository) -> Path:
    state_dir = tmp_path / "device"
    pin_root(state_dir, repo.root_json())
    return state_dir


def test_published_target_is_verified_and_its_custom_read(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    artifact = _artifact(tmp_path / "model.onnx")
    info = repo.publish_target(TARGET, artifact, _custom())
    server = RepoServer(repo)
    updater = TrustedUpdater(device, server.fetch)

    updater.refresh()
    target = updater.target_info(TARGET)

    assert target.length == artifact.stat().st_size == info.length
    assert target.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest() == info.sha256
    edgeloop = target.edgeloop
    assert (edgeloop["model"], edgeloop["version"], edgeloop["format"]) == (
        "digits-edge",
        "1.1.0",
        "onnx-int8",
    )
    assert edgeloop["profiles"] == ["raspberry-pi-4", "x86-64-cpu"]
    health = edgeloop["health"]
    assert health["inputs"]["image"]["shape"] == [2, 8, 8, 1]
    assert health["inputs"]["image"]["datatype"] == "FP32"
    # canonical JSON has no floats: decimal strings that round-trip exactly
    expected = np.asarray(health["outputs"]["probabilities"]["data"], dtype=np.float32)
    assert expected.tolist() == np.full(20, 0.1, dtype=np.float32).tolist()
    assert (health["atol"], health["latency_budget_ms"]) == ("0.05", "50.0")
    # every metadata download carried a cap; plain names (consistent snapshots off)
    fetched = dict(server.requests)
    assert set(fetched) >= {"metadata/timestamp.json", "metadata/snapshot.json"}
    assert all(cap is not None and cap > 0 for cap in fetched.values())

    staged = updater.download(target, tmp_path / "slot-b" / "model.onnx")
    assert staged.read_bytes() == artifact.read_bytes()
    assert dict(server.requests)[f"targets/{TARGET}"] == target.length
    verify_file(target, staged)
    # the journal form verifies the same way after a restart
    verify_file(VerifiedTarget.from_dict(json.loads(json.dumps(target.to_dict()))), staged)


def test_unknown_target_is_refused(repo: TufRepository, device: Path) -> None:
    updater = TrustedUpdater(device, RepoServer(repo).fetch)
    with pytest.raises(IntegrityError, match="not in the hub's signed targets"):
        updater.target_info("models/nope/1/nope.onnx")


def test_metadata_signed_by_an_untrusted_key_is_rejected(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    attacker = _new_repo(tmp_path / "attacker")
    artifact = _artifact(tmp_path / "evil.onnx", seed=666)
    attacker.publish_target(TARGET, artifact, _custom())
    server = RepoServer(repo)
    server.replace = _metadata(attacker)

    with pytest.raises(IntegrityError, match="not signed by the trusted keys"):
        TrustedUpdater(device, server.fetch).refresh()
    # the same bytes re-signed by the attacker's root do not replace the pinned one
    server.replace["metadata/2.root.json"] = attacker.read_metadata("1.root.json")
    with pytest.raises(IntegrityError):
        TrustedUpdater(device, server.fetch).refresh()


def test_a_tampered_root_is_not_pinned(tmp_path: Path, repo: TufRepository) -> None:
    root = json.loads(repo.root_json())
    root["signed"]["expires"] = "2099-01-01T00:00:00Z"  # signature no longer matches
    with pytest.raises(IntegrityError, match="cannot be trusted"):
        pin_root(tmp_path / "device", json.dumps(root).encode())
    with pytest.raises(IntegrityError, match="no TUF root"):
        pin_root(tmp_path / "device", b"")
    with pytest.raises(ConfigError, match="no pinned TUF root"):
        TrustedUpdater(tmp_path / "device", RepoServer(repo).fetch)


def test_pinned_root_is_private_and_a_new_pin_drops_cached_metadata(
    repo: TufRepository, device: Path
) -> None:
    TrustedUpdater(device, RepoServer(repo).fetch).refresh()
    metadata_dir = device / "tuf" / "metadata"
    assert (metadata_dir / "timestamp.json").is_file()

    path = pin_root(device, repo.root_json())

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in metadata_dir.iterdir()) == ["root.json"]


def test_rollback_to_older_signed_metadata_is_refused(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    repo.publish_target(TARGET, _artifact(tmp_path / "a.onnx", seed=1), _custom("1.1.0"))
    old = _metadata(repo)
    newer = target_path_for("digits-edge", "1.2.0", "digits-edge-int8.onnx")
    repo.publish_target(newer, _artifact(tmp_path / "b.onnx", seed=2), _custom("1.2.0"))
    server = RepoServer(repo)
    TrustedUpdater(device, server.fetch).refresh()  # the device has seen the newer release

    server.replace = old  # a hub (or man in the middle) replays the older signed release
    with pytest.raises(IntegrityError, match="rollback"):
        TrustedUpdater(device, server.fetch).refresh()


def test_snapshot_rollback_under_a_newer_timestamp_is_refused(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata, MetaFile, Timestamp

    repo.publish_target(TARGET, _artifact(tmp_path / "a.onnx", seed=1), _custom("1.1.0"))
    old = _metadata(repo)
    newer = target_path_for("digits-edge", "1.2.0", "digits-edge-int8.onnx")
    repo.publish_target(newer, _artifact(tmp_path / "b.onnx", seed=2), _custom("1.2.0"))
    server = RepoServer(repo)
    TrustedUpdater(device, server.fetch).refresh()
    # even with the timestamp key, pointing a newer timestamp at an older snapshot fails
    timestamp = Metadata[Timestamp].from_bytes(repo.read_metadata("timestamp.json"))
    old_snapshot = old["metadata/snapshot.json"]
    timestamp.signed.version += 1
    timestamp.signed.snapshot_meta = MetaFile(
        Metadata.from_bytes(old_snapshot).signed.version,
        len(old_snapshot),
        {"sha256": hashlib.sha256(old_snapshot).hexdigest()},
    )
    key = load_pem_private_key((repo.keys_dir / "timestamp.pem").read_bytes(), None)
    timestamp.sign(CryptoSigner(key))
    server.replace = {**old, "metadata/timestamp.json": timestamp.to_bytes()}

    with pytest.raises(IntegrityError, match="rollback"):
        TrustedUpdater(device, server.fetch).refresh()


def test_expired_metadata_is_refused_until_the_hub_re_signs_it(
    tmp_path: Path, device: Path
) -> None:
    now = [datetime.now(timezone.utc) - timedelta(days=30)]
    repo = _new_repo(tmp_path / "frozen", clock=lambda: now[0])
    repo.publish_target(TARGET, _artifact(tmp_path / "a.onnx"), _custom())
    state_dir = tmp_path / "frozen-device"
    pin_root(state_dir, repo.root_json())
    server = RepoServer(repo)

    with pytest.raises(IntegrityError, match="expired"):  # a frozen repository
        TrustedUpdater(state_dir, server.fetch).refresh()

    now[0] = datetime.now(timezone.utc)
    assert repo.refresh_timestamp() is True
    assert repo.refresh_timestamp() is False  # fresh now: nothing to re-sign
    updater = TrustedUpdater(state_dir, server.fetch)
    updater.refresh()
    assert updater.target_info(TARGET).path == TARGET


def test_metadata_of_one_release_with_targets_of_another_is_refused(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    repo.publish_target(TARGET, _artifact(tmp_path / "a.onnx", seed=1), _custom("1.1.0"))
    first = _metadata(repo)
    newer = target_path_for("digits-edge", "1.2.0", "digits-edge-int8.onnx")
    repo.publish_target(newer, _artifact(tmp_path / "b.onnx", seed=2), _custom("1.2.0"))
    second = _metadata(repo)
    server = RepoServer(repo)

    # the current timestamp and snapshot with the targets of the earlier release
    server.replace = {"metadata/targets.json": first["metadata/targets.json"]}
    with pytest.raises(IntegrityError, match="mix-and-match"):
        TrustedUpdater(device, server.fetch).refresh()
    # the earlier timestamp and snapshot with the newer targets, to a device new to both
    fresh = tmp_path / "fresh-device"
    pin_root(fresh, repo.root_json())
    server.replace = {**first, "metadata/targets.json": second["metadata/targets.json"]}
    # (the earlier snapshot signed a shorter targets.json: cut off at its length)
    with pytest.raises(IntegrityError, match="signed length"):
        TrustedUpdater(fresh, server.fetch).refresh()


def test_a_hub_streaming_past_the_signed_length_is_cut_off(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    artifact = _artifact(tmp_path / "a.onnx")
    repo.publish_target(TARGET, artifact, _custom())
    server = RepoServer(repo)
    updater = TrustedUpdater(device, server.fetch)
    target = updater.target_info(TARGET)

    server.endless.add(f"targets/{TARGET}")
    dest = tmp_path / "slot-b" / "model.onnx"
    with pytest.raises(IntegrityError, match="more than the signed length"):
        updater.download(target, dest)
    assert server.sent[f"targets/{TARGET}"] <= target.length + CHUNK
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []

    server.endless = {"metadata/timestamp.json"}  # endless metadata is capped too
    with pytest.raises(IntegrityError, match="more than the signed length"):
        TrustedUpdater(device, server.fetch).refresh()
    assert server.sent["metadata/timestamp.json"] <= 16384 + CHUNK


def test_truncated_and_bit_flipped_artifacts_fail_verification(
    tmp_path: Path, repo: TufRepository, device: Path
) -> None:
    artifact = _artifact(tmp_path / "a.onnx")
    repo.publish_target(TARGET, artifact, _custom())
    target = TrustedUpdater(device, RepoServer(repo).fetch).target_info(TARGET)
    data = artifact.read_bytes()

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match=r"truncated\.onnx is not target"):
        verify_file(target, truncated)

    flipped = bytearray(data)
    flipped[len(flipped) // 3] ^= 0x01
    bad = tmp_path / "flipped.onnx"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(IntegrityError, match=r"flipped\.onnx is not target"):
        verify_file(target, bad)
    with pytest.raises(IntegrityError, match="cannot be read"):
        verify_file(target, tmp_path / "missing.onnx")
    verify_file(target, artifact)


def test_root_key_stays_offline_after_create(tmp_path: Path) -> None:
    base = tmp_path / "hub"
    repo = _new_repo(base)
    root_key = base / "offline-root" / "root.pem"
    assert stat.S_IMODE(root_key.stat().st_mode) == 0o600
    for role in ("targets", "snapshot", "timestamp"):
        assert stat.S_IMODE((repo.keys_dir / f"{role}.pem").stat().st_mode) == 0o600
    assert not any(p.name == "root.pem" for p in repo.root_dir.rglob("*"))
    os.rename(base / "offline-root", tmp_path / "usb-stick")  # carried away

    reopened = TufRepository(repo.root_dir).load()
    reopened.publish_target(TARGET, _artifact(tmp_path / "a.onnx"), _custom())
    device = tmp_path / "device"
    pin_root(device, reopened.root_json())
    assert TrustedUpdater(device, RepoServer(reopened).fetch).target_info(TARGET).path == TARGET

    with pytest.raises(InvalidRequest, match="inside the TUF repository"):
        TufRepository(repo.root_dir).init_keys(repo.root_dir / "root-keys")
    with pytest.raises(Conflict, match="refusing to overwrite"):
        TufRepository(repo.root_dir).init_keys(tmp_path / "elsewhere")


def test_publishing_rules(tmp_path: Path, repo: TufRepository) -> None:
    artifact = _artifact(tmp_path / "a.onnx", seed=1)
    first = repo.publish_target(TARGET, artifact, _custom())
    again = repo.publish_target(TARGET, artifact, _custom())
    assert again == first  # nothing new: no version bump
    with pytest.raises(Conflict, match="other bytes"):
        repo.publish_target(TARGET, _artifact(tmp_path / "b.onnx", seed=2), _custom())
    for bad in ("../etc/passwd", "models/../../x", "/abs", "models//x", ""):
        with pytest.raises(InvalidRequest):
            repo.publish_target(bad, artifact, _custom())
        with pytest.raises(NotFound):
            repo.target_file(bad)
    with pytest.raises(NotFound):
        repo.target_file("models/unpublished/1/x.onnx")
    for name in ("../keys/targets.pem", "keys/timestamp.pem", "nope.json", "0.root.json"):
        with pytest.raises(NotFound):
            repo.read_metadata(name)
    assert repo.target_file(TARGET).read_bytes() == artifact.read_bytes()
    assert set(repo.targets()) == {TARGET}


def test_health_custom_is_bounded_and_needs_outputs() -> None:
    x = np.zeros((1, 8, 8, 1), np.float32)
    assert "health" not in health_custom(model="m", version="1", format="onnx-fp32")["edgeloop"]
    with pytest.raises(InvalidRequest, match="expected outputs"):
        health_custom(model="m", version="1", format="onnx-fp32", inputs={"image": x})
    big = np.zeros((1000, 8, 8, 1), np.float32)
    with pytest.raises(InvalidRequest, match="fewer inputs"):
        health_custom(model="m", version="1", format="f", inputs={"image": big}, outputs={"p": big})


# -- the operator's commands and enrollment -----------------------------------------------


def test_cli_init_keys_and_publish_a_registered_model(
    tmp_path: Path, reference_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.cli import main
    from cloud_hub.registry import Registry
    from cloud_hub.settings import load_settings

    data_dir = tmp_path / "hub"
    hub = ("--data-dir", str(data_dir))
    model = reference_dir / "digits-edge" / "digits-edge-int8.onnx"
    with Registry.open(load_settings(data_dir=data_dir)) as registry:
        registry.register_model("digits-edge", "1.1.0", "onnx-int8", model)
    x = np.load(reference_dir / "data" / "digits-heldout.npz")["x"][:4]
    golden = tmp_path / "golden.npz"
    np.savez(golden, **{"inputs/image": x, "outputs/probabilities": np.eye(4, 10, dtype="f4")})

    assert main(["ota", "init-keys", "--root-key-dir", str(data_dir / "root"), *hub]) == 1
    assert "inside the hub's data directory" in capsys.readouterr().err
    assert main(["ota", "init-keys", "--root-key-dir", str(tmp_path / "offline"), *hub]) == 0
    capsys.readouterr()
    args = ["ota", "publish", "digits-edge", "--version", "1.1.0", "--format", "onnx-int8"]
    args += ["--profiles", "x86-64-cpu,raspberry-pi-4", "--golden", str(golden), "--json"]
    assert main([*args, *hub]) == 0
    published = json.loads(capsys.readouterr().out)

    path = "models/digits-edge/1.1.0/digits-edge-int8.onnx"
    assert published["target_path"] == path
    repo = TufRepository.for_data_dir(data_dir)
    device = tmp_path / "device"
    pin_root(device, repo.root_json())
    updater = TrustedUpdater(device, RepoServer(repo).fetch)
    target = updater.target_info(path)
    staged = updater.download(target, tmp_path / "slot-a" / "model.onnx")
    assert staged.read_bytes() == model.read_bytes()
    from edge_agent.ota.health import HealthSpec

    spec = HealthSpec.from_custom(target.custom)  # the installer's parser reads it back
    assert np.array_equal(spec.inputs["image"], x)
    assert target.edgeloop["profiles"] == ["raspberry-pi-4", "x86-64-cpu"]


def test_enrollment_hands_the_device_the_root_it_pins_without_cryptography(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    from cloud_hub.grpc_server import HubGrpcServer
    from cloud_hub.registry import Registry
    from cloud_hub.settings import load_settings

    settings = load_settings(data_dir=tmp_path / "hub", grpc_port=0)
    repo = TufRepository.for_data_dir(settings.data_dir)
    repo.init_keys(tmp_path / "offline")
    repo.create(tmp_path / "offline")
    repo.publish_target(TARGET, _artifact(tmp_path / "a.onnx"), _custom())
    # the agent's base install has no cryptography: python-tuf verifies Ed25519 without it
    blocker = tmp_path / "no-cryptography" / "cryptography"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('not installed here')\n")
    pythonpath = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    state = tmp_path / "device"
    with Registry.open(settings) as registry:
        registry.create_fleet("lab")
        issued = registry.create_enrollment_token("lab", ttl=timedelta(hours=1), uses=1).token
        server = HubGrpcServer(registry, settings, broker=None, max_workers=2)
        server.start()
        try:
            done = subprocess.run(
                [
                    *(sys.executable, "-m", "edge_agent.cli", "enroll"),
                    *("--hub", f"127.0.0.1:{server.port}", "--token", issued),
                    *("--state-dir", str(state), "--profile", "raspberry-pi-5"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": pythonpath},
            )
        finally:
            server.stop(grace=None)
    assert done.returncode == 0, done.stderr

    pinned = state / "tuf" / "metadata" / "root.json"
    assert pinned.read_bytes() == repo.root_json()
    assert stat.S_IMODE(pinned.stat().st_mode) == 0o600
    check = (
        "import sys; from pathlib import Path; from edge_agent.ota import TrustedUpdater\n"
        "def fetch(path, cap):\n"
        "    name = Path(sys.argv[2]) / ('metadata/' + path.removeprefix('metadata/'))\n"
        "    if not name.is_file(): raise FileNotFoundError(path)\n"
        "    yield name.read_bytes()\n"
        "u = TrustedUpdater(Path(sys.argv[1]), fetch)\n"
        f"print(u.target_info({TARGET!r}).sha256)\n"
    )
    verified = subprocess.run(
        [sys.executable, "-c", check, str(state), str(repo.root_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error", "PYTHONPATH": pythonpath},
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.strip() == repo.targets()[TARGET].sha256
