"""The descriptor pool behind edge_agent.wire's generated modules.

Written by scripts/gen_protos.py; do not edit. Our messages are registered here rather than in
protobuf's process-wide default pool, so they can be imported beside another copy of the same
protocol: tritonclient puts Triton's own ``inference.*`` messages in the default pool, and a
second registration of those names there fails at import time.
"""

from __future__ import annotations

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
