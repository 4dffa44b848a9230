"""The admin API of webhook endpoints and the event log: registration (secret shown once, idempotent,
refused addresses, limits), rotation, removal, roles; the event log's two orders, and the two rules
that keep them honest under concurrency (a late commit is never skipped; per user, sequence order is
commit order)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

import ledger
from entitlements.webhooks import EVENT_TYPES
from tests.integration.entitlements.webhooks.conftest import grant, register
from tests.support.http import Api, api_for

ENDPOINTS = "/v1/webhook-endpoints"


async def test_registering_shows_the_secret_once_and_the_list_never_does(api: Api) -> None:
    created = await register(api, "http://127.0.0.1:9/in", ["credit.granted"], description="billing app")
    endpoint = created["endpoint"]
    assert created["secret"].startswith("whsec_")
    assert endpoint["url"] == "http://127.0.0.1:9/in"
    assert endpoint["events"] == ["credit.granted"]
    assert (endpoint["status"], endpoint["description"], endpoint["disabled_reason"]) == (
        "enabled",
        "billing app",
        None,
    )
    listed = await api.get(ENDPOINTS, "admin")
    assert listed.status_code == 200
    assert created["secret"] not in listed.text
    assert listed.json()["items"] == [endpoint]


async def test_an_idempotency_key_replays_the_same_endpoint_and_secret(api: Api) -> None:
    request = {"url": "http://127.0.0.1:9/in", "events": ["tier.changed"]}
    first = await api.post(ENDPOINTS, "admin", request, "endpoint-1")
    again = await api.post(ENDPOINTS, "admin", request, "endpoint-1")
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert len((await api.get(ENDPOINTS, "admin")).json()["items"]) == 1
    other = await api.post(ENDPOINTS, "admin", {**request, "events": ["debt.created"]}, "endpoint-1")
    assert other.status_code == 409
    assert other.json()["code"] == "idempotency_key_reused"


async def test_concurrent_creates_with_one_key_make_one_endpoint(api: Api) -> None:
    request = {"url": "http://127.0.0.1:9/in", "events": ["tier.changed"]}
    answers = await asyncio.gather(*(api.post(ENDPOINTS, "admin", request, "same") for _ in range(5)))
    assert {answer.status_code for answer in answers} == {201}
    assert len({answer.json()["secret"] for answer in answers}) == 1
    assert len((await api.get(ENDPOINTS, "admin")).json()["items"]) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/in", "http or https"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://169.254.10.10/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unicast"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://" + "a" * 300 + ".example/", "does not resolve"),
        ("http://\u2603\u2603.invalid/", "does not resolve"),
        ("http://[::1/", "not a valid URL"),
    ],
)
async def test_refused_addresses_are_422_naming_the_url(api: Api, url: str, reason: str) -> None:
    refused = await api.post(ENDPOINTS, "admin", {"url": url, "events": ["tier.changed"]})
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "validation_failed"
    assert refused.json()["errors"][0]["field"] == "url"
    assert reason in refused.json()["detail"]


async def test_private_addresses_are_refused_unless_the_setting_allows_them(database_url: str) -> None:
    async with api_for(database_url, webhook_settings={"allow_private_urls": False}) as strict:
        for url in ("http://127.0.0.1:8080/in", "http://10.1.2.3/in", "http://localhost/in"):
            refused = await strict.post(ENDPOINTS, "admin", {"url": url, "events": ["tier.changed"]})
            assert refused.status_code == 422, url
            assert "private" in refused.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "http://127.0.0.1/in", "events": []},
        {"url": "http://127.0.0.1/in", "events": ["video.exploded"]},
        {"url": "http://127.0.0.1/in"},
        {"url": "http://127.0.0.1/" + "a" * 2000, "events": ["tier.changed"]},
        {"url": "http://127.0.0.1/in", "events": ["tier.changed"], "description": "x" * 1001},
        {"url": "http://127.0.0.1/in", "events": ["tier.changed"], "secret": "mine"},
    ],
)
async def test_bad_bodies_are_422(api: Api, body: dict[str, Any]) -> None:
    refused = await api.post(ENDPOINTS, "admin", body)
    assert refused.status_code == 422, refused.text


async def test_at_most_the_endpoint_limit_and_a_removed_one_frees_its_place(database_url: str) -> None:
    async with api_for(database_url, webhook_settings={"endpoints_max": 2}) as api:
        first = await register(api, "http://127.0.0.1:9/a")
        await register(api, "http://127.0.0.1:9/b")
        refused = await api.post(ENDPOINTS, "admin", {"url": "http://127.0.0.1:9/c", "events": ["tier.changed"]})
        assert refused.status_code == 409
        assert "WEBHOOK_ENDPOINTS_MAX" in refused.json()["detail"]
        removed = await api.client.delete(f"{ENDPOINTS}/{first['endpoint']['id']}", headers=api.headers("admin"))
        assert removed.status_code == 204
        await register(api, "http://127.0.0.1:9/c")


async def test_a_removed_endpoint_is_gone_and_its_pending_deliveries_cancelled(api: Api, pool: asyncpg.Pool) -> None:
    created = await register(api, "http://127.0.0.1:9/in")
    endpoint_id = created["endpoint"]["id"]
    await grant(api, "mo", 10)
    assert await pool.fetchval("SELECT status FROM webhook_deliveries") == "pending"
    assert (await api.client.delete(f"{ENDPOINTS}/{endpoint_id}", headers=api.headers("admin"))).status_code == 204
    assert await pool.fetchval("SELECT status FROM webhook_deliveries") == "cancelled"
    for path in (f"{ENDPOINTS}/{endpoint_id}", f"{ENDPOINTS}/{endpoint_id}/deliveries"):
        assert (await api.get(path, "admin")).status_code == 404
    again = await api.client.delete(f"{ENDPOINTS}/{endpoint_id}", headers=api.headers("admin"))
    assert again.status_code == 404
    rotated = await api.post(f"{ENDPOINTS}/{endpoint_id}/rotate-secret", "admin", None)
    assert rotated.status_code == 404


async def test_rotation_with_a_key_rotates_once(api: Api) -> None:
    endpoint_id = (await register(api, "http://127.0.0.1:9/in"))["endpoint"]["id"]
    first = await api.post(f"{ENDPOINTS}/{endpoint_id}/rotate-secret", "admin", None, "rot-1")
    again = await api.post(f"{ENDPOINTS}/{endpoint_id}/rotate-secret", "admin", None, "rot-1")
    assert first.status_code == again.status_code == 200
    assert first.json()["secret"] == again.json()["secret"]


@pytest.mark.parametrize("role", ["service", "support", "finance"])
async def test_only_admins_manage_endpoints(api: Api, role: str) -> None:
    assert (await api.get(ENDPOINTS, role)).status_code == 403
    refused = await api.post(ENDPOINTS, role, {"url": "http://127.0.0.1:9/in", "events": ["tier.changed"]})
    assert refused.status_code == 403
    assert (await api.post("/v1/events/evt_1/redeliver", role, None)).status_code == 403


@pytest.mark.parametrize(("role", "status"), [("service", 200), ("admin", 200), ("support", 403), ("finance", 403)])
async def test_the_event_log_is_for_service_and_admin(api: Api, role: str, status: int) -> None:
    assert (await api.get("/v1/events", role)).status_code == status


async def test_the_event_log_pages_by_sequence_per_user_and_by_commit_order_for_everyone(api: Api) -> None:
    for user in ("pa", "pb"):
        for moments in (10, 20, 30):
            await grant(api, user, moments)
    first = (await api.get("/v1/events", "service", user_id="pa", limit=2)).json()
    assert [event["sequence"] for event in first["items"]] == [1, 2]
    rest = (await api.get("/v1/events", "service", user_id="pa", cursor=first["next_cursor"])).json()
    assert [event["sequence"] for event in rest["items"]] == [3]
    assert rest["next_cursor"] is None

    seen, cursor = [], None
    while True:
        page = (await api.get("/v1/events", "admin", limit=4, **({"cursor": cursor} if cursor else {}))).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(event["user_id"], event["sequence"]) for event in seen] == [
        ("pa", 1), ("pa", 2), ("pa", 3), ("pb", 1), ("pb", 2), ("pb", 3)
    ]  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        {"after": "1"},
        {"user_id": "pa", "after": "1", "cursor": "x"},
        {"cursor": "not-a-cursor"},
        {"user_id": "pa", "cursor": "ZXYxfDE"},  # another order's cursor ("ev1|1")
        {"user_id": "a:b"},
        {"user_id": "pa", "after": "-1"},
        {"user_id": "pa", "after": str(1 << 64)},
    ],
)
async def test_bad_event_log_queries_are_422(api: Api, params: dict[str, str]) -> None:
    refused = await api.get("/v1/events", "admin", **params)
    assert refused.status_code == 422, refused.text


async def test_redelivering_an_unknown_event_is_404_and_a_malformed_id_422(api: Api) -> None:
    assert (await api.post("/v1/events/evt_999999/redeliver", "admin", None)).status_code == 404
    assert (await api.post("/v1/events/999/redeliver", "admin", None)).status_code == 422


async def test_redeliver_queues_a_delivered_event_again(api: Api, pool: asyncpg.Pool) -> None:
    endpoint_id = (await register(api, "http://127.0.0.1:9/in"))["endpoint"]["id"]
    await grant(api, "re", 10)
    event_id = await pool.fetchval("SELECT id FROM webhook_events")
    await pool.execute("UPDATE webhook_deliveries SET status = 'delivered', attempts = 1, delivered_at = now()")
    answer = await api.post(f"/v1/events/evt_{event_id}/redeliver", "admin", None)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"event_id": f"evt_{event_id}", "endpoints": [endpoint_id]}
    row = await pool.fetchrow("SELECT status, attempts FROM webhook_deliveries")
    assert (row["status"], row["attempts"]) == ("pending", 0)


async def test_a_late_commit_with_a_lower_xid_is_never_skipped_and_per_user_sequence_follows_commit_order(
    api: Api, pool: asyncpg.Pool
) -> None:
    """Transaction A takes its xid first, B commits a grant for the user, then A grants and commits. By
    commit order B came first, so B's event is sequence 1 and A's is 2 although A's xid is lower; and the
    all-users log, read while A is open, does not skip past A's event."""
    service = ledger.Ledger(pool)
    async with pool.acquire() as a_connection:
        a = a_connection.transaction()
        await a.start()
        await a_connection.execute("SELECT pg_current_xact_id()")  # A's xid, before B's
        await grant(api, "late", 10)  # B: commits now
        seen_while_open = (await api.get("/v1/events", "admin")).json()
        assert seen_while_open["items"] == []  # B is above the horizon A holds back: nothing yet
        (outcome,) = await service.execute_in(
            a_connection,
            [ledger.Credit(key="late-a", user_id="late", actor="test", amount=5, kind="grant", category="promotional")],
        )
        assert isinstance(outcome, ledger.Result)
        await a.commit()
    events = (await api.get("/v1/events", "service", user_id="late")).json()["items"]
    assert [(event["sequence"], event["data"]["moments"]) for event in events] == [(1, 10), (2, 5)]
    everyone = (await api.get("/v1/events", "admin")).json()["items"]
    assert sorted(event["data"]["moments"] for event in everyone) == [5, 10]


