"""Fixtures of the outgoing-webhook tests: the API in process (no background tasks), a receiver on
loopback, and deliverers the test drives itself, with short retry schedules."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from entitlements.settings import WebhookSettings
from entitlements.webhooks import Deliverer
from tests.support.generations import fresh_key
from tests.support.http import Api, api_for
from tests.support.webhooks import Receiver, receiving


def webhook_settings(**overrides: Any) -> WebhookSettings:
    base = WebhookSettings.from_env()
    return dataclasses.replace(
        base,
        **(
            {
                "allow_private_urls": True,
                "retry_schedule_s": (0.05, 0.1, 0.2),
                "retry_jitter_ratio": 0.2,
                "timeout_s": 2.0,
                "lease_s": 5,
                "poll_interval_s": 0.02,
            }
            | overrides
        ),
    )


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url) as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with receiving() as running:
        yield running


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        yield client


@pytest.fixture
def make_deliverer(pool: asyncpg.Pool, http_client: httpx.AsyncClient) -> Callable[..., Deliverer]:
    def make(owner: str | None = None, **overrides: Any) -> Deliverer:
        return Deliverer(pool, webhook_settings(**overrides), http_client, owner=owner)

    return make


async def register(api: Api, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    from entitlements.webhooks import EVENT_TYPES

    response = await api.post(
        "/v1/webhook-endpoints", "admin", {"url": url, "events": events or list(EVENT_TYPES), **extra}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def grant(api: Api, user: str, moments: int) -> None:
    response = await api.post(
        f"/v1/users/{user}/grants", "admin", {"moments": moments, "reason": "test"}, fresh_key("g")
    )
    assert response.status_code == 201, response.text
