"""Small pieces every money endpoint shares: the Idempotency-Key header, page limits, ledger errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from litestar import Request

import ledger
from entitlements.errors import ProblemError, ValidationFailed
from entitlements.schemas import IDEMPOTENCY_KEY_CHARS_MAX

IDEMPOTENCY_HEADER = "idempotency-key"
T = TypeVar("T")
USER_ID_CHARS_MAX = 200

# The HTTP status of each refusal the ledger can answer with.
LEDGER_ERROR_STATUS = {
    "insufficient_moments": 402,
    "in_debt": 402,
    "idempotency_key_reused": 409,
    "not_found": 404,
    "conflict": 409,
    "not_refundable": 409,
    "validation_failed": 422,
}


def idempotency_key(request: Request[Any, Any, Any]) -> str:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        raise ProblemError(
            400, "idempotency_key_required", "this request changes money: send an Idempotency-Key header"
        )
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_CHARS_MAX or not key.isprintable():
        raise ValidationFailed("Idempotency-Key", f"must be 1-{IDEMPOTENCY_KEY_CHARS_MAX} printable characters")
    return key


def check_user_id(user_id: str) -> str:
    if not 1 <= len(user_id) <= USER_ID_CHARS_MAX or not user_id.isprintable() or ":" in user_id:
        raise ValidationFailed("user_id", f"must be 1-{USER_ID_CHARS_MAX} printable characters without ':'")
    return user_id


def page_limit(request: Request[Any, Any, Any], limit: int | None) -> int:
    settings = request.app.state.settings.api
    if limit is None:
        return int(settings.page_size_default)
    if not 1 <= limit <= settings.page_size_max:
        raise ValidationFailed("limit", f"must be between 1 and {settings.page_size_max}")
    return limit


def aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    # A timestamp without a zone is ambiguous for money; UTC is what every other part of the API speaks.
    # Normalised to UTC, so the same instant written in two zones is the same request for idempotency.
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def ledger_problem(error: ledger.LedgerRuleError) -> ProblemError:
    status = LEDGER_ERROR_STATUS.get(error.code, 409)
    extra: dict[str, Any] = {}
    if isinstance(error, ledger.InsufficientMoments):
        extra = {"required": error.required, "available": error.available}
    elif isinstance(error, ledger.InDebt):
        extra = {"owed": error.owed}
    return ProblemError(status, error.code, str(error), **extra)


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


async def strict_body(request: Request[Any, Any, Any], model: type[T]) -> T:
    """Decodes the body again, strictly: Litestar's own decoding coerces (it accepts "5" for 5), and a
    money API must not guess what a client meant."""
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    try:
        value: T = decoder.decode(await request.body())
    except msgspec.ValidationError as invalid:
        message = str(invalid)
        unknown = _UNKNOWN.search(message)
        missing = _MISSING.search(message)
        path = _PATH.search(message)
        if unknown:
            raise ValidationFailed(unknown.group(1), "unknown field (not part of this request)") from None
        if missing:
            raise ValidationFailed(missing.group(1), "is required") from None
        field = (path.group(1) if path else "") or "body"
        raise ValidationFailed(field, _PATH.sub("", message)) from None
    except msgspec.DecodeError as malformed:
        raise ValidationFailed("body", f"malformed JSON: {malformed}") from None
    return value
