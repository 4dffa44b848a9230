"""The `moments` command: dev, migrate, serve, worker, keys (list, create, revoke, rotate), audit, export,
stripe (failed, reapply), seal-key, verify."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg

T = TypeVar("T")
API_PORT_DEFAULT = 8000
WORKER_PORT_DEFAULT = 8100
CONNECT_TIMEOUT_S = 10
KEYS_PAGE_SIZE = 500
STRIPE_EVENTS_LISTED_DEFAULT = 100
MOMENTS_APP = "entitlements.app:create_app_from_env"
# Chosen by measurement on a 2-core machine with PostgreSQL beside the API (docs/performance.md).
SERVE_WORKERS_DEFAULT = 1
SERVE_RUNTIME_THREADS_DEFAULT = 1


class CommandFailed(Exception):
    """Said in one line on stderr; the command exits 1."""


def _database_url() -> str:
    from entitlements.dev import DatabaseNotFound, database_url

    try:
        return database_url()
    except DatabaseNotFound as missing:
        raise CommandFailed(f"{missing}; set it, or start `make run` first") from None


def _direct_database_url() -> str:
    """DATABASE_DIRECT_URL when set: the commands take session-level locks (migrations), run long reads
    (audit, export) or prepare statements, none of which belongs on a transaction-mode pooler."""
    return os.environ.get("DATABASE_DIRECT_URL", "").strip() or _database_url()


def _against_database(run: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    """Runs `run` with the database's direct URL, turning 'it does not answer' into one line."""
    url = _direct_database_url()
    try:
        return asyncio.run(run(url))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        host = url.split("@")[-1]
        raise CommandFailed(f"the database at {host} does not answer ({type(error).__name__}: {error})") from None


