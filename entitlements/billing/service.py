"""Billing's use cases: Stripe's webhook (events stored first, then applied exactly once), the sweeper's
retry of stored events, an admin's re-application of failed ones, and Checkout sessions for packs and
tiers through the `StripeGateway`.

**Events.** A verified event is checked at the door (`receive_webhook`: the signature, dated within the
tolerance either way; a body that can be stored; the mode of the key in use) and stored under its id
(`stripe_events`, primary key) before anything else, then applied in ONE database transaction that locks
its row (`FOR UPDATE`), skips it if it has ended, runs its handler (`handlers.py`: ledger operations
through `Ledger.execute_in` on that same connection, subscriptions, purchases, invoices, disputes), and
marks it ended with the handler's Effect. A handler that needs Stripe's answer (a session's line items, a
payment's invoice) is answered outside the transaction (`gateway.look_up`) and the event applied again. A
failure rolls all of it back and leaves the event stored with `last_error`: retried by the sweeper (and
Stripe's redelivery) until STRIPE_EVENT_ATTEMPTS_MAX, then `failed`; an admin re-applies it after a fix
(`reapply_event`: `moments stripe reapply`, `POST /v1/stripe/events/{id}/reapply`).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
import stripe
import structlog
from prometheus_client import Gauge
from stripe.params.checkout import SessionCreateParams

import ledger
import pricing
from entitlements import idempotency, tiers
from entitlements.billing import queries
from entitlements.billing.effects import (
    Context,
    NeedsStripe,
    NeverApplicable,
    NotYetApplicable,
    StoredEvent,
    remember_customer,
    without_effect,
)
from entitlements.billing.events import STRIPE_ID_CHARS_MAX, STRIPE_ID_PATTERN, Envelope, InvalidEvent, parse_envelope
from entitlements.billing.gateway import Lookup, LookupFailed, StripeGateway, look_up
from entitlements.billing.handlers import HANDLERS
from entitlements.billing.schemas import (
    CheckoutCreate,
    CheckoutOut,
    StripeEventOut,
    StripeEventPage,
    WebhookOut,
)
from entitlements.errors import (
    Conflict,
    InvalidSignature,
    LivemodeMismatch,
    NotFound,
    StripeNotConfigured,
    StripeRefused,
    StripeUnavailable,
    TierRequired,
    Unavailable,
    ValidationFailed,
    one_of,
)
from entitlements.keys import Caller
from entitlements.settings import StripeSettings
from generation_client.logs import error_text

log = structlog.get_logger("moments.stripe")
EVENTS_NOT_APPLIED = Gauge(
    "moments_stripe_events", "Stored Stripe events that have not ended (pending) or ended failed", ["state"]
)
OLDEST_PENDING_EVENT = Gauge(
    "moments_stripe_event_oldest_pending_seconds", "How long the oldest pending Stripe event has waited (webhook lag)"
)

SIGNATURE_HEADER = "stripe-signature"
# Larger than the API's general body limit: invoices with many lines make large events, and a 413 would
# only make Stripe redeliver the same body until it gives up.
WEBHOOK_BODY_BYTES_MAX = 1 << 20
# The sweeper applies at most this many stored-but-unapplied events per pass, retrying each no sooner
# than base * 2^attempts seconds (capped) after its last failure.
REAPPLY_BATCH_MAX = 100
REAPPLY_BACKOFF_BASE_S = 5
REAPPLY_BACKOFF_CAP_S = 3600
LAST_ERROR_CHARS_MAX = 1000
# An event may need a few answers from Stripe (line items, an invoice); more than this is a bug.
LOOKUPS_PER_EVENT_MAX = 3
# As large as any `limit` the API takes (its LIMIT_MAX); PAGE_SIZE_MAX may only lower it.
EVENTS_PAGE_MAX = 1000
# Tiers a user must be on to buy moment packs: every tier but the free one.
PACK_TIERS = tuple(name for name in pricing.TIER_NAMES if name != pricing.FREE_TIER)


# ---------------------------------------------------------------------------------------------------
# The webhook.


def _signature_time(header: str) -> int | None:
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            return int(value)
    return None


def _verify(payload: bytes, signature: str | None, settings: StripeSettings, now_s: float) -> None:
    """Stripe's signature of these exact bytes, dated within the tolerance in either direction (the
    library refuses old ones; one dated ahead is refused here)."""
    assert settings.webhook_secret is not None
    try:
        stripe.WebhookSignature.verify_header(payload, signature, settings.webhook_secret, settings.webhook_tolerance_s)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as invalid:
        # The header itself is never logged: it is a credential for this one body.
        message = invalid.user_message if isinstance(invalid, stripe.StripeError) else "body is not UTF-8"
        raise InvalidSignature(f"Stripe-Signature does not verify: {message}") from None
    signed_at = _signature_time(signature or "")
    if signed_at is None or signed_at > now_s + settings.webhook_tolerance_s:
        raise InvalidSignature(
            f"Stripe-Signature does not verify: timestamp outside the tolerance zone ({signed_at} is more than "
            f"{settings.webhook_tolerance_s} s ahead of this service's clock)"
        )


def check_event(envelope: Envelope, settings: StripeSettings, now_s: float) -> None:
    """What a well-formed event must also be to be stored: not from the future, and of the mode of the
    key in use (a live event under a test key, or the reverse, is a misconfiguration). Pure."""
    if envelope.created > now_s + settings.webhook_tolerance_s:
        raise ValidationFailed("created", f"is {envelope.created}, later than now: no Stripe event is from the future")
    if envelope.livemode != settings.livemode:
        mode = "live" if settings.livemode else "test"
        raise LivemodeMismatch(
            f"event {envelope.id} has livemode {str(envelope.livemode).lower()}, but this service uses Stripe's "
            f"{mode} mode (STRIPE_LIVEMODE, or the STRIPE_API_KEY prefix): refused, nothing stored"
        )


async def receive_webhook(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    gateway: StripeGateway | None,
    settings: StripeSettings,
    *,
    payload: bytes,
    signature: str | None,
) -> WebhookOut:
    """Verifies the signature and the body, stores the event under its id, then applies it (once)."""
    if settings.webhook_secret is None:
        raise StripeNotConfigured("STRIPE_WEBHOOK_SECRET is not set: this service is not connected to Stripe")
    now_s = time.time()
    _verify(payload, signature, settings, now_s)
    try:
        envelope = parse_envelope(payload, depth_max=settings.event_depth_max)
    except InvalidEvent as invalid:
        raise ValidationFailed(invalid.field, str(invalid)) from None
    check_event(envelope, settings, now_s)
    stored = await store_event(pool, envelope, payload)
    result = await apply_event(pool, ledger_service, catalog, gateway, settings, envelope.id)
    log.info("stripe_webhook", event_id=envelope.id, event_type=envelope.type, new=stored, status=result.status)
    if result.status == "retrying":
        raise Unavailable(
            f"event {envelope.id} is stored but could not be applied now ({result.detail}); it will be retried"
        )
    return WebhookOut(id=envelope.id, status=result.status, detail=result.detail)


# ---------------------------------------------------------------------------------------------------
# Storing and applying events.

EventState = Literal["pending", "applied", "applied_without_effect", "failed"]
# What applying answered: how the event ended now, or that it had ended before (duplicate), or that it
# waits (pending: it may apply later; retrying: something failed that is not the event's fault).
ApplyStatus = Literal["applied", "applied_without_effect", "duplicate", "pending", "retrying", "failed"]
ENDED_STATES = frozenset({"applied", "applied_without_effect", "failed"})


@dataclass(frozen=True)
class ApplyResult:
    status: ApplyStatus
    detail: str | None


async def store_event(pool: asyncpg.Pool, envelope: Envelope, payload: bytes) -> bool:
    """Stores the event under its id; False if it was already stored (a duplicate delivery)."""
    try:
        inserted = await pool.fetchval(
            queries.STORE_EVENT,
            envelope.id,
            envelope.type,
            datetime.fromtimestamp(envelope.created, UTC),
            envelope.livemode,
            payload.decode(),
        )
    except asyncpg.DataError as unstorable:
        # parse_envelope refuses what PostgreSQL cannot store; this is the last line, never a 500.
        raise ValidationFailed("body", f"cannot be stored: {type(unstorable).__name__}") from None
    return bool(inserted)


async def apply_event(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    gateway: StripeGateway | None,
    settings: StripeSettings,
    event_id: str,
    *,
    skip_locked: bool = False,
) -> ApplyResult:
    """Applies one stored event in one transaction; never half. `skip_locked` (the sweeper) leaves an
    event another process is applying right now to that process. What Stripe must tell the handler is
    retrieved between attempts of the transaction, never inside one."""
    looked_up: dict[Lookup, Any] = {}
    for _ in range(LOOKUPS_PER_EVENT_MAX + 1):
        try:
            return await _apply_once(pool, ledger_service, catalog, event_id, looked_up, skip_locked=skip_locked)
        except NeedsStripe as need:
            try:
                looked_up[need.lookup] = await look_up(gateway, need.lookup)
            except LookupFailed as unanswered:
                looked_up[need.lookup] = unanswered
        except NotYetApplicable as waiting:
            return await _record_failure(pool, settings, event_id, str(waiting), never=False)
        except NeverApplicable as never:
            return await _record_failure(pool, settings, event_id, str(never), never=True)
        except Exception as error:  # whatever failed, the event stays stored, unapplied, and is retried
            log.exception("stripe_event_failed", event_id=event_id, error_type=type(error).__name__)
            result = await _record_failure(pool, settings, event_id, error_text(error), never=False)
            return ApplyResult("retrying", type(error).__name__) if result.status == "pending" else result
    message = f"needed more than {LOOKUPS_PER_EVENT_MAX} answers from Stripe"
    return await _record_failure(pool, settings, event_id, message, never=True)


async def _apply_once(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    event_id: str,
    looked_up: dict[Lookup, Any],
    *,
    skip_locked: bool,
) -> ApplyResult:
    query = queries.EVENT_FOR_UPDATE_SKIP_LOCKED if skip_locked else queries.EVENT_FOR_UPDATE
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(query, event_id)
        if row is None:
            return ApplyResult("duplicate", "being applied by another process")
        if row["state"] in ENDED_STATES:
            if row["state"] == "failed":
                return ApplyResult("failed", row["last_error"])
            return ApplyResult("duplicate", row["outcome"])
        payload = msgspec.json.decode(row["payload"])
        event = StoredEvent(event_id, row["type"], row["created"], payload.get("data", {}).get("object", {}))
        handler = HANDLERS.get(event.type)
        effect = (
            await handler(Context(connection, ledger_service, catalog, event, datetime.now(UTC), looked_up))
            if handler is not None
            else without_effect("not an event type this service applies")
        )
        state: EventState = "applied_without_effect" if effect.without_effect else "applied"
        await connection.execute(
            queries.MARK_EVENT_APPLIED, event_id, effect.outcome, effect.ledger_kind, effect.ledger_moments, state
        )
    log.info("stripe_event_applied", event_id=event_id, event_type=event.type, status=state, outcome=effect.outcome)
    return ApplyResult(state, effect.outcome)


async def _record_failure(
    pool: asyncpg.Pool, settings: StripeSettings, event_id: str, error: str, *, never: bool
) -> ApplyResult:
    """One more failed attempt: pending (with its next attempt) or, when it can never apply or has had
    its attempts, failed."""
    try:
        state = await pool.fetchval(
            queries.RECORD_EVENT_FAILURE,
            event_id,
            error[:LAST_ERROR_CHARS_MAX],
            float(REAPPLY_BACKOFF_CAP_S),
            float(REAPPLY_BACKOFF_BASE_S),
            never,
            settings.event_attempts_max,
        )
    except (OSError, asyncpg.PostgresError) as unrecorded:
        # The event is still stored and unapplied; the sweeper will find it without the note.
        log.warning("stripe_event_failure_unrecorded", event_id=event_id, error=repr(unrecorded))
        return ApplyResult("retrying", error)
    if state is None:
        return ApplyResult("duplicate", "ended meanwhile by another process")
    if state == "failed":
        log.warning("stripe_event_ended_failed", event_id=event_id, reason=error)
        return ApplyResult("failed", error)
    log.info("stripe_event_pending", event_id=event_id, reason=error)
    return ApplyResult("pending", error)


@functools.cache
def _default_catalog() -> pricing.Catalog:
    return pricing.load_catalog()


async def reapply_pending_events(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    gateway: StripeGateway | None,
    settings: StripeSettings,
    catalog: pricing.Catalog | None = None,
    *,
    events_max: int = REAPPLY_BATCH_MAX,
) -> int:
    """The sweeper's pass over pending events whose retry time has come (oldest Stripe time first, so a
    purchase is applied before its refund). Returns how many ended applied now."""
    rows = await pool.fetch(queries.DUE_EVENTS, events_max)
    applied = 0
    for row in rows:
        result = await apply_event(
            pool, ledger_service, catalog or _default_catalog(), gateway, settings, row["id"], skip_locked=True
        )
        applied += result.status in {"applied", "applied_without_effect"}
    return applied


# ---------------------------------------------------------------------------------------------------
# Failed events: listing them, and re-applying one after a fix.


def _event_out(row: asyncpg.Record) -> StripeEventOut:
    return StripeEventOut(**dict(row))


_EVENT_ID = re.compile(STRIPE_ID_PATTERN)


def check_event_id(event_id: str) -> str:
    if not 1 <= len(event_id) <= STRIPE_ID_CHARS_MAX or _EVENT_ID.fullmatch(event_id) is None:
        raise ValidationFailed(
            "event_id", f"is not a Stripe event id (letters, digits, _ and -; 1-{STRIPE_ID_CHARS_MAX})"
        )
    return event_id


async def stripe_event(pool: asyncpg.Pool, event_id: str) -> StripeEventOut:
    row = await pool.fetchrow(queries.EVENT, check_event_id(event_id))
    if row is None:
        raise NotFound(f"no Stripe event {event_id} is stored")
    return _event_out(row)


EVENTS_CURSOR = "stripe_events"


def _decode_events_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    created, event_id = ledger.decode_cursor(cursor, EVENTS_CURSOR, 2)
    after = ledger.decode_instant(created)
    if _EVENT_ID.fullmatch(event_id) is None:
        raise ledger.InvalidCursor
    return after, event_id


async def list_events(
    pool: asyncpg.Pool, state: Literal["pending", "failed"], *, limit: int, cursor: str | None
) -> StripeEventPage:
    """Stored events in `state`, oldest Stripe time first: what waits, or what failed and needs a fix."""
    assert 1 <= limit <= EVENTS_PAGE_MAX
    after = _decode_events_cursor(cursor)
    created, event_id = after if after is not None else (None, None)
    rows = await pool.fetch(queries.EVENTS_IN_STATE, state, created, event_id, limit + 1)
    items = [_event_out(row) for row in rows[:limit]]
    last = items[-1] if len(rows) > limit else None
    next_cursor = ledger.encode_cursor(EVENTS_CURSOR, last.created.isoformat(), last.id) if last else None
    return StripeEventPage(items=items, next_cursor=next_cursor)


async def reapply_event(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    gateway: StripeGateway | None,
    settings: StripeSettings,
    event_id: str,
    *,
    actor: str,
) -> StripeEventOut:
    """Applies a failed (or pending) event again, now, with a fresh set of attempts: after the fix its
    failure asked for (a catalog price added, a customer linked, a bug fixed). Applying is idempotent by
    the event itself: an event that has been applied is 409, and nothing is credited twice."""
    check_event_id(event_id)
    reopened = await pool.fetchval(queries.REOPEN_EVENT, event_id, actor)
    if reopened is None:
        current = await stripe_event(pool, event_id)
        raise Conflict(f"event {event_id} is {current.state}: only a failed or pending event is re-applied")
    result = await apply_event(pool, ledger_service, catalog, gateway, settings, event_id)
    log.info("stripe_event_reapplied", event_id=event_id, actor=actor, status=result.status)
    return await stripe_event(pool, event_id)


@dataclass(frozen=True)
class EventBacklog:
    pending: int
    failed: int
    oldest_pending_s: float


async def event_backlog(pool: asyncpg.Pool) -> EventBacklog:
    """What /metrics shows of the events: how many wait, how many failed, how long the oldest has waited."""
    row = await pool.fetchrow(queries.EVENT_BACKLOG)
    assert row is not None
    return EventBacklog(pending=row["pending"], failed=row["failed"], oldest_pending_s=row["oldest_pending_s"])


async def refresh_metrics(pool: asyncpg.Pool) -> None:
    """Read when /metrics is scraped: the database's count, the same from every process."""
    backlog = await event_backlog(pool)
    EVENTS_NOT_APPLIED.labels("pending").set(backlog.pending)
    EVENTS_NOT_APPLIED.labels("failed").set(backlog.failed)
    OLDEST_PENDING_EVENT.set(backlog.oldest_pending_s)


