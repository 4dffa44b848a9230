"""The ledger in commit order through HTTP: the feed and exports (manifest, SHA-256, resuming by cursor)."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import ledger as L
from tests.support.http import Api, api_for

# A finished export is polled for at most this long (a generous bound on a shared machine, not a timing).
EXPORT_WAIT_S = 60


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with api_for(
        database_url, finance_settings={"export_dir": tmp_path / "exports", "export_poll_interval_s": 0.2}
    ) as client:
        yield client


def credit(key: str, user_id: str = "u1", amount: int = 5, reason: str | None = None) -> L.Credit:
    return L.Credit(
        key=key, user_id=user_id, actor="test", amount=amount, kind="purchase", category="paid", reason=reason
    )


async def read_feed(api: Api, after: str | None, limit: int = 2) -> tuple[list[int], str | None]:
    seen: list[int] = []
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"after": after} if after else {})
        response = await api.get("/v1/ledger/feed", "finance", **params)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [item["transaction_id"] for item in page["items"]]
        if not page["items"]:
            return seen, page["next"]
        after = page["next"]


async def test_the_feed_waits_for_a_late_commit_with_a_lower_id_then_hands_it_out_once(
    api: Api, pool: asyncpg.Pool
) -> None:
    async with L.Ledger(pool) as led:
        await led.submit(credit("before"))
        seen, after = await read_feed(api, None)
        assert len(seen) == 1
        late = await pool.acquire()
        try:
            transaction = late.transaction()
            await transaction.start()
            (written,) = await led.execute_in(late, [credit("late")])
            assert isinstance(written, L.Result)
            assert written.transaction_id is not None
            for n in range(4):
                await led.submit(credit(f"after-{n}", user_id=f"u{n + 2}"))
            newer, after = await read_feed(api, after)
            assert newer == []
            assert written.transaction_id < await pool.fetchval("SELECT max(id) FROM ledger_transactions")
            await transaction.commit()
        finally:
            await pool.release(late)
        newer, after = await read_feed(api, after)
    assert newer[0] == written.transaction_id
    everything = sorted(await pool.fetchval("SELECT array_agg(id) FROM ledger_transactions"))
    assert sorted(seen + newer) == everything
    assert len(set(seen + newer)) == len(seen + newer)
    assert (await read_feed(api, after))[0] == []


async def test_the_feed_items_carry_their_postings(api: Api, pool: asyncpg.Pool) -> None:
    async with L.Ledger(pool) as led:
        await led.submit(credit("one", amount=7))
    page = (await api.get("/v1/ledger/feed", "finance")).json()
    assert page["items"][0]["postings"] == [
        {"account": "system:sales", "amount": -7},
        {"account": "user:u1:available", "amount": 7},
    ]


@pytest.mark.parametrize("after", ["forged", L.encode_cursor("t1", "5"), L.encode_cursor("c1", "x", "1")])
async def test_a_forged_feed_cursor_is_422(api: Api, after: str) -> None:
    response = await api.get("/v1/ledger/feed", "finance", after=after)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "after"


async def test_the_feed_is_for_finance(api: Api) -> None:
    assert (await api.get("/v1/ledger/feed", "support")).status_code == 403
    assert (await api.get("/v1/ledger/feed", "admin")).status_code == 200


# --- Exports ---------------------------------------------------------------------------------------------


async def export(api: Api, body: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Creates an export, waits for it to finish, and downloads its file: (status with manifest, body)."""
    created = await api.post("/v1/ledger/exports", "finance", body)
    assert created.status_code == 202, created.text
    export_id = created.json()["id"]
    assert created.json()["status"] == "pending"
    async with asyncio.timeout(EXPORT_WAIT_S):
        while True:
            status = (await api.get(f"/v1/ledger/exports/{export_id}", "finance")).json()
            if status["status"] in {"done", "failed"}:
                break
            await asyncio.sleep(0.05)
    assert status["status"] == "done", status
    response = await api.get(f"/v1/ledger/exports/{export_id}/file", "finance")
    assert response.status_code == 200
    digest = base64.b64encode(hashlib.sha256(response.content).digest()).decode()
    assert response.headers["digest"] == f"sha-256={digest}"
    return status, response.content


async def some_ledger(pool: asyncpg.Pool) -> None:
    async with L.Ledger(pool) as led:
        await led.submit(credit("c1", amount=100, reason='a "quoted", comma\nand a new line'))
        held = await led.submit(L.Hold(key="h1", user_id="u1", actor="test", amount=30, expires_at=_later()))
        assert held.hold_id is not None
        await led.submit(L.Capture(key="cap1", user_id="u1", actor="test", hold_id=held.hold_id, amount=20))
        await led.submit(credit("c2", user_id="ü-2", amount=9))


