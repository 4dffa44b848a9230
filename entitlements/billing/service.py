"""Billing's use cases: Stripe's webhook (events stored first, then applied exactly once), the sweeper's
retry of stored events, and Checkout sessions for packs and tiers through the `StripeGateway`.

**Events.** A verified event is stored under its id (`stripe_events`, primary key) before anything else,
then applied in ONE database transaction that locks its row (`FOR UPDATE`), skips it if it is already
applied, runs its handler (`handlers.py`: ledger operations through `Ledger.execute_in` on that same
connection, subscriptions, purchases, disputes), and marks it applied with the handler's Effect. A
failure rolls all of it back and leaves the event stored with `last_error`; the sweeper (and Stripe's
redelivery) tries again. What a handler decides, and why no event credits twice, is said in `handlers.py`.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
import stripe
import structlog
from stripe.params.checkout import SessionCreateParams

import ledger
import pricing
from entitlements import idempotency, tiers
from entitlements.billing import queries
from entitlements.billing.events import Envelope, InvalidEvent, parse_envelope
from entitlements.billing.handlers import HANDLERS, Context, NotYetApplicable, StoredEvent, ignored, remember_customer
from entitlements.billing.schemas import CheckoutCreate, CheckoutOut, WebhookOut
from entitlements.errors import (
    InvalidSignature,
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

log = structlog.get_logger("moments.stripe")

SIGNATURE_HEADER = "stripe-signature"
# One outgoing Stripe call; the stripe library retries connection failures and 409/429/5xx this often
# (with the same idempotency key).
STRIPE_REQUEST_TIMEOUT_S = 20.0
STRIPE_NETWORK_RETRIES_MAX = 2
# Larger than the API's general body limit: invoices with many lines make large events, and a 413 would
# only make Stripe redeliver the same body until it gives up.
WEBHOOK_BODY_BYTES_MAX = 1 << 20
# The sweeper applies at most this many stored-but-unapplied events per pass, retrying each no sooner
# than base * 2^attempts seconds (capped) after its last failure.
REAPPLY_BATCH_MAX = 100
REAPPLY_BACKOFF_BASE_S = 5
REAPPLY_BACKOFF_CAP_S = 3600
LAST_ERROR_CHARS_MAX = 1000
# Tiers a user must be on to buy moment packs: every tier but the free one.
PACK_TIERS = tuple(name for name in pricing.TIER_NAMES if name != pricing.FREE_TIER)


# ---------------------------------------------------------------------------------------------------
# The webhook.


async def receive_webhook(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    settings: StripeSettings,
    *,
    payload: bytes,
    signature: str | None,
) -> WebhookOut:
    """Verifies the signature, stores the event under its id, then applies it (once)."""
    if settings.webhook_secret is None:
        raise StripeNotConfigured("STRIPE_WEBHOOK_SECRET is not set: this service is not connected to Stripe")
    try:
        stripe.WebhookSignature.verify_header(payload, signature, settings.webhook_secret, settings.webhook_tolerance_s)
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as invalid:
        # The header itself is never logged: it is a credential for this one body.
        message = invalid.user_message if isinstance(invalid, stripe.StripeError) else "body is not UTF-8"
        raise InvalidSignature(f"Stripe-Signature does not verify: {message}") from None
    try:
        envelope = parse_envelope(payload)
    except InvalidEvent as invalid:
        raise ValidationFailed("body", f"not a Stripe event: {invalid}") from None
    stored = await store_event(pool, envelope, payload)
    result = await apply_event(pool, ledger_service, catalog, envelope.id)
    log.info("stripe_webhook", event_id=envelope.id, event_type=envelope.type, new=stored, status=result.status)
    if result.status == "failed":
        raise Unavailable(
            f"event {envelope.id} is stored but could not be applied now ({result.detail}); it will be retried"
        )
    return WebhookOut(id=envelope.id, status=result.status, detail=result.detail)


# ---------------------------------------------------------------------------------------------------
# Storing and applying events.

ApplyStatus = Literal["applied", "ignored", "duplicate", "pending", "failed"]


@dataclass(frozen=True)
class ApplyResult:
    status: ApplyStatus
    detail: str | None


async def store_event(pool: asyncpg.Pool, envelope: Envelope, payload: bytes) -> bool:
    """Stores the event under its id; False if it was already stored (a duplicate delivery)."""
    inserted = await pool.fetchval(
        queries.STORE_EVENT,
        envelope.id,
        envelope.type,
        datetime.fromtimestamp(envelope.created, UTC),
        envelope.livemode,
        payload.decode(),
    )
    return bool(inserted)


async def apply_event(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog,
    event_id: str,
    *,
    skip_locked: bool = False,
) -> ApplyResult:
    """Applies one stored event in one transaction; never half. `skip_locked` (the sweeper) leaves an
    event another process is applying right now to that process."""
    query = queries.EVENT_FOR_UPDATE_SKIP_LOCKED if skip_locked else queries.EVENT_FOR_UPDATE
    try:
        async with pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(query, event_id)
            if row is None:
                return ApplyResult("duplicate", "being applied by another process")
            if row["applied_at"] is not None:
                return ApplyResult("duplicate", row["outcome"])
            payload = msgspec.json.decode(row["payload"])
            event = StoredEvent(event_id, row["type"], row["created"], payload.get("data", {}).get("object", {}))
            handler = HANDLERS.get(event.type)
            effect = (
                await handler(Context(connection, ledger_service, catalog, event, datetime.now(UTC)))
                if handler is not None
                else ignored("not an event type this service applies")
            )
            await connection.execute(
                queries.MARK_EVENT_APPLIED,
                event_id,
                effect.outcome,
                effect.ledger_kind,
                effect.ledger_moments,
            )
    except NotYetApplicable as waiting:
        await _record_failure(pool, event_id, str(waiting))
        log.info("stripe_event_pending", event_id=event_id, reason=str(waiting))
        return ApplyResult("pending", str(waiting))
    except Exception as error:  # whatever failed, the event stays stored, unapplied, and is retried
        log.exception("stripe_event_failed", event_id=event_id, error_type=type(error).__name__)
        await _record_failure(pool, event_id, f"{type(error).__name__}: {error}")
        return ApplyResult("failed", type(error).__name__)
    status: ApplyStatus = "ignored" if effect.ignored else "applied"
    log.info("stripe_event_applied", event_id=event_id, event_type=event.type, status=status, outcome=effect.outcome)
    return ApplyResult(status, effect.outcome)


async def _record_failure(pool: asyncpg.Pool, event_id: str, error: str) -> None:
    try:
        await pool.execute(
            queries.RECORD_EVENT_FAILURE,
            event_id,
            error[:LAST_ERROR_CHARS_MAX],
            float(REAPPLY_BACKOFF_CAP_S),
            float(REAPPLY_BACKOFF_BASE_S),
        )
    except (OSError, asyncpg.PostgresError) as unrecorded:
        # The event is still stored and unapplied; the sweeper will find it without the note.
        log.warning("stripe_event_failure_unrecorded", event_id=event_id, error=repr(unrecorded))


@functools.cache
def _default_catalog() -> pricing.Catalog:
    return pricing.load_catalog()


async def reapply_pending_events(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    catalog: pricing.Catalog | None = None,
    *,
    events_max: int = REAPPLY_BATCH_MAX,
) -> int:
    """The sweeper's pass over stored-but-unapplied events whose retry time has come (oldest Stripe time
    first, so a purchase is applied before its refund). Returns how many were applied now."""
    rows = await pool.fetch(queries.DUE_EVENTS, events_max)
    applied = 0
    for row in rows:
        result = await apply_event(pool, ledger_service, catalog or _default_catalog(), row["id"], skip_locked=True)
        applied += result.status in {"applied", "ignored"}
    return applied


# ---------------------------------------------------------------------------------------------------
# Checkout: customers and sessions, through the gateway.


class _HTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client sends its form-encoded body as `data=`, which httpx deprecates for raw
    bytes; the same body as `content=` is the same request without the warning."""

    def _get_request_args_kwargs(self, *args: Any, **kwargs: Any) -> Any:
        positional, options = super()._get_request_args_kwargs(*args, **kwargs)
        if isinstance(options.get("data"), bytes | str):
            options["content"] = options.pop("data")
        return positional, options


@dataclass(frozen=True)
class StripeGateway:
    """The configured Stripe client and its HTTP client (closed with the app)."""

    client: stripe.StripeClient
    http_client: stripe.HTTPXClient

    async def aclose(self) -> None:
        await self.http_client.close_async()  # type: ignore[no-untyped-call]


def make_gateway(settings: StripeSettings) -> StripeGateway | None:
    """None when STRIPE_API_KEY is unset: checkout endpoints then answer 503 stripe_not_configured."""
    if settings.api_key is None:
        return None
    http_client = _HTTPXClient(timeout=STRIPE_REQUEST_TIMEOUT_S)
    client = stripe.StripeClient(
        settings.api_key,
        base_addresses={"api": settings.api_base} if settings.api_base else None,
        http_client=http_client,
        max_network_retries=STRIPE_NETWORK_RETRIES_MAX,
    )
    return StripeGateway(client, http_client)


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
