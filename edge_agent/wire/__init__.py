"""Generated protobuf and gRPC code: the wire contracts between devices, the hub and clients.

- ``inference_pb2`` / ``inference_pb2_grpc``: the Open Inference Protocol v2 (KServe v2) over
  gRPC, package ``inference``, service ``GRPCInferenceService`` (ServerLive, ServerReady,
  ModelReady, ServerMetadata, ModelMetadata, ModelInfer). Field for field the same as Triton's,
  so tritonclient talks to our servers and we talk to Triton.
- ``enrollment_pb2`` / ``enrollment_pb2_grpc``: ``edgeloop.v1.Enrollment``, a device trading
  its enrollment token and public key for an identity, a credential, MQTT settings and the
  TUF trusted root.
- ``ota_pb2`` / ``ota_pb2_grpc``: ``edgeloop.v1.Ota``, model update check-in, resumable chunked
  download of TUF metadata and artifacts, and update status reports.

The sources are in ``protos/``. Never edit the generated modules: change a ``.proto`` and run
``python scripts/gen_protos.py`` (a test fails when the committed files are out of date).
The messages live in a private descriptor pool (``_pool``), not protobuf's default one, so they
import cleanly beside tritonclient's copy of the same ``inference`` messages.
"""

from __future__ import annotations

from . import (
    enrollment_pb2,
    enrollment_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    ota_pb2,
    ota_pb2_grpc,
)

__all__ = [
    "enrollment_pb2",
    "enrollment_pb2_grpc",
    "inference_pb2",
    "inference_pb2_grpc",
    "ota_pb2",
    "ota_pb2_grpc",
]
