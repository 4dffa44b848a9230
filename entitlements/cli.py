"""The `moments` command: dev, migrate, serve, worker, keys create, audit."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

DATA_DIR = Path(".data")
DEV_KEY_FILE = DATA_DIR / "dev-admin-key"
API_PORT_DEFAULT = 8000
WORKER_PORT_DEFAULT = 8100
WORKER_START_TIMEOUT_S = 30


def _database_url_or_exit() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set (`moments dev` starts an embedded PostgreSQL instead)")
    return url


def cmd_migrate(_: argparse.Namespace) -> int:
    import migrations

    applied = asyncio.run(migrations.apply(_database_url_or_exit()))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none missing'}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from entitlements.auth import create_key

    async def create() -> tuple[int, str]:
        import asyncpg

        connection = await asyncpg.connect(_database_url_or_exit())
        try:
            return await create_key(connection, role=args.role, name=args.name or f"{args.role}-key")
        finally:
            await connection.close()

    try:
        key_id, raw_key = asyncio.run(create())
    except ValueError as invalid:
        print(f"error: {invalid}", file=sys.stderr)
        return 2
    print(f"created key {key_id} with role {args.role}; store it now, it is not shown again:")
    print(raw_key)
    return 0


def cmd_audit(_: argparse.Namespace) -> int:
    from entitlements.audit_cli import run_audit

    return asyncio.run(run_audit(_database_url_or_exit()))


def _serve(host: str, port: int, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "entitlements.app:create_app_from_env",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        log_access=False,
    ).serve()


def cmd_serve(args: argparse.Namespace) -> int:
    _database_url_or_exit()
    if args.no_dispatcher:
        os.environ["DISPATCHER_ENABLED"] = "false"
    _serve(args.host, args.port, args.workers)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from generation_client.worker import WorkerSettings, serve

    for name, value in (
        ("WORKER_FAILURE_RATE", args.failure_rate),
        ("WORKER_LATENCY_MS", args.latency_ms),
        ("WORKER_HANG_RATE", args.hang_rate),
    ):
        if value is not None:
            os.environ[name] = str(value)
    serve(args.host, args.port, WorkerSettings.from_env())
    return 0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _pick_port(preferred: int) -> int:
    if _port_free(preferred):
        return preferred
    from entitlements.embedded_db import free_port

    return free_port()


async def _ensure_dev_key(database_url: str) -> str:
    """Reuses the development admin key kept in .data/ while the database still knows it."""
    import asyncpg

    from entitlements.auth import create_key, hash_key

    connection = await asyncpg.connect(database_url)
    try:
        if DEV_KEY_FILE.exists():
            raw_key = DEV_KEY_FILE.read_text().strip()
            role = await connection.fetchval(
                "SELECT role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(raw_key)
            )
            if role == "admin":
                return raw_key
        _, raw_key = await create_key(connection, role="admin", name="dev-admin")
    finally:
        await connection.close()
    DEV_KEY_FILE.write_text(raw_key + "\n")
    DEV_KEY_FILE.chmod(0o600)
    return raw_key


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the process for {url} exited with status {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become healthy within {timeout_s} s")


def cmd_dev(args: argparse.Namespace) -> int:
    import migrations
    from entitlements.embedded_db import EmbeddedPostgres, ServerOptions

    DATA_DIR.mkdir(exist_ok=True)
    server: EmbeddedPostgres | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            server = EmbeddedPostgres(DATA_DIR / "pg", ServerOptions(durable=True))
            database_url = server.start()
            os.environ["DATABASE_URL"] = database_url
        asyncio.run(migrations.apply(database_url))
        admin_key = asyncio.run(_ensure_dev_key(database_url))

        worker_port = _pick_port(args.worker_port)
        worker_url = f"http://127.0.0.1:{worker_port}"
        if not os.environ.get("GENERATION_WORKER_URL"):
            worker = subprocess.Popen(  # noqa: S603 - our own command
                [
                    sys.executable,
                    "-m",
                    "entitlements.cli",
                    "worker",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(worker_port),
                ],
            )
            _wait_healthy(worker_url, worker, WORKER_START_TIMEOUT_S)
            os.environ["GENERATION_WORKER_URL"] = worker_url
        api_port = _pick_port(args.port)
        print(
            "\nMoments is starting:\n"
            f"  API:      http://127.0.0.1:{api_port}   (OpenAPI: http://127.0.0.1:{api_port}/schema)\n"
            f"  worker:   {os.environ['GENERATION_WORKER_URL']}\n"
            f"  database: {database_url}\n"
            f"  admin key (development): {admin_key}\n"
            f"  try: curl -H 'Authorization: Bearer {admin_key}' http://127.0.0.1:{api_port}/v1/pricing\n",
            flush=True,
        )
        _serve("127.0.0.1", api_port, 1)
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=10)
            if worker.poll() is None:
                worker.kill()
        if server is not None:
            server.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moments", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="embedded database, migrations, worker and API for development")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", API_PORT_DEFAULT)))
    dev.add_argument("--worker-port", type=int, default=WORKER_PORT_DEFAULT)
    dev.set_defaults(handler=cmd_dev)

    migrate = commands.add_parser("migrate", help="apply migrations/ to DATABASE_URL")
    migrate.set_defaults(handler=cmd_migrate)

    serve = commands.add_parser("serve", help="the API, with the dispatcher and sweeper")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=API_PORT_DEFAULT)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.add_argument("--no-dispatcher", action="store_true", help="serve the API only")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser("worker", help="the bundled generation worker")
    worker.add_argument("--host", default="127.0.0.1")
    worker.add_argument("--port", type=int, default=WORKER_PORT_DEFAULT)
    worker.add_argument("--failure-rate", type=float, default=None)
    worker.add_argument("--latency-ms", type=int, default=None)
    worker.add_argument("--hang-rate", type=float, default=None)
    worker.set_defaults(handler=cmd_worker)

    keys = commands.add_parser("keys", help="API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; the raw key is the last line")
    create.add_argument("--role", required=True, choices=["service", "support", "finance", "admin"])
    create.add_argument("--name", default=None)
    create.set_defaults(handler=cmd_keys_create)

    audit = commands.add_parser("audit", help="check every ledger invariant; exit 1 if any fails")
    audit.set_defaults(handler=cmd_audit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
