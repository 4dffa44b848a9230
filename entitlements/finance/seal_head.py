"""The seal's chain head, as exports' manifests and closed periods record it: the one place finance asks.

The seal (`entitlements/seal`) chains transactions in commit order; its head is None until anything is
sealed, which manifests and closed periods show as `"seal_head": null`.
"""

from __future__ import annotations

import ledger
from entitlements import seal


async def seal_head(connection: ledger.Connection) -> str | None:
    """The head of the seal's chain (hex) as the caller's snapshot sees it, or None while nothing is sealed."""
    return await seal.seal_head(connection)
