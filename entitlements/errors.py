"""Domain errors: what went wrong, in the service's words, with a stable machine `code`.

Services raise these and nothing else for an expected failure; they know no HTTP status. The HTTP layer
(`entitlements.http.problems`) holds the one table from `code` to status. `extra` carries the members a
client acts on (`required` and `available` for insufficient moments, `allowed` for a closed set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class DomainError(Exception):
    code: ClassVar[str] = "conflict"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ValidationFailed(DomainError):
    """Bad input. `field` names it; `allowed`, when given, lists every acceptable value."""

    code = "validation_failed"

    def __init__(self, field: str, message: str, *, allowed: Sequence[object] | None = None, **extra: Any) -> None:
        if allowed is not None:
            extra["allowed"] = list(allowed)
        detail = message if message.startswith(field) else f"{field}: {message}"
        super().__init__(detail, errors=[{"field": field, "message": message}], **extra)
        self.field = field


def one_of(allowed: Sequence[str]) -> str:
    """The wording every error about a closed set uses: plain values, comma-separated."""
    return "must be one of " + ", ".join(allowed)


class Unauthorized(DomainError):
    code = "unauthorized"


class Forbidden(DomainError):
    code = "forbidden"


class SessionRequired(Unauthorized):
    """The console's pages need a live session (none, signed out, expired, or its key revoked)."""


class CsrfRefused(Forbidden):
    """A console form without its session's CSRF token (or with another's)."""


class NotFound(DomainError):
    code = "not_found"


class Conflict(DomainError):
    code = "conflict"


class NotSealed(DomainError):
    """A transaction that is not yet in a signed checkpoint of the seal (ask again later)."""

    code = "not_sealed"


class SealMismatch(Conflict):
    """What the seal recorded and what the ledger holds differ: the ledger was changed after sealing."""


class IdempotencyKeyRequired(DomainError):
    code = "idempotency_key_required"


class IdempotencyKeyReused(DomainError):
    code = "idempotency_key_reused"


class TierRequired(DomainError):
    code = "tier_required"


class InDebt(DomainError):
    code = "in_debt"


class NotRefundable(DomainError):
    code = "not_refundable"


class VideoUnavailable(DomainError):
    code = "video_unavailable"


class InvalidSignature(DomainError):
    code = "invalid_signature"


class LivemodeMismatch(DomainError):
    """A Stripe event of the other mode than the key in use (live under a test key, or the reverse)."""

    code = "livemode_mismatch"


class Unavailable(DomainError):
    """A dependency did not answer; the same request (same Idempotency-Key) may be retried."""

    code = "unavailable"


class NotReady(DomainError):
    code = "not_ready"


class StripeNotConfigured(DomainError):
    code = "stripe_not_configured"


class StripeUnavailable(DomainError):
    code = "stripe_unavailable"


class StripeRefused(DomainError):
    code = "stripe_error"


__all__ = [
    "Conflict",
    "CsrfRefused",
    "DomainError",
    "Forbidden",
    "IdempotencyKeyRequired",
    "IdempotencyKeyReused",
    "InDebt",
    "InvalidSignature",
    "LivemodeMismatch",
    "NotFound",
    "NotReady",
    "NotRefundable",
    "NotSealed",
    "SealMismatch",
    "SessionRequired",
    "StripeNotConfigured",
    "StripeRefused",
    "StripeUnavailable",
    "TierRequired",
    "Unauthorized",
    "Unavailable",
    "ValidationFailed",
    "VideoUnavailable",
    "one_of",
]
