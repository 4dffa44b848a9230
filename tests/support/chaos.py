"""The chaos suite's tools: a PostgreSQL of its own to kill and freeze, a steady load of generations over
real HTTP, and the checks every fault ends with.

The load sends generations at a steady rate, each with its own Idempotency-Key, and keeps sending the same
request (after its Retry-After) while it is answered 503 or the connection fails, as a client would: so
every request ends accepted once, or refused with nothing held. Every answer is recorded, so a scenario
can say that the fault was answered 503, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions, free_port
from tests.support.processes import ROOT, clean_environment, create_role_keys

DATABASE = "moments"
SETTLE_S_MAX = 90.0
RECOVERY_S_MAX = 30.0
POLL_S = 0.2
REQUEST_TIMEOUT_S = 20.0
RETRY_AFTER_S_MAX = 2.0
USERS = tuple(f"chaos-user-{number}" for number in range(4))
GRANT_MOMENTS = 10_000_000
# 480p, 4 s, no audio: the cheapest render (about half a second of CPU).
REQUEST = {
    "image_id": "img-chaos",
    "prompt": "a slow wave",
    "mode": "advanced",
    "resolution": "480p",
    "duration_s": 4,
    "audio": False,
}
# What every chaos API process runs with: faults found and recovered from in seconds, not minutes.
API_SETTINGS = {
    "HOLD_TTL_S": "90",
    "RENDER_TIMEOUT_S": "45",
    "JOB_LEASE_S": "3",
    "DISPATCHER_POLL_INTERVAL_S": "0.1",
    "SWEEP_INTERVAL_S": "0.5",
    "RETRY_BACKOFF_BASE_S": "0.2",
    "RETRY_BACKOFF_CAP_S": "1",
    "WORKER_RETRY_BUDGET_S": "60",
    "WORKER_REQUEST_TIMEOUT_S": "2",
    "DB_ACQUIRE_TIMEOUT_S": "1",
    "DB_STATEMENT_TIMEOUT_MS": "3000",
    "DB_CONNECT_TIMEOUT_S": "2",
    "API_KEY_CACHE_TTL_S": "0",
    "ADMISSION_REFRESH_S": "0.2",
    "ADMISSION_WINDOW_S": "10",
    # The faults are what is under test: the abuse limits (tested on their own) would answer the flood's
    # one service key with 429 before admission control is reached.
    "RATE_LIMITS_ENABLED": "false",
    "OPEN_GENERATIONS_PER_USER_MAX": "0",
    "SHUTDOWN_TIMEOUT_S": "4",
}
_keys = itertools.count(1)


class ChaosDatabase:
    """An embedded PostgreSQL that only this suite uses, on a fixed port (so the API's URL survives a
    restart), with every process of it found by its working directory (the data directory)."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "pg"
        # Durable: a killed server must keep what it committed (the books check would catch a lost commit).
        self.server = EmbeddedPostgres(
            self.data_dir, ServerOptions(durable=True, port=free_port(), max_connections=200)
        )

    def start(self) -> None:
        self.server.start()

    async def create_template(self) -> None:
        import migrations

        admin = await asyncpg.connect(self.server.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await admin.close()
        await migrations.apply(self.server.dsn_for(DATABASE))

    async def new_database(self) -> str:
        """A database of its own for one scenario, cloned from the migrated template."""
        name = f"chaos_{next(_keys)}"
        admin = await asyncpg.connect(self.server.dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{DATABASE}"')
        finally:
            await admin.close()
        return self.server.dsn_for(name)

    def pids(self) -> list[int]:
        return processes_in(self.data_dir.resolve())

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend at once: a crash, not a shutdown."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not self.pids(), "PostgreSQL outlived SIGKILL"

    def stall(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        # Its data is thrown away: no shutdown checkpoint to wait for.
        self.resume()
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` or below it."""
    found = []
    root = str(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if (cwd == root or cwd.startswith(root + "/")) and state != "Z":
                found.append(int(entry.name))
    return found


@dataclass
class Request:
    key: str
    user: str
    statuses: list[int | str] = field(default_factory=list)
    generation_id: str | None = None


@dataclass
class Load:
    """Generations at `rate_per_s` against the API URLs in turn, until `stop()`; then every request not yet
    accepted keeps trying until `drain_s` has passed."""

    urls: list[str]
    service_key: str
    rate_per_s: float
    drain_s: float = 30.0
    requests: list[Request] = field(default_factory=list)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self._stopping.set()

    def statuses(self) -> Counter[int | str]:
        return Counter(status for request in self.requests for status in request.statuses)

    def statuses_since(self, position: int) -> Counter[int | str]:
        return Counter(status for request in self.requests[position:] for status in request.statuses)

    def accepted(self) -> dict[str, Request]:
        return {request.generation_id: request for request in self.requests if request.generation_id}

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=httpx.Limits(max_connections=200)) as client:
            tasks: list[asyncio.Task[None]] = []
            turn = itertools.count()
            while not self._stopping.is_set():
                number = next(turn)
                request = Request(key=f"chaos-{os.getpid()}-{next(_keys)}", user=USERS[number % len(USERS)])
                self.requests.append(request)
                tasks.append(asyncio.create_task(self._send(client, request, number)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1 / self.rate_per_s)
            await asyncio.gather(*tasks)

    async def _send(self, client: httpx.AsyncClient, request: Request, number: int) -> None:
        deadline: float | None = None
        for attempt in itertools.count():
            url = self.urls[(number + attempt) % len(self.urls)]
            wait_s = 0.5
            try:
                response = await client.post(
                    f"{url}/v1/users/{request.user}/generations",
                    json=REQUEST,
                    headers={"Authorization": f"Bearer {self.service_key}", "Idempotency-Key": request.key},
                )
            except httpx.HTTPError as error:
                request.statuses.append(type(error).__name__)
            else:
                request.statuses.append(response.status_code)
                if response.status_code == 202:
                    request.generation_id = response.json()["id"]
                    return
                if response.status_code != 503:
                    return
                assert response.headers.get("retry-after", "").isdigit(), response.headers
                wait_s = min(float(response.headers["retry-after"]), RETRY_AFTER_S_MAX)
            if self._stopping.is_set():
                deadline = deadline or time.monotonic() + self.drain_s
                if time.monotonic() >= deadline:
                    return
            await asyncio.sleep(wait_s)


@asynccontextmanager
async def steady_load(urls: list[str], service_key: str, *, rate_per_s: float = 2.0) -> AsyncIterator[Load]:
    load = Load(urls=urls, service_key=service_key, rate_per_s=rate_per_s)
    task = asyncio.create_task(load.run())
    try:
        yield load
    finally:
        load.stop()
        await task


async def prepare_users(url: str, keys: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        for user in USERS:
            response = await client.put(f"/v1/users/{user}/subscription", headers=admin, json={"tier": "PREMIUM"})
            assert response.status_code == 200, response.text
            response = await client.post(
                f"/v1/users/{user}/grants",
                headers=admin | {"Idempotency-Key": f"chaos-grant-{user}"},
                json={"moments": GRANT_MOMENTS, "reason": "chaos"},
            )
            assert response.status_code == 201, response.text


async def keys_for(url: str) -> dict[str, str]:
    return await create_role_keys(url)


async def wait_until_settled(database_url: str) -> None:
    """Until no generation is queued or running (bounded: a generation left open fails the check)."""
    deadline = time.monotonic() + SETTLE_S_MAX
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            open_count = await connection.fetchval(
                "SELECT count(*) FROM generations WHERE status IN ('queued', 'running')"
            )
            if open_count == 0:
                return
            assert time.monotonic() < deadline, f"{open_count} generations still open after {SETTLE_S_MAX} s"
            await asyncio.sleep(POLL_S)
    finally:
        await connection.close()


async def check_books(database_url: str, load: Load) -> Counter[str]:
    """Every accepted generation final and settled once, nothing held for a refused request, each user's
    moments tied (granted = available + captured, nothing held), and `moments audit` clean. Returns the
    generations' final statuses."""
    await wait_until_settled(database_url)
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id::text, user_id, status, moments, error FROM generations")
        balances = {
            row["user_id"]: row
            for row in await connection.fetch("SELECT user_id, available, held FROM ledger_balances")
        }
        captured = {
            row["user_id"]: row["captured"]
            for row in await connection.fetch(
                "SELECT user_id, coalesce(sum(captured), 0) AS captured FROM ledger_holds GROUP BY user_id"
            )
        }
    finally:
        await connection.close()
    accepted = load.accepted()
    in_database = {row["id"]: row for row in rows}
    # Every answered generation exists, and every generation was answered to someone (a request whose answer
    # was lost is sent again with its key, and answered the same generation).
    assert set(accepted) == set(in_database), (set(accepted) ^ set(in_database), load.statuses())
    for user in USERS:
        balance = balances[user]
        assert balance["held"] == 0, (user, dict(balance))
        assert balance["available"] + captured.get(user, 0) == GRANT_MOMENTS, (user, dict(balance))
    audit = subprocess.run(
        [sys.executable, "-m", "entitlements.cli", "audit"],
        cwd=ROOT,
        env=clean_environment({"DATABASE_URL": database_url}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    return Counter(row["status"] for row in rows)


async def failure_reasons(database_url: str) -> Counter[str]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT error FROM generations WHERE status = 'failed'")
    finally:
        await connection.close()
    return Counter((row["error"] or "").partition(":")[0] for row in rows)


async def recovers(load: Load, url: str) -> float:
    """Seconds until a new generation is accepted and delivered again (bounded by RECOVERY_S_MAX); it joins
    the load's requests, so the books check counts it."""
    started = time.monotonic()
    key = f"chaos-recovery-{os.getpid()}-{next(_keys)}"
    request = Request(key=key, user=USERS[0])
    load.requests.append(request)
    service_key = load.service_key
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        headers = {"Authorization": f"Bearer {service_key}", "Idempotency-Key": key}
        while True:
            assert time.monotonic() - started < RECOVERY_S_MAX, f"not recovered within {RECOVERY_S_MAX} s"
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(f"/v1/users/{USERS[0]}/generations", json=REQUEST, headers=headers)
                request.statuses.append(response.status_code)
                assert response.status_code in {202, 503}, response.text
                if response.status_code == 202:
                    generation_id = request.generation_id = response.json()["id"]
                    read = await client.get(f"/v1/generations/{generation_id}", headers=headers)
                    if read.status_code == 200 and read.json()["status"] == "succeeded":
                        return time.monotonic() - started
            await asyncio.sleep(POLL_S)


@contextlib.contextmanager
def chaos_database(root: Path) -> Iterator[ChaosDatabase]:
    database = ChaosDatabase(root)
    database.start()
    try:
        yield database
    finally:
        database.destroy()
