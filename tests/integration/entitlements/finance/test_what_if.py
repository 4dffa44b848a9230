"""The price what-if: a window's delivered generations priced under the current and a draft table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from pricing.price_table import TABLES_DIRECTORY
from tests.support.generations import body, create_ok, premium_user
from tests.support.http import Api, api_for

CURRENT = (TABLES_DIRECTORY / "2026-11-01.toml").read_text()
# 720p dearer by 10 a second, adult by 50, and no 480p at all.
DRAFT = (
    CURRENT.replace('version = "2026-11-01"', 'version = "2027-01-draft"')
    .replace('resolutions = ["480p", "720p", "1080p"]', 'resolutions = ["720p", "1080p"]')
    .replace('"480p" = 50, "720p" = 90', '"720p" = 100')
    .replace("flat = 600", "flat = 650")
)


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with api_for(database_url, finance_settings={"export_dir": tmp_path}) as client:
        yield client


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": (now - timedelta(hours=1)).isoformat(), "until": (now + timedelta(hours=1)).isoformat()}


async def delivered(api: Api, pool: asyncpg.Pool, request: dict, status: str = "succeeded") -> None:
    generation = await create_ok(api, "maker", request)
    if status == "failed":
        await pool.execute(
            "UPDATE generations SET status = 'failed', error = 'test' WHERE id = $1::uuid", generation["id"]
        )
    else:
        await pool.execute(
            "UPDATE generations SET status = 'succeeded', video_path = 'x.mp4' WHERE id = $1::uuid", generation["id"]
        )


async def test_the_draft_is_priced_cell_by_cell_beside_the_current_table(api: Api, pool: asyncpg.Pool) -> None:
    await premium_user(api, "maker", 100_000)
    for _ in range(2):
        await delivered(api, pool, body(resolution="720p", duration_s=5, audio=True))
    await delivered(api, pool, body(mode="adult", resolution=None, duration_s=None))
    await delivered(api, pool, body(resolution="480p", duration_s=4, audio=False))
    await delivered(api, pool, body(resolution="1080p", duration_s=4), status="failed")
    response = await api.post("/v1/pricing/what-if", "finance", {"table": DRAFT, **window()})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["current_version"] == "2026-11-01"
    assert answer["draft_version"] == "2027-01-draft"
    cells = {(c["mode"], c["resolution"], c["duration_s"], c["audio"]): c for c in answer["cells"]}
    assert cells[("advanced", "720p", 5, True)] | {} == {
        "mode": "advanced",
        "resolution": "720p",
        "duration_s": 5,
        "audio": True,
        "generations": 2,
        "current": 1100,
        "draft": 1200,
        "difference": 100,
    }
    assert (cells[("adult", "720p", 8, False)]["current"], cells[("adult", "720p", 8, False)]["draft"]) == (600, 650)
    no_480p = cells[("advanced", "480p", 4, False)]
    assert (no_480p["current"], no_480p["draft"], no_480p["difference"]) == (200, None, None)
    assert answer["total"] == {
        "generations": 4,
        "current": 1900,
        "draft": 1850,
        "difference": -50,
        "unpriced_current": 0,
        "unpriced_draft": 1,
    }
    # Never published: quotes still come from the current table.
    assert (await api.get("/v1/pricing", "service")).json()["version"] == "2026-11-01"


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("not toml [", "draft"),
        (CURRENT.replace('currency = "moments"', 'currency = "euros"'), "currency"),
        (CURRENT.replace(', "1080p" = 160', ""), "1080p"),
        (CURRENT.replace("max = 15", "max = 1000000000"), "cells"),
        (CURRENT.replace("flat = 600", "flat = 0"), "flat"),
        (CURRENT + "\nbonus = 1\n", "bonus"),
        ("x = " + "[" * 2000 + "]" * 2000, "draft"),
    ],
)
async def test_a_draft_is_validated_exactly_like_a_published_table(api: Api, table: str, says: str) -> None:
    response = await api.post("/v1/pricing/what-if", "finance", {"table": table, **window()})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == "table"
    assert says in problem["detail"]


async def test_what_if_refuses_a_backwards_window_and_other_roles(api: Api) -> None:
    now = datetime.now(UTC).isoformat()
    earlier = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = await api.post("/v1/pricing/what-if", "finance", {"table": CURRENT, "since": now, "until": earlier})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "until"
    assert (await api.post("/v1/pricing/what-if", "support", {"table": CURRENT, **window()})).status_code == 403
    missing = await api.post("/v1/pricing/what-if", "finance", {"table": CURRENT})
    assert missing.status_code == 422


async def test_a_draft_at_the_size_limit_is_read_and_one_past_it_is_refused(api: Api) -> None:
    from entitlements.finance.schemas import PRICE_TABLE_CHARS_MAX

    # Long comment lines: few characters that JSON escapes, so the body stays within REQUEST_BODY_BYTES_MAX.
    padding = "#" + "x" * 998 + "\n"
    at_limit = CURRENT + padding * ((PRICE_TABLE_CHARS_MAX - len(CURRENT)) // len(padding))
    at_limit += "#" * (PRICE_TABLE_CHARS_MAX - len(at_limit))
    assert len(at_limit) == PRICE_TABLE_CHARS_MAX
    response = await api.post("/v1/pricing/what-if", "finance", {"table": at_limit, **window()})
    assert response.status_code == 200, response.text
    past = await api.post("/v1/pricing/what-if", "finance", {"table": at_limit + "#", **window()})
    assert past.status_code == 422
    assert past.json()["errors"][0]["field"] == "table"
