"""What the console's browser tests do again and again: sign in, seed a user through the API, read figures."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from typing import Any

from tests.browser.conftest import Console
from tests.support.generations import body, wait_final

_numbers = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_numbers)}-{time.monotonic_ns() % 1_000_000}"


def figure(text: str) -> int:
    """A figure as the console prints it ("1,234", a minus sign and "50") as an integer."""
    cleaned = text.strip().replace(",", "").replace("\u2212", "-").replace("+", "")
    return int(cleaned)


async def sign_in(page: Any, console: Console, who: str, *, path: str = "/console") -> None:
    await page.goto(console.url(path))
    await page.fill("#api_key", console.keys[who])
    await page.click("form[action='/console/sign-in'] button[type=submit]")
    await page.wait_for_url(re.compile(re.escape(console.base_url) + r"/console"))
    assert await page.locator("button", has_text="Sign out").count() == 1


async def premium_user_with_videos(console: Console, user: str, *, moments: int, videos: int) -> list[dict[str, Any]]:
    """A PREMIUM user with `moments` granted by the admin and `videos` delivered 480p 4 s videos."""
    api = console.api
    assert (await api.put(f"/v1/users/{user}/subscription", "admin", {"tier": "PREMIUM"})).status_code == 200
    granted = await api.post(f"/v1/users/{user}/grants", "admin", {"moments": moments, "reason": "setup"}, unique("g"))
    assert granted.status_code == 201, granted.text
    created = []
    for number in range(videos):
        response = await api.post(f"/v1/users/{user}/generations", "service", body(f"img-{number}"), unique("gen"))
        assert response.status_code == 202, response.text
        created.append(response.json())
    finished = await asyncio.gather(*(wait_final(api, generation["id"]) for generation in created))
    assert all(generation["status"] == "succeeded" for generation in finished), finished
    return list(finished)


async def entitlements(console: Console, user: str) -> dict[str, Any]:
    response = await console.api.get(f"/v1/users/{user}/entitlements", "support")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def ledger_items(console: Console, user: str) -> list[dict[str, Any]]:
    response = await console.api.get(f"/v1/users/{user}/ledger", "support", limit=200)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items
