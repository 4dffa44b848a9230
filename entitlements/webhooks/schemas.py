"""Outgoing webhooks' requests and responses: endpoints, their deliveries, the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec

from entitlements.schemas import TEXT_PATTERN, Struct

EventType = Literal[
    "generation.succeeded",
    "generation.failed",
    "generation.refunded",
    "balance.low",
    "balance.depleted",
    "balance.recovered",
    "tier.changed",
    "credit.granted",
    "debt.created",
    "debt.repaid",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
EndpointStatus = Literal["enabled", "disabled"]
DeliveryStatus = Literal["pending", "delivered", "cancelled"]

URL_CHARS_MAX = 2_000
DESCRIPTION_CHARS_MAX = 1_000
# The public form of an event id, also its `webhook-id`: "evt_" and the number.
EVENT_ID_PREFIX = "evt_"
EVENT_ID_PATTERN = r"^evt_[1-9][0-9]{0,14}$"

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=URL_CHARS_MAX, pattern=r"^[^\x00-\x20\x7f]+$")]
Description = Annotated[str, msgspec.Meta(max_length=DESCRIPTION_CHARS_MAX, pattern=TEXT_PATTERN)]
EventTypes = Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES))]


class EndpointCreate(Struct, frozen=True):
    url: Url
    events: EventTypes
    description: Description = ""


class EndpointOut(Struct, frozen=True):
    id: int
    url: str
    description: str
    events: list[EventType]
    status: EndpointStatus
    # Why it was disabled (a 410, or attempts exhausted), null while enabled.
    disabled_reason: str | None
    disabled_at: datetime | None
    # Until when the previous secret still signs, after a rotation.
    previous_secret_expires_at: datetime | None
    created_at: datetime


class EndpointCreated(Struct, frozen=True):
    """The endpoint and its signing secret (`whsec_` and base64), shown here once and never again."""

    secret: str
    endpoint: EndpointOut


class EndpointsPage(Struct, frozen=True):
    items: list[EndpointOut]
    next_cursor: str | None


class AttemptOut(Struct, frozen=True):
    id: int
    event_id: str
    attempt: int
    # The receiver's HTTP status; null when no answer came (refused, timed out, address refused).
    status: int | None
    latency_ms: int
    error: str | None
    delivered: bool
    attempted_at: datetime


class AttemptsPage(Struct, frozen=True):
    items: list[AttemptOut]
    next_cursor: str | None


class EventOut(Struct, frozen=True):
    """An event as it is delivered: the body of the webhook."""

    id: str
    type: EventType
    user_id: str
    sequence: int
    created_at: datetime
    data: dict[str, Any]


class EventsPage(Struct, frozen=True):
    items: list[EventOut]
    next_cursor: str | None


class RedeliverOut(Struct, frozen=True):
    event_id: str
    # Endpoints the event is queued for again (enabled ones subscribed to its type).
    endpoints: list[int]