# ---------------------------------------------------------------------------------------------------
# Checkout: customers and sessions, through the gateway.


def pack_or_tier(catalog: pricing.Catalog, body: CheckoutCreate) -> tuple[pricing.Pack | None, pricing.Tier | None]:
    """What a checkout request buys: exactly one of a catalog pack or a purchasable tier. Pure."""
    if (body.pack is None) == (body.tier is None):
        field = "pack" if body.pack is None else "tier"
        raise ValidationFailed(field, "give exactly one of pack or tier")
    if body.pack is not None:
        pack = catalog.pack(body.pack)
        if pack is None:
            allowed = [p.id for p in catalog.packs]
            raise ValidationFailed("pack", one_of(allowed), allowed=allowed)
        return pack, None
    purchasable = [t.name for t in catalog.tiers if t.stripe_price_id is not None]
    tier = catalog.tier(body.tier or "")
    if tier is None or tier.stripe_price_id is None:
        raise ValidationFailed("tier", one_of(purchasable), allowed=purchasable)
    return None, tier


def checkout_request_json_schema(catalog: pricing.Catalog) -> dict[str, Any]:
    """`pack_or_tier`'s rule as JSON Schema: exactly one of a catalog pack or a purchasable tier."""
    packs = [p.id for p in catalog.packs]
    purchasable = [t.name for t in catalog.tiers if t.stripe_price_id is not None]
    return {
        "properties": {
            "pack": {"enum": [*packs, None]},
            "tier": {"enum": [*purchasable, None]},
        },
        "oneOf": [
            {
                "title": "a moment pack",
                "required": ["pack"],
                "properties": {"pack": {"enum": packs}, "tier": {"const": None}},
            },
            {
                "title": "a tier",
                "required": ["tier"],
                "properties": {"tier": {"enum": purchasable}, "pack": {"const": None}},
            },
        ],
    }


