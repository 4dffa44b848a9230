"""The stored first answer of every idempotent request, in the same transaction as its effect."""

from entitlements.idempotency.service import once, request_hash

__all__ = ["once", "request_hash"]
