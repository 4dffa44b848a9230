"""HTTP as RFC 9110 and its ecosystem expect: Allow on 405, WWW-Authenticate on 401, HEAD on GET routes,
Idempotency-Key as UTF-8 and given once, no internal identifiers in problem details, Cache-Control: no-store
on every authenticated answer, metric labels from a bounded set, identifiers anchored exactly."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

import ledger
from entitlements.http.problems import handle_ledger_refusal
from tests.support.console import sign_in
from tests.support.http import Api, api_for

GRANT = {"moments": 5, "reason": "goodwill", "category": "promotional"}
_PARAM = re.compile(r"\{([^}:]+)(?::([^}]+))?\}")


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url, rate_limits={"enabled": False}) as found:
        yield found


async def raw_request(
    api: Api, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, dict[bytes, bytes], bytes]:
    """Straight into the app's ASGI callable: the test client joins repeated header lines into one."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    # The app runs in the test client's own event loop (its portal's thread).
    await asyncio.to_thread(api.client.blocking_portal.call, api.client.app, scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body_sent = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body_sent


def get_paths(app: Litestar) -> list[str]:
    plausible = {"int": "1", "str": "user_1", "path": "swagger-ui.css"}
    paths = []
    for route in app.routes:
        if isinstance(route, HTTPRoute) and "GET" in route.methods and not route.path.startswith("/schema/{"):
            paths.append(_PARAM.sub(lambda match: plausible.get(match.group(2) or "str", "x"), route.path))
    return paths


# --- methods --------------------------------------------------------------------------------------------


async def test_a_405_names_every_allowed_method_head_included(api: Api) -> None:
    for method in ("DELETE", "PATCH", "FOO"):
        response = await api.client.request(method, "/v1/pricing", headers=api.headers("service"))
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD, OPTIONS"
        assert response.json()["code"] == "method_not_allowed"


async def test_a_401_names_the_bearer_scheme(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = await api.client.get("/v1/pricing", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


async def test_head_answers_every_get_route_as_its_get_without_a_body(api: Api) -> None:
    for path in get_paths(api.client.app):
        get = await api.client.get(path, headers=api.headers("admin"))
        head = await api.client.head(path, headers=api.headers("admin"))
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
        if get.status_code == 200 and "content-length" in get.headers and path != "/metrics":
            assert head.headers["content-length"] == get.headers["content-length"], path


# --- Idempotency-Key ------------------------------------------------------------------------------------


def grant_headers(api: Api, *idempotency_keys: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"authorization", f"Bearer {api.keys['support']}".encode()),
        (b"content-type", b"application/json"),
        *((b"idempotency-key", key) for key in idempotency_keys),
    ]


GRANT_BYTES = json.dumps(GRANT).encode()


async def test_an_idempotency_key_is_read_as_utf8(api: Api, database_url: str) -> None:
    key = "commande-é-€-✓"
    status, _, first = await raw_request(
        api, "POST", "/v1/users/u1/grants", grant_headers(api, key.encode()), GRANT_BYTES
    )
    assert status == 201, first
    status, _, again = await raw_request(
        api, "POST", "/v1/users/u1/grants", grant_headers(api, key.encode()), GRANT_BYTES
    )
    assert (status, again) == (201, first)
    connection = await asyncpg.connect(database_url)
    try:
        stored = await connection.fetchval("SELECT idempotency_key FROM api_idempotency")
    finally:
        await connection.close()
    assert stored == key


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "is not valid UTF-8"),
        (("é" * 256).encode(), "must be 1-255 characters"),
        (b"a\x01b", "must not contain control characters"),
    ],
)
async def test_an_unreadable_idempotency_key_is_refused_naming_the_header(api: Api, raw: bytes, message: str) -> None:
    status, _, body = await raw_request(api, "POST", "/v1/users/u1/grants", grant_headers(api, raw), GRANT_BYTES)
    assert status == 422, body
    assert json.loads(body)["errors"] == [{"field": "Idempotency-Key", "message": message}]


async def test_the_longest_key_in_characters_is_accepted(api: Api) -> None:
    key = ("€" * 255).encode()
    status, _, body = await raw_request(api, "POST", "/v1/users/u1/grants", grant_headers(api, key), GRANT_BYTES)
    assert status == 201, body


