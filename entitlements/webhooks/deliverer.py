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
        """Claims as many deliveries as it has room for, sends them concurrently, and claims again as
        soon as one ends (the next event of that queue may now go) or every poll interval."""
        in_flight: set[asyncio.Task[None]] = set()
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
                    in_flight.add(asyncio.create_task(self.deliver(row)))
                if in_flight:
                    done, _ = await asyncio.wait(
                        in_flight, timeout=self.settings.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    in_flight -= done
                else:
                    await asyncio.sleep(self.settings.poll_interval_s)
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def deliver_due(self) -> int:
        """Sends everything due now, one round at a time, until nothing is (tests and benchmarks)."""
        sent = 0
        while claimed := await self.claim(self.settings.concurrency):
            await asyncio.gather(*(self.deliver(row) for row in claimed))
            sent += len(claimed)
        return sent

    async def claim(self, limit: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(queries.CLAIM, limit, self.owner, self.settings.lease_s)

    async def deliver(self, row: asyncpg.Record) -> None:
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
        try:
            await self._record(row, attempt, answer, wait_s or 0.0, disable)
        except (asyncpg.PostgresError, OSError) as error:
            # The lease lapses and another attempt is made: at-least-once.
            log.warning("webhook_record_failed", event_id=event.id, error=f"{type(error).__name__}: {error}")

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

    async def _record(
        self, row: asyncpg.Record, attempt: int, answer: outgoing.Answer, wait_s: float, disable: str | None
    ) -> None:
        # One statement (the attempt and the delivery's new state) unless the endpoint is disabled too.
        arguments = (
            row["endpoint_id"],
            row["event_id"],
            attempt,
            answer.status,
            answer.latency_ms,
            answer.error,
            answer.verdict == "delivered",
            self.owner,
            wait_s,
        )
        async with self.pool.acquire() as connection:
            if disable is None:
                updated = await connection.execute(queries.RECORD_ATTEMPT, *arguments)
            else:
                async with connection.transaction():
                    updated = await connection.execute(queries.RECORD_ATTEMPT, *arguments)
                    if updated != "UPDATE 0":
                        await connection.execute(queries.DISABLE_ENDPOINT, row["endpoint_id"], disable)
                        log.warning("webhook_endpoint_disabled", endpoint_id=row["endpoint_id"], reason=disable)
        if updated == "UPDATE 0":
            log.warning("webhook_lease_lost", endpoint_id=row["endpoint_id"], event_id=public_event_id(row["event_id"]))
