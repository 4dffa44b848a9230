"""The development stack: database, migrations, worker, API, and a development admin key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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
HEALTH_POLL_S = 0.2


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


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    if process.poll() is None:
        process.kill()


def run_dev(*, api_port: int, worker_port: int, serve: Callable[[str, int, int], None]) -> None:
    import migrations
    from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions

    DATA_DIR.mkdir(exist_ok=True)
    server: EmbeddedPostgres | None = None
    worker: subprocess.Popen[bytes] | None = None
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
        if not os.environ.get("GENERATION_WORKER_URL"):
            worker_url = f"http://127.0.0.1:{pick_port(worker_port)}"
            worker = subprocess.Popen(  # noqa: S603 - our own command
                [
                    sys.executable,
                    "-m",
                    "entitlements.cli",
                    "worker",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    worker_url.rsplit(":", 1)[1],
                ],
            )
            _wait_healthy(worker_url, worker, WORKER_START_TIMEOUT_S)
            os.environ["GENERATION_WORKER_URL"] = worker_url
        port = pick_port(api_port)
        api = f"http://127.0.0.1:{port}"
        print(
            "\nMoments is starting:\n"
            f"  API:      {api}\n"
            f"  console:  {api}/console   (sign in with the admin key below, or a support/finance key)\n"
            f"  OpenAPI:  {api}/schema/swagger\n"
            f"  worker:   {os.environ['GENERATION_WORKER_URL']}\n"
            f"  database: {url}   (kept in {DATABASE_URL_FILE}; `moments audit` and `moments keys` use it)\n"
            f"  admin key (development, also in {DEV_KEY_FILE}): {admin_key}\n"
            f"  seal key: {seal_key}   (`moments verify` with SEAL_KEY_FILE={seal_key} checks the seal)\n"
            f'  try: curl -H "Authorization: Bearer $(cat {DEV_KEY_FILE})" {api}/v1/pricing\n',
            flush=True,
        )
        serve("127.0.0.1", port, 1)
    finally:
        _stop(worker)
        if server is not None:
            server.stop()
