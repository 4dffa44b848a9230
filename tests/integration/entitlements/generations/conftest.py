"""What the generation tests share: one bundled worker per module, rendering real videos."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.processes import RunningProcess, worker_process


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProcess]:
    with worker_process(tmp_path_factory.mktemp("worker") / "videos") as running:
        yield running