def _later() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)


async def test_a_postings_csv_export_matches_the_ledger_and_its_manifest(api: Api, pool: asyncpg.Pool) -> None:
    await some_ledger(pool)
    status, body = await export(api, {"dataset": "postings", "format": "csv"})
    manifest = status["manifest"]
    assert manifest["format_version"] == 1
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["bytes"] == len(body)
    assert manifest["seal_head"] is None
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert list(rows[0]) == manifest["columns"] == ["transaction_id", "account", "amount"]
    assert manifest["rows"] == len(rows) == await pool.fetchval("SELECT count(*) FROM ledger_postings")
    assert sum(int(row["amount"]) for row in rows) == 0
    assert manifest["after"] is None
    in_commit_order = await pool.fetch(
        "SELECT id, written_by_xid::text AS xid FROM ledger_transactions ORDER BY written_by_xid, id"
    )
    last = in_commit_order[-1]
    assert manifest["through"] == L.encode_position(L.CommitPosition(xid=int(last["xid"]), transaction_id=last["id"]))
    assert list(dict.fromkeys(int(row["transaction_id"]) for row in rows)) == [row["id"] for row in in_commit_order]
    transactions, body = await export(api, {"dataset": "transactions", "format": "csv"})
    positions = [L.decode_position(row["commit_position"]) for row in csv.DictReader(io.StringIO(body.decode()))]
    assert positions == sorted(positions)
    assert transactions["manifest"]["through"] == manifest["through"]


async def test_a_transactions_ndjson_export_holds_every_immutable_field(api: Api, pool: asyncpg.Pool) -> None:
    await some_ledger(pool)
    status, body = await export(api, {"dataset": "transactions", "format": "ndjson"})
    lines = body.decode().splitlines()
    assert len(lines) == status["manifest"]["rows"] == 4
    records = [json.loads(line) for line in lines]
    assert list(records[0]) == status["manifest"]["columns"]
    first = records[0]
    assert first["reason"] == 'a "quoted", comma\nand a new line'
    assert first["postings"] == [
        {"account": "system:sales", "amount": -100},
        {"account": "user:u1:available", "amount": 100},
    ]
    assert first["created_at"].endswith("Z")
    assert len(first["created_at"]) == len("2026-11-01T00:00:00.000000Z")
    row = await pool.fetchrow("SELECT * FROM ledger_transactions WHERE id = $1", first["transaction_id"])
    assert first["idempotency_key"] == row["idempotency_key"]
    assert first["actor"] == row["actor"]
    assert first["user_id"] == row["user_id"]
    assert first["reverses_transaction_id"] is None
    from datetime import datetime

    assert datetime.fromisoformat(first["created_at"]) == row["created_at"]
    assert records[-1]["user_id"] == "ü-2"


