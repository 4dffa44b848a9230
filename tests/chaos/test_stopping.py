"""SIGTERM and SIGINT at several moments of `moments dev`'s start-up and under load, and of `moments serve`:
the command exits within SHUTDOWN_TIMEOUT_S (plus a second of slack, well under `docker stop`'s 10 s)
and leaves no process behind, the embedded PostgreSQL included.

`moments dev` runs in a folder of its own, so everything it started is found by its working directory
(the API and worker inherit it; PostgreSQL works in its data directory below it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from entitlements.dev.embedded_db import free_port
from tests.support.chaos import processes_in
from tests.support.processes import RunningProcess, clean_environment, start_api

SHUTDOWN_TIMEOUT_S = 4.0
EXIT_S_MAX = SHUTDOWN_TIMEOUT_S + 1.0
MOMENT_S_MAX = 60.0
POLL_S = 0.02
DEV_COMMAND = (sys.executable, "-m", "entitlements.cli", "dev")
REQUEST = {"image_id": "img-stop", "prompt": "a slow wave", "mode": "advanced", "resolution": "480p", "duration_s": 4}


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
    return False


class Dev:
    """One `moments dev` in `folder` on ports of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.api_port, self.worker_port = free_port(), free_port()
        self.log = folder / "dev.log"
        environment = clean_environment({"SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S), "LOG_FORMAT": "json"})
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*DEV_COMMAND, "--port", str(self.api_port), "--worker-port", str(self.worker_port)],
                cwd=folder,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def wait_for(self, moment: Callable[[Dev], bool]) -> None:
        deadline = time.monotonic() + MOMENT_S_MAX
        while not moment(self):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(POLL_S)

    def stop_with(self, signum: signal.Signals) -> float:
        started = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=EXIT_S_MAX * 3)
        finally:
            self.process.kill()
        return time.monotonic() - started

    def survivors(self) -> list[str]:
        found = []
        for pid in processes_in(self.folder.resolve()):
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:150]
                found.append(f"{pid}: {command!r}")
        return found

    def kill_survivors(self) -> None:
        for pid in processes_in(self.folder.resolve()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def launched(_: Dev) -> bool:
    return True


def database_starting(dev: Dev) -> bool:
    return (dev.folder / ".data" / "pg").exists()


def database_up(dev: Dev) -> bool:
    return (dev.folder / ".data" / "pg" / "postmaster.pid").exists()


def worker_up(dev: Dev) -> bool:
    return _answers(f"http://127.0.0.1:{dev.worker_port}")


def api_up(dev: Dev) -> bool:
    return _answers(dev.api)


def under_load(dev: Dev) -> bool:
    """The API answers, and generations are in flight (sent by the development admin key)."""
    if not api_up(dev):
        return False
    key = (dev.folder / ".data" / "dev-admin-key").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=dev.api, timeout=10, headers=headers) as client:
        assert client.put("/v1/users/stop-user/subscription", json={"tier": "PREMIUM"}).status_code == 200
        grant = client.post(
            "/v1/users/stop-user/grants",
            json={"moments": 100_000, "reason": "stop test"},
            headers={"Idempotency-Key": f"stop-grant-{time.monotonic_ns()}"},
        )
        assert grant.status_code == 201, grant.text
        for number in range(6):
            created = client.post(
                "/v1/users/stop-user/generations",
                json=REQUEST,
                headers={"Idempotency-Key": f"stop-{time.monotonic_ns()}-{number}"},
            )
            assert created.status_code == 202, created.text
    return True


MOMENTS = [launched, database_starting, database_up, worker_up, api_up, under_load]


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # One folder for every trial, as a developer's: the database is made once and restarted each time.
    folder = tmp_path_factory.mktemp("dev-stop")
    yield folder
    for pid in processes_in(folder.resolve()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# Each moment of start-up with one of the two signals (they alternate), and both under load: every
# moment and both signals are covered in seven starts rather than twelve.
TRIALS = [
    *((moment, (signal.SIGINT, signal.SIGTERM)[number % 2]) for number, moment in enumerate(MOMENTS[:-1])),
    (under_load, signal.SIGTERM),
    (under_load, signal.SIGINT),
]


@pytest.mark.parametrize(
    ("moment", "signum"), TRIALS, ids=[f"{moment.__name__}-{signum.name}" for moment, signum in TRIALS]
)
def test_moments_dev_stops_everything(dev_folder: Path, moment: Callable[[Dev], bool], signum: signal.Signals) -> None:
    dev = Dev(dev_folder)
    try:
        dev.wait_for(moment)
        elapsed_s = dev.stop_with(signum)
        # Whatever is still exiting gets a moment to be reaped by its parent before it counts.
        deadline = time.monotonic() + 1.0
        while dev.survivors() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert not dev.survivors(), dev.survivors()
        assert elapsed_s < EXIT_S_MAX, (elapsed_s, dev.log.read_text()[-3000:])
    finally:
        dev.kill_survivors()


def _log_says(api: RunningProcess, words: str) -> None:
    deadline = time.monotonic() + MOMENT_S_MAX
    while words not in api.log_tail():
        assert api.process.poll() is None, api.log_tail()
        assert time.monotonic() < deadline, api.log_tail()
        time.sleep(POLL_S)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("when", ["importing", "spawning", "serving"])
def test_moments_serve_stops_within_its_timeout(
    database_url: str, tmp_path: Path, signum: signal.Signals, when: str
) -> None:
    """Signal to granian's main process alone (as `docker stop` sends it): its server process and the
    app's shutdown are bounded too."""
    api = start_api(
        database_url,
        log_dir=tmp_path,
        worker_url=f"http://127.0.0.1:{free_port()}",
        video_dir=tmp_path / "videos",
        env={"SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S)},
        wait=when == "serving",
    )
    try:
        if when == "importing":
            time.sleep(0.3)
        elif when == "spawning":
            # granian's main process is up and its server process is building the app (pools, ledger).
            _log_says(api, "Spawning worker")
        started = time.monotonic()
        api.process.send_signal(signum)
        api.process.wait(timeout=EXIT_S_MAX * 3)
        elapsed_s = time.monotonic() - started
        deadline = time.monotonic() + 1.0
        while api.group_pids() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        assert not api.group_pids(), api.log_tail()
        assert elapsed_s < EXIT_S_MAX, (elapsed_s, api.log_tail())
    finally:
        api.stop()
