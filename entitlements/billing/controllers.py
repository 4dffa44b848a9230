"""Stripe: the webhook, stored events (listed; re-applied by an admin), Checkout sessions for packs and
tiers, and finance's reconciliation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from entitlements.billing import reconciliation, service
from entitlements.billing.events import STRIPE_ID_CHARS_MAX, STRIPE_ID_PATTERN
from entitlements.billing.gateway import StripeGateway
from entitlements.billing.schemas import (
    CheckoutCreate,
    CheckoutOut,
    ReconciliationOut,
    StripeEventOut,
    StripeEventPage,
    WebhookOut,
)
from entitlements.http import (
    AppSettings,
    Catalog,
    CursorQuery,
    IdempotencyKey,
    LedgerService,
    PageLimit,
    Pool,
    TheCaller,
    TimeWindow,
    UserIdPath,
)

# Declared so that the contract documents it; absent, it is the service's 400 invalid_signature (not a
# generic validation failure), so the annotation stays optional.
StripeSignature = Annotated[
    str | None,
    HeaderParameter(
        name="Stripe-Signature",
        required=True,
        description="Stripe's signature of this body (`t=…,v1=…`), checked with STRIPE_WEBHOOK_SECRET.",
    ),
]
EventIdPath = Annotated[
    str,
    PathParameter(
        description="A Stripe event id (`evt_…`).",
        min_length=1,
        max_length=STRIPE_ID_CHARS_MAX,
        pattern=STRIPE_ID_PATTERN,
    ),
]
EventStateQuery = Annotated[
    Literal["failed", "pending"],
    QueryParameter(
        name="state", description="failed (ended; needs a fix, then a re-apply) or pending (not ended yet)."
    ),
]
StripeGatewayDependency = NamedDependency[StripeGateway | None]


class BillingController(Controller):
    tags = ["stripe"]

    @post(
        "/v1/stripe/webhook",
        operation_id="stripeWebhook",
        summary="Stripe's events (authenticated by the Stripe-Signature header only)",
        opt={"public": True},
        status_code=200,
        request_max_body_size=service.WEBHOOK_BODY_BYTES_MAX,
        responses={
            202: ResponseSpec(WebhookOut, description="Stored; waits for what it refers to (retried by the sweeper)")
        },
    )
    async def stripe_webhook(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        ledger_service: LedgerService,
        catalog: Catalog,
        settings: AppSettings,
        stripe_gateway: StripeGatewayDependency,
        stripe_signature: StripeSignature = None,
    ) -> Response[WebhookOut]:
        """200 once stored and ended (applied, applied without effect, failed) or a duplicate; 202 when
        stored but waiting (unknown customer, purchase not seen yet); 400 on a bad signature or the other
        mode's event, 422 on a body no Stripe event has (nothing stored); 503 when applying failed for a
        reason that is not the event's (stored; Stripe's redelivery and the sweeper retry it)."""
        result = await service.receive_webhook(
            pool,
            ledger_service,
            catalog,
            stripe_gateway,
            settings.stripe,
            payload=await request.body(),
            signature=stripe_signature,
        )
        return Response(result, status_code=202 if result.status == "pending" else 200)

    @post(
        "/v1/users/{user_id:str}/checkout-sessions",
        operation_id="createCheckoutSession",
        summary="A Stripe Checkout session for a moment pack or a tier",
        opt={"roles": ("service",), "idempotent": True},
        status_code=201,
    )
    async def create_checkout_session(
        self,
        pool: Pool,
        stripe_gateway: StripeGatewayDependency,
        catalog: Catalog,
        settings: AppSettings,
        caller: TheCaller,
        idempotency_key: IdempotencyKey,
        user_id: UserIdPath,
        data: JSONBody[CheckoutCreate],
    ) -> CheckoutOut:
        return await service.checkout(
            pool=pool,
            gateway=stripe_gateway,
            settings=settings.stripe,
            catalog=catalog,
            caller=caller,
            user_id=user_id,
            body=data,
            key=idempotency_key,
        )

    @get(
        "/v1/reconciliation/stripe",
        operation_id="reconcileStripe",
        summary="Stripe's events against the ledger's transactions, for a window",
        opt={"roles": ("finance",)},
    )
    async def reconcile_stripe(self, read_pool: Pool, window: TimeWindow) -> ReconciliationOut:
        return await reconciliation.reconcile(read_pool, since=window.since, until=window.until)

    @get(
        "/v1/stripe/events",
        operation_id="listStripeEvents",
        summary="Stored Stripe events that failed (or have not ended yet), oldest Stripe time first",
        opt={"roles": ("finance",)},
    )
    async def list_stripe_events(
        self, read_pool: Pool, event_state: EventStateQuery, page_limit: PageLimit, cursor: CursorQuery = None
    ) -> StripeEventPage:
        return await service.list_events(read_pool, event_state, limit=page_limit, cursor=cursor)

    @get(
        "/v1/stripe/events/{event_id:str}",
        operation_id="getStripeEvent",
        summary="One stored Stripe event and where it is in its life",
        opt={"roles": ("finance",)},
    )
    async def get_stripe_event(self, pool: Pool, event_id: EventIdPath) -> StripeEventOut:
        return await service.stripe_event(pool, event_id)

    @post(
        "/v1/stripe/events/{event_id:str}/reapply",
        operation_id="reapplyStripeEvent",
        summary="Apply a failed (or pending) Stripe event again, now, after a fix",
        opt={"roles": ("admin",)},
        status_code=200,
    )
    async def reapply_stripe_event(
        self,
        pool: Pool,
        ledger_service: LedgerService,
        catalog: Catalog,
        settings: AppSettings,
        stripe_gateway: StripeGatewayDependency,
        caller: TheCaller,
        event_id: EventIdPath,
    ) -> StripeEventOut:
        """Idempotent by the event itself: an event applied once is never applied again (409 once it has
        been); the answer is the event as it is now (applied, without effect, still pending, or failed)."""
        return await service.reapply_event(
            pool, ledger_service, catalog, stripe_gateway, settings.stripe, event_id, actor=caller.actor
        )