async def test_a_transactions_csv_export_reads_back_with_a_csv_reader(api: Api, pool: asyncpg.Pool) -> None:
    await some_ledger(pool)
    status, body = await export(api, {"dataset": "transactions", "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == status["manifest"]["rows"] == 4
    assert rows[0]["reason"] == 'a "quoted", comma\nand a new line'
    assert [row["kind"] for row in rows] == ["purchase", "hold", "capture", "purchase"]


async def test_an_export_continued_from_through_misses_no_late_commit_and_repeats_nothing(
    api: Api, pool: asyncpg.Pool
) -> None:
    async with L.Ledger(pool) as led:
        await led.submit(credit("a"))
        late = await pool.acquire()
        try:
            transaction = late.transaction()
            await transaction.start()
            await led.execute_in(late, [credit("late", user_id="u9")])
            await led.submit(credit("b", user_id="u2"))
            first, first_body = await export(api, {"dataset": "transactions", "format": "csv"})
            await transaction.commit()
        finally:
            await pool.release(late)
        await led.submit(credit("c", user_id="u3"))
    after = first["manifest"]["through"]
    second, second_body = await export(api, {"dataset": "transactions", "format": "csv", "after": after})
    assert second["manifest"]["after"] == after
    ids = [
        int(row["transaction_id"])
        for body in (first_body, second_body)
        for row in csv.DictReader(io.StringIO(body.decode()))
    ]
    assert first["manifest"]["rows"] == 1  # "b" waits behind the open transaction, like every reader
    assert sorted(ids) == sorted(await pool.fetchval("SELECT array_agg(id) FROM ledger_transactions"))
    assert len(ids) == len(set(ids)) == 4


async def test_an_export_of_a_window_holds_only_transactions_dated_in_it(api: Api, pool: asyncpg.Pool) -> None:
    await some_ledger(pool)
    ids = await pool.fetch("SELECT id, created_at FROM ledger_transactions ORDER BY id")
    since = ids[1]["created_at"]
    status, _body = await export(api, {"dataset": "transactions", "format": "csv", "since": since.isoformat()})
    assert status["manifest"]["rows"] == len([row for row in ids if row["created_at"] >= since])
    empty, empty_body = await export(api, {"dataset": "postings", "format": "ndjson", "until": "2001-01-01T00:00:00Z"})
    assert empty["manifest"]["rows"] == 0
    assert empty_body == b""
    assert empty["manifest"]["through"] is None
    assert empty["manifest"]["sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset": "ledger", "format": "csv"}, "dataset"),
        ({"dataset": "postings", "format": "xlsx"}, "format"),
        ({"dataset": "postings", "format": "csv", "after": "forged"}, "after"),
        (
            {"dataset": "postings", "format": "csv", "since": "2026-12-01T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
            "until",
        ),
        ({"dataset": "postings", "format": "csv", "extra": 1}, "extra"),
    ],
)
async def test_a_bad_export_request_is_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = await api.post("/v1/ledger/exports", "finance", body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert (await api.get("/v1/ledger/exports", "finance")).json()["items"] == []


async def test_an_unknown_export_is_404_and_the_file_of_an_unfinished_one_409(api: Api, pool: asyncpg.Pool) -> None:
    assert (await api.get("/v1/ledger/exports/not-an-id", "finance")).status_code == 404
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await api.get(f"/v1/ledger/exports/{missing}/file", "finance")).status_code == 404
    await pool.execute(
        "INSERT INTO finance_exports (id, dataset, format, status, requested_by, lease_until) "
        "VALUES ($1, 'postings', 'csv', 'running', 'test', now() + interval '1 hour')",
        uuid.UUID(int=1),
    )
    response = await api.get(f"/v1/ledger/exports/{uuid.UUID(int=1)}/file", "finance")
    assert response.status_code == 409


async def test_exports_are_listed_newest_first_and_paged(api: Api) -> None:
    for _ in range(3):
        await export(api, {"dataset": "postings", "format": "csv"})
    first = (await api.get("/v1/ledger/exports", "finance", limit=2)).json()
    assert len(first["items"]) == 2
    rest = (await api.get("/v1/ledger/exports", "finance", limit=2, cursor=first["next_cursor"])).json()
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None
    assert (await api.get("/v1/ledger/exports", "finance", cursor="forged")).status_code == 422


async def wait_for(api: Api, export_id: str) -> dict[str, Any]:
    async with asyncio.timeout(EXPORT_WAIT_S):
        while True:
            status: dict[str, Any] = (await api.get(f"/v1/ledger/exports/{export_id}", "finance")).json()
            if status["status"] in {"done", "failed"}:
                return status
            await asyncio.sleep(0.05)


async def test_an_export_left_running_by_a_process_that_died_is_taken_over_once_its_lease_ran_out(
    api: Api, pool: asyncpg.Pool
) -> None:
    await some_ledger(pool)
    orphan = uuid.uuid4()
    await pool.execute(
        "INSERT INTO finance_exports (id, dataset, format, status, requested_by, lease_until) "
        "VALUES ($1, 'transactions', 'ndjson', 'running', 'test', now() - interval '1 second')",
        orphan,
    )
    held = uuid.uuid4()
    await pool.execute(
        "INSERT INTO finance_exports (id, dataset, format, status, requested_by, lease_until) "
        "VALUES ($1, 'transactions', 'ndjson', 'running', 'test', now() + interval '1 hour')",
        held,
    )
    status = await wait_for(api, str(orphan))
    assert status["status"] == "done"
    assert status["manifest"]["rows"] == 4
    # One whose lease is still good belongs to its (living) process: nobody else touches it.
    still = (await api.get(f"/v1/ledger/exports/{held}", "finance")).json()
    assert still["status"] == "running"


async def test_an_export_that_cannot_be_written_fails_with_why_and_leaves_no_file(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the exports' directory should be")
    async with api_for(database_url, finance_settings={"export_dir": blocked, "export_poll_interval_s": 0.2}) as api:
        created = await api.post("/v1/ledger/exports", "finance", {"dataset": "postings", "format": "csv"})
        status = await wait_for(api, created.json()["id"])
        assert status["status"] == "failed"
        assert status["manifest"] is None
        assert "Error" in status["error"]
        file = await api.get(f"/v1/ledger/exports/{status['id']}/file", "finance")
        assert file.status_code == 409
    assert blocked.read_text().startswith("a file")
