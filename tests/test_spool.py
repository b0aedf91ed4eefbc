"""The on-disk spool (bounds, durability, order) and the forwarder's lanes over it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.errors import ConfigError
from edge_agent.telemetry.forward import Forwarder, Outgoing
from edge_agent.telemetry.settings import ForwardPolicy
from edge_agent.telemetry.spool import SPOOL_FILE, Spool, SpoolError

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "edgeloop/v1/lab/pi-1/telemetry"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _put(spool: Spool, payload: bytes) -> int:
    row_id = spool.put(TOPIC, payload)
    assert row_id is not None
    return row_id


def _size(payload: bytes) -> int:
    return len(payload) + len(TOPIC)


# -- the spool -------------------------------------------------------------------------------


def test_messages_come_back_in_order_until_acked(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path) as spool:
        ids = [_put(spool, f"m{i}".encode()) for i in range(5)]
        assert ids == sorted(ids)
        assert [m.payload for m in spool.after(0, 10)] == [f"m{i}".encode() for i in range(5)]
        assert [m.payload for m in spool.after(ids[1], 2)] == [b"m2", b"m3"]
        assert [m.id for m in spool.after(0, 10, up_to=ids[2])] == ids[:3]
        assert spool.ack([ids[0], ids[3]]) == 2
        assert spool.ack(ids[0]) == 0  # already gone
        assert [m.payload for m in spool.after(0, 10)] == [b"m1", b"m2", b"m4"]
        assert spool.count == 3 and spool.stats().bytes == sum(_size(b"m1") for _ in range(3))


def test_spool_is_sqlite_in_wal_mode_in_the_state_dir(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path / "state"):
        pass
    with sqlite3.connect(tmp_path / "state" / SPOOL_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_byte_bound_is_never_exceeded_and_the_oldest_are_dropped(tmp_path: Path) -> None:
    payloads = [bytes([65 + i % 26]) * (50 + (i * 37) % 300) for i in range(200)]
    with Spool.in_dir(tmp_path, max_bytes=2000) as spool:
        ids = []
        for payload in payloads:
            ids.append(spool.put(TOPIC, payload))
            stats = spool.stats()
            assert stats.bytes <= 2000
            with sqlite3.connect(spool.path) as db:
                assert db.execute("SELECT SUM(size) FROM messages").fetchone()[0] == stats.bytes
        kept = spool.after(0, 1000)
        # what is left is the newest messages, in order, and the rest were counted as dropped
        assert [m.id for m in kept] == ids[-len(kept) :]
        assert [m.payload for m in kept] == payloads[-len(kept) :]
        assert spool.stats().dropped == len(payloads) - len(kept)
        # the bound is used: the next older message would not have fitted
        total = sum(_size(m.payload) for m in kept)
        assert total + _size(payloads[-len(kept) - 1]) > 2000


def test_a_message_bigger_than_the_bound_is_dropped_alone(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path, max_bytes=500) as spool:
        first = spool.put(TOPIC, b"small")
        assert spool.put(TOPIC, b"x" * 600) is None
        assert [m.id for m in spool.after(0, 10)] == [first]
        assert spool.stats().dropped == 1


def test_messages_older_than_the_age_bound_are_dropped(tmp_path: Path) -> None:
    clock = Clock()
    with Spool(tmp_path / "s.sqlite3", max_age_s=60, clock=clock) as spool:
        spool.put(TOPIC, b"old-1")
        spool.put(TOPIC, b"old-2")
        clock.now += 30
        spool.put(TOPIC, b"middle")
        clock.now += 45  # the first two are 75 s old now
        spool.put(TOPIC, b"new")
        assert [m.payload for m in spool.after(0, 10)] == [b"middle", b"new"]
        clock.now += 31
        assert spool.prune() == 1
        assert [m.payload for m in spool.after(0, 10)] == [b"new"]
        assert spool.stats().dropped == 3


def test_contents_ids_and_drop_count_survive_reopening(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path, max_bytes=200) as spool:
        for i in range(10):
            spool.put(TOPIC, f"message-{i}".encode() * 3)
        spool.ack([m.id for m in spool.after(0, 100)][:1])
        before = (spool.after(0, 100), spool.stats(), spool.last_id)
    with Spool.in_dir(tmp_path, max_bytes=200) as spool:
        assert (spool.after(0, 100), spool.stats(), spool.last_id) == before
        spool.ack([m.id for m in spool.after(0, 100)])
    with Spool.in_dir(tmp_path, max_bytes=200) as spool:
        # ids never go back, even once the spool was emptied and reopened
        assert spool.count == 0 and spool.last_id == before[2]
        assert spool.put(TOPIC, b"next") == before[2] + 1


_KILLED_WRITER = """
import sys
from edge_agent.telemetry.spool import Spool
spool = Spool.in_dir(sys.argv[1])
for i in range(int(sys.argv[2])):
    spool.put("t", b"payload-%d" % i)
    print(i, flush=True)
