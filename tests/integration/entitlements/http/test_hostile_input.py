"""Hostile input thrown at every route of the app, read from the app itself: no answer is a 500.

Each route is called as a caller allowed to reach its handler (the admin key, the console session of an
admin, the Stripe signature), with one hostile part at a time, so each probe reaches as deep as the part
under test lets it: a hostile path segment, query value, header, whole body, or one body field in an
otherwise plausible body. Deep nesting, invalid UTF-8, lone surrogates, NUL and control characters,
numbers past int64 and float, dates at the edges of years 1 and 9999 with extreme offsets, forged cursors.
A route added later is probed without anyone writing a line here (its body needs an example below only
to be probed field by field; a test says so when one is missing).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg
import msgspec
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

import ledger
from entitlements.app import create_app
from entitlements.approvals.service import APPROVALS_CURSOR
from entitlements.billing.service import EVENTS_CURSOR
from entitlements.generations.service import GENERATIONS_CURSOR
from entitlements.keys import create_key
from entitlements.keys.service import KEYS_CURSOR
from ledger.service import HISTORY_CURSOR, JOURNAL_CURSOR, TRANSACTIONS_CURSOR
from tests.support.app import settings_for
from tests.support.console import csrf_of
from tests.support.database import clone_database, drop_database, dsn_with_database
from tests.support.stripe_fake import sign_bytes, stripe_settings_for

# 503s that are the deployment's state, not a failure of ours (the probes' app has no Stripe API key).
EXPECTED_UNAVAILABLE = {"stripe_not_configured"}
# Signing out would end the session the other console probes use.
SKIPPED_PREFIXES = ("/schema", "/static/", "/console/static/", "/console/sign-out")
BODY_METHODS = {"POST", "PUT", "PATCH"}
BIGINT_MAX = (1 << 63) - 1
# Query parameters a route requires, with a plausible value: sent beside the one under test.
PLAUSIBLE_QUERY = {"state": "pending"}

# A plausible body for each operation with a JSON body: probes replace one field at a time.
EXAMPLE_BODIES: dict[str, dict[str, Any]] = {
    "createQuote": {"mode": "standard", "resolution": "720p", "duration_s": 5, "audio": False},
    "advisePrompt": {"prompt": "A slow dolly in on a lighthouse at dusk", "mode": "standard", "duration_s": 5},
    "setSubscription": {"tier": "PREMIUM"},
    "createGrant": {"moments": 10, "reason": "probe", "category": "promotional", "expires_at": None},
    "createGeneration": {
        "image_id": "img_1",
        "prompt": "A slow dolly in on a lighthouse at dusk",
        "mode": "standard",
        "resolution": "720p",
        "duration_s": 5,
        "audio": False,
    },
    "refundGeneration": {"reason": "probe", "moments": 1},
    "createCheckoutSession": {"pack": "small"},
    "createKey": {"role": "service", "name": "probe"},
    "approveApproval": {"reason": "probe"},
    "rejectApproval": {"reason": "probe"},
    "createWebhookEndpoint": {
        "url": "http://127.0.0.1:9/hook",
        "events": ["generation.succeeded"],
        "description": "probe",
    },
    "createExport": {"dataset": "postings", "format": "csv", "after": None, "since": None, "until": None},
    "closePeriod": {"period": "2001-01"},
    "priceWhatIf": {"table": "x = 1", "since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"},
}


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


HOSTILE_BODIES: dict[str, bytes] = {
    "nested-arrays": b"[" * 1000 + b"]" * 1000,
    "nested-objects": _nested(1000),
    "nested-100k": b"[" * 100_000,
    "invalid-utf8": b'{"mode": "\xff\xfe"}',
    "invalid-utf8-bare": b"\xff\xfe\xfd",
    "lone-surrogate": b'{"mode": "\\ud800", "prompt": "\\udfff", "reason": "\\ud800", "name": "\\ud800"}',
    "nul-escape": b'{"mode": "\\u0000", "prompt": "a\\u0000b", "reason": "\\u0000", "name": "\\u0000"}',
    "huge-exponent": b'{"duration_s": 1e999999, "moments": 1e999999}',
    "huge-int": b'{"duration_s": ' + b"9" * 5000 + b', "moments": ' + b"9" * 5000 + b"}",
    "empty": b"",
    "null": b"null",
    "bom": b'\xef\xbb\xbf{"mode": "standard"}',
    "trailing-garbage": b'{"mode": "standard"} {"mode": "standard"}',
    "duplicate-keys": b'{"mode": "standard", "mode": "pro"}',
}

HOSTILE_VALUES: list[Any] = [
    "\x00",
    "a\x00b",
    "line\n",
    "\x01\x1f\x7f\x85",
    "\u202e\u200b\ufeff",
    "\U0010ffff",
    "é€" * 30,
    "x" * 10_000,
    " ",
    "",
    "../../etc/passwd",
    BIGINT_MAX + 1,
    -(BIGINT_MAX + 2),
    1 << 200,
    -1,
    0,
    1.5,
    1e308,
    True,
    None,
    [],
    {},
    [[[[[[[[]]]]]]]],
    "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00",
]


def _forged_cursors() -> list[str]:
    scopes = [
        HISTORY_CURSOR,
        TRANSACTIONS_CURSOR,
        JOURNAL_CURSOR,
        KEYS_CURSOR,
        APPROVALS_CURSOR,
        GENERATIONS_CURSOR,
        EVENTS_CURSOR,
    ]
    parts = [
        (str(BIGINT_MAX + 1),),
        ("-1",),
        ("9" * 40,),
        ("9999-12-31T23:59:59.999999-23:59", "00000000-0000-0000-0000-000000000000"),
        ("0001-01-01T00:00:00+23:59", "evt_1"),
        ("0001-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"),
        ("2026-01-01T00:00:00+00:00", "not-a-uuid\x00"),
        ("\x00", "\x00"),
    ]
    forged = [ledger.encode_cursor(scope, *part) for scope in scopes for part in parts]
    return [*forged, "!!!", "=" * 600, "AAAA", "%FF"]


# Query values as they go on the wire (already percent-encoded where needed).
HOSTILE_QUERY_VALUES: list[str] = [
    "%00",
    "a%00b",
    "%FF%FE",
    "%ED%A0%80",  # a UTF-8-encoded surrogate
    "line%0A",
    "%01%7F",
    "9" * 30,
    str(BIGINT_MAX + 1),
    "-" + "9" * 30,
    "1e999",
    "NaN",
    "9999-12-31T23:59:59.999999-23:59",
    "0001-01-01T00:00:00%2B23:59",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "x" * 5000,
    "",
    *(quote(cursor, safe="") for cursor in _forged_cursors()),
]
HOSTILE_PATH_SEGMENTS: list[str] = [
    "%00",
    "a%00b",
    "%FF%FE",
    "%ED%A0%80",
    "line%0A",
    "%0A",
    "%01%7F",
    "9" * 30,
    str(BIGINT_MAX + 1),
    "-" + str(BIGINT_MAX + 2),
    "-1",
    "0",
    "1.5",
    "x" * 5000,
    "%2E%2E",
    "%2F",
    "user%3Aevil",
    "%E2%80%AE",
]
HOSTILE_HEADER_VALUES: list[bytes] = [
    b"\xff\xfe",
    "é€".encode(),
    "é€".encode("latin-1", "replace"),
    b"a\x00b",
    b"\x01\x7f",
    b" ",
    b"x" * 8000,
]


@dataclass
class Operation:
    method: str
    path: str  # the template, as Litestar writes it: /v1/keys/{key_id:int}/revoke
    operation_id: str | None
    query: list[str]
    headers: list[str]
    session: bool
    body: type[Any] | None
    form: bool = False
    path_params: list[str] = field(default_factory=list)


_PARAM = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")


def operations(app: Litestar) -> Iterator[Operation]:
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith(SKIPPED_PREFIXES):
            continue
        for method, (handler, kwargs_model) in route.route_handler_map.items():
            if method in {"OPTIONS", "HEAD"}:
                continue
            data = handler.parsed_fn_signature.parameters.get("data")
            body = data.annotation if data is not None else None
            struct = body if isinstance(body, type) and issubclass(body, msgspec.Struct) else None
            yield Operation(
                method=method,
                path=route.path,
                operation_id=handler.operation_id if isinstance(handler.operation_id, str) else None,
                query=[parameter.field_alias for parameter in kwargs_model.expected_query_params],
                headers=[parameter.field_alias for parameter in kwargs_model.expected_header_params],
                session=bool(handler.opt.get("session")),
                body=struct,
                form=data is not None and struct is None,
                path_params=[match.group(1) for match in _PARAM.finditer(route.path)],
            )


def concrete_path(operation: Operation, hostile: dict[str, str] | None = None) -> str:
    """The path with plausible values for its parameters, but for those given in `hostile`."""
    plausible = {"int": "1", "str": "probe_user", "path": "x"}

    def value(match: re.Match[str]) -> str:
        name, kind = match.group(1), match.group(2) or "str"
        if hostile and name in hostile:
            return hostile[name]
        if name == "generation_id":
            return "00000000-0000-0000-0000-000000000001"
        if name == "event_id":
            return "evt_probe"
        return plausible.get(kind, "x")

    return _PARAM.sub(value, operation.path)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def probe_database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres_admin_dsn, template_database)
    yield dsn_with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


@pytest.fixture(scope="module")
def app(probe_database_url: str) -> Litestar:
    # No rate limits: thousands of probes from one key must reach the handlers, not a 429.
    settings = settings_for(probe_database_url, rate_limits={"enabled": False})
    return create_app(dataclasses.replace(settings, stripe=stripe_settings_for(None)))


@dataclass
class Callers:
    client: AsyncTestClient[Litestar]
    admin_key: str
    csrf: str


@pytest.fixture(scope="module")
async def callers(app: Litestar, probe_database_url: str) -> AsyncIterator[Callers]:
    connection = await asyncpg.connect(probe_database_url)
    try:
        admin_key = (await create_key(connection, role="admin", name="probe-admin")).key
    finally:
        await connection.close()
    async with AsyncTestClient(app=app) as client:
        page = await client.get("/console/sign-in")
        signed_in = await client.post(
            "/console/sign-in",
            data={"api_key": admin_key, "csrf_token": csrf_of(page.text), "next": "/console"},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303, signed_in.text
        home = await client.get("/console")
        yield Callers(client, admin_key, csrf_of(home.text))


_idempotency = iter(range(1, 10**9))


def base_headers(callers: Callers, operation: Operation) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not operation.session:
        headers["Authorization"] = f"Bearer {callers.admin_key}"
    if "Idempotency-Key" in operation.headers:
        headers["Idempotency-Key"] = f"probe-{next(_idempotency)}"
    return headers


def plausible_body(operation: Operation) -> bytes | None:
    if operation.method not in BODY_METHODS:
        return None
    if operation.operation_id in EXAMPLE_BODIES:
        return json.dumps(EXAMPLE_BODIES[operation.operation_id]).encode()
    return b"{}"


async def send(
    callers: Callers,
    operation: Operation,
    *,
    path: str | None = None,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | None = None,
    content_type: bytes = b"application/json",
) -> Any:
    """One request, built from raw parts so hostile bytes reach the app as they were written."""
    target = path or concrete_path(operation)
    if query:
        target += "?" + query
    raw: list[tuple[bytes, bytes]] = [
        (name.encode(), value.encode()) for name, value in base_headers(callers, operation).items()
    ]
    if body is None:
        body = plausible_body(operation)
    if operation.form:
        body = f"csrf_token={callers.csrf}&reason=probe&moments=1&api_key=x".encode()
        content_type = b"application/x-www-form-urlencoded"
    if operation.path == "/v1/stripe/webhook" and body is not None:
        raw.append((b"stripe-signature", sign_bytes(body).encode()))
    if body is not None:
        raw.append((b"content-type", content_type))
    for name, value in headers or []:
        raw = [(n, v) for n, v in raw if n.lower() != name.lower() or name.lower() == b"idempotency-key"]
        raw.append((name, value))
    return await callers.client.request(operation.method, target, headers=raw, content=body)


class Findings:
    """Every server error of a probe run, so one run shows them all."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def check(self, response: Any, what: str) -> None:
        status = response.status_code
        if status < 500 or (status == 503 and response.json().get("code") in EXPECTED_UNAVAILABLE):
            return
        self.errors.append(f"{what}: {status} {response.text[:300]}")

    def assert_none(self) -> None:
        assert not self.errors, f"{len(self.errors)} server errors:\n" + "\n".join(self.errors[:40])


