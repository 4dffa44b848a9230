"""The stored first answer of every idempotent request, in the same transaction as its effect."""

from entitlements.idempotency.service import (
    answered_from_record,
    dry_run,
    forget_answered_from_record,
    mark_answered_from_record,
    once,
    replayed,
    request_hash,
    stored_answers,
    users_of_key,
)

__all__ = [
    "answered_from_record",
    "dry_run",
    "forget_answered_from_record",
    "mark_answered_from_record",
    "once",
    "replayed",
    "request_hash",
    "stored_answers",
    "users_of_key",
]
