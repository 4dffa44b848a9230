"""Outgoing webhooks over HTTP: admins' endpoints and their attempts; the event log (service too)."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from entitlements.http import IDEMPOTENCY_KEY_PATTERN, AppSettings, CursorQuery, PageLimit, Pool, TheCaller
from entitlements.schemas import IDEMPOTENCY_KEY_CHARS_MAX, USER_ID_CHARS_MAX, USER_ID_PATTERN
from entitlements.webhooks import service
from entitlements.webhooks.schemas import (
    EVENT_ID_PATTERN,
    AttemptsPage,
    EndpointCreate,
    EndpointCreated,
    EndpointOut,
    EndpointsPage,
    EventsPage,
    RedeliverOut,
)

# Ids stay within what a JSON number carries exactly (2**53 - 1), so any client can hold one.
ID_MAX = (1 << 53) - 1
EndpointIdPath = Annotated[int, PathParameter(ge=1, le=ID_MAX, description="The endpoint's id.")]
EventIdPath = Annotated[
    str, PathParameter(min_length=5, max_length=19, pattern=EVENT_ID_PATTERN, description="The event's id (evt_…).")
]
# Optional here (registering an endpoint changes no money): with it a retried request replays the first
# answer, the same endpoint and secret, instead of registering a second endpoint.
ReplayKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_CHARS_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Makes the request safe to retry: the same key with the same body replays the first answer "
        "(the same secret); with another body it is 409 idempotency_key_reused.",
    ),
]


class WebhookEndpointsController(Controller):
    path = "/v1/webhook-endpoints"
    tags = ["webhooks"]
    opt = {"roles": ("admin",)}

    @post(
        operation_id="createWebhookEndpoint",
        summary="Register a receiver; its signing secret is in this answer only",
        status_code=201,
    )
    async def create_endpoint(
        self,
        pool: Pool,
        settings: AppSettings,
        caller: TheCaller,
        data: JSONBody[EndpointCreate],
        replay_key: ReplayKey = None,
    ) -> EndpointCreated:
        return await service.create_endpoint(pool, settings.webhooks, caller, data, key=replay_key)

    @get(operation_id="listWebhookEndpoints", summary="Every registered endpoint (never the secrets)")
    async def list_endpoints(self, pool: Pool, page_limit: PageLimit, cursor: CursorQuery = None) -> EndpointsPage:
        return await service.list_endpoints(pool, limit=page_limit, cursor=cursor)

    @get("/{endpoint_id:int}", operation_id="getWebhookEndpoint", summary="One endpoint, with why it is disabled")
    async def get_endpoint(self, pool: Pool, endpoint_id: EndpointIdPath) -> EndpointOut:
        return await service.get_endpoint(pool, endpoint_id)

    @delete(
        "/{endpoint_id:int}", operation_id="removeWebhookEndpoint", summary="Remove an endpoint; nothing more is sent"
    )
    async def remove_endpoint(self, pool: Pool, endpoint_id: EndpointIdPath) -> None:
        await service.remove_endpoint(pool, endpoint_id)

    @post(
        "/{endpoint_id:int}/rotate-secret",
        operation_id="rotateWebhookSecret",
        summary="A new signing secret; the old one also signs for WEBHOOK_SECRET_GRACE_S",
        status_code=200,
    )
    async def rotate_secret(
        self,
        pool: Pool,
        settings: AppSettings,
        caller: TheCaller,
        endpoint_id: EndpointIdPath,
        replay_key: ReplayKey = None,
    ) -> EndpointCreated:
        return await service.rotate_secret(pool, settings.webhooks, caller, endpoint_id, key=replay_key)

    @post(
        "/{endpoint_id:int}/enable",
        operation_id="enableWebhookEndpoint",
        summary="Enable a disabled endpoint; its queues resume in order",
        status_code=200,
    )
    async def enable_endpoint(self, pool: Pool, endpoint_id: EndpointIdPath) -> EndpointOut:
        return await service.enable_endpoint(pool, endpoint_id)

    @get(
        "/{endpoint_id:int}/deliveries",
        operation_id="listWebhookDeliveries",
        summary="Every delivery attempt to this endpoint, newest first",
    )
    async def list_deliveries(
        self, pool: Pool, page_limit: PageLimit, endpoint_id: EndpointIdPath, cursor: CursorQuery = None
    ) -> AttemptsPage:
        return await service.list_attempts(pool, endpoint_id, limit=page_limit, cursor=cursor)


class EventsController(Controller):
    path = "/v1/events"
    tags = ["webhooks"]

    @get(
        operation_id="listEvents",
        summary="The event log: one user's by sequence, or every user's in commit order",
        opt={"roles": ("service", "admin")},
    )
    async def list_events(
        self,
        pool: Pool,
        read_pool: Pool,
        page_limit: PageLimit,
        user_id: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=USER_ID_CHARS_MAX,
                pattern=USER_ID_PATTERN,
                description="Only this user's events.",
            ),
        ] = None,
        after: Annotated[
            int | None, QueryParameter(ge=0, le=ID_MAX, description="With user_id: events after this sequence number.")
        ] = None,
        cursor: CursorQuery = None,
    ) -> EventsPage:
        # One user's events by sequence may be bounded-stale; every user's in commit order follows the
        # primary's commit horizon (a cursor from it may be past a lagging replica's).
        read = read_pool if user_id is not None else pool
        return await service.list_events(read, user_id=user_id, after=after, limit=page_limit, cursor=cursor)

    @post(
        "/{event_id:str}/redeliver",
        operation_id="redeliverEvent",
        summary="Send an event again (same webhook-id) to every enabled endpoint subscribed to it",
        status_code=202,
        opt={"roles": ("admin",)},
    )
    async def redeliver(self, pool: Pool, event_id: EventIdPath) -> RedeliverOut:
        return await service.redeliver(pool, event_id)