# --- the probes ---------------------------------------------------------------------------------------


def test_the_probes_reach_every_route(app: Litestar) -> None:
    found = list(operations(app))
    assert len(found) >= 45, [f"{o.method} {o.path}" for o in found]
    missing = [o.operation_id for o in found if o.body is not None and o.operation_id not in EXAMPLE_BODIES]
    assert not missing, f"give these operations an example body so their fields are probed: {missing}"


async def test_hostile_path_segments(app: Litestar, callers: Callers) -> None:
    found = Findings()
    for operation in operations(app):
        for name in operation.path_params:
            for segment in HOSTILE_PATH_SEGMENTS:
                path = concrete_path(operation, {name: segment})
                response = await send(callers, operation, path=path)
                found.check(response, f"{operation.method} {path[:200]}")
    found.assert_none()


async def test_hostile_query_values(app: Litestar, callers: Callers) -> None:
    found = Findings()
    for operation in operations(app):
        # Every parameter the route reads, and one it does not.
        for name in [*operation.query, "unknown"]:
            others = "".join(f"&{key}={plain}" for key, plain in PLAUSIBLE_QUERY.items() if key in operation.query)
            for value in HOSTILE_QUERY_VALUES:
                query = f"{name}={value}" + (others if name not in PLAUSIBLE_QUERY else "")
                response = await send(callers, operation, query=query)
                found.check(response, f"{operation.method} {operation.path}?{query[:200]}")
        for query in ["%FF=1", "a=1&a=2", "&&&=", "limit=1&limit=1", "cursor=" + "A" * 600]:
            response = await send(callers, operation, query=query)
            found.check(response, f"{operation.method} {operation.path}?{query[:200]}")
    found.assert_none()


