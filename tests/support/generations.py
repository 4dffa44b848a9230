"""Helpers for generation-flow tests: set up a paying user, create, wait, inspect the ledger, probe MP4s."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

import ledger
from tests.support.http import Api

FINAL_STATUSES = frozenset({"succeeded", "failed", "refunded"})
WAIT_S_MAX = 60.0
POLL_S = 0.1
FRAME_SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}
DURATION_TOLERANCE_S = 0.15

_keys = itertools.count(1)


def fresh_key(prefix: str = "k") -> str:
    return f"{prefix}-{next(_keys)}-{time.monotonic_ns()}"


def body(
    image_id: str = "img-1",
    *,
    prompt: str = "a slow wave",
    mode: str = "advanced",
    resolution: str | None = "480p",
    duration_s: int | None = 4,
    audio: bool | None = None,
) -> dict[str, Any]:
    result: dict[str, Any] = {"image_id": image_id, "prompt": prompt, "mode": mode}
    if resolution is not None:
        result["resolution"] = resolution
    if duration_s is not None:
        result["duration_s"] = duration_s
    if audio is not None:
        result["audio"] = audio
    return result


def quote_request(request: dict[str, Any]) -> dict[str, Any]:
    return {name: request[name] for name in ("mode", "resolution", "duration_s", "audio") if name in request}


async def price_of(api: Api, request: dict[str, Any]) -> int:
    response = await api.post("/v1/quotes", "service", quote_request(request))
    assert response.status_code == 200, response.text
    moments = response.json()["moments"]
    assert isinstance(moments, int)
    assert moments > 0
    return moments


async def set_tier(api: Api, user: str, tier: str = "PREMIUM") -> None:
    response = await api.put(f"/v1/users/{user}/subscription", "admin", {"tier": tier})
    assert response.status_code == 200, response.text
    assert response.json() == {"user_id": user, "tier": tier}


async def grant(api: Api, user: str, moments: int, *, role: str = "admin") -> None:
    response = await api.post(f"/v1/users/{user}/grants", role, {"moments": moments, "reason": "test"}, fresh_key("g"))
    assert response.status_code == 201, response.text


async def premium_user(api: Api, user: str, moments: int) -> None:
    await set_tier(api, user, "PREMIUM")
    if moments:
        await grant(api, user, moments)


async def create(api: Api, user: str, request: dict[str, Any], key: str | None = None) -> Any:
    return await api.post(f"/v1/users/{user}/generations", "service", request, key or fresh_key("gen"))


async def create_ok(api: Api, user: str, request: dict[str, Any]) -> dict[str, Any]:
    response = await create(api, user, request)
    assert response.status_code == 202, response.text
    generation: dict[str, Any] = response.json()
    return generation


async def get_generation(api: Api, generation_id: str) -> dict[str, Any]:
    response = await api.get(f"/v1/generations/{generation_id}", "service")
    assert response.status_code == 200, response.text
    generation: dict[str, Any] = response.json()
    return generation


async def wait_final(api: Api, generation_id: str, timeout_s: float = WAIT_S_MAX) -> dict[str, Any]:
    """Polls GET /v1/generations/{id} until it is final; fails the test past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    generation = await get_generation(api, generation_id)
    while generation["status"] not in FINAL_STATUSES:
        if time.monotonic() > deadline:
            raise AssertionError(f"generation {generation_id} not final after {timeout_s} s: {generation}")
        await asyncio.sleep(POLL_S)
        generation = await get_generation(api, generation_id)
    return generation


async def balance(api: Api, user: str) -> dict[str, int]:
    response = await api.get(f"/v1/users/{user}/entitlements", "service")
    assert response.status_code == 200, response.text
    result: dict[str, int] = response.json()["balance"]
    return result


async def ledger_kinds(api: Api, user: str) -> list[str]:
    """The user's ledger history kinds, newest first (one page is plenty in these tests)."""
    response = await api.get(f"/v1/users/{user}/ledger", "support", limit=200)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["next_cursor"] is None
    return [item["kind"] for item in page["items"]]


async def ledger_history(api: Api, user: str) -> list[dict[str, Any]]:
    response = await api.get(f"/v1/users/{user}/ledger", "support", limit=200)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def transaction_kinds(pool: asyncpg.Pool | asyncpg.Connection, generation_id: str) -> Counter[str]:
    """Ledger transactions that reference this generation, counted by kind."""
    rows = await pool.fetch(
        "SELECT kind, count(*) AS n FROM ledger_transactions WHERE reference = $1 GROUP BY kind",
        f"generation:{generation_id}",
    )
    return Counter({row["kind"]: row["n"] for row in rows})


async def hold_of(pool: asyncpg.Pool | asyncpg.Connection, generation_id: str) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT h.* FROM ledger_holds h JOIN generations g ON g.hold_id = h.id WHERE g.id = $1::uuid",
        generation_id,
    )
    assert row is not None
    return row


async def stripe_clawback(pool: asyncpg.Pool, user: str, moments: int) -> None:
    """Claws `moments` back as an applied Stripe dispute would: the event row and its ledger transaction
    (the audit requires every clawback to reference the applied Stripe event that recorded it)."""
    event_id = f"evt_test_dispute_{fresh_key('d')}"
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "INSERT INTO stripe_events (id, type, created, payload, state, applied_at, outcome, ledger_kind,"
            " ledger_moments) VALUES ($1, 'charge.dispute.created', now(), '{}'::jsonb, 'applied', now(),"
            " 'test clawback', 'clawback', $2)",
            event_id,
            moments,
        )
        service = ledger.Ledger(pool)
        (outcome,) = await service.execute_in(
            connection,
            [
                ledger.Clawback(
                    key=f"stripe:{event_id}",
                    user_id=user,
                    actor="system:stripe",
                    reason="dispute opened",
                    reference=event_id,
                    amount=moments,
                )
            ],
        )
        assert isinstance(outcome, ledger.Result), outcome


async def assert_audit_ok(api: Api) -> None:
    response = await api.get("/v1/ledger/audit", "finance")
    assert response.status_code == 200, response.text
    report = response.json()
    failed = [check for check in report["checks"] if not check["ok"]]
    assert report["ok"] is True, failed
    assert not failed
    assert report["checks"], "the audit ran no checks"


async def assert_nothing_held(api: Api, pool: asyncpg.Pool, user: str, *, available: int, transactions: int) -> None:
    """No hold, no generation, no ledger transaction beyond the `transactions` the setup made."""
    assert await balance(api, user) == {"available": available, "held": 0}
    assert await pool.fetchval("SELECT count(*) FROM generations WHERE user_id = $1", user) == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_holds WHERE user_id = $1", user) == 0
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions WHERE user_id = $1", user) == transactions


@dataclass(frozen=True)
class VideoProbe:
    codec: str
    width: int
    height: int
    duration_s: float
    audio_streams: int


def probe_video(path: Path) -> VideoProbe:
    import av

    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1, f"{path} has {len(container.streams.video)} video streams"
        video = container.streams.video[0]
        assert container.duration is not None
        return VideoProbe(
            codec=video.codec_context.name,
            width=video.codec_context.width,
            height=video.codec_context.height,
            duration_s=container.duration / 1_000_000,
            audio_streams=len(container.streams.audio),
        )


def worker_record(video_dir: Path, generation_id: str) -> dict[str, Any]:
    """The bundled worker's own record of a job (`<id>.json`): its status and how many renders it ran."""
    import json

    record: dict[str, Any] = json.loads((video_dir / f"{generation_id}.json").read_text())
    return record
