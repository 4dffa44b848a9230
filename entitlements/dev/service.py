"""The development stack: database, migrations, worker, API, and a development admin key."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

DATA_DIR = Path(".data")
DEV_KEY_FILE = DATA_DIR / "dev-admin-key"
DATABASE_URL_FILE = DATA_DIR / "database-url"
DATABASE_PORT_FILE = DATA_DIR / "database-port"
# The seal's signing key of a development folder (production keeps its key outside the data directory).
DEV_SEAL_KEY_FILE = DATA_DIR / "seal-key.pem"
# Tried first for the embedded database; kept once chosen, so the printed URL stays true across restarts.
DATABASE_PORT_DEFAULT = 54329
WORKER_START_TIMEOUT_S = 30
API_START_TIMEOUT_S = 60
HEALTH_POLL_S = 0.2
SUPERVISE_POLL_S = 0.2
# Of SHUTDOWN_TIMEOUT_S, what the worker and the API get before SIGKILL; the database has the rest.
CHILDREN_SHARE = 0.6
# prctl(2): the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


class DatabaseNotFound(RuntimeError):
    """Neither DATABASE_URL nor a database started by `moments dev`."""


def database_url() -> str:
    """DATABASE_URL, else the URL of the database `moments dev` started in this folder."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    if DATABASE_URL_FILE.exists():
        return DATABASE_URL_FILE.read_text().strip()
    raise DatabaseNotFound("DATABASE_URL is not set and no `moments dev` database is recorded in .data/")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pick_port(preferred: int) -> int:
    if port_free(preferred):
        return preferred
    from entitlements.dev.embedded_db import free_port

    return free_port()


def _database_port() -> int:
    """The port this folder's database listens on: the one kept in .data/, or a new one kept from now on."""
    if DATABASE_PORT_FILE.exists() and DATABASE_PORT_FILE.read_text().strip().isdigit():
        kept = int(DATABASE_PORT_FILE.read_text().strip())
        # Busy but not by our own server (which would have a pid file): another program took it.
        if port_free(kept) or (DATA_DIR / "pg" / "postmaster.pid").exists():
            return kept
    port = pick_port(DATABASE_PORT_DEFAULT)
    DATABASE_PORT_FILE.write_text(f"{port}\n")
    return port


async def ensure_dev_key(url: str) -> str:
    """Reuses the development admin key kept in .data/ while the database still knows it."""
    from entitlements.keys import create_key, is_active_key_of_role

    connection = await asyncpg.connect(url)
    try:
        if DEV_KEY_FILE.exists():
            raw_key = DEV_KEY_FILE.read_text().strip()
            if await is_active_key_of_role(connection, raw_key, "admin"):
                return raw_key
        raw_key = (await create_key(connection, role="admin", name="dev-admin")).key
    finally:
        await connection.close()
    DEV_KEY_FILE.write_text(raw_key + "\n")
    DEV_KEY_FILE.chmod(0o600)
    return raw_key


def ensure_dev_seal_key() -> str:
    """The seal's signing key for `moments dev`: SEAL_KEY_FILE or SEAL_PRIVATE_KEY if set, else one kept
    in .data/ (made on the first run), so that a development service seals like a production one."""
    from entitlements.seal import create_key_file

    if os.environ.get("SEAL_PRIVATE_KEY"):
        return "SEAL_PRIVATE_KEY"
    path = Path(os.environ.get("SEAL_KEY_FILE") or DEV_SEAL_KEY_FILE)
    if not path.exists():
        create_key_file(path)
    os.environ["SEAL_KEY_FILE"] = str(path)
    return str(path)


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived: unwind from wherever start-up or serving is, then stop everything.
    A BaseException, so no `except Exception` on the way swallows it."""


def _request_stop(signum: int, _frame: object) -> None:
    # Later signals (a second Ctrl-C, systemd's repeat) must not interrupt the stop itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise StopRequested(signal.Signals(signum).name)


def _die_with_parent() -> None:
    """In a child, before exec: the kernel sends it SIGTERM if `moments dev` dies without stopping it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    # A session of its own: a Ctrl-C at the terminal reaches `moments dev` alone, which then stops the
    # children in order, the database last.
    return subprocess.Popen(  # noqa: S603 - our own command
        [sys.executable, "-m", "entitlements.cli", *command],
        start_new_session=True,
        preexec_fn=_die_with_parent,  # prctl only: safe between fork and exec
    )


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the process for {url} exited with status {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1.0).is_success:
                return
        time.sleep(HEALTH_POLL_S)
    raise SystemExit(f"{url} did not become healthy within {timeout_s} s")


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM to every process group at once (each finishes or hands back its work), SIGKILL to those
    still there after `timeout_s`, and every one reaped."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.01))
    for process in running:
        # The group too: granian's server process may outlive its main process.
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)