async def test_many_concurrent_writers_leave_every_users_sequence_without_gaps(api: Api, pool: asyncpg.Pool) -> None:
    users = [f"c{n}" for n in range(5)]
    await asyncio.gather(*(grant(api, user, 1 + n) for n in range(6) for user in users))
    rows = await pool.fetch("SELECT user_id, array_agg(sequence ORDER BY sequence) AS s FROM webhook_events GROUP BY 1")
    assert {row["user_id"]: list(row["s"]) for row in rows} == {user: [1, 2, 3, 4, 5, 6] for user in users}
    assert set(EVENT_TYPES) >= {row["type"] for row in await pool.fetch("SELECT DISTINCT type FROM webhook_events")}


@pytest.mark.parametrize("kind", ["purchase", "subscription_grant", "grant", "clawback_reversal"])
async def test_every_kind_of_credit_is_a_credit_granted_event(api: Api, pool: asyncpg.Pool, kind: str) -> None:
    async with pool.acquire() as connection, connection.transaction():
        (outcome,) = await ledger.Ledger(pool).execute_in(
            connection,
            [ledger.Credit(key=f"credit-{kind}", user_id="cred", actor="test", amount=7, kind=kind, category="paid")],
        )
    assert isinstance(outcome, ledger.Result), outcome
    (event,) = (await api.get("/v1/events", "service", user_id="cred")).json()["items"]
    assert event["type"] == "credit.granted"
    assert (event["data"]["kind"], event["data"]["moments"]) == (kind, 7)
