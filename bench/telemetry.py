"""What live telemetry costs the inference loop: throughput with it against without.

The loop is in-process inference on ``digits-edge-int8.onnx``, batch 1, on held-out
digits: about 45 us a request on the reference machine, so the per-request cost of
telemetry shows as much as it ever will. Two costs are measured in one run, with a
:class:`TelemetryPublisher` publishing to a private Mosquitto every :data:`INTERVAL_S`
(snapshot, system probe, spool write, MQTT 5 QoS 1) all along:

- **the hot path**: requests *with* telemetry (timed, then :meth:`Recorder.record` with
  probabilities and inputs) and *without* (``engine.run`` alone) alternate call by call
  (:func:`bench._harness.interleaved_ns`, blocks of one), so drift hits both alike. The
  run is cut into :data:`ROUNDS` rounds; each gives the ratio of the two mean times
  (means, since folds and input samples are rare but real costs), and the hot-path ratio
  is the median round, so a neighbour's burst on a shared machine spoils one round only.
  Calls over :data:`PREEMPTED_NS` (20x a request: the thread was descheduled, which
  telemetry's own work never takes that long to cause) are left out of both means; their
  share is reported as ``preempted_frac``;
- **the background**: the CPU time of the publisher's own threads over the run (from
  the kernel's per-thread counters), as a fraction of the wall time.

- **the agent's throughput as served**: the same engine behind two local HTTP servers
  (:mod:`edge_agent.server`), one whose model service records every request into the
  live recorder and one that records nothing; keep-alive binary requests to the two
  alternate call by call, in rounds as above.

``throughput_ratio`` is the served ratio x (1 - background fraction): the agent's
throughput at its API with telemetry on against off, conservative in that every cycle of
the publisher's threads counts as taken from serving (goal >= 0.95).
``inprocess_ratio`` is the same for the bare hot path (``engine.run`` plus ``record``
against ``engine.run``), the harshest view: a 40 us model with nothing else per request.
``record_p50_us`` is the median of one ``Recorder.record`` call on its own.
"""

from __future__ import annotations

import http.client
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import TypeVar

import numpy as np
import psutil

from edge_agent.engine import Engine
from edge_agent.server import LocalInferenceServer, ModelService
from edge_agent.telemetry.aggregate import Recorder
from edge_agent.telemetry.publisher import TelemetryPublisher
from edge_agent.telemetry.settings import ForwardPolicy, MqttSettings
from edge_agent.telemetry.spool import Spool
from edge_agent.telemetry.system import SystemProbe

from ._harness import (
    PROFILE,
    Figure,
    Goal,
    figures_dict,
    interleaved_ns,
    log,
    p50_us,
    print_table,
    reference_dir,
)
from ._local_api import binary_request
from ._mosquitto import Mosquitto

MODEL = Path("digits-edge", "digits-edge-int8.onnx")
HELDOUT = Path("data", "digits-heldout.npz")
INTERVAL_S = 0.5
RATIO_GOAL = Goal(">=", 0.95)
# (quick, full) iteration counts: each iteration is one request with and one without.
ITERATIONS = (40_000, 400_000)
ROUNDS = 8
PREEMPTED_NS = 1_000_000
RECORD_ITERATIONS = (20_000, 200_000)
# (quick, full) pairs of HTTP requests, one to each server.
SERVED_ITERATIONS = (8_000, 64_000)
WARMUP = 2_000
T = TypeVar("T")