import time
time.sleep(600)
"""


def test_what_was_put_survives_kill_9(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), "50"],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        lines = [child.stdout.readline() for _ in range(50)]
        assert lines[-1].strip() == "49"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout:
            child.stdout.close()
    with Spool.in_dir(tmp_path) as spool:
        assert [m.payload for m in spool.after(0, 100)] == [b"payload-%d" % i for i in range(50)]


def test_puts_from_many_threads_are_all_kept_in_id_order(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path) as spool:

        def put_many(tag: int) -> None:
            for i in range(100):
                spool.put(TOPIC, f"{tag}-{i}".encode())

        threads = [threading.Thread(target=put_many, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        messages = spool.after(0, 1000)
        assert len(messages) == 400 == spool.count
        for tag in range(4):  # each writer's messages keep their order
            own = [m.payload for m in messages if m.payload.startswith(f"{tag}-".encode())]
            assert own == [f"{tag}-{i}".encode() for i in range(100)]


def test_bad_limits_and_unusable_paths_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_bytes = 0"):
        Spool(tmp_path / "s", max_bytes=0)
    with pytest.raises(ConfigError, match="max_age_s = -1"):
        Spool(tmp_path / "s", max_age_s=-1)
    with pytest.raises(SpoolError, match="missing-dir"):
        Spool(tmp_path / "missing-dir" / "s.sqlite3")
    spool = Spool.in_dir(tmp_path)
    spool.close()
    with pytest.raises(SpoolError, match="cannot write"):
        spool.put(TOPIC, b"late")
    with pytest.raises(SpoolError, match="cannot read"):
        spool.after(0, 10)


# -- the forwarder ---------------------------------------------------------------------------


def _forwarder(spool: Spool, clock: Clock, **policy: float) -> Forwarder:
    return Forwarder(spool, ForwardPolicy(**policy), clock)  # type: ignore[arg-type]


def _send(forwarder: Forwarder, batch: list[Outgoing], first_mid: int) -> list[int]:
    mids = list(range(first_mid, first_mid + len(batch)))
    for mid, outgoing in zip(mids, batch, strict=True):
        forwarder.sent(mid, outgoing)
    return mids


def test_backlog_is_what_the_spool_held_at_connect_and_live_goes_first(tmp_path: Path) -> None:
    clock = Clock()
    with Spool.in_dir(tmp_path) as spool:
        old = [spool.put(TOPIC, f"old-{i}".encode()) for i in range(3)]
        forwarder = _forwarder(spool, clock, backlog_inflight=2, max_inflight=8)
        new = [spool.put(TOPIC, f"new-{i}".encode()) for i in range(2)]
        batch = forwarder.next_batch()
        assert [(o.message.id, o.historical) for o in batch] == [
            (new[0], False),
            (new[1], False),
            (old[0], True),
            (old[1], True),
        ]
        mids = _send(forwarder, batch, 1)
        assert forwarder.next_batch() == []  # backlog window full, no new live messages
        assert forwarder.acked(mids[2], accepted=True)
        clock.now += 1
        assert [o.message.id for o in forwarder.next_batch()] == [old[2]]


def test_messages_leave_the_spool_only_when_acked(tmp_path: Path) -> None:
    clock = Clock()
    with Spool.in_dir(tmp_path) as spool:
        forwarder = _forwarder(spool, clock)
        ids = [spool.put(TOPIC, b"m") for _ in range(3)]
        mids = _send(forwarder, forwarder.next_batch(), 10)
        assert forwarder.inflight == 3 and forwarder.live_pending()
        forwarder.acked(mids[0], accepted=True)
        forwarder.acked(mids[2], accepted=False)  # refused by the broker: dropped, counted
        assert not forwarder.acked(999, accepted=True)  # not ours
        assert forwarder.flush_acks() == 2
        assert [m.id for m in spool.after(0, 10)] == [ids[1]]
        assert (forwarder.acked_count, forwarder.rejected_count) == (1, 1)
        forwarder.acked(mids[1], accepted=True)
        forwarder.flush_acks()
        assert spool.count == 0 and not forwarder.live_pending()


def test_live_messages_are_bounded_in_flight(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path) as spool:
        forwarder = _forwarder(spool, Clock(), max_inflight=4)
        for _ in range(10):
            spool.put(TOPIC, b"m")
        mids = _send(forwarder, forwarder.next_batch(), 1)
        assert len(mids) == 4 and forwarder.next_batch() == []
        forwarder.acked(mids[0], accepted=True)
        assert len(forwarder.next_batch()) == 1


def test_backlog_drains_at_a_bounded_rate(tmp_path: Path) -> None:
    clock = Clock()
    with Spool.in_dir(tmp_path) as spool:
        for _ in range(100):
            spool.put(TOPIC, b"old")
        forwarder = _forwarder(spool, clock, backlog_inflight=5, backlog_rate=10.0)
        sent = 0
        next_mid = 1
        for _ in range(20):  # two seconds in steps of 0.1 s, every message acked at once
            batch = forwarder.next_batch()
            for mid in _send(forwarder, batch, next_mid):
                forwarder.acked(mid, accepted=True)
            next_mid += len(batch)
            sent += len(batch)
            clock.now += 0.1
        assert 20 <= sent <= 25  # 10 per second plus the initial burst of 5
        assert forwarder.backlog_left


def test_backlog_ends_when_the_rest_was_dropped(tmp_path: Path) -> None:
    with Spool.in_dir(tmp_path) as spool:
        ids = [_put(spool, b"old") for _ in range(3)]
        forwarder = _forwarder(spool, Clock())
        spool.ack(ids)  # e.g. dropped by the byte bound
        assert forwarder.next_batch() == []
        assert not forwarder.backlog_left
