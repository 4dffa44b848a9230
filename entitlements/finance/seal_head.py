"""The seal's chain head, as exports' manifests and closed periods record it: the one place that asks.

The seal (issue 16) is built separately; until it is wired in here the ledger has no seal and this
answers None, which manifests and closed periods show as `"seal_head": null`.
"""

from __future__ import annotations

import ledger


async def seal_head(connection: ledger.Connection) -> str | None:
    """The head of the seal's chain as the caller's snapshot sees it, or None while nothing is sealed."""
    del connection
    return None
