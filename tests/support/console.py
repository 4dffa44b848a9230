"""Signing in to the console through the in-process test client, and reading its forms."""

from __future__ import annotations

import re
from typing import Any

from tests.support.http import Api

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
IDEMPOTENCY = re.compile(r'name="idempotency_key" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, html[:2000]
    return found.group(1)


def idempotency_key_of(html: str, after: str = "") -> str:
    start = html.index(after) if after else 0
    found = IDEMPOTENCY.search(html, start)
    assert found, html[:2000]
    return found.group(1)


async def sign_in(api: Api, role: str, client: Any | None = None) -> str:
    """Signs the client in with the role's key; returns the session's CSRF token."""
    client = client or api.client
    page = await client.get("/console/sign-in")
    assert page.status_code == 200, page.text
    response = await client.post(
        "/console/sign-in",
        data={"api_key": api.keys[role], "csrf_token": csrf_of(page.text), "next": "/console"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console"
    home = await client.get("/console")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)
