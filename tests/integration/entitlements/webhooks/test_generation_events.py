"""generation.succeeded, generation.failed and generation.refunded, from real renders (the bundled
`moments worker`) settled by the in-process dispatcher, delivered to a receiver on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from entitlements.webhooks import Deliverer
from tests.integration.entitlements.generations.test_generations import dispatching
from tests.integration.entitlements.webhooks.conftest import register
from tests.integration.entitlements.webhooks.test_delivery import events_by_user, run_until
from tests.support.generations import body, create_ok, fresh_key, premium_user, wait_final
from tests.support.processes import RunningProcess, unused_worker_url, worker_process
from tests.support.webhooks import Receiver

USER = "gen-user"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    with worker_process(tmp_path_factory.mktemp("webhook-worker") / "videos") as running:
        yield running


async def test_a_render_that_succeeds_then_is_refunded_tells_both_with_the_generation(
    database_url: str,
    worker: RunningProcess,
    tmp_path: Path,
    receiver: Receiver,
    make_deliverer: Callable[..., Deliverer],
) -> None:
    async with dispatching(database_url, worker.base_url, tmp_path / "videos") as api:
        created = await register(api, receiver.url, ["generation.succeeded", "generation.refunded"])
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        final = await wait_final(api, generation["id"])
        assert final["status"] == "succeeded"
        refund = await api.post(
            f"/v1/generations/{generation['id']}/refund", "support", {"reason": "blurry", "moments": 1}, fresh_key("r")
        )
        assert refund.status_code == 201, refund.text
        await run_until(make_deliverer(), lambda: len(receiver.accepted) == 2)
        succeeded, refunded = events_by_user(receiver.accepted, created["secret"])[USER]
        assert succeeded["type"] == "generation.succeeded"
        assert succeeded["data"] == {
            "generation_id": generation["id"],
            "image_id": generation["image_id"],
            "mode": "advanced",
            "resolution": "480p",
            "duration_s": 4,
            "audio": generation["audio"],
            "moments": generation["moments"],
            "price_version": generation["price_version"],
            "status": "succeeded",
            "error": None,
        }
        assert refunded["type"] == "generation.refunded"
        assert refunded["data"] == {
            "generation_id": generation["id"],
            "transaction_id": refund.json()["transaction_id"],
            "moments": 1,
            "reason": "blurry",
        }
        assert refunded["sequence"] > succeeded["sequence"]


async def test_a_render_that_fails_tells_generation_failed_with_the_error(
    database_url: str, tmp_path: Path, receiver: Receiver, make_deliverer: Callable[..., Deliverer]
) -> None:
    async with dispatching(
        database_url,
        unused_worker_url(),
        tmp_path / "videos",
        attempts_max=1,
        retry_backoff_base_s=0.05,
        retry_backoff_cap_s=0.1,
        worker_request_timeout_s=1.0,
    ) as api:
        created = await register(api, receiver.url, ["generation.failed"])
        await premium_user(api, USER, 1_000)
        generation = await create_ok(api, USER, body())
        assert (await wait_final(api, generation["id"]))["status"] == "failed"
        await run_until(make_deliverer(), lambda: len(receiver.accepted) == 1)
        (failed,) = events_by_user(receiver.accepted, created["secret"])[USER]
        assert failed["type"] == "generation.failed"
        assert failed["data"]["generation_id"] == generation["id"]
        assert failed["data"]["status"] == "failed"
        assert failed["data"]["error"].startswith("worker_unavailable")
