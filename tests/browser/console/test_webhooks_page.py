"""The console's webhooks page in Chromium: an endpoint the running service disabled after a 410 Gone
shows as disabled with the reason, beside a healthy one; only admins see the page."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.browser.conftest import Console, require_chromium
from tests.browser.console.helpers import sign_in, unique
from tests.browser.console.test_console import _serious_violations
from tests.support.webhooks import Request, receiving

require_chromium()
WAIT_S_MAX = 30.0


async def gone(_request: Request) -> int:
    return 410


async def wait_status(console: Console, endpoint_id: int, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S_MAX
    while time.monotonic() < deadline:
        endpoint: dict[str, Any] = (await console.api.get(f"/v1/webhook-endpoints/{endpoint_id}", "admin")).json()
        if endpoint["status"] == status:
            return endpoint
        await asyncio.sleep(0.1)
    raise AssertionError(f"endpoint {endpoint_id} did not become {status} within {WAIT_S_MAX} s")


async def test_a_disabled_endpoint_shows_its_reason_and_only_admins_see_the_page(page: Any, console: Console) -> None:
    api = console.api
    async with receiving(gone) as gone_receiver, receiving() as healthy:
        ids = []
        for url, description in ((gone_receiver.url, "moved away"), (healthy.url, "analytics")):
            created = await api.post(
                "/v1/webhook-endpoints", "admin", {"url": url, "events": ["credit.granted"], "description": description}
            )
            assert created.status_code == 201, created.text
            ids.append(created.json()["endpoint"]["id"])
        gone_id, healthy_id = ids
        try:
            granted = await api.post(
                f"/v1/users/{unique('hooked')}/grants", "admin", {"moments": 5, "reason": "setup"}, unique("g")
            )
            assert granted.status_code == 201, granted.text
            disabled = await wait_status(console, gone_id, "disabled")
            await healthy.wait_for(1, WAIT_S_MAX)

            await sign_in(page, console, "admin")
            await page.click("nav >> text=Webhooks")
            await page.wait_for_url(console.url("/console/webhooks"))
            assert await page.get_attribute(f"#endpoint-{gone_id}", "data-status") == "disabled"
            assert await page.get_attribute(f"#endpoint-{healthy_id}", "data-status") == "enabled"
            reason = await page.inner_text(f"#endpoint-{gone_id} .disabled-reason")
            assert reason == disabled["disabled_reason"]
            assert "410" in reason
            assert "disabled" in await page.inner_text("#webhooks-summary")
            assert int(await page.get_attribute("#webhooks-summary", "data-disabled") or 0) >= 1
            assert await _serious_violations(page) == []
            await page.screenshot(path=str(console.screenshots / "webhooks-1280.png"), full_page=True)
            metrics = (await api.client.get("/metrics")).text
            assert 'moments_webhook_endpoints{status="disabled"}' in metrics
        finally:
            for endpoint_id in ids:
                await api.client.delete(f"/v1/webhook-endpoints/{endpoint_id}", headers=api.headers("admin"))

    await page.click("text=Sign out")
    await sign_in(page, console, "support")
    assert await page.locator("nav >> text=Webhooks").count() == 0
    response = await page.goto(console.url("/console/webhooks"))
    assert response.status == 403
