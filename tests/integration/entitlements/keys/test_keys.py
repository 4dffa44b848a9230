"""API keys over HTTP and the command line: list, create, revoke, rotate; revocation seen at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from entitlements.keys import KEY_PREFIX
from entitlements.keys.cache import LISTENER_APPLICATION_NAME
from entitlements.keys.queries import COUNT_LISTENERS
from tests.support.http import Api, api_for
from tests.support.processes import create_role_keys, remote_api, running, start_api

MOMENTS_COMMAND = Path(sys.executable).parent / "moments"
CLI_TIMEOUT_S = 60


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url) as api:
        yield api


def bearer(raw_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw_key}"}


async def create(api: Api, role: str = "service", name: str = "app") -> dict[str, Any]:
    response = await api.post("/v1/keys", "admin", {"role": role, "name": name})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_an_admin_creates_a_key_shown_once_and_listed_without_its_secret(api: Api) -> None:
    created = await create(api, "support", "helpdesk")
    raw_key, key = created["key"], created["api_key"]
    assert raw_key.startswith(KEY_PREFIX)
    assert raw_key.startswith(key["prefix"])
    assert (key["role"], key["name"], key["revoked_at"], key["last_used_at"]) == ("support", "helpdesk", None, None)

    used = await api.client.get("/v1/users/alice/entitlements", headers=bearer(raw_key))
    assert used.status_code == 200, used.text

    listed = (await api.get("/v1/keys", "admin")).json()
    mine = next(item for item in listed["items"] if item["id"] == key["id"])
    assert raw_key not in str(listed)
    assert mine["last_used_at"] is not None
    assert set(mine) == {"id", "name", "role", "prefix", "created_at", "last_used_at", "revoked_at"}


async def test_a_revoked_key_is_refused_at_its_next_request_and_revoking_again_changes_nothing(api: Api) -> None:
    created = await create(api)
    raw_key, key_id = created["key"], created["api_key"]["id"]
    assert (await api.client.get("/v1/pricing", headers=bearer(raw_key))).status_code == 200

    revoked = await api.post(f"/v1/keys/{key_id}/revoke", "admin", None)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    refused = await api.client.get("/v1/pricing", headers=bearer(raw_key))
    assert refused.status_code == 401
    assert refused.json()["code"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"

    again = await api.post(f"/v1/keys/{key_id}/revoke", "admin", None)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]


async def test_rotating_gives_a_new_key_of_the_same_name_and_role_and_revokes_the_old(api: Api) -> None:
    created = await create(api, "finance", "books")
    old_key, old_id = created["key"], created["api_key"]["id"]

    rotated = await api.post(f"/v1/keys/{old_id}/rotate", "admin", None)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["key"] != old_key
    assert new["api_key"]["id"] != old_id
    assert (new["api_key"]["role"], new["api_key"]["name"]) == ("finance", "books")
    assert (await api.client.get("/v1/ledger/audit", headers=bearer(new["key"]))).status_code == 200
    assert (await api.client.get("/v1/ledger/audit", headers=bearer(old_key))).status_code == 401

    twice = await api.post(f"/v1/keys/{old_id}/rotate", "admin", None)
    assert twice.status_code == 409
    assert twice.json()["code"] == "conflict"


@pytest.mark.parametrize("action", ["revoke", "rotate"])
async def test_an_unknown_key_id_is_404_and_a_hostile_one_422(api: Api, action: str) -> None:
    missing = await api.post(f"/v1/keys/987654321/{action}", "admin", None)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    for hostile in ("0", "99999999999999999999999"):
        response = await api.post(f"/v1/keys/{hostile}/{action}", "admin", None)
        assert response.status_code in {404, 422}, response.text
        assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("role", ["service", "support", "finance"])
async def test_only_an_admin_manages_keys_and_the_403_names_admin(api: Api, role: str) -> None:
    response = await api.post("/v1/keys", role, {"role": "admin", "name": "escalate"})
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert response.json()["detail"].endswith("allowed: admin")
    assert (await api.get("/v1/keys", role)).status_code == 403


async def test_a_bad_role_lists_every_role_in_plain_text(api: Api) -> None:
    response = await api.post("/v1/keys", "admin", {"role": "root", "name": "x"})
    assert response.status_code == 422
    problem = response.json()
    assert problem["allowed"] == ["service", "support", "finance", "admin"]
    assert "role: must be one of service, support, finance, admin" in problem["detail"]


async def test_the_key_list_pages_with_a_cursor_and_refuses_a_forged_one(api: Api) -> None:
    for number in range(3):
        await create(api, name=f"paged-{number}")
    seen: list[int] = []
    cursor = None
    for _ in range(20):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/keys", "admin", **params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) >= 7
    forged = await api.get("/v1/keys", "admin", cursor="bm90LW91cnM")
    assert forged.status_code == 422
    assert forged.json()["errors"][0]["field"] == "cursor"


async def listeners(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval(COUNT_LISTENERS, LISTENER_APPLICATION_NAME)
    finally:
        await connection.close()
    return count


async def test_a_key_revoked_through_one_process_is_refused_by_another_at_once(
    database_url: str, tmp_path: Path
) -> None:
    keys = await create_role_keys(database_url)
    first = start_api(database_url, log_dir=tmp_path / "first", dispatcher=False, wait=False)
    second = start_api(database_url, log_dir=tmp_path / "second", dispatcher=False, wait=False)
    with running(first, second):
        # Both caches listening (each connects its listener beside serving): a process not listening yet
        # caches nothing, and one that revokes before its own listener is up cannot hear the others.
        for _ in range(1000):
            if await listeners(database_url) == 2:
                break
            await asyncio.sleep(0.01)
        async with remote_api(first.base_url, keys) as one, remote_api(second.base_url, keys) as other:
            created = await create(one)
            raw_key = created["key"]
            assert (await other.client.get("/v1/pricing", headers=bearer(raw_key))).status_code == 200
            assert (await one.post(f"/v1/keys/{created['api_key']['id']}/revoke", "admin", None)).status_code == 200
            assert (await other.client.get("/v1/pricing", headers=bearer(raw_key))).status_code == 401
    # Off a terminal every line a server writes, granian's own included, is JSON; no key appears in them.
    log_text = first.log_path.read_text()
    events = [json.loads(line) for line in log_text.splitlines() if line.strip()]
    assert any(event.get("event") == "request" for event in events)
    assert raw_key not in log_text


# --- the command line ---------------------------------------------------------------------------------


def moments(*args: str, cwd: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(MOMENTS_COMMAND), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )


async def cli(*args: str, cwd: Path, database_url: str | None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(moments, *args, cwd=cwd, database_url=database_url)


async def test_the_cli_lists_revokes_and_rotates_keys(database_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    created = await cli(
        "keys", "create", "--role", "support", "--name", "desk", cwd=tmp_path, database_url=database_url
    )
    assert created.returncode == 0, created.stderr
    key_id = await pool.fetchval("SELECT id FROM api_keys WHERE name = 'desk'")

    listed = await cli("keys", "list", cwd=tmp_path, database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "desk" in line)
    assert row.split()[:2] == [str(key_id), "support"]
    assert created.stdout.splitlines()[-1] not in listed.stdout

    rotated = await cli("keys", "rotate", str(key_id), cwd=tmp_path, database_url=database_url)
    assert rotated.returncode == 0, rotated.stderr
    new_key = rotated.stdout.splitlines()[-1]
    assert new_key.startswith(KEY_PREFIX)
    assert new_key != created.stdout.splitlines()[-1]
    rows = await pool.fetch(
        "SELECT id, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE name = 'desk' ORDER BY id"
    )
    assert [(r["id"] == key_id, r["revoked"]) for r in rows] == [(True, True), (False, False)]

    revoked = await cli("keys", "revoke", str(rows[1]["id"]), cwd=tmp_path, database_url=database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert await pool.fetchval("SELECT count(*) FROM api_keys WHERE name = 'desk' AND revoked_at IS NULL") == 0


async def test_the_cli_says_an_unknown_key_in_one_line(database_url: str, tmp_path: Path) -> None:
    for action in ("revoke", "rotate"):
        result = await cli("keys", action, "987654321", cwd=tmp_path, database_url=database_url)
        assert result.returncode == 1
        assert result.stderr.strip() == "moments: API key 987654321 does not exist"


async def test_the_cli_finds_the_dev_database_without_database_url(database_url: str, tmp_path: Path) -> None:
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "database-url").write_text(database_url + "\n")
    result = await cli("keys", "create", "--role", "finance", cwd=tmp_path, database_url=None)
    assert result.returncode == 0, result.stderr
    assert (await cli("audit", cwd=tmp_path, database_url=None)).returncode == 0


@pytest.mark.parametrize("command", [("audit",), ("keys", "list"), ("keys", "create", "--role", "admin"), ("migrate",)])
async def test_a_database_that_does_not_answer_is_one_line_not_a_traceback(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    from entitlements.dev.embedded_db import free_port

    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    result = await cli(*command, cwd=tmp_path, database_url=nobody)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not answer" in result.stderr
