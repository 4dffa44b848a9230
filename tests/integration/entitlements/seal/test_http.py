"""The seal's endpoints through HTTP: status and lag, checkpoints, proofs (404, 409 until sealed), bounded
verification, /metrics and /readyz; with and without a signing key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from entitlements.seal import offline
from ledger import decode_position
from tests.support.http import Api, api_for
from tests.support.seal import new_key, seal_settings

WAIT_ROUNDS_MAX = 500


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    new_key(tmp_path)
    return tmp_path / "seal-key.pem"


@pytest.fixture
async def sealing(database_url: str, key_file: Path) -> AsyncIterator[Api]:
    settings = seal_settings(key_file=key_file, checkpoint_transactions=2, checkpoint_interval_s=0.05)
    async with api_for(database_url, seal_settings=settings) as api:
        yield api


@pytest.fixture
async def not_sealing(database_url: str) -> AsyncIterator[Api]:
    async with api_for(database_url, seal_settings=seal_settings()) as api:
        yield api


async def _grants(api: Api, count: int) -> list[int]:
    ids = []
    for n in range(count):
        response = await api.post(f"/v1/users/u{n}/grants", "support", {"moments": 5, "reason": "goodwill"}, f"g-{n}")
        assert response.status_code == 201, response.text
        ids.append(response.json()["transaction_id"])
    return ids


async def _sealed(api: Api) -> dict[str, Any]:
    """The seal's status once the background sealer has checkpointed everything committed."""
    for _ in range(WAIT_ROUNDS_MAX):
        status: dict[str, Any] = (await api.get("/v1/ledger/seal", "finance")).json()
        checkpoint = status["last_checkpoint"]
        position = status["sealed_through"]["position"]
        if status["lag"]["transactions"] == 0 and checkpoint and checkpoint["range"]["last_position"] == position:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"the sealer did not catch up: {status}")


async def test_the_sealer_runs_in_the_service_and_the_status_shows_it(sealing: Api) -> None:
    ids = await _grants(sealing, 5)
    status = await _sealed(sealing)
    assert status["sealed_through"]["position"] == 5
    assert status["sealed_through"]["transaction_id"] == ids[-1]
    # The feed's own cursor: an export can start right after the sealed position.
    assert decode_position(status["sealed_through"]["cursor"]).transaction_id == ids[-1]
    assert len(status["head"]) == 64
    assert status["format_version"] == 1
    assert status["lag"] == {"transactions": 0, "capped": False, "seconds": 0.0}
    signing = status["signing"]
    assert signing["sealing"]
    assert signing["detail"] is None
    assert "BEGIN PUBLIC KEY" in signing["public_key"]
    assert status["last_checkpoint"]["public_key_id"] == signing["key_id"]
    ready = (await sealing.client.get("/readyz")).json()
    assert (ready["status"], ready["seal"]) == ("ready", f"sealing (key {signing['key_id']})")


async def test_checkpoints_are_listed_in_pages(sealing: Api) -> None:
    await _grants(sealing, 5)
    await _sealed(sealing)
    first = (await sealing.get("/v1/ledger/checkpoints", "finance", limit=1)).json()
    assert [item["number"] for item in first["items"]] == [1]
    assert first["next"] == 1
    rest = (await sealing.get("/v1/ledger/checkpoints", "finance", after=first["next"], limit=200)).json()
    assert rest["next"] is None
    everything = first["items"] + rest["items"]
    assert [c["number"] for c in everything] == list(range(1, len(everything) + 1))
    assert everything[-1]["range"]["last_position"] == 5
    for item in everything:
        offline.checkpoint_from_json(item)  # the shape the offline verifier reads
    assert (await sealing.get("/v1/ledger/checkpoints", "finance", after=-1)).status_code == 422
    assert (await sealing.get("/v1/ledger/checkpoints", "finance", after="x")).status_code == 422


async def test_a_proof_verifies_with_the_published_key(sealing: Api) -> None:
    ids = await _grants(sealing, 5)
    status = await _sealed(sealing)
    public = offline.load_public_key(status["signing"]["public_key"].encode())
    for transaction_id in ids:
        response = await sealing.get(f"/v1/ledger/transactions/{transaction_id}/proof", "support")
        assert response.status_code == 200, response.text
        outcome = offline.verify_proof(json.loads(response.text), {offline.key_id(public): public})
        assert outcome.ok, outcome.problem
    assert (await sealing.get("/v1/ledger/transactions/999999/proof", "finance")).json()["code"] == "not_found"
    assert (await sealing.get("/v1/ledger/transactions/0/proof", "finance")).status_code == 422
    assert (await sealing.get(f"/v1/ledger/transactions/{1 << 53}/proof", "finance")).status_code == 422
    assert (await sealing.get(f"/v1/ledger/transactions/{ids[0]}/proof", "service")).status_code == 403


async def test_bounded_verification_through_http(sealing: Api) -> None:
    await _grants(sealing, 5)
    await _sealed(sealing)
    result = (await sealing.get("/v1/ledger/verify", "finance")).json()
    assert result["ok"]
    assert result["complete"]
    assert result["difference"] is None
    assert result["last_position"] == 5
    from_start = (await sealing.get("/v1/ledger/verify", "finance", checkpoint=1)).json()
    assert from_start["ok"]
    assert from_start["first_position"] == 1
    assert from_start["transactions"] == 5
    past = await sealing.get("/v1/ledger/verify", "finance", checkpoint=999)
    assert past.status_code == 404
    assert past.json()["code"] == "not_found"
    metrics = (await sealing.client.get("/metrics")).text
    assert "moments_seal_lag_transactions 0.0" in metrics
    assert "moments_seal_sealed_position 5.0" in metrics


async def test_without_a_key_nothing_is_sealed_and_the_service_says_so(not_sealing: Api) -> None:
    ids = await _grants(not_sealing, 3)
    status = (await not_sealing.get("/v1/ledger/seal", "finance")).json()
    assert status["sealed_through"] == {"position": 0, "transaction_id": None, "cursor": None}
    assert status["head"] is None
    assert status["last_checkpoint"] is None
    assert status["lag"]["transactions"] == 3
    assert status["lag"]["seconds"] >= 0
    assert not status["signing"]["sealing"]
    assert "SEAL_KEY_FILE" in status["signing"]["detail"]
    unsealed = await not_sealing.get(f"/v1/ledger/transactions/{ids[0]}/proof", "finance")
    assert unsealed.status_code == 409
    assert unsealed.json()["code"] == "not_sealed"
    assert "moments_seal_lag_transactions 3.0" in (await not_sealing.client.get("/metrics")).text
    verified = (await not_sealing.get("/v1/ledger/verify", "finance")).json()
    assert verified["ok"]
    assert verified["transactions"] == 0


async def test_only_finance_reads_the_seal(sealing: Api) -> None:
    for role in ("service", "support"):
        for path in ("/v1/ledger/seal", "/v1/ledger/checkpoints", "/v1/ledger/verify"):
            assert (await sealing.get(path, role)).status_code == 403
    assert (await sealing.get("/v1/ledger/seal", "admin")).status_code == 200