async def checkout(
    *,
    pool: asyncpg.Pool,
    gateway: StripeGateway | None,
    settings: StripeSettings,
    catalog: pricing.Catalog,
    caller: Caller,
    user_id: str,
    body: CheckoutCreate,
    key: str,
) -> CheckoutOut:
    pack, tier = pack_or_tier(catalog, body)
    if gateway is None:
        raise StripeNotConfigured("STRIPE_API_KEY is not set: this service is not connected to Stripe")
    return await create_checkout_session(
        pool=pool,
        gateway=gateway,
        settings=settings,
        catalog=catalog,
        caller=caller,
        user_id=user_id,
        pack=pack,
        tier=tier,
        key=key,
    )


def stripe_idempotency_key(*parts: str) -> str:
    """Stripe keys are at most 255 characters: a digest of what identifies the request."""
    return "moments-" + hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def _stripe_problem(error: stripe.StripeError) -> StripeUnavailable | StripeRefused:
    if isinstance(error, stripe.APIConnectionError):
        return StripeUnavailable("Stripe did not answer; retry with the same Idempotency-Key")
    return StripeRefused(f"Stripe refused the request ({type(error).__name__}: {error.user_message or 'no detail'})")


async def _customer_for(pool: asyncpg.Pool, gateway: StripeGateway, user_id: str) -> str:
    existing = await pool.fetchval(queries.CUSTOMER_OF_USER, user_id)
    if existing is not None:
        return str(existing)
    # One key per user: concurrent first checkouts of one user get the same Stripe customer.
    customer = await gateway.client.v1.customers.create_async(
        {"metadata": {"user_id": user_id}},
        {"idempotency_key": stripe_idempotency_key("customer", user_id)},
    )
    # Committed on its own: even if the checkout fails after this, the mapping is kept.
    await remember_customer(pool, customer.id, user_id)
    return customer.id


