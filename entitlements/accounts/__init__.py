"""Users' moment accounts: goodwill grants, history, transactions and the audit."""

from entitlements.accounts.service import audit, grant, history, transactions

__all__ = ["audit", "grant", "history", "transactions"]
