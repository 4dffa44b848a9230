from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from entitlements.dev import pgbouncer
from tests.support.database import (
    clone_database,
    create_template,
    drop_database,
    dsn_with_database,
    postgres_server,
)
from tests.support.pgbouncer import skip_reason, stop_all, through_pgbouncer
from tests.support.stripe_fake import FakeStripe, fake_stripe


def pytest_report_header() -> str | None:
    return "API processes reach PostgreSQL through PgBouncer (transaction mode)" if through_pgbouncer() else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A run asked to go through PgBouncer without one would test nothing of what it was asked.
    if through_pgbouncer() and not pgbouncer.installed():
        for item in items:
            item.add_marker(pytest.mark.skip(reason=skip_reason()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_all()
    # pytest already exits 5 when it collects nothing; say so loudly so nobody reads it as a pass.
    if session.testscollected == 0:
        print("\nERROR: no tests were collected; a test run that runs nothing is a failure.")
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def template_database(postgres_admin_dsn: str) -> str:
    return await create_template(postgres_admin_dsn)


@pytest.fixture
async def database_url(postgres_admin_dsn: str, template_database: str) -> AsyncIterator[str]:
    name = await clone_database(postgres_admin_dsn, template_database)
    yield dsn_with_database(postgres_admin_dsn, name)
    await drop_database(postgres_admin_dsn, name)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=30)
    assert created is not None
    yield created
    await created.close()


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    """The local fake Stripe (tests/support/stripe_fake.py) for a test whose service calls Stripe."""
    with fake_stripe() as server:
        yield server
