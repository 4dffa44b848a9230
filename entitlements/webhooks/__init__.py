"""Outgoing webhooks: endpoints, the event outbox (written by the database with each effect), delivery."""

from entitlements.webhooks.deliverer import Deliverer, signature_header
from entitlements.webhooks.schemas import EVENT_TYPES, EndpointCreated, EndpointOut, EventOut, EventType
from entitlements.webhooks.service import (
    EndpointOverview,
    address_refusal,
    check_url,
    list_endpoints,
    new_secret,
    overview,
    refresh_metrics,
)

__all__ = [
    "EVENT_TYPES",
    "Deliverer",
    "EndpointCreated",
    "EndpointOut",
    "EndpointOverview",
    "EventOut",
    "EventType",
    "address_refusal",
    "check_url",
    "list_endpoints",
    "new_secret",
    "overview",
    "refresh_metrics",
    "signature_header",
]
