"""Admin endpoints for API keys: list, create, revoke, rotate."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.params import JSONBody, PathParameter

from entitlements.http import CursorQuery, KeyCacheOfProcess, PageLimit, Pool
from entitlements.keys import service
from entitlements.keys.schemas import KeyCreate, KeyCreated, KeyOut, KeysPage

# Ids stay within what a JSON number carries exactly (2**53 - 1), so any client can hold one.
KEY_ID_MAX = (1 << 53) - 1
KeyIdPath = Annotated[int, PathParameter(ge=1, le=KEY_ID_MAX, description="The key's id.")]


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    opt = {"roles": ("admin",)}

    @get(operation_id="listKeys", summary="Every API key (never the raw keys)")
    async def list_keys(self, pool: Pool, page_limit: PageLimit, cursor: CursorQuery = None) -> KeysPage:
        return await service.list_keys(pool, limit=page_limit, cursor=cursor)

    @post(operation_id="createKey", summary="Create a key; the raw key is in this answer only", status_code=201)
    async def create_key(self, pool: Pool, data: JSONBody[KeyCreate]) -> KeyCreated:
        return await service.create_key(pool, role=data.role, name=data.name)

    @post("/{key_id:int}/revoke", operation_id="revokeKey", summary="Revoke a key, at once", status_code=200)
    async def revoke_key(self, pool: Pool, key_cache: KeyCacheOfProcess, key_id: KeyIdPath) -> KeyOut:
        # Answered once every listening process has forgotten the key (keys/cache.py).
        async with key_cache.change_heard(key_id, pool):
            return await service.revoke_key(pool, key_id)

    @post(
        "/{key_id:int}/rotate",
        operation_id="rotateKey",
        summary="A new key of the same name and role; the old one is revoked",
        status_code=201,
    )
    async def rotate_key(self, pool: Pool, key_cache: KeyCacheOfProcess, key_id: KeyIdPath) -> KeyCreated:
        async with key_cache.change_heard(key_id, pool):
            return await service.rotate_key(pool, key_id)
