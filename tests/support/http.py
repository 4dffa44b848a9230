"""An in-process API client with one key per role, against a test database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient

from entitlements.app import create_app
from entitlements.keys import ROLES, create_key
from entitlements.settings import SealSettings
from tests.support.app import settings_for


class Api:
    def __init__(self, client: AsyncTestClient[Any], keys: dict[str, str]) -> None:
        self.client = client
        self.keys = keys

    def headers(self, role: str, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def get(self, path: str, role: str, **params: Any) -> Any:
        return await self.client.get(path, headers=self.headers(role), params=params or None)

    async def post(self, path: str, role: str, body: Any, idempotency_key: str | None = None) -> Any:
        return await self.client.post(path, headers=self.headers(role, idempotency_key), json=body)

    async def put(self, path: str, role: str, body: Any) -> Any:
        return await self.client.put(path, headers=self.headers(role), json=body)


@asynccontextmanager
async def api_for(
    database_url: str,
    *,
    api_settings: dict[str, Any] | None = None,
    console_settings: dict[str, Any] | None = None,
    finance_settings: dict[str, Any] | None = None,
    extra_keys: dict[str, tuple[str, str]] | None = None,
    seal_settings: SealSettings | None = None,
    **generation: Any,
) -> AsyncIterator[Api]:
    """The app in process with a key per role (named `test-{role}`), plus `extra_keys` ({who: (role, name)}:
    more people, such as a second support person)."""
    app = create_app(
        settings_for(
            database_url,
            api_settings=api_settings,
            console_settings=console_settings,
            finance_settings=finance_settings,
            seal_settings=seal_settings,
            **generation,
        )
    )
    connection = await asyncpg.connect(database_url)
    try:
        keys = {role: (await create_key(connection, role=role, name=f"test-{role}")).key for role in ROLES}
        for who, (role, name) in (extra_keys or {}).items():
            keys[who] = (await create_key(connection, role=role, name=name)).key
    finally:
        await connection.close()
    async with AsyncTestClient(app=app) as client:
        yield Api(client, keys)
