"""Generation requests in the ledger's group commit (entitlements/generations/batch.py), against real
PostgreSQL: many callers at once share batches, and every caller gets exactly its own answer.

The service is called directly from concurrent tasks of one process, so their requests meet in the same
batches (the in-process HTTP client would serve them one at a time).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

import ledger
import pricing
from entitlements.app import EXTRA_AUDIT_CHECKS
from entitlements.errors import DomainError
from entitlements.generations import service
from entitlements.generations.schemas import GenerationCreate
from entitlements.keys import Caller, create_key

HOLD_TTL_S = 600
REQUEST = GenerationCreate(image_id="img", prompt="a slow wave", mode="advanced", resolution="480p", duration_s=4)


@pytest.fixture
async def ledger_service(pool: asyncpg.Pool) -> AsyncIterator[ledger.Ledger]:
    # One committer: every concurrent request lands in the same few batches.
    async with ledger.Ledger(pool, batch_settings=ledger.BatchSettings(committers=1)) as running:
        yield running


@pytest.fixture
async def caller(pool: asyncpg.Pool) -> Caller:
    created = await create_key(pool, role="service", name="batches")
    return Caller(created.api_key.id, "batches", "service")


@pytest.fixture
def table() -> pricing.PriceTable:
    return pricing.current_table(pricing.load_tables(), datetime.now(UTC))


async def assert_audit_ok(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as connection:
        report = await ledger.audit(connection, EXTRA_AUDIT_CHECKS)
    assert report.ok, [check for check in report.checks if not check.ok]


async def create(
    pool: asyncpg.Pool,
    ledger_service: ledger.Ledger,
    table: pricing.PriceTable,
    caller: Caller,
    user: str,
    key: str,
    request: GenerationCreate = REQUEST,
) -> Any:
    """The answer, or the DomainError / LedgerRuleError / LedgerUnavailable the caller would get."""
    try:
        return await service.create(
            ledger_service=ledger_service,
            catalog=pricing.load_catalog(),
            table=table,
            caller=caller,
            user_id=user,
            body=request,
            key=key,
            hold_ttl_s=HOLD_TTL_S,
        )
    except (DomainError, ledger.LedgerRuleError, ledger.LedgerUnavailable) as refused:
        return refused


async def fund(pool: asyncpg.Pool, ledger_service: ledger.Ledger, user: str, moments: int, tier: str) -> None:
    await pool.execute(
        "INSERT INTO subscriptions (user_id, tier, source) VALUES ($1, $2, 'manual') "
        "ON CONFLICT (user_id) DO UPDATE SET tier = excluded.tier",
        user,
        tier,
    )
    if moments:
        await ledger_service.submit(
            ledger.Credit(
                key=f"fund:{user}:{uuid.uuid4()}",
                user_id=user,
                actor="test",
                amount=moments,
                kind="grant",
                category="promotional",
            )
        )


def code_of(answer: Any) -> str:
    return "created" if not isinstance(answer, Exception) else getattr(answer, "code", type(answer).__name__)


async def test_refusals_in_a_batch_never_fail_their_neighbours_and_leave_no_claim(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, table: pricing.PriceTable, caller: Caller
) -> None:
    price = pricing.quote(table, mode="advanced", resolution="480p", duration_s=4).moments
    await fund(pool, ledger_service, "rich", 100 * price, "PREMIUM")
    await fund(pool, ledger_service, "poor", price - 1, "PREMIUM")
    await fund(pool, ledger_service, "free", 100 * price, "FREE")
    users = ["rich"] * 20 + ["poor"] * 5 + ["free"] * 5 + ["nobody"] * 5
    answers = await asyncio.gather(
        *(create(pool, ledger_service, table, caller, user, f"k-{index}") for index, user in enumerate(users))
    )
    codes = Counter((user, code_of(answer)) for user, answer in zip(users, answers, strict=True))
    assert codes == {
        ("rich", "created"): 20,
        ("poor", "insufficient_moments"): 5,
        ("free", "tier_required"): 5,
        ("nobody", "tier_required"): 5,
    }
    created = [answer for answer in answers if not isinstance(answer, Exception)]
    rows = await pool.fetch(
        "SELECT g.id, g.user_id, h.amount, h.status, j.done FROM generations g "
        "JOIN ledger_holds h ON h.id = g.hold_id JOIN generation_jobs j ON j.generation_id = g.id"
    )
    assert sorted(str(row["id"]) for row in rows) == sorted(answer.id for answer in created)
    assert all(row["status"] == "open" and row["amount"] == price and not row["done"] for row in rows)
    # Only the created requests keep a claim, each with its answer; a refused key may be used again.
    stored = await pool.fetch("SELECT idempotency_key, response_body FROM api_idempotency")
    assert sorted(row["idempotency_key"] for row in stored) == sorted(
        f"k-{index}" for index, user in enumerate(users) if user == "rich"
    )
    assert all(row["response_body"] is not None for row in stored)
    await fund(pool, ledger_service, "poor", 1, "PREMIUM")
    retried = await create(pool, ledger_service, table, caller, "poor", f"k-{users.index('poor')}")
    assert code_of(retried) == "created"
    await assert_audit_ok(pool)


async def test_one_key_many_times_in_one_batch_is_one_generation_and_another_body_is_refused(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, table: pricing.PriceTable, caller: Caller
) -> None:
    await fund(pool, ledger_service, "same-key", 10**6, "PREMIUM")
    other = GenerationCreate(image_id="other", prompt="a slow wave", mode="advanced", resolution="480p", duration_s=4)
    requests = [REQUEST] * 10 + [other] * 3
    answers = await asyncio.gather(
        *(create(pool, ledger_service, table, caller, "same-key", "one-key", request) for request in requests)
    )
    generations = {answer.id for answer in answers if not isinstance(answer, Exception)}
    assert len(generations) == 1
    assert [code_of(answer) for answer in answers[10:]] == ["idempotency_key_reused"] * 3
    assert await pool.fetchval("SELECT count(*) FROM generations") == 1
    # Later, from another batch: the stored answer, replayed exactly.
    replay = await create(pool, ledger_service, table, caller, "same-key", "one-key")
    assert replay == next(answer for answer in answers if not isinstance(answer, Exception))
    await assert_audit_ok(pool)


async def test_a_batch_that_fails_in_the_database_is_retried_alone_and_writes_nothing_partial(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, table: pricing.PriceTable, caller: Caller
) -> None:
    """A crash between the steps of a batch, as the database sees it: the generation rows' insert fails for
    one request, after its claim and its hold were written in the same transaction."""
    await fund(pool, ledger_service, "steady", 10**6, "PREMIUM")
    await pool.execute(
        """
        CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.image_id = 'boom' THEN RAISE EXCEPTION 'injected failure'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_boom BEFORE INSERT ON generations FOR EACH ROW EXECUTE FUNCTION refuse_boom();
        """
    )
    boom = GenerationCreate(image_id="boom", prompt="a slow wave", mode="advanced", resolution="480p", duration_s=4)
    requests = [REQUEST] * 8 + [boom] + [REQUEST] * 8
    answers = await asyncio.gather(
        *(
            create(pool, ledger_service, table, caller, "steady", f"crash-{index}", request)
            for index, request in enumerate(requests)
        )
    )
    assert [code_of(answer) for answer in answers].count("created") == 16
    assert isinstance(answers[8], ledger.LedgerUnavailable)
    # Nothing of the failed request survived: no claim, no hold, no generation.
    assert await pool.fetchval("SELECT count(*) FROM generations") == 16
    assert await pool.fetchval("SELECT count(*) FROM ledger_holds") == 16
    assert await pool.fetchval("SELECT count(*) FROM api_idempotency WHERE idempotency_key = 'crash-8'") == 0
    await assert_audit_ok(pool)


async def test_settlements_in_one_batch_capture_each_generation_once(
    pool: asyncpg.Pool, ledger_service: ledger.Ledger, table: pricing.PriceTable, caller: Caller, tmp_path: Any
) -> None:
    """The dispatcher, the sweeper and a second process settling at once: each generation ends once, with the
    first settlement that reached it, and every other settlement answers False and changes nothing."""
    await fund(pool, ledger_service, "settled", 10**6, "PREMIUM")
    created = await asyncio.gather(
        *(create(pool, ledger_service, table, caller, "settled", f"s-{index}") for index in range(12))
    )
    ids = [uuid.UUID(generation.id) for generation in created]
    video = tmp_path / "video.mp4"
    video.write_bytes(b"mp4")
    attempts = [
        service.settle_success(pool, ledger_service, generation_id, video, 3) for _ in range(3) for generation_id in ids
    ]
    attempts += [service.settle_failure(pool, ledger_service, generation_id, "worker_failed") for generation_id in ids]
    answers = await asyncio.gather(*attempts)
    assert sum(answers) == len(ids)
    rows = await pool.fetch(
        "SELECT g.status, h.status AS hold_status, j.done FROM generations g "
        "JOIN ledger_holds h ON h.id = g.hold_id JOIN generation_jobs j ON j.generation_id = g.id"
    )
    assert {(row["status"], row["hold_status"]) for row in rows} <= {("succeeded", "captured"), ("failed", "voided")}
    assert all(row["done"] for row in rows)
    settles = await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind IN ('capture', 'void')")
    assert settles == len(ids)
    await assert_audit_ok(pool)
