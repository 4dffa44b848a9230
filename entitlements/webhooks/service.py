"""Outgoing webhooks: endpoints (registered by admins), the event log, redelivery, and the metrics.

The events are written by the database in the transaction of their effect (migrations/0011_webhooks.sql);
the deliverer (`deliverer.py`) sends them. Receivers' addresses are checked here, when an endpoint is
registered and again before every attempt (a name may resolve elsewhere later): only http(s), never a
link-local or cloud metadata address, and private or loopback ones only when WEBHOOK_ALLOW_PRIVATE_URLS
says so.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
from prometheus_client import Gauge

import ledger
from entitlements import idempotency
from entitlements.errors import Conflict, NotFound, ValidationFailed
from entitlements.keys import Caller
from entitlements.settings import WebhookSettings
from entitlements.webhooks import queries
from entitlements.webhooks.schemas import (
    EVENT_ID_PREFIX,
    AttemptOut,
    AttemptsPage,
    EndpointCreate,
    EndpointCreated,
    EndpointOut,
    EndpointsPage,
    EventOut,
    EventsPage,
    RedeliverOut,
)

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix Standard Webhooks gives secrets, not one)
# Standard Webhooks asks for 24 to 64 random bytes; 32 is HMAC-SHA256's own key size.
SECRET_BYTES = 32
ENDPOINTS_CURSOR = "we1"
ATTEMPTS_CURSOR = "wa1"
EVENTS_CURSOR = "ev1"
USER_EVENTS_CURSOR = "ev1u"
XID8_MAX = (1 << 64) - 1
BIGINT_MAX = (1 << 63) - 1
SEQUENCE_MAX = (1 << 53) - 1
RESOLVE_TIMEOUT_S = 5.0

# Cloud metadata services: refused even when private addresses are allowed (AWS, GCP and Azure at
# 169.254.169.254, AWS's IPv6 one, ECS task metadata, Alibaba, Oracle).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text)
    for text in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192")
)
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")

PENDING_DELIVERIES = Gauge("moments_webhook_deliveries_pending", "Deliveries not yet made to enabled endpoints")
OLDEST_PENDING_DELIVERY = Gauge(
    "moments_webhook_outbox_lag_seconds", "Age of the oldest event still waiting for an enabled endpoint (outbox lag)"
)
ENDPOINTS = Gauge(
    "moments_webhook_endpoints", "Webhook endpoints by status (disabled: a 410 or retries exhausted)", ["status"]
)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def public_event_id(event_id: int) -> str:
    return f"{EVENT_ID_PREFIX}{event_id}"


def event_number(public_id: str) -> int:
    return int(public_id.removeprefix(EVENT_ID_PREFIX))


# ---------------------------------------------------------------------------------------------------
# Addresses


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool) -> str | None:
    """Why the service will not send to this address, or None. Pure."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if address.is_link_local:
        return f"{address} is a link-local address"
    if address.is_multicast or address.is_unspecified:
        return f"{address} is not a unicast address"
    private = (
        address.is_loopback or address in _SHARED_ADDRESS_SPACE or (address.is_private and not address.is_reserved)
    )
    if private:
        return (
            None
            if allow_private
            else f"{address} is a private or loopback address (WEBHOOK_ALLOW_PRIVATE_URLS allows them)"
        )
    if address.is_reserved or not address.is_global:
        return f"{address} is not a public unicast address"
    return None


def check_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL the service may send to, else ValidationFailed. Pure."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValidationFailed("url", "is not a valid URL") from None
    if parts.scheme not in {"http", "https"}:
        raise ValidationFailed("url", "must be an http or https URL")
    if not parts.hostname:
        raise ValidationFailed("url", "must name a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed("url", "must not carry credentials (the signature authenticates the service)")
    if parts.fragment:
        raise ValidationFailed("url", "must not have a fragment")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def url_refusal(url: str, *, allow_private: bool) -> str | None:
    """Why the service will not send to `url` now (its host resolved to a refused address), or None."""
    host, port = check_url(url)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError, UnicodeError) as error:  # UnicodeError: a name IDNA cannot encode
            return f"{host} does not resolve ({type(error).__name__})"
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    for address in addresses:
        refusal = address_refusal(address, allow_private=allow_private)
        if refusal is not None:
            return refusal
    return None


# ---------------------------------------------------------------------------------------------------
# Endpoints


def _endpoint(row: asyncpg.Record) -> EndpointOut:
    return EndpointOut(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        events=list(row["event_types"]),
        status=row["status"],
        disabled_reason=row["disabled_reason"],
        disabled_at=row["disabled_at"],
        previous_secret_expires_at=row["previous_secret_expires_at"],
        created_at=row["created_at"],
    )