async def test_two_idempotency_keys_are_refused(api: Api) -> None:
    headers = grant_headers(api, b"first", b"second")
    status, _, body = await raw_request(api, "POST", "/v1/users/u1/grants", headers, GRANT_BYTES)
    assert status == 422, body
    assert b"Idempotency-Key: is given more than once" in body


# --- what answers say -----------------------------------------------------------------------------------


def test_a_ledger_refusal_does_not_show_the_ledgers_own_key() -> None:
    class Request:
        class url:
            path = "/v1/users/u1/grants"

    response = handle_ledger_refusal(Request(), ledger.IdempotencyConflict("grant:17:customer-key"))  # type: ignore[arg-type]
    assert response.status_code == 409
    assert "grant:17" not in response.content["detail"]
    assert response.content["detail"] == "this Idempotency-Key was already used for a different request"
    hold = handle_ledger_refusal(Request(), ledger.HoldNotOpen(12345, "voided"))  # type: ignore[arg-type]
    assert "12345" not in hold.content["detail"]


async def test_a_reused_key_is_answered_without_internal_identifiers(api: Api) -> None:
    assert (await api.post("/v1/users/u1/grants", "support", GRANT, "reused")).status_code == 201
    response = await api.post("/v1/users/u1/grants", "support", {**GRANT, "moments": 6}, "reused")
    assert response.status_code == 409
    assert response.json()["detail"] == "this Idempotency-Key was already used for a different request"


async def test_every_authenticated_answer_is_no_store(api: Api) -> None:
    for path in get_paths(api.client.app):
        if path.startswith("/console"):
            continue
        response = await api.client.get(path, headers=api.headers("admin"))
        if path.startswith(("/healthz", "/readyz", "/metrics", "/static/")):
            continue
        assert response.headers.get("cache-control") == "no-store", (path, response.status_code)
    refused = await api.client.get("/v1/pricing", headers={"Authorization": "Bearer nope"})
    assert refused.headers["cache-control"] == "no-store"
    await sign_in(api, "finance")
    page = await api.client.get("/console/finance")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"


async def test_invented_methods_and_paths_add_no_metric_series(api: Api) -> None:
    async def series() -> set[str]:
        text = (await api.client.get("/metrics")).text
        return {line.split(" ")[0] for line in text.splitlines() if line.startswith("moments_http_requests_total{")}

    await api.client.request("BREW", "/nowhere/0")
    before = await series()
    for n in range(1, 4):
        await api.client.request(f"BREW{n}", f"/nowhere/{n}")
        await api.client.request("GET", f"/v1/generations/{n}/nowhere")
    after = await series()
    assert after - before <= {
        'moments_http_requests_total{method="GET",route="unmatched",status="404"}',
        'moments_http_requests_total{method="GET",route="/metrics",status="200"}',
    }
    assert not any("BREW" in line or "nowhere" in line for line in after)


# --- identifiers ----------------------------------------------------------------------------------------


async def test_identifiers_with_a_trailing_newline_are_refused(api: Api) -> None:
    request = {"image_id": "img_1\n", "prompt": "a slow wave", "mode": "advanced"}
    created = await api.post("/v1/users/u1/generations", "service", request, "newline")
    assert created.status_code == 422
    assert created.json()["errors"][0]["field"] == "image_id"
    listed = await api.client.get("/v1/users/u1/generations?image_id=img_1%0A", headers=api.headers("service"))
    assert listed.status_code == 422
    assert listed.json()["errors"][0]["field"] == "image_id"
    user = await api.client.get("/v1/users/u1%0A/entitlements", headers=api.headers("service"))
    assert user.status_code == 422


async def test_a_request_id_with_a_trailing_newline_is_replaced(api: Api) -> None:
    status, headers, _ = await raw_request(api, "GET", "/healthz", [(b"x-request-id", b"abc\n")], b"")
    assert status == 200
    assert re.fullmatch(rb"[0-9a-f]{32}", headers[b"x-request-id"]), headers
    response = await api.client.get("/healthz", headers={"X-Request-Id": "abc"})
    assert response.headers["x-request-id"] == "abc"
