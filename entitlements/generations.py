"""The generation flow: create (gate, quote, hold + row + job in one transaction), read, settle, refund.

Settling is the only way a generation leaves `queued`/`running`, and it happens in one transaction with
its ledger effect: succeeded ⇔ hold captured, failed ⇔ hold voided. A row lock on the generation
serialises the dispatcher, the sweeper and support, so each generation settles exactly once.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import msgspec
import structlog

import ledger
import pricing
from entitlements import idempotency, tiers
from entitlements.auth import Caller
from entitlements.errors import NotFound, ProblemError, ValidationFailed
from entitlements.http import ledger_problem
from entitlements.schemas import (
    IMAGE_ID_CHARS_MAX,
    IMAGE_ID_PATTERN,
    PROMPT_CHARS_MAX,
    REASON_CHARS_MAX,
    TEXT_PATTERN,
    Struct,
)
from ledger.engine import Connection

log = structlog.get_logger("moments.generations")
SETTLER = "system:dispatcher"
SWEEPER = "system:sweeper"


class GenerationCreate(Struct, frozen=True):
    image_id: Annotated[str, msgspec.Meta(min_length=1, max_length=IMAGE_ID_CHARS_MAX, pattern=IMAGE_ID_PATTERN)]
    prompt: Annotated[str, msgspec.Meta(min_length=1, max_length=PROMPT_CHARS_MAX, pattern=TEXT_PATTERN)]
    mode: Annotated[str, msgspec.Meta(min_length=1, max_length=50)]
    resolution: Annotated[str, msgspec.Meta(min_length=1, max_length=50)] | None = None
    duration_s: int | None = None
    audio: bool | None = None


class RefundCreate(Struct, frozen=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=REASON_CHARS_MAX, pattern=TEXT_PATTERN)]
    moments: Annotated[int, msgspec.Meta(ge=1, le=ledger.AMOUNT_MOMENTS_MAX)] | None = None


class GenerationOut(Struct, frozen=True):
    id: str
    user_id: str
    image_id: str
    prompt: str
    mode: str
    resolution: str
    duration_s: int
    audio: bool
    moments: int
    charged: int
    price_version: str
    status: str
    error: str | None
    video_url: str | None
    created_at: datetime
    updated_at: datetime


class RefundOut(Struct, frozen=True):
    transaction_id: int
    refunded: int
    generation: GenerationOut


_encoder = msgspec.json.Encoder()

GENERATION_COLUMNS = """
    g.id, g.user_id, g.image_id, g.prompt, g.mode, g.resolution, g.duration_s, g.audio, g.moments,
    g.price_version, g.status, g.error, g.hold_id, g.video_path, g.created_at, g.updated_at,
    h.status AS hold_status, h.amount AS hold_amount, h.captured AS hold_captured, h.refunded AS hold_refunded,
    h.expires_at AS hold_expires_at
