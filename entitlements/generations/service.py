"""The generation flow: create (gate, quote, hold + row + job in one transaction), read, settle, refund.

Settling is the only way a generation leaves `queued`/`running`, and it happens in one transaction with
its ledger effect: succeeded ⇔ hold captured, failed ⇔ hold voided. A row lock on the generation
serialises the dispatcher, the sweeper and support, so each generation settles exactly once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import structlog
from prometheus_client import Counter, Gauge

import ledger
import pricing
from entitlements import approvals, idempotency, prompts, quotes
from entitlements.approvals import ApprovalOut
from entitlements.errors import IdempotencyKeyReused, NotFound, NotRefundable, Unavailable, VideoUnavailable
from entitlements.generations import batch, queries
from entitlements.generations.admission import Admission
from entitlements.generations.schemas import (
    GenerationCreate,
    GenerationOut,
    GenerationsPage,
    OpenHold,
    RefundAnswer,
    RefundCreate,
    RefundOut,
)
from entitlements.keys import Caller
from entitlements.schemas import Preview
from entitlements.settings import ApiSettings

log = structlog.get_logger("moments.generations")
SETTLER = "system:dispatcher"
SWEEPER = "system:sweeper"
GENERATIONS_CURSOR = "g1"
ERROR_CHARS_MAX = 1000
VOID_REASON_CHARS_MAX = 500
WITH_VIDEO = frozenset({"succeeded", "refunded"})
OPEN_HOLDS_MAX = 200
# Why generations failed, as the metric's label: the prefix of the recorded reason (a bounded set).
FAILURE_REASONS = frozenset(
    {
        "worker_failed",
        "worker_rejected",
        "worker_unavailable",
        "render_timeout",
        "hold_expired",
        "hold_expiring",
        "video_store_failed",
    }
)
SETTLED = Counter(
    "moments_generations_settled", "Generations settled by this process, by outcome and reason", ["outcome", "reason"]
)


# Every series exists from the start (a rate over a series that appears late misses its first increase).
SETTLED.labels("succeeded", "")
for _reason in (*FAILURE_REASONS, "other"):
    SETTLED.labels("failed", _reason)


def failure_reason(error: str) -> str:
    reason = error.partition(":")[0]
    return reason if reason in FAILURE_REASONS else "other"


# Counted by the process that creates (Prometheus sums the processes); settled ones are SETTLED above, and
# the queue's and holds' gauges are admission.py's.
GENERATIONS_CREATED = Counter("moments_generations_created_total", "Generations accepted (not replays)")
# Read from the database when /metrics is scraped: the same in every process.
GENERATIONS_IN_PROGRESS = Gauge("moments_generations_in_progress", "Generations not settled yet", ["status"])


def held(row: asyncpg.Record) -> int:
    return int(row["hold_amount"]) if row["hold_status"] == "open" else 0


def charged(row: asyncpg.Record) -> int:
    """What the user has paid for this generation: the capture less refunds; nothing before it succeeds."""
    if row["hold_status"] == "captured":
        return int(row["hold_captured"] - row["hold_refunded"])
    return 0


def to_out(row: asyncpg.Record, *, with_advice: bool = True) -> GenerationOut:
    """The generation as the API shows it. Its advice is worked out from the stored prompt and clip each time
    it is shown (answers are kept per process, so a polled generation does not work it out again): every
    reader sees the same advice, and none of it is stored (`with_advice=False` for an answer the idempotency
    record keeps; `with_current_advice` adds it on the way out)."""
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
        held=held(row),
        charged=charged(row),
        price_version=row["price_version"],
        status=row["status"],
        error=row["error"],
        video_url=f"/v1/generations/{row['id']}/video" if row["status"] in WITH_VIDEO else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        advice=prompts.advice_items(row["prompt"], duration_s=row["duration_s"], audio=row["audio"])
        if with_advice
        else [],
    )


def with_current_advice(generation: GenerationOut, advice: list[prompts.AdviceItem] | None = None) -> GenerationOut:
    """An answer as the idempotency record keeps it (created or replayed: the record never holds advice, or
    holds another version's) with the advice of today's rules."""
    if advice is None:
        advice = prompts.advice_items(generation.prompt, duration_s=generation.duration_s, audio=generation.audio)
    return generation if generation.advice == advice else msgspec.structs.replace(generation, advice=advice)


def parse_generation_id(generation_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(generation_id)
    except ValueError:
        raise NotFound(f"generation {generation_id[:80]} does not exist") from None


async def fetch(
    connection: ledger.Connection | asyncpg.Pool, generation_id: uuid.UUID, *, lock: bool = False
) -> asyncpg.Record:
    row = await connection.fetchrow(queries.FETCH_FOR_UPDATE if lock else queries.FETCH, generation_id)
    if row is None:
        raise NotFound(f"generation {generation_id} does not exist")
    return row


async def get(pool: asyncpg.Pool, generation_id: str) -> GenerationOut:
    return to_out(await fetch(pool, parse_generation_id(generation_id)))


async def video_path(pool: asyncpg.Pool, generation_id: str) -> Path:
    """The file of a delivered video; `VideoUnavailable` while there is none (yet, or on this server)."""
    row = await fetch(pool, parse_generation_id(generation_id))
    if row["status"] not in WITH_VIDEO or row["video_path"] is None:
        raise VideoUnavailable(f"generation {generation_id} has no video (status {row['status']})")
    return Path(row["video_path"])


async def video_file(pool: asyncpg.Pool, generation_id: str) -> Path:
    """The file of a delivered video, checked to be on this server (`Unavailable` if it is not: several
    hosts without a shared VIDEO_DIR)."""
    path = await video_path(pool, generation_id)
    if not await asyncio.to_thread(path.is_file):
        raise Unavailable("the video file is not reachable from this server")
    return path


def hold_reason(quote: pricing.Quote) -> str:
    audio = "with audio" if quote.audio else "without audio"
    return f"video: {quote.mode}, {quote.resolution}, {quote.duration_s} s, {audio}"


async def create(
    *,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    table: pricing.PriceTable,
    caller: Caller,
    user_id: str,
    body: GenerationCreate,
    key: str,
    hold_ttl_s: int,
    open_generations_max: int = 0,
    admission: Admission | None = None,
) -> GenerationOut:
    """Holds the price and queues the generation; `open_generations_max` generations of the user in
    progress refuse another (429 concurrency_limited; 0: no cap), counted by the ledger under the user's lock."""
    quote = quotes.quote(
        table, mode=body.mode, resolution=body.resolution, duration_s=body.duration_s, audio=body.audio
    )
    if admission is not None:
        # Before anything is held: a refused request leaves no trace (the same key may be sent again).
        await admission.admit(caller.key_id, key)
    fingerprint = idempotency.request_hash(batch.OPERATION, user_id, body)
    # Never a gate, and never stored: worked out beside the request, added to the answer after it.
    advice = prompts.advice_items(body.prompt, duration_s=quote.duration_s, audio=quote.audio)
    generation_id = uuid.uuid4()
    now = datetime.now(UTC)
    request = batch.GenerationRequest(
        hold=ledger.Hold(
            key=f"generation:{generation_id}:hold",
            user_id=user_id,
            actor=caller.actor,
            reason=hold_reason(quote),
            reference=f"generation:{generation_id}",
            amount=quote.moments,
            expires_at=now + timedelta(seconds=hold_ttl_s),
            open_holds_max=open_generations_max or None,
        ),
        generation=batch.new_generation(
            generation_id=generation_id,
            user_id=user_id,
            image_id=body.image_id,
            prompt=body.prompt,
            quote=quote,
            price_version=table.version,
            now=now,
        ),
        caller_key_id=caller.key_id,
        idempotency_key=key,
        fingerprint=fingerprint,
        catalog=catalog,
    )
    # The idempotency claim, the gate, the hold, the rows and the stored answer in the ledger's group commit.
    settled = await ledger_service.submit_companion(request)
    assert isinstance(settled, batch.GenerationRequest)
    try:
        response = settled.result()
    except IdempotencyKeyReused:
        idempotency.mark_answered_from_record()  # decided in the batch's task, answered in this one
        raise
    # On the request's own log line (one line per request), not a line of its own.
    replayed = response.id != str(generation_id)
    if replayed:
        idempotency.mark_answered_from_record()
    structlog.contextvars.bind_contextvars(generation_id=response.id, replayed=replayed)
    if not replayed:
        GENERATIONS_CREATED.inc()
    return with_current_advice(response, advice)


async def list_for_user(
    pool: asyncpg.Pool, user_id: str, *, image_id: str | None, limit: int, cursor: str | None
) -> GenerationsPage:
    after = _decode_cursor(cursor)
    rows = await pool.fetch(
        queries.LIST_FOR_USER,
        user_id,
        image_id,
        after[0] if after else None,
        after[1] if after else None,
        limit + 1,
    )
    items = [to_out(row) for row in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = (
        ledger.encode_cursor(GENERATIONS_CURSOR, last["created_at"].isoformat(), str(last["id"])) if last else None
    )
    return GenerationsPage(items=items, next_cursor=next_cursor)


def _decode_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if cursor is None:
        return None
    created_at, generation_id = ledger.decode_cursor(cursor, GENERATIONS_CURSOR, 2)
    try:
        return ledger.decode_instant(created_at), uuid.UUID(generation_id)
    except ValueError:
        raise ledger.InvalidCursor from None


async def settle_success(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    generation_id: uuid.UUID,
    video_path: Path,
    video_bytes: int,
    *,
    row: asyncpg.Record | None = None,
) -> bool:
    """Captures the hold and marks the generation succeeded, once; False if it had already settled.
    `row`: the generation as the caller already read it (its user and hold never change)."""
    row = row or await fetch(pool, generation_id)
    settlement = batch.Settlement(
        ledger.Capture(
            key=f"generation:{generation_id}:capture",
            user_id=row["user_id"],
            actor=SETTLER,
            reason="video delivered",
            reference=f"generation:{generation_id}",
            hold_id=row["hold_id"],
        ),
        generation_id=generation_id,
        video_path=str(video_path),
        video_bytes=video_bytes,
    )
    settled = await _settle(ledger_service, settlement)
    if settled:
        SETTLED.labels("succeeded", "").inc()
        log.info("generation_succeeded", generation_id=str(generation_id))
    return settled


async def settle_failure(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    generation_id: uuid.UUID,
    error: str,
    *,
    expired: bool = False,
    row: asyncpg.Record | None = None,
) -> bool:
    """Voids the hold (the user gets every moment back) and marks the generation failed, once."""
    row = row or await fetch(pool, generation_id)
    settlement = batch.Settlement(
        ledger.Void(
            key=f"generation:{generation_id}:void",
            user_id=row["user_id"],
            actor=SWEEPER if expired else SETTLER,
            reason=error[:VOID_REASON_CHARS_MAX],
            reference=f"generation:{generation_id}",
            hold_id=row["hold_id"],
            expired=expired,
        ),
        generation_id=generation_id,
        error=error[:ERROR_CHARS_MAX],
    )
    settled = await _settle(ledger_service, settlement)
    if settled:
        SETTLED.labels("failed", failure_reason(error)).inc()
        log.info("generation_failed", generation_id=str(generation_id), error=error[:200])
    return settled


async def refresh_metrics(pool: asyncpg.Pool) -> None:
    """Read when /metrics is scraped: the generations in progress, by status (the queue and the holds are
    admission.py's)."""
    row = await pool.fetchrow(queries.IN_PROGRESS)
    assert row is not None
    GENERATIONS_IN_PROGRESS.labels("queued").set(row["queued"])
    GENERATIONS_IN_PROGRESS.labels("running").set(row["running"])


async def _settle(ledger_service: ledger.Ledger, settlement: batch.Settlement) -> bool:
    """The hold's capture or void, the generation's final status and the job's end, in the ledger's group
    commit, under the generation's row lock; or only the job's end if another settler got there first."""
    await ledger_service.submit_companion(settlement)
    if isinstance(settlement.error, ledger.LedgerRuleError):
        log.error("settlement_refused", generation_id=str(settlement.generation_id), error=str(settlement.error))
    settled: bool = settlement.result()
    return settled


async def finish_job(connection: ledger.Connection | asyncpg.Pool, generation_id: uuid.UUID) -> None:
    await connection.execute(queries.FINISH_JOB, generation_id)


async def refund(
    *,
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    caller: Caller,
    generation_id: str,
    body: RefundCreate,
    key: str,
    limits: ApiSettings,
) -> RefundAnswer:
    """Refunds a delivered generation now, or (support, above the threshold) files it for approval."""
    parsed_id = parse_generation_id(generation_id)
    answer = await idempotency.once(
        pool,
        caller_key_id=caller.key_id,
        key=key,
        operation="refund_generation",
        fingerprint=idempotency.request_hash("refund_generation", str(parsed_id), body),
        answer=RefundAnswer,
        work=lambda connection: _refund_in(connection, ledger_service, caller, parsed_id, body, key=key, limits=limits),
    )
    if answer.refunded is None:
        return answer
    # The stored answer carries no advice (it may predate the rules): today's is added on the way out.
    generation = with_current_advice(answer.refunded.generation)
    if generation is answer.refunded.generation:
        return answer
    return msgspec.structs.replace(answer, refunded=msgspec.structs.replace(answer.refunded, generation=generation))


async def preview_refund(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    caller: Caller,
    generation_id: str,
    body: RefundCreate,
    *,
    limits: ApiSettings,
) -> Preview:
    """The refund tried with the same code and rolled back: the user's balances before and after (after
    approval, if it would wait for one). Raises what the refund would be refused with."""
    parsed_id = parse_generation_id(generation_id)

    async def attempt(connection: ledger.Connection) -> Preview:
        user_id = (await fetch(connection, parsed_id))["user_id"]
        before = await ledger_service.balances(user_id, connection=connection)
        key = f"preview:{uuid.uuid4()}"
        answer = await _refund_in(connection, ledger_service, caller, parsed_id, body, key=key, limits=limits)
        if answer.pending is not None:
            row = await fetch(connection, parsed_id, lock=True)
            amount = charged(row) if body.moments is None else body.moments
            await _apply_refund(connection, ledger_service, row, amount, caller.actor, body.reason, f"{key}:approved")
        after = await ledger_service.balances(user_id, connection=connection)
        return Preview(before=before, after=after, pending_approval=answer.pending is not None)

    return await idempotency.dry_run(pool, attempt)


def _refundable_amount(row: asyncpg.Record, moments: int | None) -> int:
    if row["status"] != "succeeded":
        raise NotRefundable(f"generation {row['id']} is {row['status']}; only a succeeded one can be refunded")
    remaining = charged(row)
    amount = remaining if moments is None else moments
    if amount > remaining:
        raise NotRefundable(f"{amount} moments exceed the {remaining} still charged for this generation")
    return amount


async def _refund_in(
    connection: ledger.Connection,
    ledger_service: ledger.Ledger,
    caller: Caller,
    generation_id: uuid.UUID,
    body: RefundCreate,
    *,
    key: str,
    limits: ApiSettings,
) -> RefundAnswer:
    row = await fetch(connection, generation_id, lock=True)
    amount = _refundable_amount(row, body.moments)
    if approvals.needs_approval(caller, amount, limits.approval_threshold_moments):
        pending = await approvals.request_in(
            connection,
            kind="refund",
            caller=caller,
            user_id=row["user_id"],
            moments=amount,
            reason=body.reason,
            ttl_s=limits.approval_ttl_s,
            generation_id=generation_id,
        )
        return RefundAnswer(user_id=row["user_id"], pending=pending)
    ledger_key = f"generation:{generation_id}:refund:{caller.key_id}:{key}"
    refunded = await _apply_refund(connection, ledger_service, row, amount, caller.actor, body.reason, ledger_key)
    return RefundAnswer(user_id=row["user_id"], refunded=refunded)


async def _apply_refund(
    connection: ledger.Connection,
    ledger_service: ledger.Ledger,
    row: asyncpg.Record,
    amount: int,
    actor: str,
    reason: str,
    ledger_key: str,
) -> RefundOut:
    """Under the generation's row lock: the ledger's refund and the generation's new state."""
    generation_id = row["id"]
    (outcome,) = await ledger_service.execute_in(
        connection,
        [
            ledger.Refund(
                key=ledger_key,
                user_id=row["user_id"],
                actor=actor,
                reason=reason,
                reference=f"generation:{generation_id}",
                hold_id=row["hold_id"],
                amount=amount,
            )
        ],
    )
    if isinstance(outcome, ledger.LedgerRuleError):
        raise outcome
    assert outcome.transaction_id is not None
    await connection.execute(queries.MARK_REFUNDED if amount == charged(row) else queries.TOUCH, generation_id)
    after = await fetch(connection, generation_id)
    return RefundOut(
        transaction_id=outcome.transaction_id, refunded=amount, generation=to_out(after, with_advice=False)
    )


async def refund_approved(connection: ledger.Connection, ledger_service: ledger.Ledger, approval: ApprovalOut) -> int:
    """The approved refund, as the requester's (the approval names who approved it). Refused as any refund
    is if the generation no longer has that much charged (another refund came first)."""
    assert approval.kind == "refund"
    assert approval.generation_id is not None
    row = await fetch(connection, uuid.UUID(approval.generation_id), lock=True)
    amount = _refundable_amount(row, approval.moments)
    ledger_key = f"generation:{approval.generation_id}:refund:approval:{approval.id}"
    refunded = await _apply_refund(
        connection, ledger_service, row, amount, approval.requested_by, approval.reason, ledger_key
    )
    return refunded.transaction_id


async def open_holds(pool: asyncpg.Pool, user_id: str) -> list[OpenHold]:
    """The user's generations still holding moments (queued or running), newest first."""
    rows = await pool.fetch(queries.OPEN_HOLDS_OF_USER, user_id, OPEN_HOLDS_MAX)
    return [
        OpenHold(
            generation_id=str(row["id"]),
            hold_id=row["hold_id"],
            status=row["status"],
            moments=row["hold_amount"],
            created_at=row["created_at"],
            expires_at=row["hold_expires_at"],
        )
        for row in rows
    ]


async def hold_ids(pool: asyncpg.Pool, generation_ids: list[str]) -> dict[str, int]:
    """Each generation's hold (what it drew from which lots is the hold's), by generation id."""
    rows = await pool.fetch(queries.HOLD_IDS, [uuid.UUID(generation_id) for generation_id in generation_ids])
    return {str(row["id"]): row["hold_id"] for row in rows}


async def user_of(pool: asyncpg.Pool, generation_id: str) -> str | None:
    """The user of a generation, or None (also for a text that is no generation id)."""
    try:
        parsed = uuid.UUID(generation_id)
    except ValueError:
        return None
    user_id: str | None = await pool.fetchval(queries.USER_OF_GENERATION, parsed)
    return user_id


AUDIT_CHECKS: tuple[ledger.ExtraCheck, ...] = (
    (
        "generations_settled_once",
        "every generation's hold matches its status: open while queued or running, captured once succeeded "
        "or refunded (fully refunded when refunded), voided or expired once failed",
        queries.SETTLED_ONCE_VIOLATIONS,
    ),
)