async def create_endpoint(
    pool: asyncpg.Pool, settings: WebhookSettings, caller: Caller, body: EndpointCreate, *, key: str | None
) -> EndpointCreated:
    """Registers an endpoint; with an Idempotency-Key a retry replays the first answer (the same secret)."""
    refusal = await url_refusal(body.url, allow_private=settings.allow_private_urls)
    if refusal is not None:
        raise ValidationFailed("url", refusal)
    events = list(dict.fromkeys(body.events))

    async def create_in(connection: ledger.Connection) -> EndpointCreated:
        # Serialised on the table so two concurrent creates cannot both pass the count.
        await connection.execute("LOCK TABLE webhook_endpoints IN SHARE ROW EXCLUSIVE MODE")
        if await connection.fetchval(queries.COUNT_LIVE_ENDPOINTS) >= settings.endpoints_max:
            raise Conflict(f"at most {settings.endpoints_max} webhook endpoints (WEBHOOK_ENDPOINTS_MAX); remove one")
        secret = new_secret()
        row = await connection.fetchrow(
            queries.INSERT_ENDPOINT, body.url, body.description, events, secret, caller.actor
        )
        assert row is not None
        return EndpointCreated(secret=secret, endpoint=_endpoint(row))

    return await _once_if_keyed(pool, caller, key, "create_webhook_endpoint", body, create_in)


async def list_endpoints(pool: asyncpg.Pool, *, limit: int, cursor: str | None) -> EndpointsPage:
    after = ledger.decode_id_cursor(cursor, ENDPOINTS_CURSOR)
    rows = await pool.fetch(queries.LIST_ENDPOINTS, after, limit + 1)
    items = [_endpoint(row) for row in rows[:limit]]
    next_cursor = ledger.encode_id_cursor(ENDPOINTS_CURSOR, items[-1].id) if len(rows) > limit else None
    return EndpointsPage(items=items, next_cursor=next_cursor)


async def get_endpoint(pool: asyncpg.Pool, endpoint_id: int) -> EndpointOut:
    row = await pool.fetchrow(queries.ENDPOINT, endpoint_id)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return _endpoint(row)


async def remove_endpoint(pool: asyncpg.Pool, endpoint_id: int) -> None:
    """Stops every delivery to it at once (what was still pending is cancelled); its attempts stay."""
    if not await pool.fetchval(queries.REMOVE_ENDPOINT, endpoint_id):
        raise NotFound(f"no webhook endpoint {endpoint_id}")


async def rotate_secret(
    pool: asyncpg.Pool, settings: WebhookSettings, caller: Caller, endpoint_id: int, *, key: str | None
) -> EndpointCreated:
    """A new secret; the previous one keeps signing beside it for WEBHOOK_SECRET_GRACE_S."""

    async def rotate_in(connection: ledger.Connection) -> EndpointCreated:
        secret = new_secret()
        row = await connection.fetchrow(queries.ROTATE_SECRET, endpoint_id, secret, settings.secret_grace_s)
        if row is None:
            raise NotFound(f"no webhook endpoint {endpoint_id}")
        return EndpointCreated(secret=secret, endpoint=_endpoint(row))

    return await _once_if_keyed(pool, caller, key, "rotate_webhook_secret", endpoint_id, rotate_in)


async def _once_if_keyed(
    pool: asyncpg.Pool,
    caller: Caller,
    key: str | None,
    operation: str,
    request: object,
    work: Callable[[ledger.Connection], Awaitable[EndpointCreated]],
) -> EndpointCreated:
    """`work` in one transaction; with an Idempotency-Key, once per key (a retry replays the answer)."""
    if key is None:
        async with pool.acquire() as connection, connection.transaction():
            return await work(connection)
    return await idempotency.once(
        pool,
        caller_key_id=caller.key_id,
        key=key,
        operation=operation,
        fingerprint=idempotency.request_hash(operation, request),
        answer=EndpointCreated,
        work=work,
    )


async def enable_endpoint(pool: asyncpg.Pool, endpoint_id: int) -> EndpointOut:
    """A disabled endpoint back on: its queues resume where they stopped, attempts counted afresh."""
    row = await pool.fetchrow(queries.ENABLE_ENDPOINT, endpoint_id)
    if row is None:
        raise NotFound(f"no webhook endpoint {endpoint_id}")
    return _endpoint(row)


async def list_attempts(pool: asyncpg.Pool, endpoint_id: int, *, limit: int, cursor: str | None) -> AttemptsPage:
    """Every attempt to this endpoint, newest first."""
    await get_endpoint(pool, endpoint_id)
    before = ledger.decode_id_cursor(cursor, ATTEMPTS_CURSOR)
    rows = await pool.fetch(queries.ATTEMPTS, endpoint_id, before, limit + 1)
    items = [
        AttemptOut(
            id=row["id"],
            event_id=public_event_id(row["event_id"]),
            attempt=row["attempt"],
            status=row["status_code"],
            latency_ms=row["latency_ms"],
            error=row["error"],
            delivered=row["delivered"],
            attempted_at=row["attempted_at"],
        )
        for row in rows[:limit]
    ]
    next_cursor = ledger.encode_id_cursor(ATTEMPTS_CURSOR, items[-1].id) if len(rows) > limit else None
    return AttemptsPage(items=items, next_cursor=next_cursor)