"""
GENERATION_FROM = "FROM generations g JOIN ledger_holds h ON h.id = g.hold_id"


def charged(row: asyncpg.Record) -> int:
    """What the user pays for this generation now: held or captured, less refunds; nothing once voided."""
    if row["hold_status"] == "open":
        return int(row["hold_amount"])
    if row["hold_status"] == "captured":
        return int(row["hold_captured"] - row["hold_refunded"])
    return 0


def to_out(row: asyncpg.Record) -> GenerationOut:
    succeeded = row["status"] in {"succeeded", "refunded"}
    return GenerationOut(
        id=str(row["id"]),
        user_id=row["user_id"],
        image_id=row["image_id"],
        prompt=row["prompt"],
        mode=row["mode"],
        resolution=row["resolution"],
        duration_s=row["duration_s"],
        audio=row["audio"],
        moments=row["moments"],
        charged=charged(row),
        price_version=row["price_version"],
        status=row["status"],
        error=row["error"],
        video_url=f"/v1/generations/{row['id']}/video" if succeeded else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def parse_generation_id(generation_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(generation_id)
    except ValueError:
        raise NotFound(f"generation {generation_id[:80]!r} does not exist") from None


async def fetch(
    connection: Connection | asyncpg.Pool, generation_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"SELECT {GENERATION_COLUMNS} {GENERATION_FROM} WHERE g.id = $1 {'FOR UPDATE OF g' if lock else ''}",
        generation_id,
    )
    if row is None:
        raise NotFound(f"generation {generation_id} does not exist")
    return row


async def create(
    *,
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    table: pricing.PriceTable,
    quote: pricing.Quote,
    caller: Caller,
    user_id: str,
    body: GenerationCreate,
    key: str,
    hold_ttl_s: int,
) -> idempotency.StoredResponse:
    fingerprint = idempotency.request_hash("create_generation", user_id, body)
    async with pool.acquire() as connection, connection.transaction():
        stored = await idempotency.claim(
            connection, caller_key_id=caller.key_id, key=key, operation="create_generation", fingerprint=fingerprint
        )
        if stored is not None:
            return stored
        # The gate reads inside the transaction; the hold then re-checks debt under the user's row lock.
        tier = await tiers.tier_of(connection, user_id)
        owed = await connection.fetchval("SELECT owed FROM ledger_balances WHERE user_id = $1", user_id) or 0
        refusal = tiers.video_refusal(catalog, tier, owed)
        if refusal == "tier_required":
            raise ProblemError(
                403, "tier_required", f"video generation needs a PREMIUM or ULTIMATE tier; {user_id} is {tier}"
            )
        if refusal == "in_debt":
            raise ProblemError(
                402, "in_debt", f"{user_id} owes {owed} moments; debt blocks video generation", owed=owed
            )
        generation_id = uuid.uuid4()
        now = datetime.now(UTC)
        (outcome,) = await ledger_service.execute_in(
            connection,
            [
                ledger.Hold(
                    key=f"generation:{generation_id}:hold",
                    user_id=user_id,
                    actor=caller.actor,
                    reason=f"video {quote.mode} {quote.resolution} {quote.duration_s}s audio={quote.audio}",
                    reference=f"generation:{generation_id}",
                    amount=quote.moments,
                    expires_at=now + timedelta(seconds=hold_ttl_s),
                )
            ],
            now=now,
        )
        if isinstance(outcome, ledger.LedgerRuleError):
            raise ledger_problem(outcome)
        assert outcome.hold_id is not None
        await connection.execute(
            """
            INSERT INTO generations (id, user_id, image_id, prompt, mode, resolution, duration_s, audio, moments,
                                     price_version, status, hold_id, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', $11, $12, $12)
            """,
            generation_id,
            user_id,
            body.image_id,
            body.prompt,
            quote.mode,
            quote.resolution,
            quote.duration_s,
            quote.audio,
            quote.moments,
            table.version,
            outcome.hold_id,
            now,
        )
        await connection.execute("INSERT INTO generation_jobs (generation_id) VALUES ($1)", generation_id)
        row = await fetch(connection, generation_id)
        response = to_out(row)
        encoded = _encoder.encode(response)
        await idempotency.store(connection, caller_key_id=caller.key_id, key=key, status_code=202, body=encoded)
    log.info("generation_created", generation_id=str(generation_id), user_id=user_id, moments=quote.moments)
    return idempotency.StoredResponse(202, msgspec.json.decode(encoded))


async def list_for_user(
    pool: asyncpg.Pool, user_id: str, *, image_id: str | None, limit: int, cursor: str | None
) -> tuple[list[GenerationOut], str | None]:
    after = decode_cursor(cursor)
    rows = await pool.fetch(
        f"""
        SELECT {GENERATION_COLUMNS} {GENERATION_FROM}
        WHERE g.user_id = $1 AND ($2::text IS NULL OR g.image_id = $2)
          AND ($3::timestamptz IS NULL OR (g.created_at, g.id) < ($3, $4::uuid))
        ORDER BY g.created_at DESC, g.id DESC
        LIMIT $5
        """,
        user_id,
        image_id,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    items = [to_out(row) for row in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["id"]) if len(rows) > limit else None
    return items, next_cursor


def encode_cursor(created_at: datetime, generation_id: uuid.UUID) -> str:
    text = f"g1|{created_at.isoformat()}|{generation_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, created_at, generation_id = text.split("|")
        if version != "g1":
            raise ValueError(version)
        return datetime.fromisoformat(created_at), uuid.UUID(generation_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("cursor", "is not one this service issued") from None


async def settle_success(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, generation_id: uuid.UUID, video_path: Path, video_bytes: int
) -> bool:
    """Captures the hold and marks the generation succeeded, once; False if it had already settled."""
    settled = await _settle(
        pool,
        ledger_service,
        generation_id,
        lambda row: ledger.Capture(
            key=f"generation:{generation_id}:capture",
            user_id=row["user_id"],
            actor=SETTLER,
            reason="video delivered",
            reference=f"generation:{generation_id}",
            hold_id=row["hold_id"],
        ),
        "UPDATE generations SET status = 'succeeded', video_path = $2, video_bytes = $3, updated_at = now() "
        "WHERE id = $1",
        str(video_path),
        video_bytes,
    )
    if settled:
        log.info("generation_succeeded", generation_id=str(generation_id))
    return settled


async def settle_failure(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, generation_id: uuid.UUID, error: str, *, expired: bool = False
) -> bool:
    """Voids the hold (the user gets every moment back) and marks the generation failed, once."""
    settled = await _settle(
        pool,
        ledger_service,
        generation_id,
        lambda row: ledger.Void(
            key=f"generation:{generation_id}:void",
            user_id=row["user_id"],
            actor=SWEEPER if expired else SETTLER,
            reason=error[:500],
            reference=f"generation:{generation_id}",
            hold_id=row["hold_id"],
            expired=expired,
        ),
        "UPDATE generations SET status = 'failed', error = $2, updated_at = now() WHERE id = $1",
        error[:1000],
    )
    if settled:
        log.info("generation_failed", generation_id=str(generation_id), error=error[:200])
    return settled


async def _settle(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    generation_id: uuid.UUID,
    settle_hold: Callable[[asyncpg.Record], ledger.Capture | ledger.Void],
    update_generation: str,
    *update_arguments: Any,
) -> bool:
    """One transaction under the generation's row lock: the hold's capture or void, the generation's final
    status and the job's end, or nothing at all if another settler got there first."""
    async with pool.acquire() as connection, connection.transaction():
        row = await fetch(connection, generation_id, lock=True)
        if row["status"] not in {"queued", "running"}:
            await finish_job(connection, generation_id)
            return False
        (outcome,) = await ledger_service.execute_in(connection, [settle_hold(row)])
        if isinstance(outcome, ledger.LedgerRuleError):
            # The hold is no longer open although the generation is unsettled: settle nothing, roll back.
            log.error("settlement_refused", generation_id=str(generation_id), error=str(outcome))
            raise outcome
        await connection.execute(update_generation, generation_id, *update_arguments)
        await finish_job(connection, generation_id)
    return True


async def finish_job(connection: Connection | asyncpg.Pool, generation_id: uuid.UUID) -> None:
    await connection.execute(
        "UPDATE generation_jobs SET done = true, lease_owner = NULL, lease_expires_at = NULL, updated_at = now() "
        "WHERE generation_id = $1 AND NOT done",
        generation_id,
    )


async def refund(
    *,
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    caller: Caller,
    generation_id: uuid.UUID,
    body: RefundCreate,
    key: str,
) -> idempotency.StoredResponse:
    fingerprint = idempotency.request_hash("refund_generation", str(generation_id), body)
    async with pool.acquire() as connection, connection.transaction():
        stored = await idempotency.claim(
            connection, caller_key_id=caller.key_id, key=key, operation="refund_generation", fingerprint=fingerprint
        )
        if stored is not None:
            return stored
        row = await fetch(connection, generation_id, lock=True)
        if row["status"] != "succeeded":
            raise ProblemError(
                409,
                "not_refundable",
                f"generation {generation_id} is {row['status']}; only a succeeded one can be refunded",
            )
        remaining = charged(row)
        amount = remaining if body.moments is None else body.moments
        if amount > remaining:
            raise ProblemError(
                409, "not_refundable", f"{amount} moments exceed the {remaining} still charged for this generation"
            )
        (outcome,) = await ledger_service.execute_in(
            connection,
            [
                ledger.Refund(
                    key=f"generation:{generation_id}:refund:{caller.key_id}:{key}",
                    user_id=row["user_id"],
                    actor=caller.actor,
                    reason=body.reason,
                    reference=f"generation:{generation_id}",
                    hold_id=row["hold_id"],
                    amount=amount,
                )
            ],
        )
        if isinstance(outcome, ledger.LedgerRuleError):
            raise ledger_problem(outcome)
        assert outcome.transaction_id is not None
        if amount == remaining:
            await connection.execute(
                "UPDATE generations SET status = 'refunded', updated_at = now() WHERE id = $1", generation_id
            )
        else:
            await connection.execute("UPDATE generations SET updated_at = now() WHERE id = $1", generation_id)
        after = await fetch(connection, generation_id)
        response = RefundOut(transaction_id=outcome.transaction_id, refunded=amount, generation=to_out(after))
        encoded = _encoder.encode(response)
        await idempotency.store(connection, caller_key_id=caller.key_id, key=key, status_code=201, body=encoded)
    return idempotency.StoredResponse(201, msgspec.json.decode(encoded))


# Every generation in a final state has exactly one settled hold, of the matching kind.
AUDIT_CHECKS: tuple[ledger.ExtraCheck, ...] = (
    (
        "generations_settled_once",
        "every generation's hold matches its status: open while queued or running, captured once succeeded "
        "or refunded (fully refunded when refunded), voided or expired once failed",
        """
        SELECT g.id, g.status, h.status AS hold_status, h.captured, h.refunded
        FROM generations g JOIN ledger_holds h ON h.id = g.hold_id
        WHERE (g.status IN ('queued', 'running') AND h.status <> 'open')
           OR (g.status IN ('succeeded', 'refunded') AND h.status <> 'captured')
           OR (g.status = 'refunded' AND h.refunded <> h.captured)
           OR (g.status = 'succeeded' AND h.refunded = h.captured)
           OR (g.status = 'failed' AND h.status NOT IN ('voided', 'expired'))
        """,
    ),
)
