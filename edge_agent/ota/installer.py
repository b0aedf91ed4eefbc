"""The install state machine: a verified artifact into the inactive slot, then a safe switch.

:meth:`Installer.install` goes, in order (docs/ota.md): free-disk check -> download into
the inactive slot (``<file>.partial``, resumed from the bytes already there) -> verify
(length and hashes from the signed metadata) BEFORE anything parses the file -> load and
warm a new engine beside the running one -> health check -> :meth:`ModelService.swap`
(requests in flight finish on the old engine; none fails) -> write ``current`` (keeping
``previous``) -> close the old engine once it is released -> probation. Each phase is
written to the journal before it starts, so :func:`~edge_agent.ota.slots.recover` can undo
or finish it after a SIGKILL, and reported to the hub through ``reporter``.

Until the switch, the running model is never touched: any failure leaves it serving and
ends in FAILED with the reason. After the switch, :meth:`Installer.check_probation` judges
the rollout's gates on each telemetry window and :meth:`Installer.rollback` goes back to
the previous model.

The network and trust parts come in through small protocols (:class:`Downloader`,
:class:`Verifier`), so the real gRPC client and TUF updater plug in and tests use fakes.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ..server.models import InferenceEngine, ModelService
from .health import DEFAULT_RUNS, Gate, HealthSpec, check_health, gate_breach
from .slots import PARTIAL_SUFFIX, CurrentModel, Journal, Phase, Slots

__all__ = [
    "DISK_MARGIN_BYTES",
    "SWITCH_PAUSE_S",
    "Assignment",
    "Downloader",
    "Installer",
    "LoadedEngine",
    "Outcome",
    "Reporter",
    "StatusUpdate",
    "Verifier",
]

_LOG = logging.getLogger(__name__)

#: The pause between a switch's steps in the agent (see :class:`Installer`): a swap
#: that reuses an optimized graph costs ~1.4 ms of CPU here; in pieces, requests on a
#: saturated 2-core device wait for one piece, not all of it (``python -m bench ota``).
SWITCH_PAUSE_S = 0.001

DISK_MARGIN_BYTES = 1 << 20
_PERCENT_STEP = 10  # DOWNLOADING reports at most every 10 %


class LoadedEngine(InferenceEngine, Protocol):
    def close(self) -> None: ...


class Downloader(Protocol):
    """Fetches a target into ``dest``, resuming after the bytes ``dest`` already holds.

    Never writes more than ``expected_length`` bytes; ``progress(done, total)`` may raise
    to stop the download (the installer does so when the hub aborts the rollout).
    """

    def download_to(
        self,
        path: str,
        dest: Path,
        *,
        expected_length: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> object: ...


class Verifier(Protocol):
    """Checks a downloaded file against the signed target (length and hashes); raises."""

    def verify_file(self, target: Any, path: Path) -> None: ...


class Target(Protocol):
    """What trust verified about an artifact (``edge_agent.ota.trust.VerifiedTarget``)."""

    @property
    def path(self) -> str: ...

    @property
    def length(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    @property
    def custom(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Assignment:
    """What the hub wants this device to run (the wire's ``Assignment``)."""

    rollout_id: str
    model: str
    version: str
    format: str
    target_path: str
    probation_seconds: float = 0.0
    gates: tuple[Gate, ...] = ()

    @classmethod
    def from_message(cls, message: Any) -> Assignment:
        """From an ``edgeloop.v1.Assignment`` or :class:`edge_agent.ota.client.Assignment`."""
        return cls(
            rollout_id=message.rollout_id,
            model=message.model_name,
            version=message.model_version,
            format=message.model_format,
            target_path=message.target_path,
            probation_seconds=float(message.probation_seconds),
            gates=tuple(Gate.from_message(gate) for gate in message.gates),
        )


@dataclass(frozen=True)
class StatusUpdate:
    """One status report (the wire's ``StatusReport`` without the device id)."""

    rollout_id: str
    model: str
    version: str
    phase: Phase
    percent: int = 0
    reason: str = ""
    timestamp_ms: int = 0


#: Sends a status report; returns True when the hub says to abort the update.
Reporter = Callable[[StatusUpdate], "bool | None"]


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: str
    version: str

    @property
    def installed(self) -> bool:
        return self.phase is Phase.INSTALLED


class _Failed(Exception):
    def __init__(self, reason: str, *, keep_partial: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keep_partial = keep_partial


class Installer:
    """Installs assignments into the A/B slots of ``state_dir`` and serves them on ``service``.

    ``engine_loader(path)`` loads and warms an engine. ``profile`` is this device's profile
    name (a target whose ``custom.edgeloop.profiles`` leaves it out is refused).
    ``disk_free(path)`` gives the free bytes of the filesystem holding ``path``.
    ``checkpoint(name)`` is called at each step (``verifying``, ``staged``, ``health_check``,
    ``switching``, ``swapped``, ``current_written``, ``installed``): a hook for crash tests
    and tracing. ``baseline`` is the model the service runs while ``current`` does not
    exist (``[model] path``): the first install keeps it as ``previous``, so it can roll
    back to it. One install or rollback runs at a time. ``step_pause_s`` is a sleep between
    the steps of a switch (after the warm-up and health check, before the old engine is
    closed), so on a small, busy device the requests being served interleave with them
    (:data:`SWITCH_PAUSE_S` in the agent).
    """

    def __init__(
        self,
        state_dir: Path,
        service: ModelService,
        engine_loader: Callable[[Path], LoadedEngine],
        downloader: Downloader,
        verifier: Verifier,
        reporter: Reporter,
        profile: str,
        *,
        clock: Callable[[], float] = time.time,
        disk_free: Callable[[Path], int] | None = None,
        checkpoint: Callable[[str], None] | None = None,
        release_timeout_s: float = 30.0,
        health_runs: int = DEFAULT_RUNS,
        baseline: CurrentModel | None = None,
        step_pause_s: float = 0.0,
    ) -> None:
        self.slots = Slots(state_dir)
        self.service = service
        self._load = engine_loader
        self._downloader = downloader
        self._verifier = verifier
        self._reporter = reporter
        self.profile = profile
        self._clock = clock
        self._disk_free = disk_free or (lambda path: shutil.disk_usage(path).free)
        self._checkpoint = checkpoint or (lambda name: None)
        self._release_timeout_s = release_timeout_s
        self._health_runs = health_runs
        self._pause_s = step_pause_s
        self._baseline = baseline
        self._lock = threading.Lock()

    # -- install ------------------------------------------------------------------------

    def install(self, assignment: Assignment, target: Target) -> Outcome:
        """Install ``target`` for ``assignment``; the running model serves until the switch."""
        with self._lock:
            current = self.slots.current() or self._baseline
            if current is not None and (current.model, current.version) == (
                assignment.model,
                assignment.version,
            ):
                return Outcome(Phase.INSTALLED, "already running", assignment.version)
            journal = Journal(
                rollout_id=assignment.rollout_id,
                model=assignment.model,
                version=assignment.version,
                format=assignment.format,
                slot=self.slots.inactive(),
                file=_file_name(target.path) or "invalid",
                phase=Phase.DOWNLOADING,
                gates=tuple(gate.to_dict() for gate in assignment.gates),
                probation_seconds=float(assignment.probation_seconds),
                updated_at=self._clock(),
            )
            try:
                spec = self._preflight(target)
                path = self._stage(journal, target, current)
                engine = self._load_healthy(self._enter(journal, Phase.HEALTH_CHECK), path, spec)
            except _Failed as failed:
                return self._fail(journal, failed)
            return self._switch(journal, target, current, engine)

    def _preflight(self, target: Target) -> HealthSpec:
        if not _file_name(target.path):
            raise _Failed(f"target path {target.path!r} does not end in a usable file name")
        edgeloop = target.custom.get("edgeloop", {}) if isinstance(target.custom, Mapping) else {}
        profiles = edgeloop.get("profiles") if isinstance(edgeloop, Mapping) else None
        if profiles and self.profile not in profiles:
            raise _Failed(
                f"target {target.path} is for profiles {', '.join(map(str, profiles))}, "
                f"not this device's {self.profile}"
            )
        try:
            return HealthSpec.from_custom(target.custom)
        except ValueError as exc:
            raise _Failed(f"target {target.path}: {exc}") from exc

    def _stage(self, journal: Journal, target: Target, current: CurrentModel | None) -> Path:
        """Download and verify into the inactive slot; the verified file's path."""
        self.slots.write_journal(journal)
        slot_dir = self.slots.dir(journal.slot)
        partial = slot_dir / (journal.file + PARTIAL_SUFFIX)
        self._check_disk(journal.slot, target.length)
        on_disk = self.slots.current()
        previous = on_disk.previous if on_disk is not None else None
        if on_disk is not None and previous is not None and previous.slot == journal.slot:
            self.slots.write_current(replace(on_disk, previous=None))  # about to be overwritten
        self.slots.clear(journal.slot, keep=partial.name)
        if partial.exists() and partial.stat().st_size > target.length:
            partial.unlink()
        self._report(journal)
        self._download(journal, target, partial)
        journal = self._enter(journal, Phase.VERIFYING)
        try:
            self._verifier.verify_file(target, partial)
        except Exception as exc:  # any doubt about the bytes rejects them
            partial.unlink(missing_ok=True)
            raise _Failed(f"verification failed: {exc}") from exc
        final = slot_dir / journal.file
        os.replace(partial, final)
        self._enter(journal, Phase.STAGED)
        return final

    def _check_disk(self, slot: str, length: int) -> None:
        need = 2 * length + DISK_MARGIN_BYTES
        free = self._disk_free(self.slots.root) + self.slots.used_bytes(slot)
        if free < need:
            raise _Failed(
                f"not enough disk space in {self.slots.root}: {free} bytes free, need {need} "
                f"(twice the artifact's {length} bytes plus {DISK_MARGIN_BYTES})",
                keep_partial=True,
            )

    def _download(self, journal: Journal, target: Target, partial: Path) -> None:
        last = [-_PERCENT_STEP]

        def progress(done: int, total: int) -> None:
            percent = min(100, done * 100 // max(total, 1))
            if percent - last[0] >= _PERCENT_STEP or (percent == 100 and last[0] != 100):
                last[0] = percent
                if self._send(_status(journal, self._clock(), percent=percent)):
                    raise _Failed("aborted by the hub")

        try:
            self._downloader.download_to(
                target.path, partial, expected_length=target.length, progress=progress
            )
        except _Failed:
            partial.unlink(missing_ok=True)
            raise
        except Exception as exc:  # transport trouble: keep what came for the next attempt
            raise _Failed(f"download failed: {exc}", keep_partial=True) from exc

    def _load_healthy(self, journal: Journal, path: Path, spec: HealthSpec) -> LoadedEngine:
        try:
            engine = self._load(path)
        except Exception as exc:
            raise _Failed(f"the model does not load: {exc}") from exc
        try:
            verdict = check_health(engine, spec, runs=self._health_runs)
        except BaseException:
            engine.close()
            raise
        if not verdict.ok:
            engine.close()
            raise _Failed(verdict.reason)
        _LOG.info("model %s %s: %s", journal.model, journal.version, verdict.reason)
        return engine

    def _switch(
        self,
        journal: Journal,
        target: Target,
        current: CurrentModel | None,
        engine: LoadedEngine,
    ) -> Outcome:
        journal = self._enter(journal, Phase.SWITCHING, report=False)
        self._pause()
        old = self.service.swap(engine, journal.version)
        self._checkpoint("swapped")
        previous = self.slots.current() or self._baseline
        self.slots.write_current(
            CurrentModel(
                slot=journal.slot,
                model=journal.model,
                version=journal.version,
                format=journal.format,
                file=journal.file,
                length=target.length,
                sha256=target.sha256,
                previous=replace(previous, previous=None) if previous is not None else None,
            )
        )
        self._checkpoint("current_written")
        until = self._clock() + journal.probation_seconds if journal.probation_seconds else None
        self._enter(journal, Phase.INSTALLED, probation_until=until)
        self._retire(old)
        _LOG.info("installed %s %s in slot %s", journal.model, journal.version, journal.slot)
        return Outcome(Phase.INSTALLED, "installed", journal.version)

    def _fail(self, journal: Journal, failed: _Failed) -> Outcome:
        try:
            self.slots.discard(journal.slot, journal.file, keep_partial=failed.keep_partial)
        except OSError:
            _LOG.exception("could not clean slot %s", journal.slot)
        _LOG.warning("install of %s %s failed: %s", journal.model, journal.version, failed.reason)
        self._enter(journal, Phase.FAILED, reason=failed.reason)
        return Outcome(Phase.FAILED, failed.reason, journal.version)

    # -- probation and rollback ---------------------------------------------------------

    def check_probation(self, stats: Mapping[str, Any]) -> Outcome | None:
        """Judge one telemetry window (a ``Recorder.snapshot``) against the rollout's gates.

        Rolls back on a breach; marks probation passed once its time is up. None while
        nothing changed (or nothing is on probation).
        """
        journal = self.slots.journal()
        if journal is None or journal.phase is not Phase.INSTALLED:
            return None
        if journal.probation_until is None:
            return None
        breach = gate_breach((Gate.from_message(g) for g in journal.gates), stats)
        if breach is not None:
            return self.rollback(f"probation: {breach}")
        if self._clock() >= journal.probation_until:
            self.slots.write_journal(replace(journal, probation_until=None))
            _LOG.info("model %s %s passed probation", journal.model, journal.version)
            return Outcome(Phase.INSTALLED, "probation passed", journal.version)
        return None

    def rollback(self, reason: str) -> Outcome:
        """Serve the previous model again; ROLLED_BACK (or FAILED when there is none)."""
        with self._lock:
            current = self.slots.current()
            journal = self.slots.journal()
            version = current.version if current is not None else self.service.version
            previous = current.previous if current is not None else None
            if current is None or previous is None:
                return Outcome(
                    Phase.FAILED, f"cannot roll back ({reason}): no previous model", version
                )
            try:
                engine = self._load(previous.path(self.slots.state_dir))
            except Exception as exc:
                why = f"cannot roll back ({reason}): the previous model does not load: {exc}"
                _LOG.error("%s", why)
                return Outcome(Phase.FAILED, why, version)
            # back to ``[model] path`` (no slot) means no ``current`` file: the config rules
            self.slots.write_current(
                replace(previous, previous=None) if previous.slot is not None else None
            )
            if journal is not None and journal.version == current.version:
                self._enter(journal, Phase.ROLLED_BACK, reason=reason, probation_until=None)
            self._pause()
            old = self.service.swap(engine, previous.version)
            self._retire(old)
            if current.slot is not None:
                self.slots.clear(current.slot)
            _LOG.warning("rolled back %s to %s: %s", current.version, previous.version, reason)
            return Outcome(Phase.ROLLED_BACK, reason, previous.version)

    # -- what the hub should hear -------------------------------------------------------

    def last_status(self) -> StatusUpdate | None:
        """The journal's last phase as a report (for ``CheckInRequest.last_status``)."""
        journal = self.slots.journal()
        return None if journal is None else _status(journal, journal.updated_at)

    def report_pending(self) -> bool:
        """Resend the journal's last phase if the hub has not acknowledged it; True if sent."""
        journal = self.slots.journal()
        if journal is None or journal.reported:
            return False
        self._report(journal)
        return True

    # -- helpers ------------------------------------------------------------------------

    def _enter(
        self, journal: Journal, phase: Phase, *, report: bool = True, **changes: Any
    ) -> Journal:
        """Record ``phase`` in the journal, hit its checkpoint, then report it."""
        journal = journal.moved(phase, self._clock(), **changes)
        self.slots.write_journal(journal)
        self._checkpoint(phase.value.lower())
        if report:
            self._report(journal)
        return journal

    def _report(self, journal: Journal) -> None:
        abort = self._send(_status(journal, journal.updated_at))
        if abort is not None:  # delivered
            self.slots.write_journal(replace(journal, reported=True))
        if abort and journal.phase in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.STAGED):
            raise _Failed("aborted by the hub")

    def _send(self, status: StatusUpdate) -> bool | None:
        """Report; True when the hub says abort, False when not, None when undelivered."""
        try:
            return bool(self._reporter(status))
        except Exception:
            _LOG.warning("could not report %s to the hub", status.phase.value, exc_info=True)
            return None

    def _retire(self, old: InferenceEngine | None) -> None:
        if old is None:
            return
        if not self.service.wait_released(old, self._release_timeout_s):
            _LOG.warning(
                "the old engine was still busy after %.0fs; left open", self._release_timeout_s
            )
            return
        close = getattr(old, "close", None)
        if close is not None:
            self._pause()
            close()

    def _pause(self) -> None:
        """Give the cores back to the requests being served between two steps of a switch."""
        if self._pause_s > 0:
            time.sleep(self._pause_s)


def _status(journal: Journal, when: float, *, percent: int | None = None) -> StatusUpdate:
    done = journal.phase in (Phase.INSTALLED, Phase.FAILED, Phase.ROLLED_BACK)
    return StatusUpdate(
        rollout_id=journal.rollout_id,
        model=journal.model,
        version=journal.version,
        phase=journal.phase,
        percent=percent if percent is not None else (100 if done else journal.percent),
        reason=journal.reason,
        timestamp_ms=int(when * 1000),
    )


def _file_name(target_path: str) -> str:
    """The slot file name for a target path; empty when it has no usable one."""
    name = PurePosixPath(target_path).name
    if not name or name.startswith(".") or name.endswith(PARTIAL_SUFFIX):
        return ""
    return name
