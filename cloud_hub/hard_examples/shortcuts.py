"""The registry's hard-example methods as functions, for code that holds a registry.

``count_hard_examples(registry, fleet="lab")`` is ``registry.count_hard_examples(fleet=
"lab")``; each runs in a transaction of its own (:mod:`.queries` has the SQL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..registry import Registry
    from .queries import Export, HardExample


def list_hard_examples(
    registry: Registry,
    *,
    fleet: str | None = None,
    model: str | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[HardExample]:
    return registry.list_hard_examples(fleet=fleet, model=model, limit=limit, before_id=before)


def count_hard_examples(
    registry: Registry, *, fleet: str | None = None, model: str | None = None
) -> int:
    return registry.count_hard_examples(fleet=fleet, model=model)


def export_npz(
    registry: Registry,
    *,
    fleet: str | None = None,
    model: str | None = None,
    limit: int = 10_000,
    before: int | None = None,
) -> Export:
    return registry.export_hard_examples(fleet=fleet, model=model, limit=limit, before_id=before)
