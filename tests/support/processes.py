"""Real processes for tests: the bundled worker (`moments worker`) and the API (`moments serve`).

Each runs in its own session (process group) on a free loopback port, logs to a file, and is waited
for on /healthz with a bounded deadline. `stop()` terminates the whole group (granian's main process
and the server process it spawns), then kills it if it does not exit in time; `kill()` is the SIGKILL a
crash test needs. The context managers always stop what they started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from entitlements.dev.embedded_db import free_port
from entitlements.keys import ROLES, create_key
from tests.support.http import Api
from tests.support.pgbouncer import api_database_settings

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S_MAX = 30.0
SHUTDOWN_S_MAX = 15.0
HEALTH_POLL_S = 0.1
LOG_TAIL_CHARS = 4000
CLIENT_TIMEOUT_S = 30.0

# Settings inherited from the developer's shell must not leak into a test's processes.
_SETTING_NAMES = frozenset(
    {
        "DATABASE_URL",
        "DATABASE_REPLICA_URL",
        "DATABASE_DIRECT_URL",
        "DATABASE_POOL_MODE",
        "GENERATION_WORKER_URL",
        "VIDEO_DIR",
        "IMAGE_DIR",
        "HOLD_TTL_S",
        "JOB_LEASE_S",
        "RENDER_TIMEOUT_S",
        "GENERATION_ATTEMPTS_MAX",
        "SWEEP_INTERVAL_S",
        "LOG_FORMAT",
        "PAGE_SIZE_MAX",
        "PAGE_SIZE_DEFAULT",
        "SUPPORT_GRANT_MOMENTS_MAX",
        "SHUTDOWN_TIMEOUT_S",
        "PORT",
    }
)
_SETTING_PREFIXES = (
    "WORKER_",
    "DISPATCHER_",
    "RETRY_BACKOFF_",
    "DB_",
    "LEDGER_",
    "STRIPE_",
    "CONSOLE_",
    "APPROVAL_",
    "SUPPORT_GRANT_",
    "WEBHOOK_",
    "BALANCE_LOW_",
    "ADMISSION_",
    "VIDEO_STORE_",
    "EXPORT_",
)


def clean_environment(overrides: Mapping[str, str]) -> dict[str, str]:
    base = {
        name: value
        for name, value in os.environ.items()
        if name not in _SETTING_NAMES and not name.startswith(_SETTING_PREFIXES)
    }
    return base | {"LOG_FORMAT": "json"} | dict(overrides)


@dataclass
class RunningProcess:
    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def group_pids(self) -> set[int]:
        """Every live process of this process group (granian's main process and its server process)."""
        pids: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == self.process.pid:
                    pids.add(int(entry.name))
        return pids

    def wait_healthy(self, timeout_s: float = STARTUP_S_MAX) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode} before answering:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            time.sleep(HEALTH_POLL_S)
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout_s} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash: no shutdown code runs), and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=SHUTDOWN_S_MAX)
        self._wait_group_gone()

    def stop(self) -> None:
        """SIGTERM the group, wait a bounded time, then SIGKILL whatever is left of it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_S_MAX)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=SHUTDOWN_S_MAX)
        # A server process orphaned by its main process would keep its port and its database connections.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._wait_group_gone()

    def _wait_group_gone(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_S_MAX
        while self.group_pids() and time.monotonic() < deadline:
            time.sleep(0.05)


def _spawn(name: str, command: list[str], env: Mapping[str, str], log_dir: Path, port: int) -> RunningProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return RunningProcess(name=name, base_url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)


def start_worker(
    video_dir: Path,
    *,
    failure_rate: float | None = None,
    latency_ms: int | None = None,
    hang_rate: float | None = None,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    port: int | None = None,
) -> RunningProcess:
    """`moments worker` on a free port (or `port`: a restart where the old one was) with
    WORKER_VIDEO_DIR=video_dir; healthy when it returns (unless `wait` is false: then pass it to
    `running()`, which waits)."""
    port = port or free_port()
    command = [sys.executable, "-m", "entitlements.cli", "worker", "--host", "127.0.0.1", "--port", str(port)]
    for flag, value in (("--failure-rate", failure_rate), ("--latency-ms", latency_ms), ("--hang-rate", hang_rate)):
        if value is not None:
            command += [flag, str(value)]
    environment = clean_environment({"WORKER_VIDEO_DIR": str(video_dir), "WORKER_SEED": "1", **(env or {})})
    running = _spawn("worker", command, environment, video_dir.parent, port)
    if wait:
        _wait_or_stop(running)
    return running


def start_api(
    database_url: str,
    *,
    log_dir: Path,
    worker_url: str | None = None,
    video_dir: Path | None = None,
    dispatcher: bool = True,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
) -> RunningProcess:
    """`moments serve` on a free port against `database_url`; healthy when it returns.

    `env` sets further settings (JOB_LEASE_S, DISPATCHER_POLL_INTERVAL_S, RENDER_TIMEOUT_S, …).
    """
    port = free_port()
    command = [sys.executable, "-m", "entitlements.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not dispatcher:
        command.append("--no-dispatcher")
    # Through PgBouncer when the run says so (MOMENTS_TEST_PGBOUNCER, `make pgbouncer`).
    overrides = api_database_settings(database_url) | {"DB_POOL_SIZE_MAX": "10", "DB_POOL_SIZE_MIN": "1"}
    # Exports are written beside the process's log, never into the work tree.
    overrides["EXPORT_DIR"] = str(log_dir / "exports")
    if worker_url is not None:
        overrides["GENERATION_WORKER_URL"] = worker_url
    if video_dir is not None:
        overrides["VIDEO_DIR"] = str(video_dir)
    running = _spawn("api", command, clean_environment(overrides | dict(env or {})), log_dir, port)
    if wait:
        _wait_or_stop(running)
    return running


def _wait_or_stop(running: RunningProcess) -> None:
    try:
        running.wait_healthy()
    except BaseException:
        running.stop()
        raise


@contextmanager
def worker_process(video_dir: Path, **options: object) -> Iterator[RunningProcess]:
    running = start_worker(video_dir, **options)  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def api_process(database_url: str, **options: object) -> Iterator[RunningProcess]:
    running = start_api(database_url, **options)  # type: ignore[arg-type]
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def running(*processes: RunningProcess) -> Iterator[tuple[RunningProcess, ...]]:
    """Processes started with `wait=False` (so they boot in parallel): waits until each answers /healthz,
    and stops every one of them at the end, whatever happens."""
    try:
        for process in processes:
            process.wait_healthy()
        yield processes
    finally:
        for process in processes:
            process.stop()


async def create_role_keys(database_url: str) -> dict[str, str]:
    connection = await asyncpg.connect(database_url)
    try:
        return {role: (await create_key(connection, role=role, name=f"test-{role}")).key for role in ROLES}
    finally:
        await connection.close()


@asynccontextmanager
async def remote_api(base_url: str, keys: dict[str, str]) -> AsyncIterator[Api]:
    """The same `Api` helper as the in-process one, over real HTTP to a running `moments serve`."""
    async with httpx.AsyncClient(
        base_url=base_url, timeout=CLIENT_TIMEOUT_S, limits=httpx.Limits(max_connections=100)
    ) as client:
        yield Api(client, keys)  # type: ignore[arg-type]


def unused_worker_url() -> str:
    """A loopback URL where nothing listens (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"
