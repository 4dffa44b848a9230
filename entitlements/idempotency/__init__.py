"""The stored first answer of every idempotent request, in the same transaction as its effect."""

from entitlements.idempotency.service import dry_run, once, request_hash, users_of_key

__all__ = ["dry_run", "once", "request_hash", "users_of_key"]
