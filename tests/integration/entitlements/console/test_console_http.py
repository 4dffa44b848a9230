"""The console over HTTP (in process, real PostgreSQL): sessions and their expiry at and past each limit,
cookies, CSRF, roles exactly as the API's, search, the pages' figures, previews and hostile input."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.console import purge_sessions
from entitlements.http import mirrored_roles
from tests.support.app import settings_for
from tests.support.console import csrf_of, idempotency_key_of, sign_in
from tests.support.generations import fresh_key
from tests.support.http import Api, api_for

IDLE_S = 120
ABSOLUTE_S = 600
CONSOLE_ROLES = ("support", "finance", "admin")


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    settings = {"session_idle_s": IDLE_S, "session_absolute_s": ABSOLUTE_S}
    async with api_for(database_url, console_settings=settings, extra_keys={"bob": ("support", "bob")}) as client:
        yield client


async def get(api: Api, path: str, **params: Any) -> Any:
    return await api.client.get(path, params=params or None, follow_redirects=False)


async def post(api: Api, path: str, data: dict[str, str], htmx: bool = False) -> Any:
    headers = {"HX-Request": "true"} if htmx else None
    return await api.client.post(path, data=data, headers=headers, follow_redirects=False)


# --- signing in and sessions ------------------------------------------------------------------------------


async def test_signing_in_sets_a_strict_http_only_cookie_and_stores_only_a_hash(api: Api, pool: asyncpg.Pool) -> None:
    page = await get(api, "/console/sign-in")
    signed_in = await post(api, "/console/sign-in", {"api_key": api.keys["support"], "csrf_token": csrf_of(page.text)})
    assert signed_in.status_code == 303
    cookie = next(
        value for name, value in signed_in.headers.multi_items() if name == "set-cookie" and "moments_console=" in value
    )
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "secure" not in attributes, "plain HTTP: the cookie could not be sent back if it were Secure"
    token = re.search(r"moments_console=([^;]+)", cookie)
    assert token
    stored = await pool.fetchval("SELECT token_hash FROM console_sessions")
    assert bytes(stored) == hashlib.sha256(token.group(1).encode()).digest()


@pytest.mark.parametrize("base_url", ["https://console.test"])
async def test_the_cookie_is_secure_over_tls_and_when_told_to(database_url: str, base_url: str) -> None:
    async with api_for(database_url) as api:
        keys = api.keys
    app = create_app(settings_for(database_url))
    async with AsyncTestClient(app=app, base_url=base_url) as client:
        page = await client.get("/console/sign-in")
        assert "; secure" in page.headers["set-cookie"].lower()
        signed_in = await client.post(
            "/console/sign-in",
            data={"api_key": keys["support"], "csrf_token": csrf_of(page.text)},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303
        assert "; secure" in signed_in.headers["set-cookie"].lower()
    # Behind a proxy that ends TLS the request arrives as plain HTTP: CONSOLE_COOKIE_SECURE=always.
    behind_proxy = create_app(settings_for(database_url, console_settings={"cookie_secure": "always"}))
    async with AsyncTestClient(app=behind_proxy, base_url="http://console.test") as client:
        page = await client.get("/console/sign-in")
        assert "; secure" in page.headers["set-cookie"].lower()


async def test_a_wrong_key_a_service_key_and_a_sign_in_without_its_token_are_refused(
    api: Api, pool: asyncpg.Pool
) -> None:
    page = await get(api, "/console/sign-in")
    token = csrf_of(page.text)
    wrong = await post(api, "/console/sign-in", {"api_key": "mk_wrong", "csrf_token": token})
    assert wrong.status_code == 401
    assert "unknown or revoked" in wrong.text
    service = await post(api, "/console/sign-in", {"api_key": api.keys["service"], "csrf_token": token})
    assert service.status_code == 403
    assert "cannot sign in" in service.text
    forged = await post(api, "/console/sign-in", {"api_key": api.keys["admin"]})
    assert forged.status_code == 403
    # The refusal came with a fresh form (and token), for the next try.
    huge = await post(api, "/console/sign-in", {"api_key": "k" * 5000, "csrf_token": csrf_of(forged.text)})
    assert huge.status_code == 401
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 0


@pytest.mark.parametrize(("idle_s", "live"), [(IDLE_S - 10, True), (IDLE_S + 1, False)])
async def test_the_idle_expiry_at_and_past_it(api: Api, pool: asyncpg.Pool, idle_s: int, live: bool) -> None:
    await sign_in(api, "support")
    await pool.execute("UPDATE console_sessions SET last_seen_at = now() - make_interval(secs => $1)", idle_s)
    page = await get(api, "/console")
    if live:
        assert page.status_code == 200
        # Using it keeps it alive: the touch moved its last use to now.
        assert await pool.fetchval("SELECT last_seen_at > now() - interval '5 seconds' FROM console_sessions")
    else:
        assert (page.status_code, page.headers["location"]) == (303, "/console/sign-in?expired=1&next=/console")


@pytest.mark.parametrize(("age_s", "live"), [(ABSOLUTE_S - 10, True), (ABSOLUTE_S + 1, False)])
async def test_the_absolute_expiry_at_and_past_it_however_busy(
    api: Api, pool: asyncpg.Pool, age_s: int, live: bool
) -> None:
    await sign_in(api, "support")
    await pool.execute(
        "UPDATE console_sessions SET created_at = now() - make_interval(secs => $1), last_seen_at = now(),"
        " expires_at = now() - make_interval(secs => $1) + make_interval(secs => $2)",
        age_s,
        ABSOLUTE_S,
    )
    page = await get(api, "/console")
    assert page.status_code == (200 if live else 303)


async def test_signing_out_and_revoking_the_key_end_the_session(api: Api, pool: asyncpg.Pool) -> None:
    csrf = await sign_in(api, "support")
    out = await post(api, "/console/sign-out", {"csrf_token": csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/console/sign-in")
    assert (await get(api, "/console")).status_code == 303
    assert await pool.fetchval("SELECT ended_at IS NOT NULL FROM console_sessions")

    await sign_in(api, "finance")
    key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'test-finance'")
    revoked = await api.post(f"/v1/keys/{key_id}/revoke", "admin", {})
    assert revoked.status_code == 200
    gone = await get(api, "/console")
    assert (gone.status_code, gone.headers["location"]) == (303, "/console/sign-in?next=/console")
    htmx = await api.client.get("/console/approvals", headers={"HX-Request": "true"}, follow_redirects=False)
    assert htmx.headers["hx-redirect"] == "/console/sign-in"


async def test_the_sweeper_purges_sessions_over_for_a_day(api: Api, pool: asyncpg.Pool) -> None:
    await sign_in(api, "support")
    await sign_in(api, "admin")
    await pool.execute(
        "UPDATE console_sessions SET created_at = now() - interval '3 days', last_seen_at = now() - interval '3 days',"
        " expires_at = now() - interval '2 days' WHERE key_id = (SELECT id FROM api_keys WHERE name = 'test-support')"
    )
    settings = settings_for("postgresql://unused").console
    assert await purge_sessions(pool, settings) == 1
    assert await pool.fetchval("SELECT count(*) FROM console_sessions") == 1


# --- roles: exactly the API's ----------------------------------------------------------------------------


def console_routes(app: Litestar) -> list[tuple[str, str, Any]]:
    found = []
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path.startswith("/console") and "static" not in route.path:
            for handler in route.route_handlers:
                if handler.opt.get("session") and not handler.opt.get("public"):
                    for method in sorted(handler.http_methods - {"OPTIONS", "HEAD"}):
                        found.append((method, route.path, handler))
    return found


def concrete(path: str) -> str:
    return (
        path.replace("{user_id:str}", "u1")
        .replace("{generation_id:str}", "00000000-0000-0000-0000-000000000000")
        .replace("{approval_id:int}", "999999")
    )


async def test_every_console_route_allows_exactly_the_roles_of_the_api_operations_it_mirrors(
    database_url: str,
) -> None:
    for role in CONSOLE_ROLES:
        async with api_for(database_url) as api:
            csrf = await sign_in(api, role)
            app = api.client.app
            routes = console_routes(app)
            assert len(routes) >= 18
            for method, path, handler in routes:
                allowed = role in mirrored_roles(app, handler.opt["mirrors"])
                if path.endswith("/sign-out"):
                    continue
                if method == "GET":
                    response = await api.client.get(concrete(path), follow_redirects=False)
                else:
                    response = await api.client.post(concrete(path), data={"csrf_token": csrf}, follow_redirects=False)
                forbidden = response.status_code == 403 and "may not call" in response.text
                assert forbidden is not allowed, (
                    f"{method} {path} as {role}: {response.status_code} {response.text[:300]}"
                )
                assert response.status_code < 500, f"{method} {path} as {role}: {response.text[:500]}"


def test_the_console_mirrors_the_api_roles() -> None:
    """Spot checks of what the mirrored roles come to (the guard computes them from the API's routes)."""
    app = create_app(settings_for("postgresql://unused"))
    assert mirrored_roles(app, ("refundGeneration",)) == ("admin", "support")
    assert mirrored_roles(app, ("auditLedger",)) == ("admin", "finance")
    assert mirrored_roles(app, ("getUserLedger",)) == ("admin", "finance", "support")
    assert mirrored_roles(app, ("listGenerations",)) == ("admin", "support")


# --- CSRF and double submits --------------------------------------------------------------------------


async def user_with_moments(api: Api, user: str, moments: int) -> None:
    response = await api.post(f"/v1/users/{user}/grants", "admin", {"moments": moments, "reason": "setup"}, fresh_key())
    assert response.status_code == 201, response.text


async def available(api: Api, user: str) -> int:
    return int((await api.get(f"/v1/users/{user}/entitlements", "support")).json()["balance"]["available"])


async def test_a_form_without_this_sessions_csrf_token_changes_nothing(
    api: Api, pool: asyncpg.Pool, database_url: str
) -> None:
    await user_with_moments(api, "u1", 100)
    csrf = await sign_in(api, "support")
    page = await get(api, "/console/users/u1")
    key = idempotency_key_of(page.text, 'id="grant-form"')
    form = {"moments": "10", "reason": "x", "idempotency_key": key}
    async with api_for(database_url) as other:
        other_csrf = await sign_in(other, "support")
    for token in (None, "", other_csrf, csrf[:-1] + ("A" if csrf[-1] != "A" else "B")):
        data = form | ({"csrf_token": token} if token is not None else {})
        refused = await post(api, "/console/users/u1/grants", data)
        assert refused.status_code == 403, refused.text
        assert "security token" in refused.text
    assert await available(api, "u1") == 100
    done = await post(api, "/console/users/u1/grants", form | {"csrf_token": csrf})
    assert done.status_code == 303
    assert await available(api, "u1") == 110


async def test_a_resubmitted_form_and_concurrent_double_clicks_do_one_thing(api: Api, pool: asyncpg.Pool) -> None:
    import asyncio

    await user_with_moments(api, "u1", 100)
    csrf = await sign_in(api, "support")
    page = await get(api, "/console/users/u1")
    form = {
        "csrf_token": csrf,
        "moments": "7",
        "reason": "sorry",
        "idempotency_key": idempotency_key_of(page.text, 'id="grant-form"'),
    }
    answers = await asyncio.gather(*[post(api, "/console/users/u1/grants", form, htmx=True) for _ in range(5)])
    assert {answer.headers["hx-redirect"] for answer in answers} == {answers[0].headers["hx-redirect"]}
    again = await post(api, "/console/users/u1/grants", form)
    assert again.headers["location"] == answers[0].headers["hx-redirect"]
    assert await available(api, "u1") == 107
    changed = await post(api, "/console/users/u1/grants", form | {"moments": "8"})
    assert changed.status_code == 409
    assert "idempotency_key_reused" in changed.text


async def test_a_preview_shows_the_balance_after_and_writes_nothing(api: Api, pool: asyncpg.Pool) -> None:
    await user_with_moments(api, "u1", 100)
    csrf = await sign_in(api, "support")
    before = await pool.fetchval("SELECT count(*) FROM ledger_transactions")
    preview = await post(
        api, "/console/users/u1/grants/preview", {"csrf_token": csrf, "moments": "50", "reason": ""}, htmx=True
    )
    assert preview.status_code == 200
    assert "100 → <strong data-preview-available>150</strong>" in preview.text
    pending = await post(
        api, "/console/users/u1/grants/preview", {"csrf_token": csrf, "moments": "3000", "reason": "x"}, htmx=True
    )
    assert "second person" in pending.text
    assert "3,100" in pending.text
    over = await post(
        api, "/console/users/u1/grants/preview", {"csrf_token": csrf, "moments": "5001", "reason": "x"}, htmx=True
    )
    assert "Would be refused" in over.text
    assert "at most 5000" in over.text
    junk = await post(
        api, "/console/users/u1/grants/preview", {"csrf_token": csrf, "moments": "12abc", "reason": "x"}, htmx=True
    )
    assert "whole number" in junk.text
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == before
    assert await pool.fetchval("SELECT count(*) FROM approvals") == 0
    assert await pool.fetchval("SELECT coalesce(sum(granted_moments), 0) FROM support_grant_days") == 0


# --- search and pages -------------------------------------------------------------------------------


async def stripe_rows(pool: asyncpg.Pool, user: str, transaction_id: int) -> None:
    """A customer, a purchase with its payment intent and charge, and a dispute, as billing stores them."""
    await pool.execute("INSERT INTO stripe_customers (customer_id, user_id) VALUES ('cus_1', $1)", user)
    await pool.execute("INSERT INTO stripe_events (id, type, created, payload) VALUES ('evt_1', 'x', now(), '{}')")
    await pool.execute(
        "INSERT INTO stripe_purchases (checkout_session_id, payment_intent_id, charge_id, user_id, pack_id, moments,"
        " amount_paid, currency, transaction_id, event_id) VALUES ('cs_1', 'pi_1', 'ch_1', $1, 'pack_1000', 1000,"
        " 999, 'usd', $2, 'evt_1')",
        user,
        transaction_id,
    )
    await pool.execute(
        "INSERT INTO stripe_disputes (dispute_id, checkout_session_id, moments, status)"
        " VALUES ('dp_1', 'cs_1', 0, 'open')"
    )


async def test_search_finds_the_user_by_every_kind_of_id(api: Api, pool: asyncpg.Pool) -> None:
    granted = await api.post("/v1/users/carol/grants", "support", {"moments": 5, "reason": "x"}, "console-search-key")
    assert granted.status_code == 201
    await stripe_rows(pool, "carol", granted.json()["transaction_id"])
    await sign_in(api, "support")
    for text in ("carol", "cus_1", "cs_1", "pi_1", "ch_1", "dp_1", "console-search-key"):
        found = await get(api, "/console/search", q=text)
        assert (found.status_code, found.headers.get("location")) == (303, "/console/users/carol"), text
    for text in ("nobody", "", " ", "x" * 400, "00000000-0000-0000-0000-000000000000"):
        nothing = await get(api, "/console/search", q=text)
        assert nothing.status_code == 200, text
        assert "Nothing found" in nothing.text
    assert (await get(api, "/console/search", q="x" * 401)).status_code == 422
    # Two users under one Idempotency-Key (two callers used it): both listed.
    other = await api.post("/v1/users/dave/grants", "admin", {"moments": 5, "reason": "x"}, "console-search-key")
    assert other.status_code == 201
    both = await get(api, "/console/search", q="console-search-key")
    assert both.status_code == 200
    assert "/console/users/carol" in both.text
    assert "/console/users/dave" in both.text


async def test_the_user_page_journal_runs_to_the_balance_and_pages_by_cursor(api: Api, pool: asyncpg.Pool) -> None:
    for moments in range(1, 31):
        await user_with_moments(api, "u1", moments)
    await sign_in(api, "finance")
    page = await get(api, "/console/users/u1")
    assert page.status_code == 200
    afters = [int(value.replace(",", "")) for value in re.findall(r'data-after="available">([0-9,]+)<', page.text)]
    assert (
        afters[0]
        == sum(range(1, 31))
        == int(re.search(r'data-figure="available">([0-9,]+)<', page.text)[1].replace(",", ""))
    )  # type: ignore[index]
    assert afters == [sum(range(1, 31 - n)) for n in range(25)]
    older = re.search(r'href="(/console/users/u1/journal\?cursor=[^"]+)"', page.text)
    assert older
    rest = await api.client.get(older.group(1).replace("&amp;", "&"), headers={"HX-Request": "true"})
    assert [int(v) for v in re.findall(r'data-after="available">([0-9,]+)<', rest.text)] == [15, 10, 6, 3, 1]
    forged = await get(api, "/console/users/u1/journal", cursor="forged")
    assert forged.status_code == 422
    # Finance reads the ledger, not a user's tier or videos (as through the API).
    assert 'data-figure="tier"' not in page.text
    assert 'id="generations"' not in page.text


@pytest.mark.parametrize(
    "path",
    [
        "/console/users/a:b",
        "/console/users/%00",
        "/console/users/u1?done=transaction:abc",
        "/console/users/u1/generations?image_id=..%2Fetc",
        "/console/generations/not-a-uuid/video",
        "/console/finance/reconciliation?since=yesterday",
        "/console/finance/reconciliation?since=2026-12-01&until=2026-11-01",
        "/console/no-such-page",
    ],
)
async def test_hostile_addresses_are_clear_4xx_pages(api: Api, path: str) -> None:
    await sign_in(api, "admin")
    response = await get(api, path)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if response.headers["content-type"].startswith("text/html"):
        assert "Refused" in response.text or "no such console page" in response.text


async def test_pages_carry_their_security_headers(api: Api) -> None:
    await sign_in(api, "support")
    page = await get(api, "/console")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    asset = await get(api, "/console/static/vendor/htmx.min.js")
    assert asset.status_code == 200
    assert b"htmx" in asset.content
