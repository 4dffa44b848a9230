"""The stored first answer of every idempotent request, in the same transaction as its effect."""

from entitlements.idempotency.service import dry_run, once, replayed, request_hash, stored_answers, users_of_key

__all__ = ["dry_run", "once", "replayed", "request_hash", "stored_answers", "users_of_key"]
