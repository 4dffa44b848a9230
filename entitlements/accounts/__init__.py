"""Users' moment accounts: goodwill grants, history, transactions and the audit."""

from entitlements.accounts.schemas import GrantAnswer, GrantCreate, GrantOut
from entitlements.accounts.service import (
    audit,
    grant,
    grant_approved,
    history,
    preview_grant,
    release_daily_grant,
    transactions,
)

__all__ = [
    "GrantAnswer",
    "GrantCreate",
    "GrantOut",
    "audit",
    "grant",
    "grant_approved",
    "history",
    "preview_grant",
    "release_daily_grant",
    "transactions",
]
