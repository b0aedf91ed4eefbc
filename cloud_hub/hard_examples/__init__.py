"""Hard examples: what devices offloaded, with the cloud's and the edge's answers.

The offload server hands each answered device request to a :class:`HardExampleRecorder`
(its sink, :mod:`cloud_hub.offload.sink`), which stores it in the ``hard_examples`` table in
the background, bounded per fleet by ``hard_examples_max_count`` rows and
``hard_examples_max_bytes`` of inputs (oldest evicted first). A fleet whose
``keep_inputs`` is false keeps the answers only, never the inputs. See
``docs/hard-examples.md``.

::

    from cloud_hub.hard_examples import HardExampleRecorder

    recorder = HardExampleRecorder(registry, settings)
    recorder.start()
    recorder.submit(offloaded)          # from the offload server; never blocks
    recorder.stop()                     # stores what is queued
    registry.list_hard_examples(fleet="lab", limit=20)
    registry.export_hard_examples(model="digits-edge").data   # .npz bytes for retraining

The pieces, one module each: :mod:`.answers` (requests to rows, pure), :mod:`.store`
(the writer's SQL and eviction), :mod:`.recorder` (queue and writer thread),
:mod:`.queries` (list, count, export; the registry exposes them, and :mod:`.shortcuts`
as functions of a registry).
"""

from __future__ import annotations

from .answers import Answer, Sample, cloud_answers, decode_inputs, encode_inputs, samples
from .queries import MAX_EXPORT, MAX_LIST, Export, HardExample
from .recorder import HardExampleRecorder
from .shortcuts import count_hard_examples, export_npz, list_hard_examples

__all__ = [
    "MAX_EXPORT",
    "MAX_LIST",
    "Answer",
    "Export",
    "HardExample",
    "HardExampleRecorder",
    "Sample",
    "cloud_answers",
    "count_hard_examples",
    "decode_inputs",
    "encode_inputs",
    "export_npz",
    "list_hard_examples",
    "samples",
]