def run(quick: bool) -> dict[str, object]:
    """Measure, print the table, return the figures."""
    models = reference_dir()
    iterations = _pick(ITERATIONS, quick)
    with (
        Engine.load(models / MODEL, profile=PROFILE, backend="onnxruntime") as engine,
        tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp,
        Mosquitto(Path(tmp)) as broker,
    ):
        feeds = _feeds(models, engine)
        output = engine.outputs[0].name
        recorder = Recorder(time.time())
        spool = Spool.in_dir(Path(tmp) / "state")
        publisher = _publisher(broker.port, spool, recorder, Path(tmp))
        try:
            publisher.start()
            _wait_connected(publisher)
            log(f"telemetry: {iterations} interleaved pairs, publishing every {INTERVAL_S:g} s")
            calls = _calls(engine, feeds, output, recorder)
            served_pairs = _pick(SERVED_ITERATIONS, quick)
            with _thread_cpu(publisher) as background:
                rounds = [
                    interleaved_ns(calls, iterations // ROUNDS, WARMUP) for _ in range(ROUNDS)
                ]
                log(f"telemetry: {served_pairs} interleaved HTTP request pairs")
                served_rounds = _served_rounds(engine, feeds[0], output, recorder, served_pairs)
            acked = int(publisher.stats()["acked"])
        finally:
            publisher.stop(timeout=10)
            spool.close()
        record_us = _record_p50_us(feeds, engine, output, _pick(RECORD_ITERATIONS, quick))
    expected = int(background.wall_s / INTERVAL_S) - 1
    if acked < expected:
        raise RuntimeError(f"only {acked} of about {expected} telemetry messages were acked")
    means = sorted((_mean_us(off), _mean_us(on)) for off, on in rounds)
    samples = np.concatenate([np.concatenate(pair) for pair in rounds])
    preempted = float(np.mean(samples > PREEMPTED_NS))
    off_us, on_us = means[len(means) // 2]  # the round with the median off time, for show
    hot = median(off / on for off, on in means)
    inprocess = hot * (1.0 - background.fraction)
    served_means = [(_mean_us(off), _mean_us(on)) for off, on in served_rounds]
    served = median(off / on for off, on in served_means)
    ratio = served * (1.0 - background.fraction)
    served_off_us = median(off for off, _ in served_means)
    figures = [
        Figure("mean_us_off", "per request, telemetry off", off_us, "us"),
        Figure("mean_us_on", "per request, telemetry on", on_us, "us"),
        Figure("record_p50_us", "Recorder.record p50", record_us, "us"),
        Figure("hot_path_ratio", "hot path: off / on, median round", hot, "x"),
        Figure("publisher_cpu_frac", "publisher threads, CPU / wall", background.fraction, "frac"),
        Figure("preempted_frac", "calls left out (over 1 ms)", preempted, "frac"),
        Figure("inprocess_ratio", "in process: throughput on / off", inprocess, "x"),
        Figure("served_us_off", "per HTTP request, telemetry off", served_off_us, "us"),
        Figure("throughput_ratio", "served: throughput on / off", ratio, "x", RATIO_GOAL),
    ]
    title = (
        f"telemetry: digits-edge-int8.onnx batch 1, {PROFILE}, publishing every "
        f"{INTERVAL_S:g} s to a private mosquitto; {iterations} interleaved pairs"
    )
    print_table(title, figures)
    return {
        **figures_dict(figures),
        "throughput_off_rps": round(1e6 / served_off_us, 1),
        "throughput_on_rps": round(1e6 / served_off_us * ratio, 1),
        "telemetry_messages": acked,
    }


def _served_rounds(
    engine: Engine, feed: dict[str, np.ndarray], output: str, recorder: Recorder, pairs: int
) -> list[list[np.ndarray]]:
    """Interleaved HTTP requests to a server that records and to one that does not."""
    with (
        LocalInferenceServer(ModelService(engine, "digits", "1"), port=0) as plain,
        LocalInferenceServer(ModelService(engine, "digits", "1", recorder=recorder), port=0) as rec,
    ):
        conns = [
            http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30) for srv in (plain, rec)
        ]
        try:
            calls = [binary_request(conn, feed, output) for conn in conns]
            return [interleaved_ns(calls, pairs // ROUNDS, WARMUP // 10) for _ in range(ROUNDS)]
        finally:
            for conn in conns:
                conn.close()


def _mean_us(samples_ns: np.ndarray) -> float:
    """Mean of the calls that were not preempted, in microseconds."""
    return float(samples_ns[samples_ns <= PREEMPTED_NS].mean()) / 1e3


def _calls(
    engine: Engine, feeds: list[dict[str, np.ndarray]], output: str, recorder: Recorder
) -> list[Callable[[], object]]:
    """A request without telemetry and one with it, each on the next held-out digit."""
    count = len(feeds)
    clock = time.perf_counter
    record = recorder.record
    state = {"off": 0, "on": 0}

    def off() -> None:
        i = state["off"] = state["off"] + 1
        engine.run(feeds[i % count])

    def on() -> None:
        i = state["on"] = state["on"] + 1
        feed = feeds[i % count]
        began = clock()
        outputs = engine.run(feed)
        record(clock() - began, True, outputs[output], feed)

    return [off, on]


class _Background:
    """CPU seconds of some threads over a wall-clock span (filled in on exit)."""

    cpu_s = 0.0
    wall_s = 0.0

    @property
    def fraction(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@contextmanager
def _thread_cpu(publisher: TelemetryPublisher) -> Iterator[_Background]:
    """The CPU time of the publisher's threads (MQTT loop, ticker) while the block runs."""
    ids = [t.native_id for t in publisher.threads if t.native_id is not None]
    result = _Background()
    cpu0, wall0 = _cpu_s(ids), time.monotonic()
    yield result
    result.cpu_s, result.wall_s = _cpu_s(ids) - cpu0, time.monotonic() - wall0


def _cpu_s(thread_ids: list[int]) -> float:
    """CPU seconds of these threads: Linux's schedstat (ns), else psutil (clock ticks)."""
    try:
        return sum(
            int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
            for tid in thread_ids
        )
    except (OSError, ValueError, IndexError):
        wanted = set(thread_ids)
        return sum(
            t.user_time + t.system_time for t in psutil.Process().threads() if t.id in wanted
        )


def _record_p50_us(
    feeds: list[dict[str, np.ndarray]], engine: Engine, output: str, iterations: int
) -> float:
    recorder = Recorder(time.time())
    feed = feeds[0]
    probabilities = engine.run(feed)[output]
    [samples] = interleaved_ns(
        [lambda: recorder.record(0.001, True, probabilities, feed)], iterations, warmup=100
    )
    return p50_us(samples)


def _publisher(port: int, spool: Spool, recorder: Recorder, workdir: Path) -> TelemetryPublisher:
    return TelemetryPublisher(
        MqttSettings(host="127.0.0.1", port=port),
        device="bench",
        fleet="bench",
        boot_id=uuid.uuid4().hex,
        spool=spool,
        recorder=recorder,
        system=SystemProbe(workdir),
        model_info=lambda: {"name": "digits-edge", "version": "bench", "backend": "onnxruntime"},
        interval_s=INTERVAL_S,
        policy=ForwardPolicy(reconnect_min_s=0.05, reconnect_max_s=0.5),
    )


def _wait_connected(publisher: TelemetryPublisher, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not publisher.connected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the publisher did not connect: {publisher.stats()['last_error']}")
        time.sleep(0.01)


def _feeds(models: Path, engine: Engine) -> list[dict[str, np.ndarray]]:
    """Batches of one held-out digit each, in the model's input dtype."""
    spec = engine.inputs[0]
    images = np.load(models / HELDOUT)["x"][:256].astype(spec.dtype)
    return [{spec.name: images[i : i + 1]} for i in range(len(images))]


def _pick(counts: tuple[T, T], quick: bool) -> T:
    return counts[0] if quick else counts[1]