def _supervise(children: dict[str, subprocess.Popen[bytes]]) -> None:
    """Until a signal (StopRequested) or a child's unexpected end."""
    while True:
        for name, process in children.items():
            if process.poll() is not None:
                raise SystemExit(f"the {name} exited with status {process.returncode}; stopping everything")
        time.sleep(SUPERVISE_POLL_S)


def run_dev(*, api_port: int, worker_port: int, shutdown_timeout_s: float) -> None:
    """Database, migrations, development key, worker and API, until SIGTERM or SIGINT; then every process
    it started stops, the database last, within `shutdown_timeout_s` (start-up included)."""
    import migrations
    from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions

    previous = {signum: signal.signal(signum, _request_stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    DATA_DIR.mkdir(exist_ok=True)
    server: EmbeddedPostgres | None = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        url = os.environ.get("DATABASE_URL")
        if not url:
            server = EmbeddedPostgres(DATA_DIR / "pg", ServerOptions(durable=True, port=_database_port()))
            url = server.start()
            DATABASE_URL_FILE.write_text(url + "\n")
            os.environ["DATABASE_URL"] = url
        asyncio.run(migrations.apply(url))
        admin_key = asyncio.run(ensure_dev_key(url))
        seal_key = ensure_dev_seal_key()
        # A developer's webhook receiver runs on this machine: loopback receivers are allowed here.
        os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE_URLS", "true")
        if not os.environ.get("GENERATION_WORKER_URL"):
            worker_url = f"http://127.0.0.1:{pick_port(worker_port)}"
            children["worker"] = _spawn(["worker", "--host", "127.0.0.1", "--port", worker_url.rsplit(":", 1)[1]])
            _wait_healthy(worker_url, children["worker"], WORKER_START_TIMEOUT_S)
            os.environ["GENERATION_WORKER_URL"] = worker_url
        port = pick_port(api_port)
        api = f"http://127.0.0.1:{port}"
        children["API"] = _spawn(["serve", "--host", "127.0.0.1", "--port", str(port)])
        _wait_healthy(api, children["API"], API_START_TIMEOUT_S)
        print(
            "\nMoments is running:\n"
            f"  API:      {api}\n"
            f"  console:  {api}/console   (sign in with the admin key below, or a support/finance key)\n"
            f"  OpenAPI:  {api}/schema/swagger\n"
            f"  worker:   {os.environ['GENERATION_WORKER_URL']}\n"
            f"  database: {url}   (kept in {DATABASE_URL_FILE}; `moments audit` and `moments keys` use it)\n"
            f"  admin key (development, also in {DEV_KEY_FILE}): {admin_key}\n"
            f"  seal key: {seal_key}   (`moments verify` with SEAL_KEY_FILE={seal_key} checks the seal)\n"
            f'  try: curl -H "Authorization: Bearer $(cat {DEV_KEY_FILE})" {api}/v1/pricing\n'
            "  stop: Ctrl-C (or SIGTERM)\n",
            flush=True,
        )
        _supervise(children)
    except StopRequested as stop:
        print(f"moments dev: {stop}, stopping", file=sys.stderr, flush=True)
    finally:
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        started = time.monotonic()
        # The children first, with most of the time (the API hands its leases back to the database), then
        # the database with what is left.
        stop_processes(list(children.values()), shutdown_timeout_s * CHILDREN_SHARE)
        if server is not None:
            server.stop(timeout_s=max(shutdown_timeout_s - (time.monotonic() - started) - 1.0, 1.0))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
