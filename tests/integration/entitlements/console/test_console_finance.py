"""The console's finance pages over HTTP (in process, real PostgreSQL): the roll-forward and the exports."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import csrf_of, sign_in
from tests.support.finance import a_user
from tests.support.http import Api, api_for

EXPORT_WAIT_S = 60


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    async with api_for(
        database_url, finance_settings={"export_dir": tmp_path, "export_poll_interval_s": 0.2}
    ) as client:
        yield client


async def get(api: Api, path: str, **params: Any) -> Any:
    return await api.client.get(path, params=params or None, follow_redirects=False)


async def test_the_rollforward_page_shows_the_flows_its_chart_and_whether_it_ties(api: Api, pool: Any) -> None:
    await a_user(pool, "alice")
    await sign_in(api, "finance")
    page = await get(api, "/console/finance/rollforward", since="2026-01-01", until="2100-01-01")
    assert page.status_code == 200, page.text
    assert 'data-ties="true"' in page.text
    chart = re.search(r'<script type="application/json" id="rollforward-chart-data">(.*?)</script>', page.text, re.S)
    assert chart
    series = json.loads(chart.group(1))
    assert series["labels"][2] == "promotions"
    assert series["values"][2] == 1
    assert re.search(r'id="closing-liability">1<', page.text)
    default = await get(api, "/console/finance/rollforward")
    assert default.status_code == 200
    assert "Closed periods" in default.text
    assert (await get(api, "/console/finance/rollforward", since="yesterday")).status_code == 422


async def test_support_has_no_finance_pages(api: Api) -> None:
    await sign_in(api, "support")
    assert (await get(api, "/console/finance/rollforward")).status_code == 403
    assert (await get(api, "/console/finance/exports")).status_code == 403


async def test_an_export_is_created_followed_and_downloaded_from_the_console(api: Api, pool: Any) -> None:
    await a_user(pool, "alice")
    await sign_in(api, "finance")
    page = await get(api, "/console/finance/exports")
    assert "No exports yet" in page.text
    created = await api.client.post(
        "/console/finance/exports",
        data={"csrf_token": csrf_of(page.text), "dataset": "postings", "format": "csv", "since": "2026-01-01"},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    async with asyncio.timeout(EXPORT_WAIT_S):
        while 'data-status="done"' not in (listed := await get(api, "/console/finance/exports")).text:
            await asyncio.sleep(0.1)
    link = re.search(r'href="(/console/finance/exports/[^"]+/file)"', listed.text)
    assert link
    download = await get(api, link.group(1))
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() in listed.text
    forged = await api.client.post(
        "/console/finance/exports",
        data={"csrf_token": "forged", "dataset": "postings", "format": "csv"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    bad = await api.client.post(
        "/console/finance/exports",
        data={"csrf_token": csrf_of(page.text), "dataset": "everything", "format": "csv"},
        headers={"HX-Request": "true"},
        follow_redirects=False,
    )
    assert bad.status_code == 422
    assert "dataset" in bad.text