def _on_database(use: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Runs `use` on a one-connection pool to the database."""

    async def run(url: str) -> T:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1, timeout=CONNECT_TIMEOUT_S)
        assert pool is not None
        try:
            return await use(pool)
        finally:
            await pool.close()

    return _against_database(run)


def cmd_migrate(_: argparse.Namespace) -> int:
    import migrations

    applied = _against_database(migrations.apply)
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none missing'}")
    return 0


def _print_created(created: object) -> None:
    from entitlements.keys import KeyCreated

    assert isinstance(created, KeyCreated)
    key = created.api_key
    print(f"created key {key.id} ({key.name}) with role {key.role}; store it now, it is not shown again:")
    print(created.key)


def cmd_keys_create(args: argparse.Namespace) -> int:
    from entitlements.keys import create_key

    name = args.name or f"{args.role}-key"
    if not 1 <= len(name) <= 200:
        raise CommandFailed("--name must be 1-200 characters")
    _print_created(_on_database(lambda pool: create_key(pool, role=args.role, name=name)))
    return 0


def cmd_keys_list(_: argparse.Namespace) -> int:
    from entitlements.keys import KeyOut, list_keys

    async def every_key(pool: asyncpg.Pool) -> list[KeyOut]:
        keys: list[KeyOut] = []
        cursor: str | None = None
        while True:
            page = await list_keys(pool, limit=KEYS_PAGE_SIZE, cursor=cursor)
            keys += page.items
            if page.next_cursor is None:
                return keys
            cursor = page.next_cursor

    def when(value: datetime | None) -> str:
        return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"

    print(f"{'id':>5}  {'role':<8} {'prefix':<11} {'name':<24} {'created':<20} {'last used':<20} revoked")
    for key in _on_database(every_key):
        print(
            f"{key.id:>5}  {key.role:<8} {key.prefix:<11} {key.name[:24]:<24} {when(key.created_at):<20} "
            f"{when(key.last_used_at):<20} {when(key.revoked_at)}"
        )
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from entitlements.keys import revoke_key

    key = _on_database(lambda pool: revoke_key(pool, args.id))
    print(f"key {key.id} ({key.name}, {key.role}) is revoked; every process refuses it from its next request")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from entitlements.keys import rotate_key

    _print_created(_on_database(lambda pool: rotate_key(pool, args.id)))
    print(f"(key {args.id} is revoked)", file=sys.stderr)
    return 0


def cmd_audit(_: argparse.Namespace) -> int:
    import ledger
    from entitlements.app import EXTRA_AUDIT_CHECKS

    async def audit(pool: asyncpg.Pool) -> ledger.AuditReport:
        async with pool.acquire() as connection:
            return await ledger.audit(connection, EXTRA_AUDIT_CHECKS)

    report = _on_database(audit)
    for check in report.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    print("audit passed" if report.ok else "audit FAILED")
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    """The same export as POST /v1/ledger/exports, to a file or stdout; the manifest goes to --manifest (or
    stderr), as JSON, so stdout carries the body alone."""
    from pathlib import Path

    import msgspec

    from entitlements import finance
    from entitlements.errors import ValidationFailed
    from entitlements.settings import FinanceSettings

    try:
        body = msgspec.convert(
            {
                "dataset": args.dataset,
                "format": args.format,
                "after": args.after,
                "since": args.since,
                "until": args.until,
            },
            finance.ExportCreate,
            strict=False,
        )
        request = finance.request_of(body)
    except (msgspec.ValidationError, ValidationFailed) as invalid:
        raise CommandFailed(str(getattr(invalid, "detail", invalid))) from None
    timeout_ms = FinanceSettings.from_env().export_statement_timeout_s * 1000

    async def export(pool: asyncpg.Pool) -> finance.Manifest:
        async with pool.acquire() as connection:
            if args.output == "-":
                stdout = sys.stdout.buffer

                async def write(chunk: bytes) -> None:
                    stdout.write(chunk)

                manifest = await finance.write_export(connection, request, write, statement_timeout_ms=timeout_ms)
                stdout.flush()
                return manifest
            return await finance.export_to_file(connection, request, Path(args.output), statement_timeout_ms=timeout_ms)

    manifest = msgspec.json.format(msgspec.json.encode(_on_database(export))).decode()
    if args.manifest:
        Path(args.manifest).write_text(manifest + "\n")
    else:
        print(manifest, file=sys.stderr)
    return 0


def cmd_seal_key(args: argparse.Namespace) -> int:
    from entitlements import seal
    from entitlements.settings import SealSettings

    out: Path | None = args.out or SealSettings.from_env().key_file
    if out is None:
        raise CommandFailed("say where to write the key: --out FILE (or set SEAL_KEY_FILE)")
    try:
        key = seal.create_key_file(out)
    except FileExistsError:
        raise CommandFailed(f"{out} exists; a signing key is never overwritten (choose another file)") from None
    except OSError as error:
        raise CommandFailed(f"cannot write {out}: {error.strerror}") from None
    print(f"wrote the seal's signing key to {out} (readable by you only); set SEAL_KEY_FILE={out}", file=sys.stderr)
    print(f"key id {key.key_id}; publish this public key (`moments verify --public-key` takes it):", file=sys.stderr)
    print(key.public_pem, end="")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from entitlements import seal
    from entitlements.settings import SealSettings

    if args.public_key:
        try:
            public_keys = seal.public_keys_from_files(args.public_key)
        except ValueError as error:
            raise CommandFailed(str(error)) from None
    else:
        signer = seal.signer_for(SealSettings.from_env())
        if not signer.public_keys:
            raise CommandFailed("no public key to check signatures with: give --public-key FILE (or set SEAL_KEY_FILE)")
        public_keys = signer.public_keys

    async def verify(pool: asyncpg.Pool) -> seal.Verification:
        async with pool.acquire() as connection:
            return await seal.verify(connection, public_keys)

    result = _on_database(verify)
    print(
        f"checked {result.transactions} transaction(s) at positions {result.first_position}-{result.last_position} "
        f"and {result.checkpoints} signed checkpoint(s) with key(s) {', '.join(sorted(public_keys))}"
    )
    if result.difference is not None:
        difference = result.difference
        print(f"FAILED ({difference.problem}): {difference.detail}")
        if difference.transaction_id is not None:
            print(f"first transaction that differs: {difference.transaction_id} (position {difference.position})")
        return 1
    print("the seal verifies: every hash, root and signature matches the ledger")
    return 0


def cmd_stripe_failed(args: argparse.Namespace) -> int:
    from entitlements import billing

    state: Literal["pending", "failed"] = "pending" if args.pending else "failed"
    page = _on_database(lambda pool: billing.list_events(pool, state, limit=args.limit, cursor=None))
    for event in page.items:
        print(f"{event.id}  {event.type}  created {event.created:%Y-%m-%d %H:%M:%S}  attempts {event.attempts}")
        print(f"    {event.last_error}")
    more = " (more: raise --limit)" if page.next_cursor else ""
    print(f"{len(page.items)} {state} Stripe event(s){more}")
    return 0


def cmd_stripe_reapply(args: argparse.Namespace) -> int:
    import getpass

    import ledger
    import pricing
    from entitlements import billing
    from entitlements.billing.schemas import StripeEventOut
    from entitlements.settings import StripeSettings, WebhookSettings

    settings = StripeSettings.from_env()
    # What the service's ledger transactions carry (entitlements/app.py), for the balance trigger.
    threshold = WebhookSettings.from_env().balance_low_threshold_moments
    transaction_settings = {"moments.balance_low_threshold_moments": str(threshold)}
    actor = f"cli:{getpass.getuser()}"

    async def reapply(pool: asyncpg.Pool) -> list[StripeEventOut]:
        # Events are applied in their own transactions with Ledger.execute_in: no group committer needed.
        gateway = billing.make_gateway(settings)
        try:
            led = ledger.Ledger(pool, transaction_settings=transaction_settings)
            catalog = pricing.load_catalog()
            return [
                await billing.reapply_event(pool, led, catalog, gateway, settings, event_id, actor=actor)
                for event_id in args.event_ids
            ]
        finally:
            if gateway is not None:
                await gateway.aclose()

    ended = _on_database(reapply)
    for event in ended:
        print(f"{event.id}: {event.state} ({event.outcome or event.last_error})")
    return 0 if all(event.state in {"applied", "applied_without_effect"} for event in ended) else 1


def serve_asgi(target: str, *, host: str, port: int, workers: int, runtime_threads: int = 1) -> None:
    """Serves an ASGI app factory with granian; the HTTP benchmark serves its bare app through this too,
    so both sides of its ratios run on the same server settings."""
    from granian import Granian
    from granian.constants import Interfaces

    from entitlements.settings import ApiSettings, ProcessSettings
    from generation_client.logs import granian_log_config

    Granian(
        target,
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        runtime_threads=runtime_threads,
        log_access=False,
        log_dictconfig=granian_log_config(ApiSettings.from_env().log_format),
        # A server process that has not stopped a second before SHUTDOWN_TIMEOUT_S is killed (the app's own
        # shutdown is bounded below that), so a stop never waits for a database or worker that does not answer.
        workers_kill_timeout=max(1, math.floor(ProcessSettings.from_env().shutdown_timeout_s - 1)),
    ).serve()


def cmd_serve(args: argparse.Namespace) -> int:
    os.environ["DATABASE_URL"] = _database_url()
    if args.no_dispatcher:
        os.environ["DISPATCHER_ENABLED"] = "false"
    serve_asgi(MOMENTS_APP, host=args.host, port=args.port, workers=args.workers)
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
    if args.instant:
        os.environ["WORKER_INSTANT"] = "true"
    serve(args.host, args.port, WorkerSettings.from_env())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from entitlements.dev import run_dev
    from entitlements.settings import ProcessSettings

    run_dev(
        api_port=args.port,
        worker_port=args.worker_port,
        shutdown_timeout_s=ProcessSettings.from_env().shutdown_timeout_s,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from entitlements.keys import ROLES

    parser = argparse.ArgumentParser(prog="moments", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="embedded database, migrations, worker and API for development")
    dev.add_argument("--port", type=int, default=int(os.environ.get("PORT", API_PORT_DEFAULT)))
    dev.add_argument("--worker-port", type=int, default=WORKER_PORT_DEFAULT)
    dev.set_defaults(handler=cmd_dev)

    migrate = commands.add_parser("migrate", help="apply migrations/ to DATABASE_DIRECT_URL, else DATABASE_URL")
    migrate.set_defaults(handler=cmd_migrate)

    serve = commands.add_parser("serve", help="the API, with the dispatcher and sweeper")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=API_PORT_DEFAULT)
    serve.add_argument("--workers", type=int, default=SERVE_WORKERS_DEFAULT, help="server processes")
    serve.add_argument("--no-dispatcher", action="store_true", help="serve the API only")
    serve.set_defaults(handler=cmd_serve)

    worker = commands.add_parser("worker", help="the bundled generation worker")
    worker.add_argument("--host", default="127.0.0.1")
    worker.add_argument("--port", type=int, default=WORKER_PORT_DEFAULT)
    worker.add_argument("--failure-rate", type=float, default=None)
    worker.add_argument("--latency-ms", type=int, default=None)
    worker.add_argument("--hang-rate", type=float, default=None)
    worker.add_argument("--instant", action="store_true", help="fault-free, every job done at once (benchmarks)")
    worker.set_defaults(handler=cmd_worker)

    keys = commands.add_parser("keys", help="API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; the raw key is the last line")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default=None)
    create.set_defaults(handler=cmd_keys_create)
    listing = key_commands.add_parser("list", help="every key: id, role, prefix, name, created, last used, revoked")
    listing.set_defaults(handler=cmd_keys_list)
    revoke = key_commands.add_parser("revoke", help="revoke a key at once, in every process")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(handler=cmd_keys_revoke)
    rotate = key_commands.add_parser("rotate", help="a new key of the same name and role; the old one revoked")
    rotate.add_argument("id", type=int)
    rotate.set_defaults(handler=cmd_keys_rotate)

    audit = commands.add_parser("audit", help="check every ledger invariant; exit 1 if any fails")
    audit.set_defaults(handler=cmd_audit)

    export = commands.add_parser(
        "export", help="export ledger transactions or postings in commit order, with a manifest (JSON)"
    )
    export.add_argument("--dataset", choices=("transactions", "postings"), default="transactions")
    export.add_argument("--format", choices=("csv", "ndjson"), default="csv")
    export.add_argument("--after", default=None, help="continue after this commit position (a manifest's through)")
    export.add_argument("--since", default=None, help="only transactions dated at or after (RFC 3339)")
    export.add_argument("--until", default=None, help="only transactions dated before (RFC 3339)")
    export.add_argument("--output", default="-", help="the file to write (default: stdout)")
    export.add_argument("--manifest", default=None, help="write the manifest here (default: stderr)")
    export.set_defaults(handler=cmd_export)
    seal_key = commands.add_parser("seal-key", help="create the seal's signing key; print its public key")
    seal_key.add_argument("--out", type=Path, default=None, help="where to write it (default: SEAL_KEY_FILE)")
    seal_key.set_defaults(handler=cmd_seal_key)
    verify = commands.add_parser(
        "verify", help="recompute the seal from the ledger, check every signature; exit 1 naming the first difference"
    )
    verify.add_argument(
        "--public-key",
        type=Path,
        action="append",
        default=[],
        help="a published public key (PEM); repeat for keys used before a rotation (default: SEAL_KEY_FILE's)",
    )
    verify.set_defaults(handler=cmd_verify)

    stripe_events = commands.add_parser("stripe", help="stored Stripe events")
    stripe_commands = stripe_events.add_subparsers(dest="stripe_command", required=True)
    failed = stripe_commands.add_parser("failed", help="events that ended failed, with why, oldest first")
    failed.add_argument("--pending", action="store_true", help="list the events not ended yet instead")
    failed.add_argument("--limit", type=_events_limit, default=STRIPE_EVENTS_LISTED_DEFAULT)
    failed.set_defaults(handler=cmd_stripe_failed)
    reapply = stripe_commands.add_parser(
        "reapply", help="apply failed (or pending) events again, now, after a fix; exit 1 unless all applied"
    )
    reapply.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
    reapply.set_defaults(handler=cmd_stripe_reapply)
    return parser


def _events_limit(raw: str) -> int:
    from entitlements.billing.service import EVENTS_PAGE_MAX

    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {raw!r}") from None
    if not 1 <= value <= EVENTS_PAGE_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {EVENTS_PAGE_MAX}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except CommandFailed as failed:
        print(f"moments: {failed}", file=sys.stderr)
        return 1
    except Exception as error:
        # Domain errors (an unknown key id, rotating a revoked key) are for the operator, in one line.
        from entitlements.errors import DomainError

        if isinstance(error, DomainError):
            print(f"moments: {error.detail}", file=sys.stderr)
            return 1
        raise
    return result


if __name__ == "__main__":
    sys.exit(main())
