"""The console in a real browser: Playwright (Python) driving Debian's Chromium, one browser per session.

Playwright's own browser download cannot be used here (nothing beyond the package registries is
reachable), so the tests launch the system's Chromium (`/usr/bin/chromium`, or CHROMIUM_PATH). Without it
every browser test is skipped with one line saying what to install; `make test` installs it with apt when
it runs as root. Screenshots go to the test run's own temporary folder (printed at the end of the run),
never into the work tree.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from entitlements.keys import create_key
from entitlements.seal import create_key_file
from tests.support.database import clone_database, drop_database, dsn_with_database
from tests.support.http import Api
from tests.support.processes import RunningProcess, remote_api, running, start_api, start_worker

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SKIP_REASON = (
    f"browser tests need Debian's chromium at {CHROMIUM}: apt-get install chromium "
    "(make test installs it when run as root)"
)
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# Every wait for the page has this bound, so a console that never answers fails instead of hanging.
PAGE_TIMEOUT_MS = 15_000
# The people of these tests: two support staff (four eyes), finance, an admin and the product's service.
PEOPLE = {
    "support": ("support", "alice"),
    "second_support": ("support", "bob"),
    "finance": ("finance", "fiona"),
    "admin": ("admin", "ada"),
    "service": ("service", "app"),
}


@dataclass
class Console:
    base_url: str
    keys: dict[str, str]
    database_url: str
    api: Api
    screenshots: Path

    def url(self, path: str) -> str:
        return self.base_url + path


def chromium_installed() -> bool:
    return os.access(CHROMIUM, os.X_OK)


def require_chromium() -> None:
    """Skips the calling test module as a whole, so the run says once (one line) what to install."""
    if not chromium_installed():
        pytest.skip(SKIP_REASON, allow_module_level=True)


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not chromium_installed():
        pytest.skip(SKIP_REASON)
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium_path), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
async def console_database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres_admin_dsn, template_database)
    yield dsn_with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


@pytest.fixture(scope="session")
def console_processes(
    chromium_path: Path, console_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningProcess, RunningProcess]]:
    """`moments worker` and `moments serve` (with its dispatcher), as `make run` would start them."""
    folder = tmp_path_factory.mktemp("console-stack")
    # The seal runs as in production: a key outside the database, checkpoints every few transactions.
    create_key_file(folder / "seal-key.pem")
    worker = start_worker(folder / "worker-videos", wait=False)
    api = start_api(
        console_database_url,
        log_dir=folder,
        worker_url=worker.base_url,
        video_dir=folder / "videos",
        env={
            "DISPATCHER_POLL_INTERVAL_S": "0.05",
            "SWEEP_INTERVAL_S": "1",
            "SEAL_KEY_FILE": str(folder / "seal-key.pem"),
            "SEAL_CHECKPOINT_TRANSACTIONS": "5",
            "SEAL_CHECKPOINT_INTERVAL_S": "0.2",
            "SEAL_POLL_INTERVAL_S": "0.05",
        },
        wait=False,
    )
    with running(worker, api):
        yield worker, api


@pytest.fixture(scope="session")
async def console(
    console_processes: tuple[RunningProcess, RunningProcess],
    console_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Console]:
    _, api_process = console_processes
    connection = await asyncpg.connect(console_database_url)
    try:
        keys = {who: (await create_key(connection, role=role, name=name)).key for who, (role, name) in PEOPLE.items()}
    finally:
        await connection.close()
    screenshots = Path(os.environ.get("CONSOLE_SCREENSHOT_DIR") or tmp_path_factory.mktemp("console-screenshots"))
    screenshots.mkdir(parents=True, exist_ok=True)
    async with remote_api(api_process.base_url, keys) as api:
        yield Console(api_process.base_url, keys, console_database_url, api, screenshots)
    print(f"\nconsole screenshots: {screenshots}")


@pytest.fixture
async def context(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser profile (no cookies) at 1280 px."""
    created = await browser.new_context(viewport=DESKTOP)
    created.set_default_timeout(PAGE_TIMEOUT_MS)
    created.set_default_navigation_timeout(PAGE_TIMEOUT_MS)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
async def page(context: Any) -> Any:
    return await context.new_page()
