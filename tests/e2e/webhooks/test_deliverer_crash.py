"""An API process killed between the effect and the delivery: another process delivers, nothing lost.

Real processes: API process A (`moments serve`, its deliverer on) writes the effect (a grant through its
own API), claims the delivery and is SIGKILLed while the receiver holds the request open. API process B,
started afterwards, takes the delivery over once A's lease lapses and sends the same event (the same
`webhook-id`), which the receiver accepts. Events written while no process was up are delivered too, in
each user's order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from entitlements.webhooks import EVENT_TYPES
from tests.support.generations import fresh_key
from tests.support.processes import create_role_keys, remote_api, start_api
from tests.support.webhooks import Request, receiving, verify_both_ways

DELIVERER_ENV = {
    "WEBHOOK_ALLOW_PRIVATE_URLS": "true",
    "WEBHOOK_TIMEOUT_S": "2",
    "WEBHOOK_LEASE_S": "3",
    "WEBHOOK_POLL_INTERVAL_S": "0.05",
    "WEBHOOK_RETRY_SCHEDULE_S": "0.1,0.2,0.5",
}
WAIT_S_MAX = 30.0


async def test_a_process_killed_mid_delivery_is_taken_over_by_another_with_the_same_webhook_id(
    database_url: str, tmp_path: Path
) -> None:
    first_arrived = asyncio.Event()
    hold_first = True

    async def answer(request: Request) -> int:
        nonlocal hold_first
        if hold_first:
            hold_first = False
            first_arrived.set()
            await asyncio.sleep(60)  # A is killed while this is open
        return 204

    keys = await create_role_keys(database_url)
    async with receiving(answer) as receiver:
        a = start_api(database_url, log_dir=tmp_path, dispatcher=False, env=DELIVERER_ENV)
        try:
            async with remote_api(a.base_url, keys) as api:
                created = await api.post(
                    "/v1/webhook-endpoints", "admin", {"url": receiver.url, "events": list(EVENT_TYPES)}
                )
                assert created.status_code == 201, created.text
                secret = created.json()["secret"]
                granted = await api.post(
                    "/v1/users/crash/grants", "admin", {"moments": 10, "reason": "test"}, fresh_key("g")
                )
                assert granted.status_code == 201, granted.text
                await asyncio.wait_for(first_arrived.wait(), WAIT_S_MAX)
        finally:
            a.kill()
        # Effects while no process runs: their events wait in the outbox.
        b = start_api(database_url, log_dir=tmp_path, dispatcher=False, env=DELIVERER_ENV)
        try:
            async with remote_api(b.base_url, keys) as api:
                for moments in (20, 30):
                    answer_b = await api.post(
                        "/v1/users/crash/grants", "admin", {"moments": moments, "reason": "test"}, fresh_key("g")
                    )
                    assert answer_b.status_code == 201
            await receiver.wait_for(3, WAIT_S_MAX)
        finally:
            b.stop()
    events = [verify_both_ways(secret, request) for request in receiver.accepted]
    assert [(event["sequence"], event["data"]["moments"]) for event in events] == [(1, 10), (2, 20), (3, 30)]
    # The first delivery was sent twice (A's attempt, cut off, then B's), with one webhook-id.
    first_ids = [request.webhook_id for request in receiver.requests if request.event["sequence"] == 1]
    assert len(first_ids) == 2
    assert len(set(first_ids)) == 1
