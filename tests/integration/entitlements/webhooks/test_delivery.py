"""Deliveries to a real receiver on loopback: signed (checked by `standardwebhooks`' own verify and by a
verifier written from the specification), in sequence order per user, retried, timed out, disabled by a
410 or by retries used up, during a secret rotation, and by two deliverers at once.

The API runs in process without background tasks; each test drives its deliverers itself, so what is
sent when is decided by the test, not by a clock.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from entitlements.webhooks import Deliverer
from tests.integration.entitlements.webhooks.conftest import grant, register
from tests.support.generations import set_tier, stripe_clawback
from tests.support.http import Api, api_for
from tests.support.webhooks import Receiver, Request, receiving, spec_verify, verify_both_ways

RETRY_WAIT_S = 0.3


async def run_until(deliverer: Deliverer, condition: Callable[[], bool], rounds_max: int = 200) -> None:
    """Delivers whatever is due, again and again (retries come due after their short waits), until
    `condition` holds; bounded, so a bug fails the test instead of hanging it."""
    for _ in range(rounds_max):
        await deliverer.deliver_due()
        if condition():
            return
        await asyncio.sleep(0.03)
    raise AssertionError("the condition did not hold after every round")


def events_by_user(requests: list[Request], secret: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for request in requests:
        event = verify_both_ways(secret, request)
        assert request.webhook_id == event["id"]
        found[event["user_id"]].append(event)
    return found


async def endpoint_of(api: Api, endpoint_id: int) -> dict[str, Any]:
    response = await api.get(f"/v1/webhook-endpoints/{endpoint_id}", "admin")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def attempts_of(api: Api, endpoint_id: int) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", "admin", limit=200)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_each_ledger_and_tier_event_is_delivered_signed_with_its_documented_payload(
    api: Api, receiver: Receiver, make_deliverer: Callable[..., Deliverer], pool: asyncpg.Pool
) -> None:
    created = await register(api, receiver.url)
    user = "eve"
    await grant(api, user, 150)  # the first operation: credit.granted, no balance event (its starting level)
    await set_tier(api, user, "PREMIUM")  # tier.changed
    await stripe_clawback(pool, user, 100)  # 150 -> 50: balance.low
    await stripe_clawback(pool, user, 80)  # 50 -> 0 and 30 owed: balance.depleted, debt.created
    await grant(api, user, 200)  # repays 30 first, 170 available: credit.granted, balance.recovered, debt.repaid
    await set_tier(api, user, "PREMIUM")  # the same tier again: no event

    await run_until(make_deliverer(), lambda: len(receiver.accepted) >= 8)
    events = events_by_user(receiver.accepted, created["secret"])[user]
    assert [event["sequence"] for event in events] == list(range(1, 9))
    assert [event["type"] for event in events] == [
        "credit.granted",
        "tier.changed",
        "balance.low",
        "balance.depleted",
        "debt.created",
        "credit.granted",
        "balance.recovered",
        "debt.repaid",
    ]
    for event in events:
        assert set(event) == {"id", "type", "user_id", "sequence", "created_at", "data"}
    granted, tier, low, depleted, debt, regranted, recovered, repaid = (event["data"] for event in events)
    assert granted["moments"] == 150
    assert granted["kind"] == "grant"
    assert granted["reason"] == "test"
    assert tier == {"tier": "PREMIUM", "previous_tier": "FREE", "source": "manual"}
    assert low == {"available": 50, "held": 0, "owed": 0, "previous_available": 150, "threshold": 100}
    assert depleted["available"] == 0
    assert depleted["owed"] == 30
    assert debt == {"owed": 30, "previous_owed": 0, "available": 0}
    assert regranted["moments"] == 200
    assert recovered["available"] == 170
    assert repaid == {"owed": 0, "previous_owed": 30, "available": 170}

    # The event log says the same, by sequence, for the service too.
    listed = await api.get("/v1/events", "service", user_id=user, after=3)
    assert listed.status_code == 200, listed.text
    assert [event["sequence"] for event in listed.json()["items"]] == [4, 5, 6, 7, 8]
    assert listed.json()["items"] == events[3:]
    # Only the subscribed types reach an endpoint; nothing is sent twice.
    assert len(receiver.requests) == 8


async def test_an_endpoint_gets_only_the_types_it_subscribed_to(
    api: Api, make_deliverer: Callable[..., Deliverer]
) -> None:
    async with receiving() as credits, receiving() as tiers:
        await register(api, credits.url, ["credit.granted"])
        await register(api, tiers.url, ["tier.changed"])
        await grant(api, "fay", 10)
        await set_tier(api, "fay", "ULTIMATE")
        await run_until(make_deliverer(), lambda: len(credits.accepted) == 1 and len(tiers.accepted) == 1)
        assert credits.accepted[0].event["type"] == "credit.granted"
        assert tiers.accepted[0].event["type"] == "tier.changed"
        # Each event keeps its user's sequence whoever receives it.
        assert (credits.accepted[0].event["sequence"], tiers.accepted[0].event["sequence"]) == (1, 2)


async def test_a_receiver_down_for_a_while_then_back_loses_nothing_and_keeps_each_users_order(
    api: Api, receiver: Receiver, make_deliverer: Callable[..., Deliverer]
) -> None:
    created = await register(api, receiver.url)
    users = [f"down-{n}" for n in range(4)]
    deliverer = make_deliverer(retry_schedule_s=(0.05,) * 20)
    await receiver.stop()
    for round_number in range(5):
        await asyncio.gather(*(grant(api, user, 10 + round_number) for user in users))
    for _ in range(3):  # attempts fail while it is down: connection refused
        await deliverer.deliver_due()
        await asyncio.sleep(0.06)
    assert receiver.accepted == []
    await receiver.start()
    await run_until(deliverer, lambda: len(receiver.accepted) >= 20)
    by_user = events_by_user(receiver.accepted, created["secret"])
    for user in users:
        assert [event["sequence"] for event in by_user[user]] == [1, 2, 3, 4, 5]
        assert [event["data"]["moments"] for event in by_user[user]] == [10, 11, 12, 13, 14]
    failed = [attempt for attempt in await attempts_of(api, created["endpoint"]["id"]) if not attempt["delivered"]]
    assert failed
    assert all(attempt["status"] is None and "Connect" in attempt["error"] for attempt in failed)


async def test_500s_then_success_retries_with_the_same_webhook_id_and_holds_back_the_users_next_event(
    api: Api, make_deliverer: Callable[..., Deliverer]
) -> None:
    failures_left = 3

    async def flaky(request: Request) -> int:
        nonlocal failures_left
        if request.event["sequence"] == 1 and failures_left:
            failures_left -= 1
            return 500
        return 200

    async with receiving(flaky) as receiver:
        created = await register(api, receiver.url)
        await grant(api, "gus", 10)
        await grant(api, "gus", 20)
        await run_until(make_deliverer(), lambda: len(receiver.accepted) == 2)
        first_ids = [request.webhook_id for request in receiver.requests if request.event["sequence"] == 1]
        assert len(first_ids) == 4
        assert len(set(first_ids)) == 1
        # The second event was not sent before the first got through.
        order = [request.event["sequence"] for request in receiver.requests]
        assert order == [1, 1, 1, 1, 2]
        attempts = sorted(await attempts_of(api, created["endpoint"]["id"]), key=lambda a: a["id"])
        assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
            (1, 500, False),
            (2, 500, False),
            (3, 500, False),
            (4, 200, True),
            (1, 200, True),
        ]
        assert all(a["latency_ms"] >= 0 for a in attempts)
        assert attempts[0]["error"] == "the receiver answered 500"
        assert (await endpoint_of(api, created["endpoint"]["id"]))["status"] == "enabled"


async def test_a_slow_receiver_times_out_and_is_retried(api: Api, make_deliverer: Callable[..., Deliverer]) -> None:
    slow_left = 1

    async def slow(_request: Request) -> int:
        nonlocal slow_left
        if slow_left:
            slow_left -= 1
            await asyncio.sleep(5)
        return 204

    async with receiving(slow) as receiver:
        created = await register(api, receiver.url)
        await grant(api, "hal", 10)
        await run_until(make_deliverer(timeout_s=0.3), lambda: len(receiver.accepted) == 1)
        attempts = sorted(await attempts_of(api, created["endpoint"]["id"]), key=lambda a: a["id"])
        assert [(a["status"], a["delivered"]) for a in attempts] == [(None, False), (204, True)]
        assert "timed out" in attempts[0]["error"]
        assert receiver.requests[0].webhook_id == receiver.requests[1].webhook_id


async def test_410_gone_disables_the_endpoint_keeps_its_queue_and_enabling_resumes_in_order(
    api: Api, make_deliverer: Callable[..., Deliverer]
) -> None:
    gone = True

    async def maybe_gone(_request: Request) -> int:
        return 410 if gone else 200

    async with receiving(maybe_gone) as receiver:
        created = await register(api, receiver.url)
        endpoint_id = created["endpoint"]["id"]
        for moments in (10, 20, 30):
            await grant(api, "ida", moments)
        deliverer = make_deliverer()
        await deliverer.deliver_due()
        endpoint = await endpoint_of(api, endpoint_id)
        assert endpoint["status"] == "disabled"
        assert "410" in endpoint["disabled_reason"]
        assert len(receiver.requests) == 1  # nothing more is sent to a disabled endpoint
        await asyncio.sleep(0.2)
        assert await deliverer.deliver_due() == 0
        metrics = (await api.client.get("/metrics")).text
        assert 'moments_webhook_endpoints{status="disabled"} 1.0' in metrics

        gone = False
        enabled = await api.post(f"/v1/webhook-endpoints/{endpoint_id}/enable", "admin", None)
        assert enabled.status_code == 200, enabled.text
        assert enabled.json()["status"] == "enabled"
        assert enabled.json()["disabled_reason"] is None
        await run_until(deliverer, lambda: len(receiver.accepted) == 3)
        assert [request.event["data"]["moments"] for request in receiver.accepted] == [10, 20, 30]


async def test_retries_used_up_disable_the_endpoint_with_the_reason(
    api: Api, make_deliverer: Callable[..., Deliverer]
) -> None:
    async def broken(_request: Request) -> int:
        return 503

    async with receiving(broken) as receiver:
        created = await register(api, receiver.url)
        await grant(api, "jo", 10)
        deliverer = make_deliverer(retry_schedule_s=(0.02, 0.02))

        async def disabled() -> bool:
            return (await endpoint_of(api, created["endpoint"]["id"]))["status"] == "disabled"

        for _ in range(100):
            await deliverer.deliver_due()
            if await disabled():
                break
            await asyncio.sleep(0.03)
        endpoint = await endpoint_of(api, created["endpoint"]["id"])
        assert endpoint["status"] == "disabled"
        assert endpoint["disabled_reason"].startswith("3 attempts failed")
        assert len(receiver.requests) == 3


async def test_after_a_rotation_both_secrets_verify_during_the_grace_and_only_the_new_after_it(
    api: Api, receiver: Receiver, make_deliverer: Callable[..., Deliverer], pool: asyncpg.Pool
) -> None:
    created = await register(api, receiver.url)
    endpoint_id, old_secret = created["endpoint"]["id"], created["secret"]
    rotated = await api.post(f"/v1/webhook-endpoints/{endpoint_id}/rotate-secret", "admin", None)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != old_secret
    assert rotated.json()["endpoint"]["previous_secret_expires_at"] is not None
    await grant(api, "kim", 10)
    await run_until(make_deliverer(), lambda: len(receiver.accepted) == 1)
    during = receiver.accepted[0]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert verify_both_ways(old_secret, during) == verify_both_ways(new_secret, during)

    # The grace is over: only the new secret signs.
    await pool.execute("UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second'")
    await grant(api, "kim", 20)
    await run_until(make_deliverer(), lambda: len(receiver.accepted) == 2)
    after = receiver.accepted[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    verify_both_ways(new_secret, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old_secret).verify(after.body, after.headers)
    with pytest.raises(ValueError, match="no signature"):
        spec_verify(old_secret, after.headers, after.body)
    assert (await endpoint_of(api, endpoint_id))["previous_secret_expires_at"] is None


async def test_two_deliverers_at_once_send_each_event_once_and_in_order_per_user(
    api: Api, make_deliverer: Callable[..., Deliverer], pool: asyncpg.Pool
) -> None:
    in_flight: Counter[str] = Counter()
    overlapped = []

    async def tracking(request: Request) -> int:
        user = request.event["user_id"]
        in_flight[user] += 1
        if in_flight[user] > 1:
            overlapped.append(user)
        await asyncio.sleep(0.005)
        in_flight[user] -= 1
        return 204

    async with receiving(tracking) as receiver:
        created = await register(api, receiver.url)
        users = [f"pair-{n}" for n in range(6)]
        for round_number in range(4):
            await asyncio.gather(*(grant(api, user, 1 + round_number) for user in users))
        first, second = make_deliverer("first", concurrency=4), make_deliverer("second", concurrency=4)
        runs = [asyncio.create_task(first.run()), asyncio.create_task(second.run())]
        try:
            await receiver.wait_for(24)
            await asyncio.sleep(0.2)  # a duplicate, if any, would arrive now
        finally:
            for task in runs:
                task.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
        assert len(receiver.requests) == 24
        assert len({request.webhook_id for request in receiver.requests}) == 24
        assert overlapped == []
        by_user = events_by_user(receiver.accepted, created["secret"])
        assert all([event["sequence"] for event in by_user[user]] == [1, 2, 3, 4] for user in users)
        deliverers = {row["deliverer"] for row in await pool.fetch("SELECT deliverer FROM webhook_attempts")}
        assert deliverers <= {"first", "second"}


async def test_a_lease_that_lapsed_lets_another_deliverer_send_the_same_webhook_id(
    api: Api, receiver: Receiver, make_deliverer: Callable[..., Deliverer], pool: asyncpg.Pool
) -> None:
    """A deliverer that claimed and died: its lease lapses and another sends the event, with the same
    webhook-id (at-least-once)."""
    await register(api, receiver.url)
    await grant(api, "lee", 10)
    dead = make_deliverer("dead", lease_s=1, timeout_s=0.5)
    (claimed,) = await dead.claim(10)
    assert await make_deliverer("other").deliver_due() == 0  # leased: nobody else takes it
    await pool.execute("UPDATE webhook_deliveries SET lease_expires_at = now() - interval '1 second'")
    assert await make_deliverer("other").deliver_due() == 1
    assert receiver.accepted[0].webhook_id == f"evt_{claimed['event_id']}"
    # The dead deliverer's late record does not undo the other's delivery.
    await dead.deliver(claimed)
    status = await pool.fetchval("SELECT status FROM webhook_deliveries")
    assert status == "delivered"
    assert {r.webhook_id for r in receiver.requests} == {f"evt_{claimed['event_id']}"}


async def test_the_threshold_setting_reaches_the_trigger(
    database_url: str, receiver: Receiver, make_deliverer: Callable[..., Deliverer]
) -> None:
    """BALANCE_LOW_THRESHOLD_MOMENTS goes to PostgreSQL with every ledger transaction of the service (SET
    LOCAL, sent with the statement that opens it)."""
    async with api_for(database_url, webhook_settings={"balance_low_threshold_moments": 500}) as api:
        created = await register(api, receiver.url, ["balance.recovered", "balance.low"])
        await grant(api, "thr", 100)  # the first operation: no balance event
        await grant(api, "thr", 300)  # 400: still below 500, no event
        await grant(api, "thr", 150)  # 550: recovered
        await run_until(make_deliverer(), lambda: len(receiver.accepted) == 1)
        (recovered,) = events_by_user(receiver.accepted, created["secret"])["thr"]
        assert recovered["type"] == "balance.recovered"
        assert recovered["data"]["threshold"] == 500
        assert recovered["data"]["available"] == 550
