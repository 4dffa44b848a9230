"""The seal in tests: a signing key, a sealer with small checkpoints, ledger activity to seal, and the
export rows (the transactions export's NDJSON shape) of what the ledger holds, read from `Ledger.feed`."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

import ledger as L
from entitlements import seal
from entitlements.seal.service import checkpoints
from entitlements.settings import SealSettings

ACTOR = "test:seal"


def seal_settings(**changes: Any) -> SealSettings:
    base = SealSettings.from_env()
    defaults: dict[str, Any] = {
        "key_file": None,
        "key_pem": None,
        "public_key_files": (),
        "checkpoint_transactions": 4,
        "checkpoint_interval_s": 3600.0,
        "poll_interval_s": 0.01,
    }
    return dataclasses.replace(base, **(defaults | changes))


def new_key(directory: Path, name: str = "seal-key.pem") -> seal.SigningKey:
    return seal.create_key_file(directory / name)


async def activity(led: L.Ledger, users: int = 3, *, prefix: str = "t") -> list[int]:
    """Ledger transactions of several kinds (credits, holds, a capture, a void) for `users` users; their ids."""
    ids: list[int] = []
    for n in range(users):
        user = f"{prefix}-user-{n}"
        credit = await led.submit(
            L.Credit(
                key=f"{prefix}:credit:{n}",
                user_id=user,
                actor=ACTOR,
                amount=100,
                kind="grant",
                category="promotional",
                reason=f"welcome {n}",
            )
        )
        assert isinstance(credit, L.Result)
        assert credit.transaction_id is not None
        ids.append(credit.transaction_id)
        expires = datetime.now(UTC) + timedelta(hours=1)
        for step in range(2):
            hold = await led.submit(
                L.Hold(
                    key=f"{prefix}:hold:{n}:{step}",
                    user_id=user,
                    actor=ACTOR,
                    amount=10,
                    expires_at=expires,
                    reference=f"generation-{n}-{step}",
                )
            )
            assert isinstance(hold, L.Result)
            assert hold.hold_id is not None
            assert hold.transaction_id is not None
            ids.append(hold.transaction_id)
            settle: L.AnyOperation = (
                L.Capture(key=f"{prefix}:capture:{n}:{step}", user_id=user, actor=ACTOR, hold_id=hold.hold_id)
                if step == 0
                else L.Void(key=f"{prefix}:void:{n}:{step}", user_id=user, actor=ACTOR, hold_id=hold.hold_id)
            )
            settled = await led.submit(settle)
            assert isinstance(settled, L.Result)
            assert settled.transaction_id is not None
            ids.append(settled.transaction_id)
    return ids


async def seal_everything(sealer: seal.Sealer) -> None:
    """Rounds until nothing is left to chain, then one more so a due checkpoint is written."""
    while (await sealer.seal_once()).more:
        pass


def export_row(item: L.TransactionItem, idempotency_key: str) -> dict[str, Any]:
    """A transactions export row as issue 15's NDJSON writes it (the agreed shape)."""
    return {
        "transaction_id": item.transaction_id,
        "kind": item.kind,
        "idempotency_key": idempotency_key,
        "user_id": item.user_id,
        "reference": item.reference,
        "reverses_transaction_id": item.reverses_transaction_id,
        "actor": item.actor,
        "reason": item.reason,
        "created_at": item.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        "postings": [
            {"account": p.account, "amount": p.amount} for p in sorted(item.postings, key=lambda p: p.account)
        ],
    }


async def export_lines(pool: asyncpg.Pool) -> list[str]:
    """Every committed transaction as an NDJSON export line, in commit order, from `Ledger.feed`."""
    keys = {
        row["id"]: row["idempotency_key"]
        for row in await pool.fetch("SELECT id, idempotency_key FROM ledger_transactions")
    }
    lines: list[str] = []
    led = L.Ledger(pool)
    after = L.START
    while True:
        items, after_next = await led.feed(after, limit=100)
        lines += [json.dumps(export_row(item, keys[item.transaction_id])) for item in items]
        if after_next == after:
            return lines
        after = after_next


async def checkpoint_documents(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every checkpoint as `GET /v1/ledger/checkpoints` lists it."""
    page = await checkpoints(pool, after=0, limit=1000)
    return [msgspec.to_builtins(item) for item in page.items]
