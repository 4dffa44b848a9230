"""Stripe: the webhook, Checkout sessions for packs and tiers, and finance's reconciliation."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody

from entitlements.billing import reconciliation, service
from entitlements.billing.schemas import CheckoutCreate, CheckoutOut, ReconciliationOut, WebhookOut
from entitlements.billing.service import StripeGateway
from entitlements.http import (
    AppSettings,
    Catalog,
    IdempotencyKey,
    LedgerService,
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
        stripe_signature: StripeSignature = None,
    ) -> Response[WebhookOut]:
        """200 once stored and applied (or a duplicate), 202 when stored but waiting (unknown customer,
        purchase not seen yet), 400 on a bad signature (nothing stored), 503 when applying failed (stored;
        Stripe's redelivery and the sweeper retry it)."""
        result = await service.receive_webhook(
            pool,
            ledger_service,
            catalog,
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
        stripe_gateway: NamedDependency[StripeGateway | None],
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
