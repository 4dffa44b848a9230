"""The chaos suite (`-m chaos`; `make chaos` runs it alone): faults injected into real processes under a
steady load of generations. It has a PostgreSQL of its own, since it kills and freezes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.chaos import ChaosDatabase, chaos_database


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def chaos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosDatabase]:
    with chaos_database(tmp_path_factory.mktemp("chaos-pg")) as database:
        yield database


@pytest.fixture(scope="session")
async def chaos_db(chaos_server: ChaosDatabase) -> ChaosDatabase:
    await chaos_server.create_template()
    return chaos_server


@pytest.fixture
def chaos_dir(tmp_path: Path) -> Path:
    return tmp_path
