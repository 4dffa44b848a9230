"""The stored first answer of every idempotent request, in the same transaction as its effect."""

from entitlements.idempotency.service import claim, request_hash, store

__all__ = ["claim", "request_hash", "store"]