# ---------------------------------------------------------------------------------------------------
# Events

_data_decoder = msgspec.json.Decoder(dict[str, Any])


def event_out(row: asyncpg.Record) -> EventOut:
    return EventOut(
        id=public_event_id(row["id"]),
        type=row["type"],
        user_id=row["user_id"],
        sequence=row["sequence"],
        created_at=row["created_at"],
        data=_data_decoder.decode(row["data"]),
    )


async def list_events(
    pool: asyncpg.Pool, *, user_id: str | None, after: int | None, limit: int, cursor: str | None
) -> EventsPage:
    """One user's events by sequence (from `after`, a receiver catching up), or every user's in commit
    order (ledger/feed.py's rule: never skipping an event whose transaction committed late)."""
    if after is not None and cursor is not None:
        raise ValidationFailed("after", "give after or cursor, not both")
    if user_id is not None:
        start = after or 0
        if cursor is not None:
            (text,) = ledger.decode_cursor(cursor, USER_EVENTS_CURSOR, 1)
            start = _bounded(text, SEQUENCE_MAX)
        rows = await pool.fetch(queries.USER_EVENTS, user_id, start, limit + 1)
        items = [event_out(row) for row in rows[:limit]]
        more = len(rows) > limit
        return EventsPage(
            items=items, next_cursor=ledger.encode_cursor(USER_EVENTS_CURSOR, str(items[-1].sequence)) if more else None
        )
    if after is not None:
        raise ValidationFailed("after", "is a user's sequence number: give user_id with it")
    xid, last_id = 0, 0
    if cursor is not None:
        xid_text, id_text = ledger.decode_cursor(cursor, EVENTS_CURSOR, 2)
        xid, last_id = _bounded(xid_text, XID8_MAX), _bounded(id_text, BIGINT_MAX)
    rows = await pool.fetch(queries.EVENTS_IN_COMMIT_ORDER, str(xid), last_id, limit + 1)
    items = [event_out(row) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = ledger.encode_cursor(EVENTS_CURSOR, str(int(last["xid"])), str(last["id"]))
    return EventsPage(items=items, next_cursor=next_cursor)


def _bounded(text: str, largest: int) -> int:
    if not text.isdigit() or len(text) > 20 or int(text) > largest:
        raise ledger.InvalidCursor
    return int(text)


async def redeliver(pool: asyncpg.Pool, public_id: str) -> RedeliverOut:
    """Sends the event again to every enabled endpoint subscribed to its type, with the same
    `webhook-id` (receivers that deduplicate by it know it already)."""
    event_id = event_number(public_id)
    async with pool.acquire() as connection, connection.transaction():
        if await connection.fetchval(queries.EVENT_EXISTS, event_id) is None:
            raise NotFound(f"no event {public_id}")
        rows = await connection.fetch(queries.REDELIVER, event_id)
    return RedeliverOut(event_id=public_id, endpoints=[row["endpoint_id"] for row in rows])


class EndpointOverview(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint as the console shows it: disabled ones first, with their backlog and last attempt."""

    endpoint: EndpointOut
    pending: int
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    last_delivered: bool | None


async def overview(pool: asyncpg.Pool, *, limit: int) -> list[EndpointOverview]:
    rows = await pool.fetch(queries.OVERVIEW, limit)
    return [
        EndpointOverview(
            endpoint=_endpoint(row),
            pending=row["pending"],
            last_attempt_at=row["last_attempt_at"],
            last_status=row["last_status"],
            last_error=row["last_error"],
            last_delivered=row["last_delivered"],
        )
        for row in rows
    ]


# ---------------------------------------------------------------------------------------------------
# Metrics


async def refresh_metrics(pool: asyncpg.Pool) -> None:
    """Read when /metrics is scraped: the same figures from every process."""
    backlog = await pool.fetchrow(queries.BACKLOG)
    assert backlog is not None
    PENDING_DELIVERIES.set(backlog["pending"])
    OLDEST_PENDING_DELIVERY.set(backlog["oldest_pending_s"])
    counts = {row["status"]: row["n"] for row in await pool.fetch(queries.ENDPOINTS_BY_STATUS)}
    for status in ("enabled", "disabled"):
        ENDPOINTS.labels(status).set(counts.get(status, 0))


def disabled_reason_for(verdict: str, attempts: int, status: int | None, error: str | None, at: datetime) -> str:
    """The sentence an operator reads in the console and the endpoint's listing. Pure."""
    if verdict == "gone":
        return f"the receiver answered 410 Gone at {at.isoformat()}"
    last = f"status {status}" if status is not None else (error or "no answer")
    return f"{attempts} attempts failed; the last at {at.isoformat()} ({last})"
