"""Dependencies resolved one after another, not in a task group.

Litestar resolves each batch of independent dependencies in an anyio task group: one asyncio task per
dependency. Every dependency here is a synchronous lookup (a pool, the ledger, the caller, a header), so
those tasks bought nothing and cost about 100 us of a 400 us request (docs/performance.md). Litestar has no
setting for it; this replaces the one method, with the same contract (same kwargs, same cleanup group),
and `tests/unit/entitlements/http/test_dependencies.py` fails if Litestar's method changes shape.
"""

from __future__ import annotations

from typing import Any

from litestar._kwargs.cleanup import DependencyCleanupGroup
from litestar._kwargs.dependencies import resolve_dependency
from litestar._kwargs.kwargs_model import KwargsModel
from litestar.connection import ASGIConnection

# Litestar's own method, kept so that a test can tell when its shape changes.
LITESTAR_RESOLVE_DEPENDENCIES = KwargsModel.resolve_dependencies


async def resolve_in_order(
    self: KwargsModel, connection: ASGIConnection[Any, Any, Any, Any], kwargs: dict[str, Any]
) -> DependencyCleanupGroup:
    cleanup_group = DependencyCleanupGroup()
    for batch in self.dependency_batches:
        for dependency in batch:
            await resolve_dependency(dependency, connection, kwargs, cleanup_group)
    return cleanup_group


def resolve_dependencies_in_order() -> None:
    KwargsModel.resolve_dependencies = resolve_in_order  # type: ignore[method-assign]
