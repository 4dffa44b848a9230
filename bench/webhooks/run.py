"""The outgoing-webhook benchmark, against one embedded PostgreSQL server and real `moments serve`
processes (the HTTP benchmark's machinery: its servers, wrk, its request scenarios):

(rate)  events delivered per second to a fast receiver on loopback: a backlog of credit.granted events
        (grants made through the API with wrk while no deliverer runs) drained by a serve process's
        deliverers; beside it, the rate the same API created them (delivered/created >= 1 means delivery
        keeps up with the busiest event source);
(idle)  the delay from an event's commit to its delivery, p50 and p99, with nothing else running: a
        trickle of grants, each one event;
(load)  the same delay under the HTTP benchmark's generation load (wrk POST /v1/users/{id}/generations
        over many users) with the trickle beside it; the ratio load/idle says what the load costs.

The delay is the receiver's clock at receipt minus the event's `sequenced_at`, stamped by the database
just before the commit (one machine, one clock). Every event must arrive: the run fails otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx

import migrations
from bench.http import wrk
from bench.http.run import MOMENTS_APP, USER_FUNDS, Server, fund, moments_env, running, scenarios, seed, serve_defaults
from bench.ledger.run import create_databases, machine, postmaster_pid, progress
from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions

DATABASE = "moments_webhooks_bench"
T = TypeVar("T")
DRAIN_TIMEOUT_S = 300.0
TRICKLE_USERS = 50
GOAL_RATE_OVER_CREATION = 1.0


@dataclass
class Report:
    options: dict[str, object]
    machine: dict[str, object]
    created_per_s: float = 0.0
    backlog: int = 0
    delivered_per_s: float = 0.0
    idle: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)
    generations_per_s: float = 0.0
    missing: int = 0
    duplicates: int = 0
    total_s: float = 0.0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.webhooks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=int, default=10, help="measured seconds per figure (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--users", type=int, default=1000, help="users of the generation load (default 1000)")
    parser.add_argument("--trickle-per-s", type=float, default=20.0, help="events per second of the delay figures")
    parser.add_argument("--workers", type=int, default=None, help="granian workers (default: moments serve's)")
    parser.add_argument("--threads", type=int, default=None, help="granian runtime threads (default: serve's)")
    parser.add_argument("--fast", action="store_true", help="fsync off: quick iteration, not the honest figure")
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    options, _ = parser.parse_known_args(argv)
    return options


class Receiver:
    """A fast receiver: answers 204 at once and records each webhook-id with its time of receipt."""

    def __init__(self) -> None:
        self.received: list[tuple[str, float]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                received_at = time.time()
                length, message_id = 0, ""
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "webhook-id":
                        message_id = value.strip()
                await reader.readexactly(length)
                self.received.append((message_id, received_at))
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Side:
    """An event loop on its own thread, beside the blocking wrk runs: the receiver and the trickle."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def start(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


