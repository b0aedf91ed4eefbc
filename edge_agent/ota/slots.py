"""A/B model slots, the ``current`` pointer and the install journal, on disk.

Layout under the state directory (docs/ota.md)::

    models/a/<file>            one model per slot
    models/b/<file>.partial    a download in progress (resumable)
    models/current             {"slot": "a", "model": ..., "version": ..., "format": ...,
                                "file": ..., "length": ..., "sha256": ..., "previous": {...}}
    models/journal.json        the phase of the last install, so a restart after SIGKILL
                               finishes or undoes it and the hub is told what happened

Both JSON files are replaced atomically (temp file, fsync, rename). :func:`recover` runs at
start-up: an install that had not switched is discarded (a ``.partial`` download is kept so
it resumes), a switched model still on probation stays on probation, and a ``current``
whose file is missing or corrupt gives way to ``previous``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..identity import write_private

__all__ = [
    "PARTIAL_SUFFIX",
    "SLOTS",
    "CurrentModel",
    "Journal",
    "Phase",
    "Slots",
    "file_sha256",
    "recover",
]

_LOG = logging.getLogger(__name__)

SLOTS = ("a", "b")
PARTIAL_SUFFIX = ".partial"
_HASH_CHUNK = 1 << 20


class Phase(str, Enum):
    """Where an install stands; the values are :class:`edge_agent.ota.client.Phase`'s."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    HEALTH_CHECK = "health_check"
    SWITCHING = "switching"  # journal only: swapped in memory, ``current`` maybe not yet
    INSTALLED = "installed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


#: Phases before the switch: a restart in one of them discards the install.
UNFINISHED = frozenset(
    {Phase.DOWNLOADING, Phase.VERIFYING, Phase.STAGED, Phase.HEALTH_CHECK, Phase.SWITCHING}
)


@dataclass(frozen=True)
class CurrentModel:
    """The model to run. ``slot`` None means a file outside the slots (``[model] path``)."""

    slot: str | None
    model: str
    version: str
    format: str
    file: str  # a name inside the slot, or an absolute path when ``slot`` is None
    length: int | None = None
    sha256: str | None = None
    previous: CurrentModel | None = None

    def path(self, state_dir: Path) -> Path:
        if self.slot is None:
            return Path(self.file)
        return state_dir / "models" / self.slot / self.file

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["previous"] = self.previous.to_dict() if self.previous is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CurrentModel:
        previous = data.get("previous")
        slot = data.get("slot")
        if slot is not None and slot not in SLOTS:
            raise ValueError(f"slot {slot!r} is not one of {SLOTS}")
        return cls(
            slot=slot,
            model=str(data["model"]),
            version=str(data["version"]),
            format=str(data["format"]),
            file=str(data["file"]),
            length=None if data.get("length") is None else int(data["length"]),
            sha256=data.get("sha256"),
            previous=cls.from_dict(previous) if previous else None,
        )


@dataclass(frozen=True)
class Journal:
    """The last install: which rollout, where it stands, and whether the hub knows."""

    rollout_id: str
    model: str
    version: str
    format: str
    slot: str
    file: str
    phase: Phase
    reason: str = ""
    percent: int = 0
    gates: tuple[dict[str, Any], ...] = ()
    probation_seconds: float = 0.0
    probation_until: float | None = None  # wall clock; None once probation passed or never
    reported: bool = False  # the hub acknowledged a report of ``phase``
    updated_at: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["gates"] = list(self.gates)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Journal:
        fields = dict(data)
        fields["phase"] = Phase(fields["phase"])
        fields["gates"] = tuple(fields.get("gates") or ())
        return cls(**fields)

    def moved(self, phase: Phase, now: float, **changes: Any) -> Journal:
        """This journal in ``phase`` (not yet reported), with ``changes``."""
        return replace(self, phase=phase, reported=False, updated_at=now, **changes)


