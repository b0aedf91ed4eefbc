"""The main job on embedded defaults: ``scripts/demo`` runs ``python -m cloud_hub.demo``.

Step 1 (:mod:`.models`) builds the reference models (kept between runs) and runs one
inference on each backend that works here. Step 2 (:mod:`.fleet`), a fleet of one, starts
an MQTT broker (:mod:`.broker`) and a hub (:mod:`.hub`), enrolls and runs one edge agent
(:mod:`.agent`), sends it held-out digits and polls the hub's REST API until the device's
telemetry counts them, then prints a summary (:mod:`.report`) and stops everything
(:mod:`.processes`). ``--no-fleet`` runs step 1 only; ``--keep-running`` leaves the hub
and the agent up until Ctrl-C.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