async def trickle(base_url: str, admin_key: str, per_s: float, duration_s: float, tag: str) -> int:
    """Grants at a steady rate over a few users: one credit.granted event each."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    made = 0
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        started = time.monotonic()
        while time.monotonic() - started < duration_s:
            user = f"bench-trickle-{made % TRICKLE_USERS}"
            answer = await client.post(
                f"/v1/users/{user}/grants",
                json={"moments": 1, "reason": "bench event"},
                headers={"Idempotency-Key": f"{tag}-{made}"},
            )
            answer.raise_for_status()
            made += 1
            await asyncio.sleep(max(0.0, started + made / per_s - time.monotonic()))
    return made


async def register(base_url: str, admin_key: str, url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}) as client:
        answer = await client.post("/v1/webhook-endpoints", json={"url": url, "events": ["credit.granted"]})
        answer.raise_for_status()


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(sql, *args))
    finally:
        await connection.close()


def wait_for(receiver: Receiver, count: int, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while len(receiver.received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def delays(dsn: str, received: list[tuple[str, float]]) -> dict[str, float]:
    """p50 and p99 of receipt minus commit, in milliseconds, over the events received."""
    first_receipt: dict[int, float] = {}
    for message_id, at in received:
        first_receipt.setdefault(int(message_id.removeprefix("evt_")), at)
    rows = asyncio.run(
        fetch(
            dsn,
            "SELECT id, extract(epoch FROM sequenced_at)::float8 AS at FROM webhook_events"
            " WHERE id = ANY($1::bigint[])",
            list(first_receipt),
        )
    )
    values = [(first_receipt[row["id"]] - row["at"]) * 1000 for row in rows]
    return {"events": float(len(values)), "p50_ms": percentile(values, 0.5), "p99_ms": percentile(values, 0.99)}


def load(wrk_path: str, url: str, request: wrk.Request, work_dir: Path, options: argparse.Namespace) -> wrk.WrkResult:
    """One wrk run of the HTTP benchmark's kind: `options.connections` for `options.duration_s`."""
    return wrk.run(
        wrk_path,
        url,
        request,
        run_id=f"wh{uuid.uuid4().hex[:6]}",
        work_dir=work_dir,
        duration_s=options.duration_s,
        connections=options.connections,
    )


def run(options: argparse.Namespace) -> Report:
    report = Report(
        options={k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}, machine=machine()
    )
    began = time.perf_counter()
    wrk_path = wrk.ensure_wrk()
    default_workers, default_threads = serve_defaults()
    workers, threads = options.workers or default_workers, options.threads or default_threads
    work_dir = Path(tempfile.mkdtemp(prefix="moments-bench-webhooks-"))
    database = EmbeddedPostgres(work_dir / "pg", ServerOptions(durable=not options.fast, max_connections=200))
    side = Side()
    receiver = Receiver()
    try:
        progress(f"starting embedded PostgreSQL in {work_dir} ({'fsync OFF' if options.fast else 'durable'})")
        database.start()
        report.machine["postgres"] = asyncio.run(create_databases(database.dsn, [DATABASE]))
        dsn = database.socket_dsn_for(DATABASE)
        asyncio.run(migrations.apply(dsn))
        postmaster_pid(database)
        users = [f"bench-u-{number}" for number in range(options.users)]
        keys = asyncio.run(seed(dsn, users))
        side.call(receiver.start())
        base_env = moments_env(dsn, work_dir, dispatcher=False) | {"WEBHOOK_ALLOW_PRIVATE_URLS": "true"}
        chosen = scenarios(keys, users, "bench-hot")

        # (rate): a backlog made through the API while no deliverer runs, then drained.
        quiet = Server(
            MOMENTS_APP,
            env=base_env | {"WEBHOOK_DELIVERER_ENABLED": "false"},
            workers=workers,
            threads=threads,
            log_path=work_dir / "quiet.log",
        )
        with running(quiet, "/readyz"):
            progress(f"funding {len(users):,} users (PREMIUM, moments through grants)")
            asyncio.run(fund(quiet.url, keys.admin, users, USER_FUNDS))
            asyncio.run(register(quiet.url, keys.admin, receiver.url))
            _, _, grants = chosen["grants"]
            progress(f"backlog: POST grants with wrk, {options.connections} connections, {options.duration_s} s")
            report.created_per_s = load(wrk_path, quiet.url, grants, work_dir, options).per_s
        (backlog,) = asyncio.run(fetch(dsn, "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'pending'"))
        report.backlog = backlog["n"]
        # The shipped settings: the delay figures include WEBHOOK_POLL_INTERVAL_S's default.
        delivering = Server(
            MOMENTS_APP,
            env=base_env,
            workers=workers,
            threads=threads,
            log_path=work_dir / "delivering.log",
        )
        with running(delivering, "/readyz"):
            progress(f"draining {report.backlog:,} events to the receiver")
            wait_for(receiver, report.backlog)
            stamps = [at for _, at in receiver.received]
            span_s = max(stamps) - min(stamps) if len(stamps) > 1 else 0.0
            report.delivered_per_s = (len(stamps) - 1) / span_s if span_s else 0.0

            # (idle) and (load): the commit-to-delivery delay of a trickle of events.
            for name, with_load in (("idle", False), ("load", True)):
                before = len(receiver.received)
                progress(f"delay {name}: {options.trickle_per_s:g} events/s for {options.duration_s} s")
                future = side.start(
                    trickle(
                        delivering.url,
                        keys.admin,
                        options.trickle_per_s,
                        options.duration_s,
                        f"{name}-{uuid.uuid4().hex[:6]}",
                    )
                )
                if with_load:
                    _, _, generations = chosen["generations"]
                    report.generations_per_s = load(wrk_path, delivering.url, generations, work_dir, options).per_s
                count = future.result(timeout=options.duration_s + 120)
                wait_for(receiver, before + count, 60)
                figure = delays(dsn, receiver.received[before:])
                setattr(report, name, figure | {"sent": float(count)})
        ids = [message_id for message_id, _ in receiver.received]
        (expected,) = asyncio.run(fetch(dsn, "SELECT count(*) AS n FROM webhook_deliveries"))
        report.missing = expected["n"] - len(set(ids))
        report.duplicates = len(ids) - len(set(ids))
    finally:
        side.close()
        database.destroy()
        shutil.rmtree(work_dir, ignore_errors=True)
    report.total_s = time.perf_counter() - began
    return report