async def create_checkout_session(
    *,
    pool: asyncpg.Pool,
    gateway: StripeGateway,
    settings: StripeSettings,
    catalog: pricing.Catalog,
    caller: Caller,
    user_id: str,
    pack: pricing.Pack | None,
    tier: pricing.Tier | None,
    key: str,
) -> CheckoutOut:
    """Creates (if needed) the user's Stripe customer and a Checkout session for a pack or a tier.

    The API idempotency claim is held in a transaction across the Stripe calls, so concurrent requests
    with one key wait and replay the first answer; the Stripe calls carry keys derived from the caller's,
    so a retry after a failure gets the same customer and session from Stripe."""
    assert (pack is None) != (tier is None)
    fingerprint = idempotency.request_hash("create_checkout_session", user_id, pack and pack.id, tier and tier.name)

    async def checkout_in(connection: ledger.Connection) -> CheckoutOut:
        if pack is not None:
            current = await tiers.tier_of(connection, user_id)
            if current == pricing.FREE_TIER or catalog.tier(current) is None:
                raise TierRequired(f"moment packs need a {' or '.join(PACK_TIERS)} tier; {user_id} is {current}")
        metadata = {"user_id": user_id, **({"pack": pack.id} if pack else {}), **({"tier": tier.name} if tier else {})}
        price_id = pack.stripe_price_id if pack is not None else tier.stripe_price_id if tier is not None else None
        assert price_id is not None
        try:
            customer_id = await _customer_for(pool, gateway, user_id)
            options: stripe.RequestOptions = {
                "idempotency_key": stripe_idempotency_key("checkout", str(caller.key_id), user_id, key)
            }
            params: SessionCreateParams = {
                "customer": customer_id,
                "client_reference_id": user_id,
                "line_items": [{"price": price_id, "quantity": 1}],
                "metadata": metadata,
                "success_url": settings.success_url,
                "cancel_url": settings.cancel_url,
            }
            # The metadata rides along on what the session creates, so later events name the user too.
            if pack is not None:
                params["mode"] = "payment"
                params["payment_intent_data"] = {"metadata": metadata}
            else:
                params["mode"] = "subscription"
                params["subscription_data"] = {"metadata": metadata}
            session = await gateway.client.v1.checkout.sessions.create_async(params, options)
        except stripe.StripeError as error:
            log.warning("stripe_call_failed", error_type=type(error).__name__, user_id=user_id)
            raise _stripe_problem(error) from None
        if not session.url:
            raise StripeRefused(f"Stripe answered checkout session {session.id} without a url")
        response = CheckoutOut(url=session.url, id=session.id)
        log.info(
            "checkout_session_created",
            user_id=user_id,
            session_id=session.id,
            pack=pack and pack.id,
            tier=tier and tier.name,
        )
        return response

    return await idempotency.once(
        pool,
        caller_key_id=caller.key_id,
        key=key,
        operation="create_checkout_session",
        fingerprint=fingerprint,
        answer=CheckoutOut,
        work=checkout_in,
    )
