"""The deliverer: a background task of every `moments serve` process that sends pending deliveries.

Any number of processes may run one. Each claims the head of (endpoint, user) queues with FOR UPDATE
SKIP LOCKED and a lease (queries.CLAIM), sends it signed per Standard Webhooks, and records the attempt
while its lease holds. A process that dies mid-send leaves a lease that lapses; another then sends the
same event again, with the same `webhook-id` (at-least-once, as the specification allows). Within one
endpoint and one user, one delivery is in flight at a time and in sequence order: a later event waits
while an earlier one is pending or retrying.

A failed attempt is retried after WEBHOOK_RETRY_SCHEDULE_S's next wait, with jitter. When the schedule is
used up, or the receiver answers 410 Gone, the endpoint is disabled: its deliveries stay pending, in
order, and resume when an admin enables it again.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from datetime import UTC, datetime

import asyncpg
import httpx
import msgspec
import structlog
from standardwebhooks.webhooks import Webhook

from entitlements.http import outgoing
from entitlements.settings import WebhookSettings
from entitlements.webhooks import queries
from entitlements.webhooks.schemas import EventOut
from entitlements.webhooks.service import disabled_reason_for, event_out, public_event_id, url_refusal

log = structlog.get_logger("moments.webhooks")
_encoder = msgspec.json.Encoder()
USER_AGENT = "moments-webhooks/1"


def signature_header(secrets: list[str], message_id: str, timestamp: datetime, body: str) -> str:
    """`webhook-signature`: one `v1,<base64>` per secret (the new one first during a rotation's grace),
    separated by spaces, as Standard Webhooks defines."""
    return " ".join(Webhook(secret).sign(message_id, timestamp, body) for secret in secrets)


def retry_after_s(settings: WebhookSettings, attempts: int, rng: random.Random) -> float | None:
    """How long to wait after the `attempts`-th failed attempt, or None when the schedule is used up."""
    schedule = settings.retry_schedule_s
    if attempts > len(schedule):
        return None
    jitter = settings.retry_jitter_ratio
    return schedule[attempts - 1] * rng.uniform(1 - jitter, 1 + jitter)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt's result and what comes next: retry after `wait_s`, and the endpoint to disable."""

    endpoint_id: int
    event_id: int
    attempt: int
    answer: outgoing.Answer
    wait_s: float
    disable: str | None


class Deliverer:
    def __init__(
        self, pool: asyncpg.Pool, settings: WebhookSettings, client: httpx.AsyncClient, owner: str | None = None
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.client = client
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rng = random.Random()  # jitter, not security

    async def run(self) -> None:
        """Claims as many deliveries as it has room for, sends them concurrently, records the attempts that
        ended in one statement, and claims again at once (the next event of those queues may now go), or
        after the poll interval when nothing is in flight."""
        in_flight: set[asyncio.Task[Outcome]] = set()
        try:
            while True:
                room = self.settings.concurrency - len(in_flight)
                claimed: list[asyncpg.Record] = []
                if room > 0:
                    try:
                        claimed = await self.claim(room)
                    except (asyncpg.PostgresError, OSError) as error:
                        log.warning("webhook_claim_failed", error=f"{type(error).__name__}: {error}")
                for row in claimed:
                    in_flight.add(asyncio.create_task(self.attempt(row)))
                if not in_flight:
                    await asyncio.sleep(self.settings.poll_interval_s)
                    continue
                done, _ = await asyncio.wait(
                    in_flight, timeout=self.settings.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
                in_flight -= done
                for task in done:
                    if task.exception() is not None:  # a bug: its lease lapses and another attempt is made
                        log.error("webhook_attempt_crashed", error=repr(task.exception()))
                await self.record([task.result() for task in done if task.exception() is None])
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def deliver_due(self) -> int:
        """Sends everything due now, one round at a time, until nothing is (tests and benchmarks)."""
        sent = 0
        while claimed := await self.claim(self.settings.concurrency):
            await self.record(list(await asyncio.gather(*(self.attempt(row) for row in claimed))))
            sent += len(claimed)
        return sent

    async def claim(self, limit: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(queries.CLAIM, limit, self.owner, self.settings.lease_s)

    async def deliver(self, row: asyncpg.Record) -> None:
        """One claimed delivery: sent and recorded."""
        await self.record([await self.attempt(row)])

    async def attempt(self, row: asyncpg.Record) -> Outcome:
        """Sends a claimed delivery once and decides what comes next; `record` writes it down."""
        event = event_out(row)
        attempt = row["attempts"]
        refusal = await url_refusal(row["url"], allow_private=self.settings.allow_private_urls)
        if refusal is not None:
            answer = outgoing.refused(f"not sent: {refusal}")
        else:
            answer = await outgoing.post(
                self.client,
                row["url"],
                *self.signed(event, [row["secret"], *filter(None, [row["previous_secret"]])]),
                timeout_s=self.settings.timeout_s,
            )
        delivered = answer.verdict == "delivered"
        wait_s = 0.0 if delivered or answer.verdict == "gone" else retry_after_s(self.settings, attempt, self._rng)
        disable = None
        if answer.verdict == "gone" or wait_s is None:
            disable = disabled_reason_for(answer.verdict, attempt, answer.status, answer.error, datetime.now(UTC))
        log.info(
            "webhook_attempt",
            endpoint_id=row["endpoint_id"],
            event_id=event.id,
            user_id=event.user_id,
            sequence=event.sequence,
            attempt=attempt,
            verdict=answer.verdict,
            status=answer.status,
            latency_ms=answer.latency_ms,
            error=answer.error,
        )
        return Outcome(
            endpoint_id=row["endpoint_id"],
            event_id=row["event_id"],
            attempt=attempt,
            answer=answer,
            wait_s=wait_s or 0.0,
            disable=disable,
        )

    async def record(self, outcomes: list[Outcome]) -> None:
        """Every attempt and its delivery's next state in one statement, only where the lease is still this
        deliverer's (a lapsed one means another has the delivery); then any endpoint to disable. A failure
        here leaves the leases to lapse, and the deliveries are sent again: at-least-once."""
        if not outcomes:
            return
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(
                    queries.RECORD_ATTEMPTS,
                    [o.endpoint_id for o in outcomes],
                    [o.event_id for o in outcomes],
                    [o.attempt for o in outcomes],
                    [o.answer.status for o in outcomes],
                    [o.answer.latency_ms for o in outcomes],
                    [o.answer.error for o in outcomes],
                    [o.answer.verdict == "delivered" for o in outcomes],
                    [o.wait_s for o in outcomes],
                    self.owner,
                )
                recorded = {(row["endpoint_id"], row["event_id"]) for row in rows}
                for outcome in outcomes:
                    if (outcome.endpoint_id, outcome.event_id) not in recorded:
                        log.warning(
                            "webhook_lease_lost",
                            endpoint_id=outcome.endpoint_id,
                            event_id=public_event_id(outcome.event_id),
                        )
                    elif outcome.disable is not None:
                        await connection.execute(queries.DISABLE_ENDPOINT, outcome.endpoint_id, outcome.disable)
                        log.warning(
                            "webhook_endpoint_disabled", endpoint_id=outcome.endpoint_id, reason=outcome.disable
                        )
        except (asyncpg.PostgresError, OSError) as error:
            log.warning("webhook_record_failed", attempts=len(outcomes), error=f"{type(error).__name__}: {error}")

    def signed(self, event: EventOut, secrets: list[str]) -> tuple[bytes, dict[str, str]]:
        body = _encoder.encode(event)
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature_header(secrets, event.id, now, body.decode()),
        }
        return body, headers