async def test_hostile_headers(app: Litestar, callers: Callers) -> None:
    found = Findings()
    names = [b"authorization", b"idempotency-key", b"content-type", b"x-request-id", b"stripe-signature", b"cookie"]
    for operation in operations(app):
        for name in names:
            for value in HOSTILE_HEADER_VALUES:
                response = await send(callers, operation, headers=[(name, value)])
                found.check(response, f"{operation.method} {operation.path} {name!r}: {value[:40]!r}")
        for value in [b"Bearer \xff\xfe", b"Bearer " + b"a" * 600, b"Basic \x00", b"Bearer"]:
            response = await send(callers, operation, headers=[(b"authorization", value)])
            found.check(response, f"{operation.method} {operation.path} authorization {value[:40]!r}")
        if "Idempotency-Key" in operation.headers:
            twice = [(b"idempotency-key", b"probe-a"), (b"idempotency-key", b"probe-b")]
            response = await send(callers, operation, headers=twice)
            found.check(response, f"{operation.method} {operation.path} two Idempotency-Keys")
    found.assert_none()


async def test_hostile_bodies(app: Litestar, callers: Callers) -> None:
    found = Findings()
    for operation in operations(app):
        if operation.method not in BODY_METHODS or operation.form:
            continue
        for name, body in HOSTILE_BODIES.items():
            response = await send(callers, operation, body=body)
            found.check(response, f"{operation.method} {operation.path} body {name}")
        for content_type in [b"text/plain", b"application/json; charset=latin-1", b"application/json\x00", b"\xff"]:
            response = await send(callers, operation, content_type=content_type)
            found.check(response, f"{operation.method} {operation.path} content-type {content_type!r}")
    found.assert_none()


async def test_hostile_body_fields(app: Litestar, callers: Callers) -> None:
    found = Findings()
    for operation in operations(app):
        if operation.body is None:
            continue
        example = EXAMPLE_BODIES[operation.operation_id or ""]
        for field_name in [member.encode_name for member in msgspec.structs.fields(operation.body)]:
            for value in HOSTILE_VALUES:
                body = json.dumps({**example, field_name: value}).encode()
                response = await send(callers, operation, body=body)
                found.check(response, f"{operation.method} {operation.path} {field_name}={value!r:.60}")
    found.assert_none()


async def test_hostile_form_fields(app: Litestar, callers: Callers) -> None:
    found = Findings()
    for operation in operations(app):
        if not operation.form:
            continue
        for value in HOSTILE_QUERY_VALUES[:20]:
            for name in ["reason", "moments", "api_key", "idempotency_key", "next", "category", "expires_at"]:
                body = f"csrf_token={callers.csrf}&reason=probe&moments=1&{name}={value}".encode()
                response = await callers.client.request(
                    operation.method,
                    concrete_path(operation),
                    content=body,
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                found.check(response, f"{operation.method} {operation.path} form {name}={value[:40]}")
    found.assert_none()