def render(report: Report) -> str:
    idle, load = report.idle, report.load
    ratio_rate = report.delivered_per_s / report.created_per_s if report.created_per_s else 0.0
    ratio_delay = load.get("p50_ms", 0.0) / idle["p50_ms"] if idle.get("p50_ms") else 0.0
    where = report.machine
    durability = "fsync OFF" if report.options.get("fast") else "durable"
    lines = [
        "",
        "Moments outgoing-webhook benchmark",
        f"  machine : {where.get('nproc')} CPUs ({where.get('cpu')}), PostgreSQL {where.get('postgres')}",
        f"  options : {report.options.get('duration_s')} s per figure, {report.options.get('connections')} wrk"
        f" connections, {durability}; whole run {report.total_s:.0f} s",
        "",
        f"  (rate) events delivered/s to a fast receiver   {report.delivered_per_s:>9,.0f}/s"
        f"  backlog of {report.backlog:,}, made at {report.created_per_s:,.0f} grants/s",
        f"         delivered / created                      {ratio_rate:>9.2f}   goal >= {GOAL_RATE_OVER_CREATION:g}",
        f"  (idle) commit to delivery, p50 / p99            {idle.get('p50_ms', 0):>7.1f} / "
        f"{idle.get('p99_ms', 0):.1f} ms  {idle.get('events', 0):.0f} events",
        f"  (load) the same under generation load           {load.get('p50_ms', 0):>7.1f} / "
        f"{load.get('p99_ms', 0):.1f} ms  {load.get('events', 0):.0f} events beside"
        f" {report.generations_per_s:,.0f} generations/s",
        f"         load / idle (p50)                        {ratio_delay:>9.2f}",
        f"  every event delivered: {'yes' if report.missing == 0 else f'NO, {report.missing} missing'};"
        f" sent twice: {report.duplicates}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    options = parse(argv)
    if options.duration_s < 1 or options.connections < 1 or options.users < 1 or options.trickle_per_s <= 0:
        print("--duration-s, --connections, --users and --trickle-per-s must be positive", file=sys.stderr)
        return 2
    report = run(options)
    print(render(report), flush=True)
    if options.json:
        options.json.write_text(json.dumps(asdict(report), indent=2))
    return 1 if report.missing else 0
