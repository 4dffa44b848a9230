"""Stripe endpoints: the webhook, Checkout sessions for packs and tiers, and finance's reconciliation."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import stripe
import structlog
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody

import pricing
from entitlements import stripe_service
from entitlements.auth import caller_of
from entitlements.errors import ProblemError, ValidationFailed
from entitlements.http import aware, check_user_id, idempotency_key, strict_body
from entitlements.schemas import Struct
from entitlements.stripe_service import CheckoutCreate, CheckoutOut, ReconciliationOut

log = structlog.get_logger("moments.stripe")
SIGNATURE_HEADER = "stripe-signature"


class WebhookOut(Struct, frozen=True):
    id: str
    # applied / ignored (stored and deliberately left without effect) / duplicate (stored and applied
    # before) / pending (stored; waits for what it refers to, retried by the sweeper).
    status: Literal["applied", "ignored", "duplicate", "pending"]
    detail: str | None


def _not_configured(what: str) -> ProblemError:
    return ProblemError(503, "stripe_not_configured", f"{what} is not set: this service is not connected to Stripe")


@post(
    "/v1/stripe/webhook",
    operation_id="stripeWebhook",
    opt={"public": True},
    tags=["stripe"],
    status_code=200,
    request_max_body_size=stripe_service.WEBHOOK_BODY_BYTES_MAX,
)
async def stripe_webhook(request: Request[Any, Any, Any]) -> Response[WebhookOut]:
    """Authenticated only by the Stripe-Signature header. 200 once stored and applied (or a duplicate),
    202 when stored but waiting (unknown customer, purchase not seen yet), 400 on a bad signature (nothing
    stored), 503 when applying failed (stored; Stripe's redelivery and the sweeper retry it)."""
    settings = request.app.state.settings.stripe
    if settings.webhook_secret is None:
        raise _not_configured("STRIPE_WEBHOOK_SECRET")
    payload = await request.body()
    try:
        stripe.WebhookSignature.verify_header(
            payload, request.headers.get(SIGNATURE_HEADER), settings.webhook_secret, settings.webhook_tolerance_s
        )
    except (stripe.SignatureVerificationError, UnicodeDecodeError) as invalid:
        # The header itself is never logged: it is a credential for this one body.
        message = invalid.user_message if isinstance(invalid, stripe.StripeError) else "body is not UTF-8"
        raise ProblemError(400, "invalid_signature", f"Stripe-Signature does not verify: {message}") from None
    try:
        envelope = stripe_service.parse_envelope(payload)
    except stripe_service.InvalidEvent as invalid:
        raise ValidationFailed("body", f"not a Stripe event: {invalid}") from None
    state = request.app.state
    stored = await stripe_service.store_event(state.pool, envelope, payload)
    result = await stripe_service.apply_event(state.pool, state.ledger, state.catalog, envelope.id)
    log.info("stripe_webhook", event_id=envelope.id, event_type=envelope.type, new=stored, status=result.status)
    if result.status == "failed":
        raise ProblemError(
            503,
            "unavailable",
            f"event {envelope.id} is stored but could not be applied now ({result.detail}); it will be retried",
        )
    return Response(
        WebhookOut(id=envelope.id, status=result.status, detail=result.detail),
        status_code=202 if result.status == "pending" else 200,
    )


def _pack_or_tier(catalog: pricing.Catalog, body: CheckoutCreate) -> tuple[pricing.Pack | None, pricing.Tier | None]:
    if (body.pack is None) == (body.tier is None):
        field = "pack" if body.pack is None else "tier"
        raise ValidationFailed(field, "give exactly one of pack or tier")
    if body.pack is not None:
        pack = catalog.pack(body.pack)
        if pack is None:
            allowed = [p.id for p in catalog.packs]
            raise ValidationFailed("pack", f"must be one of {', '.join(allowed)}", allowed=allowed)
        return pack, None
    purchasable = [t.name for t in catalog.tiers if t.stripe_price_id is not None]
    tier = catalog.tier(body.tier or "")
    if tier is None or tier.stripe_price_id is None:
        raise ValidationFailed("tier", f"must be one of {', '.join(purchasable)}", allowed=purchasable)
    return None, tier


@post(
    "/v1/users/{user_id:str}/checkout-sessions",
    operation_id="createCheckoutSession",
    opt={"roles": ("service",)},
    tags=["stripe"],
    status_code=201,
)
async def create_checkout_session(
    request: Request[Any, Any, Any], user_id: FromPath[str], data: JSONBody[CheckoutCreate]
) -> Response[CheckoutOut]:
    data = await strict_body(request, CheckoutCreate)
    check_user_id(user_id)
    key = idempotency_key(request)
    state = request.app.state
    pack, tier = _pack_or_tier(state.catalog, data)
    gateway: stripe_service.StripeGateway | None = state.stripe
    if gateway is None:
        raise _not_configured("STRIPE_API_KEY")
    stored = await stripe_service.create_checkout_session(
        pool=state.pool,
        gateway=gateway,
        settings=state.settings.stripe,
        catalog=state.catalog,
        caller=caller_of(request),
        user_id=user_id,
        pack=pack,
        tier=tier,
        key=key,
    )
    return Response(stored.body, status_code=stored.status_code)


@get("/v1/reconciliation/stripe", operation_id="reconcileStripe", opt={"roles": ("finance",)}, tags=["stripe"])
async def reconcile_stripe(
    request: Request[Any, Any, Any], since: FromQuery[datetime | None] = None, until: FromQuery[datetime | None] = None
) -> ReconciliationOut:
    since, until = aware(since), aware(until)
    if since is not None and until is not None and since > until:
        raise ValidationFailed("until", "must not be before since")
    try:
        return await stripe_service.reconcile(request.app.state.read_pool, since=since, until=until)
    except stripe_service.WindowTooLarge as too_large:
        raise ValidationFailed("since", f"{too_large}; ask for a narrower since/until window") from None


ROUTES = [stripe_webhook, create_checkout_session, reconcile_stripe]
