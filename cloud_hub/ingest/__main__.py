"""``python -m cloud_hub.ingest``: run telemetry ingest alone, until SIGTERM or Ctrl-C.

Settings come as for every hub command (``--config FILE.toml``, ``EDGELOOP_HUB_*``
variables: database URL, broker, topic prefix, raw retention). Several of these processes
with one ``--group`` split the broker's messages; give each its own ``--client-id``.
``--stats-file`` rewrites a JSON object of :meth:`IngestService.stats` twice a second
(atomically), for supervisors and tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ..errors import HubError
from ..registry import Registry
from ..settings import load_settings
from .options import IngestOptions
from .service import IngestService

STATS_EVERY_S = 0.5


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_settings(args.config)
        options = IngestOptions(group=args.group, client_id=args.client_id)
        registry = Registry.open(settings)
    except HubError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    service = IngestService(registry, settings, options=options)
    try:
        service.start()
        while not stop.wait(STATS_EVERY_S):
            if args.stats_file is not None:
                _write_json(args.stats_file, service.stats())
    finally:
        service.stop()
        if args.stats_file is not None:
            _write_json(args.stats_file, service.stats())
        registry.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cloud_hub.ingest",
        description="Run telemetry ingest alone, until SIGTERM or Ctrl-C.",
    )
    parser.add_argument("--config", metavar="FILE.toml", help="hub settings file")
    parser.add_argument("--group", default=IngestOptions.group, help="shared subscription group")
    parser.add_argument(
        "--client-id", help="MQTT client id, stable across restarts (default edgeloop-hub-HOST)"
    )
    parser.add_argument("--stats-file", type=Path, metavar="PATH", help="write stats here")
    return parser


def _write_json(path: Path, value: object) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
