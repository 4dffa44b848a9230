"""An export's manifest carries the seal's head, and the export itself verifies offline against the seal
(docs/seal.md's procedure, with the file the service wrote); a closed period keeps the head too."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg

import ledger as L
from entitlements import finance, seal
from entitlements.keys import Caller
from tests.integration.entitlements.seal.test_offline import Auditor
from tests.support.seal import activity, checkpoint_documents, new_key, seal_everything, seal_settings

TIMEOUT_MS = 60_000


async def test_the_manifest_names_the_seal_head_and_the_export_verifies_offline(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    key = new_key(tmp_path)
    async with L.Ledger(pool) as led:
        await activity(led, users=3)
    sealer = seal.Sealer(pool, seal_settings(checkpoint_transactions=4, checkpoint_interval_s=0.05), key)
    await seal_everything(sealer)
    await asyncio.sleep(0.1)
    await sealer.seal_once()
    path = tmp_path / "transactions.ndjson"
    async with pool.acquire() as connection:
        manifest = await finance.export_to_file(
            connection,
            finance.ExportRequest(dataset="transactions", format="ndjson"),
            path,
            statement_timeout_ms=TIMEOUT_MS,
        )
    head = await seal.seal_head(pool)
    assert head is not None
    assert manifest.seal_head == head
    auditor = Auditor(tmp_path / "auditor", key)
    auditor.write("checkpoints.json", json.dumps({"items": await checkpoint_documents(pool), "next": None}))
    export = auditor.write("transactions.ndjson", path.read_text())
    done = auditor.run("export", export, "--checkpoints", "checkpoints.json", "--seal-head", manifest.seal_head)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"verified: {manifest.rows} transaction(s)" in done.stdout

    closed = await finance.close_period(
        pool, Caller(key_id=1, role="finance", name="fiona"), "2026-01", seal_head=finance.seal_head
    )
    assert closed.seal_head == head