class Slots:
    """The slot directory of one state directory; every write is atomic."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.root = self.state_dir / "models"
        self.current_file = self.root / "current"
        self.journal_file = self.root / "journal.json"

    def dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"slot {slot!r} is not one of {SLOTS}")
        return self.root / slot

    def current(self) -> CurrentModel | None:
        data = self._read(self.current_file)
        return None if data is None else _parsed(self.current_file, CurrentModel.from_dict, data)

    def write_current(self, model: CurrentModel | None) -> None:
        if model is None:
            self.current_file.unlink(missing_ok=True)
            _fsync_dir(self.root)
        else:
            write_private(self.current_file, _dumps(model.to_dict()))

    def journal(self) -> Journal | None:
        data = self._read(self.journal_file)
        return None if data is None else _parsed(self.journal_file, Journal.from_dict, data)

    def write_journal(self, journal: Journal) -> None:
        write_private(self.journal_file, _dumps(journal.to_dict()))

    def inactive(self) -> str:
        """The slot a new install goes to: the one ``current`` does not use."""
        current = self.current()
        return "b" if current is not None and current.slot == "a" else "a"

    def used_bytes(self, slot: str) -> int:
        folder = self.dir(slot)
        if not folder.is_dir():
            return 0
        return sum(entry.stat().st_size for entry in folder.iterdir() if entry.is_file())

    def discard(self, slot: str, file: str, *, keep_partial: bool = False) -> None:
        """Delete ``file`` from ``slot``, and its ``.partial`` unless ``keep_partial``."""
        folder = self.dir(slot)
        (folder / file).unlink(missing_ok=True)
        if not keep_partial:
            (folder / (file + PARTIAL_SUFFIX)).unlink(missing_ok=True)
        if folder.is_dir():
            _fsync_dir(folder)

    def clear(self, slot: str, *, keep: str | None = None) -> None:
        """Delete every file in ``slot`` except the one named ``keep``."""
        folder = self.dir(slot)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for entry in folder.iterdir():
            if entry.name != keep and entry.is_file():
                entry.unlink()
        _fsync_dir(folder)

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read it ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data


def recover(state_dir: Path, *, clock: Callable[[], float] = time.time) -> CurrentModel | None:
    """Finish or undo the install a crash interrupted; the model to run (None: the config's).

    The journal then says what happened, with ``reported`` False so the agent tells the
    hub on its next check-in.
    """
    slots = Slots(state_dir)
    current = slots.current()
    journal = slots.journal()
    if journal is not None and journal.phase in UNFINISHED:
        if journal.phase is Phase.SWITCHING and _is_target(current, journal):
            until = clock() + journal.probation_seconds
            note = "switched before the restart; probation restarted"
            slots.write_journal(journal.moved(Phase.INSTALLED, clock(), probation_until=until))
            _LOG.warning("install of %s %s: %s", journal.model, journal.version, note)
        else:
            _discard(slots, journal, current, clock())
    return _usable(slots, current, clock)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- helpers --------------------------------------------------------------------------------


def _discard(slots: Slots, journal: Journal, current: CurrentModel | None, now: float) -> None:
    if current is not None and current.slot == journal.slot:
        raise ConfigError(  # an install never targets the serving slot; refuse to guess
            f"{slots.journal_file}: unfinished install into slot {journal.slot!r}, "
            "which the current model uses"
        )
    slots.discard(journal.slot, journal.file, keep_partial=journal.phase is Phase.DOWNLOADING)
    reason = f"the agent restarted during {journal.phase.value}; the install was discarded"
    slots.write_journal(journal.moved(Phase.FAILED, now, reason=reason))
    _LOG.warning("install of %s %s: %s", journal.model, journal.version, reason)


def _is_target(current: CurrentModel | None, journal: Journal) -> bool:
    return (
        current is not None
        and current.slot == journal.slot
        and current.file == journal.file
        and current.version == journal.version
    )


def _usable(
    slots: Slots, current: CurrentModel | None, clock: Callable[[], float]
) -> CurrentModel | None:
    """``current`` when its file is intact, else ``previous`` (recorded), else None."""
    while current is not None:
        problem = _problem(slots.state_dir, current)
        if problem is None:
            return current
        _LOG.error("model %s %s: %s; falling back", current.model, current.version, problem)
        fallback = current.previous
        slots.write_current(fallback)
        journal = slots.journal()
        if journal is not None and journal.version == current.version:
            reason = f"{problem}; rolled back at start-up"
            slots.write_journal(journal.moved(Phase.ROLLED_BACK, clock(), reason=reason))
        current = fallback
    return None


def _problem(state_dir: Path, model: CurrentModel) -> str | None:
    path = model.path(state_dir)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"{path}: cannot read it ({exc.strerror or exc})"
    if model.length is not None and size != model.length:
        return f"{path}: {size} bytes, expected {model.length}"
    if model.sha256 is not None and file_sha256(path) != model.sha256:
        return f"{path}: sha256 does not match the installed artifact's"
    return None


def _parsed(path: Path, parse: Callable[[Mapping[str, Any]], Any], data: dict[str, Any]) -> Any:
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a valid model record ({exc!r})") from exc


def _dumps(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
