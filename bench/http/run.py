"""The HTTP benchmark, in one run against one embedded PostgreSQL server:

- bare Litestar on the same stack and server settings (GET, and POST of a small msgspec body): the
  baseline of every ratio;
- Moments: GET /healthz, GET /v1/pricing, POST /v1/quotes, GET /v1/users/{id}/entitlements,
  POST /v1/users/{id}/grants, POST /v1/users/{id}/generations over many users and all on one user
  (dispatcher off, so only the request path is measured);
- GET entitlements and POST generations again through PgBouncer in transaction mode (when installed),
  each right after its direct figure (bench/http/through_pgbouncer.py);
- pgbench tpcb-like on the same server;
- the dispatcher's throughput with the bundled worker in its instant mode, beside the creation rate;
- a soak at half the measured peak with the dispatcher and worker on: RSS and p99 at its start and end.

After each round the audit must pass and every generation accepted must be in the database exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import migrations
from bench.http import floor, floors, through_pgbouncer, wrk
from bench.ledger import cpu
from bench.ledger.pgbench import Pgbench, PgbenchResult
from bench.ledger.run import create_databases, machine, median_of, postmaster_pid, progress
from entitlements.app import EXTRA_AUDIT_CHECKS
from entitlements.dev.embedded_db import EmbeddedPostgres, ServerOptions, free_port
from entitlements.keys import create_key

DATABASE = "moments_bench"
PGBENCH_DATABASE = "pgbench"
BARE_APP = "bench.http.bare:create_bare_app"
MOMENTS_APP = "entitlements.app:create_app_from_env"
USER_FUNDS = 100_000_000
HOT_USER_FUNDS = 100_000_000_000
READY_TIMEOUT_S = 60
DISPATCH_CONCURRENCY = 64
SETUP_CONCURRENCY = 32
GENERATION_BODY = (
    '{"image_id":"bench-{key}","prompt":"A slow push-in on a lighthouse at dusk, waves rolling below.",'
    '"mode":"advanced","resolution":"480p","duration_s":4,"audio":false}'
)
QUOTE_BODY = '{"mode":"advanced","resolution":"720p","duration_s":8,"audio":true}'
BARE_BODY = QUOTE_BODY
GRANT_BODY = '{"moments":5,"reason":"bench goodwill"}'

# Goals: each a ratio of a figure to a baseline measured in the same round (medians of the rounds).
GOALS = {
    "quotes": ("bare_post", 0.7),
    "entitlements": ("bare_post", 0.5),
    "pricing": ("bare_post", 0.5),
    "grants": ("bare_post", 0.5),
    "generations": ("bare_post", 0.5),
    "generations_hot": ("bare_post", 0.5),
    "generations_limited": ("generations", 0.8),
}
# The rate limits on, at rates no run reaches: what their check costs a generation request.
LIMITED_ENV = {
    "RATE_LIMITS_ENABLED": "true",
    "RATE_LIMIT_GENERATIONS_PER_S": "100000",
    "RATE_LIMIT_GENERATIONS_BURST": "1000000",
    "RATE_LIMIT_WRITES_PER_S": "100000",
    "RATE_LIMIT_WRITES_BURST": "1000000",
    "RATE_LIMIT_READS_PER_S": "100000",
    "RATE_LIMIT_READS_BURST": "1000000",
}
GOAL_GENERATIONS_OVER_TPCB = 1.0
GOAL_GENERATIONS_P99_MS = 50.0
GOAL_DISPATCH_OVER_CREATION = 0.5


@dataclass(frozen=True, kw_only=True)
class Figure:
    name: str
    label: str
    result: wrk.WrkResult
    server_cores: float
    postgres_cores: float
    wrk_cores: float
    machine_busy_cores: float

    @property
    def per_s(self) -> float:
        return self.result.per_s


@dataclass
class Report:
    options: dict[str, object]
    machine: dict[str, object]
    rounds: list[dict[str, Figure]] = field(default_factory=list)
    tpcb: list[PgbenchResult] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    consistent: bool = True
    dispatch: dict[str, float] = field(default_factory=dict)
    soak: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=int, default=10, help="measured seconds per figure (default 10)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians are shown (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--users", type=int, default=1000, help="users of the spread figures (default 1000)")
    parser.add_argument("--workers", type=int, default=None, help="granian workers (default: moments serve's)")
    parser.add_argument("--threads", type=int, default=None, help="granian runtime threads (default: serve's)")
    parser.add_argument("--soak-s", type=int, default=300, help="soak seconds at half the peak; 0 skips it")
    parser.add_argument("--dispatch-s", type=int, default=20, help="dispatcher figure seconds; 0 skips it")
    parser.add_argument(
        "--dispatch-concurrency",
        type=int,
        default=DISPATCH_CONCURRENCY,
        help=f"DISPATCHER_CONCURRENCY of the dispatcher and soak figures (default {DISPATCH_CONCURRENCY})",
    )
    parser.add_argument("--fast", action="store_true", help="fsync off: quick iteration, not the honest figure")
    parser.add_argument(
        "--only", action="append", help="run only these scenarios (repeatable; `floors` for all floor_ ones)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is not met")
    options, _ = parser.parse_known_args(argv)
    return options


class Server:
    """One granian server in its own process group, started the way `moments serve` starts."""

    def __init__(self, target: str, *, env: dict[str, str], workers: int, threads: int, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.http.serve", target, str(self.port), str(workers), str(threads)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str) -> None:
        wait_ready(self.url + path, self.process, self._log.name)

    def cpu_s(self) -> float:
        return cpu.postgres_cpu_s(self.process.pid)  # any process and its children, as for the postmaster

    def rss_mib(self) -> float:
        return process_tree_rss_mib(self.process.pid)

    def stop(self) -> None:
        stop(self.process)
        self._log.close()


class BouncedServer(Server):
    """The Moments server with its pools through PgBouncer; its CPU counts PgBouncer's process too."""

    def __init__(self, bouncer: through_pgbouncer.pgbouncer.PgBouncer, target: str, **server: Any) -> None:
        super().__init__(target, **server)
        self.bouncer = bouncer

    def cpu_s(self) -> float:
        return through_pgbouncer.cpu_s_with(super().cpu_s(), self.bouncer)


def wait_ready(url: str, process: subprocess.Popen[bytes], log_name: str) -> None:
    """Until `url` answers 200 (at most READY_TIMEOUT_S); a process that exits meanwhile is an error."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: its process exited ({process.returncode}); see {log_name}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within {READY_TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """The process and its group: asked to end, then killed after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def process_tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its live children (granian's workers), in MiB."""
    total_kib = 0
    for each in [pid, *cpu.child_pids(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


@contextmanager
def running(server: Server, ready_path: str) -> Iterator[Server]:
    try:
        server.wait_ready(ready_path)
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Keys:
    admin: str
    service: str


async def seed(dsn: str, users: list[str]) -> Keys:
    """Keys, straight into the database (as `moments keys create` does)."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        admin = await create_key(pool, role="admin", name="bench-admin")
        service = await create_key(pool, role="service", name="bench-service")
    finally:
        await pool.close()
    return Keys(admin=admin.key, service=service.key)


async def fund(base_url: str, admin_key: str, users: list[str], funds: int) -> None:
    """Every user PREMIUM with `funds` moments, through the API as an operator would."""
    headers = {"Authorization": f"Bearer {admin_key}"}
    limit = asyncio.Semaphore(SETUP_CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:

        async def one(user: str) -> None:
            async with limit:
                tier = await client.put(f"/v1/users/{user}/subscription", json={"tier": "PREMIUM"})
                tier.raise_for_status()
                grant = await client.post(
                    f"/v1/users/{user}/grants",
                    json={"moments": funds, "reason": "bench funds"},
                    headers={"Idempotency-Key": f"bench-funds-{user}"},
                )
                grant.raise_for_status()

        await asyncio.gather(*(one(user) for user in users))


def scenarios(keys: Keys, users: list[str], hot_user: str) -> dict[str, tuple[str, str, wrk.Request]]:
    """name → (which server, label, request). Grants go to users of their own: thousands of 5-moment lots
    on the generations' users would make every later hold read them all."""
    grant_users = [f"bench-grant-{number}" for number in range(len(users))]

    def generations(over: list[str]) -> wrk.Request:
        return wrk.Request(
            method="POST",
            path="/v1/users/{user}/generations",
            expected_status=202,
            headers=service | json_type | keyed,
            body=GENERATION_BODY,
            users=over,
        )

    service = {"Authorization": f"Bearer {keys.service}"}
    admin = {"Authorization": f"Bearer {keys.admin}"}
    json_type = {"Content-Type": "application/json"}
    keyed = {"Idempotency-Key": "{key}"}
    return {
        "bare_get": ("bare", "bare Litestar GET", wrk.Request(method="GET", path="/", expected_status=200)),
        "bare_post": (
            "bare",
            "bare Litestar POST (msgspec body)",
            wrk.Request(method="POST", path="/", expected_status=200, headers=json_type, body=BARE_BODY),
        ),
        "healthz": ("moments", "GET /healthz", wrk.Request(method="GET", path="/healthz", expected_status=200)),
        "pricing": (
            "moments",
            "GET /v1/pricing",
            wrk.Request(method="GET", path="/v1/pricing", expected_status=200, headers=service),
        ),
        "quotes": (
            "moments",
            "POST /v1/quotes",
            wrk.Request(
                method="POST", path="/v1/quotes", expected_status=200, headers=service | json_type, body=QUOTE_BODY
            ),
        ),
        "entitlements": (
            "moments",
            f"GET /v1/users/{{id}}/entitlements, {len(users):,} users",
            wrk.Request(
                method="GET", path="/v1/users/{user}/entitlements", expected_status=200, headers=service, users=users
            ),
        ),
        "grants": (
            "moments",
            f"POST /v1/users/{{id}}/grants, {len(users):,} users",
            wrk.Request(
                method="POST",
                path="/v1/users/{user}/grants",
                expected_status=201,
                headers=admin | json_type | keyed,
                body=GRANT_BODY,
                users=grant_users,
            ),
        ),
        "generations": ("moments", f"POST /v1/users/{{id}}/generations, {len(users):,} users", generations(users)),
        "generations_hot": ("moments", "POST /v1/users/{id}/generations, one user", generations([hot_user])),
        "generations_limited": (
            "limited",
            f"POST /v1/users/{{id}}/generations, {len(users):,} users, rate limits on",
            generations(users),
        ),
    }


def measure(
    name: str,
    label: str,
    server: Server,
    request: wrk.Request,
    *,
    wrk_path: str,
    options: argparse.Namespace,
    work_dir: Path,
    pg_pid: int | None,
    run_id: str,
) -> Figure:
    before = cpu.sample(pg_pid)
    server_before_s = server.cpu_s()
    result = wrk.run(
        wrk_path,
        server.url,
        request,
        run_id=run_id,
        work_dir=work_dir,
        duration_s=options.duration_s,
        connections=options.connections,
    )
    after = cpu.sample(pg_pid)
    usage = cpu.usage(before, after)
    wall_s = usage.wall_s
    return Figure(
        name=name,
        label=label,
        result=result,
        server_cores=(server.cpu_s() - server_before_s) / wall_s,
        postgres_cores=usage.postgres_cores,
        wrk_cores=result.cpu_s / wall_s,
        machine_busy_cores=usage.machine_busy_cores,
    )


async def check_database(dsn: str, run_ids: dict[str, str], accepted: dict[str, int], connections: int) -> list[str]:
    """The audit, and every accepted generation in the database exactly once: one row, one hold, one job and
    one stored answer per Idempotency-Key. wrk stops with up to `connections` requests in flight whose
    answers it drops, so the database may hold up to that many more than wrk counted."""
    from ledger import audit

    problems = []
    connection = await asyncpg.connect(dsn)
    try:
        report = await audit(connection, EXTRA_AUDIT_CHECKS)
        problems += [f"audit {check.name}: {check.detail}" for check in report.checks if not check.ok]
        for name, run_id in run_ids.items():
            row = await connection.fetchrow(
                """
                SELECT count(*) AS generations, count(DISTINCT g.image_id) AS keys,
                       count(DISTINCT g.hold_id) AS holds, count(j.generation_id) AS jobs
                FROM generations g LEFT JOIN generation_jobs j ON j.generation_id = g.id
                WHERE g.image_id LIKE $1
                """,
                f"bench-{run_id}-%",
            )
            stored = await connection.fetchval(
                "SELECT count(*) FROM api_idempotency "
                "WHERE operation = 'create_generation' AND idempotency_key LIKE $1",
                f"{run_id}-%",
            )
            assert row is not None
            found = row["generations"]
            if not (row["keys"] == found == row["holds"] == row["jobs"] == stored):
                problems.append(
                    f"{name}: {found} generations but {row['keys']} keys, {row['holds']} holds, {row['jobs']} jobs, "
                    f"{stored} stored answers"
                )
            if not accepted[name] <= found <= accepted[name] + connections:
                problems.append(f"{name}: wrk saw {accepted[name]} accepted, the database has {found}")
    finally:
        await connection.close()
    return problems


def moments_env(
    dsn: str, work_dir: Path, *, dispatcher: bool, worker_url: str | None = None, concurrency: int = 0
) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "DISPATCHER_ENABLED": "true" if dispatcher else "false",
        "LOG_FORMAT": "json",
        # Queued generations must outlive the whole run, so that the dispatcher figure finds them held.
        "HOLD_TTL_S": "86400",
        # The rounds fill the queue on purpose with nothing rendering: admission control would refuse them
        # past its floor. Its check still runs on every request (one cached read), only never refuses.
        "ADMISSION_QUEUE_DEPTH_MIN": "1000000",
        "ADMISSION_QUEUE_DEPTH_MAX": "1000000",
        "VIDEO_DIR": str(work_dir / "videos"),
        "PYTHONUNBUFFERED": "1",
        # The service itself is measured: one key sends everything, faster than any default allows, and
        # the generations stay queued (no dispatcher), far past the cap on a user's generations in
        # progress. The limits' own cost is the `generations_limited` figure (LIMITED_ENV).
        "RATE_LIMITS_ENABLED": "false",
        "OPEN_GENERATIONS_PER_USER_MAX": "0",
    }
    env.pop("GENERATION_WORKER_URL", None)
    if worker_url:
        env["GENERATION_WORKER_URL"] = worker_url
        # Renders in flight at once: the instant worker takes any number, as a fleet behind one URL would.
        env["DISPATCHER_CONCURRENCY"] = str(concurrency)
    return env


def serve_defaults() -> tuple[int, int]:
    from entitlements.cli import SERVE_RUNTIME_THREADS_DEFAULT, SERVE_WORKERS_DEFAULT

    return SERVE_WORKERS_DEFAULT, SERVE_RUNTIME_THREADS_DEFAULT


def run(options: argparse.Namespace) -> Report:
    report = Report(
        options={k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()}, machine=machine()
    )
    began = time.perf_counter()
    wrk_path = wrk.ensure_wrk()
    default_workers, default_threads = serve_defaults()
    workers = options.workers or default_workers
    threads = options.threads or default_threads
    report.options.update(workers=workers, threads=threads)
    work_dir = Path(tempfile.mkdtemp(prefix="moments-bench-http-"))
    database = EmbeddedPostgres(work_dir / "pg", ServerOptions(durable=not options.fast, max_connections=200))
    try:
        progress(f"starting embedded PostgreSQL in {work_dir} ({'fsync OFF' if options.fast else 'durable'})")
        database.start()
        report.machine["postgres"] = asyncio.run(create_databases(database.dsn, [DATABASE, PGBENCH_DATABASE]))
        dsn = database.socket_dsn_for(DATABASE)
        asyncio.run(migrations.apply(dsn))
        pg_pid = postmaster_pid(database)
        users = [f"bench-u-{number}" for number in range(options.users)]
        hot_user = "bench-hot"
        keys = asyncio.run(seed(dsn, users))
        assert database.port is not None
        pgbench = Pgbench(
            host=str(database.socket_dir or "127.0.0.1"),
            port=database.port,
            database=PGBENCH_DATABASE,
            work_dir=work_dir,
            postmaster_pid=pg_pid,
        )
        progress("pgbench -i -s 10")
        pgbench.initialize()
        env = moments_env(dsn, work_dir, dispatcher=False)
        bare = Server(BARE_APP, env=env, workers=workers, threads=threads, log_path=work_dir / "bare.log")
        moments = Server(MOMENTS_APP, env=env, workers=workers, threads=threads, log_path=work_dir / "moments.log")
        limited = Server(
            MOMENTS_APP, env=env | LIMITED_ENV, workers=workers, threads=threads, log_path=work_dir / "limited.log"
        )
        # The floors' own app and tables (bench/http/floor.py), in the same database.
        asyncio.run(floor.prepare(dsn, users, USER_FUNDS))
        floor_server = Server(
            floors.FLOOR_APP, env=env, workers=workers, threads=threads, log_path=work_dir / "floor.log"
        )
        servers = {"bare": bare, "moments": moments, "limited": limited, "floor": floor_server}
        # The floors right after the bare figures they are divided by, so the machine changes least between.
        moments_scenarios = scenarios(keys, users, hot_user)
        bare_scenarios = {name: each for name, each in moments_scenarios.items() if name.startswith("bare")}
        chosen = bare_scenarios | floors.scenarios(users) | moments_scenarios
        names = [
            name
            for name in chosen
            if not options.only
            or name in options.only
            or name.startswith("bare")
            or (name.startswith("floor_") and "floors" in options.only)
        ]
        bounced = contextlib.ExitStack()
        if through_pgbouncer.available():
            with contextlib.ExitStack() as starting:
                bouncer = starting.enter_context(through_pgbouncer.bouncer_for(dsn))
                bounced_env = through_pgbouncer.env_for(env, bouncer, dsn)
                log_path = work_dir / "moments-pgbouncer.log"
                server = BouncedServer(
                    bouncer, MOMENTS_APP, env=bounced_env, workers=workers, threads=threads, log_path=log_path
                )
                servers["pgbouncer"] = starting.enter_context(running(server, "/readyz"))
                bounced = starting.pop_all()
            for direct, variant in through_pgbouncer.VARIANTS.items():
                _, label, request = chosen[direct]
                chosen[variant] = ("pgbouncer", through_pgbouncer.labelled(label), request)
            names = [name for name in through_pgbouncer.figure_names(names) if name in chosen]
        else:
            progress(through_pgbouncer.skip_line())
        with (
            bounced,
            running(bare, "/"),
            running(moments, "/readyz"),
            running(limited, "/readyz"),
            running(floor_server, floors.READY_PATH),
        ):
            progress(f"funding {len(users):,} users and one hot user (PREMIUM, moments through grants)")
            asyncio.run(fund(moments.url, keys.admin, users, USER_FUNDS))
            asyncio.run(fund(moments.url, keys.admin, [hot_user], HOT_USER_FUNDS))
            asyncio.run(_vacuum(dsn))
            for round_number in range(options.repeat):
                progress(f"round {round_number + 1} of {options.repeat}")
                figures: dict[str, Figure] = {}
                run_ids: dict[str, str] = {}
                for name in names:
                    target, label, request = chosen[name]
                    run_id = run_ids[name] = f"r{round_number}{name[:3]}{uuid.uuid4().hex[:6]}"
                    progress(f"  {label}: {options.connections} connections, {options.duration_s} s")
                    figures[name] = measure(
                        name,
                        label,
                        servers[target],
                        request,
                        wrk_path=wrk_path,
                        options=options,
                        work_dir=work_dir,
                        pg_pid=pg_pid,
                        run_id=run_id,
                    )
                progress(f"  pgbench tpcb-like, 8 clients, {options.duration_s} s")
                report.tpcb.append(pgbench.tpcb(options.duration_s))
                generation_runs = {name: run_ids[name] for name in run_ids if name.startswith("generations")}
                accepted = {name: figures[name].result.expected for name in generation_runs}
                problems = asyncio.run(check_database(dsn, generation_runs, accepted, options.connections))
                report.checks += [f"round {round_number + 1}: {problem}" for problem in problems]
                report.rounds.append(figures)
        report.consistent = not report.checks
        creation_per_s = _median_figure(report, "generations")
        if options.dispatch_s > 0:
            report.dispatch = dispatch_figure(dsn, work_dir, options, workers, threads, creation_per_s)
        if options.soak_s > 0 and creation_per_s:
            report.soak = soak(dsn, work_dir, options, workers, threads, keys, users, wrk_path, creation_per_s / 2)
    finally:
        database.destroy()
        shutil.rmtree(work_dir, ignore_errors=True)
    report.total_s = time.perf_counter() - began
    return report


async def _vacuum(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("VACUUM ANALYZE")
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


def _median_figure(report: Report, name: str) -> float | None:
    values = [figures[name].per_s for figures in report.rounds if name in figures]
    return sorted(values)[(len(values) - 1) // 2] if values else None


def worker_process(work_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WORKER_VIDEO_DIR": str(work_dir / "worker"), "LOG_FORMAT": "json"}
    log = (work_dir / "worker.log").open("ab")
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "moments"), "worker", "--instant", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def dispatch_figure(
    dsn: str, work_dir: Path, options: argparse.Namespace, workers: int, threads: int, creation_per_s: float | None
) -> dict[str, float]:
    """The rounds left every generation queued: start the dispatcher against the instant worker and count
    how many it settles per second."""
    worker_port = free_port()
    worker_url = f"http://127.0.0.1:{worker_port}"
    worker = worker_process(work_dir, worker_port)
    try:
        wait_ready(worker_url + "/healthz", worker, str(work_dir / "worker.log"))
        env = moments_env(
            dsn, work_dir, dispatcher=True, worker_url=worker_url, concurrency=options.dispatch_concurrency
        )
        queued_before = asyncio.run(
            _count(dsn, "SELECT count(*) FROM generations WHERE status IN ('queued','running')")
        )
        progress(f"dispatcher: {queued_before:,} generations queued; instant worker; {options.dispatch_s} s")
        server = Server(MOMENTS_APP, env=env, workers=workers, threads=threads, log_path=work_dir / "dispatch.log")
        with running(server, "/readyz"):
            settled_sql = "SELECT count(*) FROM generations WHERE status IN ('succeeded', 'failed')"
            start_count = asyncio.run(_count(dsn, settled_sql))
            started = time.perf_counter()
            time.sleep(options.dispatch_s)
            end_count = asyncio.run(_count(dsn, settled_sql))
            elapsed_s = time.perf_counter() - started
            failed = asyncio.run(_count(dsn, "SELECT count(*) FROM generations WHERE status = 'failed'"))
    finally:
        stop(worker)
    settled_per_s = (end_count - start_count) / elapsed_s
    return {
        "queued_at_start": float(queued_before),
        "settled_per_s": settled_per_s,
        "creation_per_s": creation_per_s or 0.0,
        "ratio": settled_per_s / creation_per_s if creation_per_s else 0.0,
        "failed": float(failed),
    }


async def _count(dsn: str, sql: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval(sql))
    finally:
        await connection.close()


def soak(
    dsn: str,
    work_dir: Path,
    options: argparse.Namespace,
    workers: int,
    threads: int,
    keys: Keys,
    users: list[str],
    wrk_path: str,
    rate_per_s: float,
) -> dict[str, float]:
    """Generations at a fixed rate with the dispatcher and the instant worker on: RSS of each process and
    p99 in the first and the last window."""
    worker_port = free_port()
    worker_url = f"http://127.0.0.1:{worker_port}"
    worker = worker_process(work_dir, worker_port)
    window_s = min(30, max(5, options.soak_s // 10))
    windows = max(2, options.soak_s // window_s)
    figures: list[tuple[float, float, float, float]] = []
    try:
        wait_ready(worker_url + "/healthz", worker, str(work_dir / "worker.log"))
        env = moments_env(
            dsn, work_dir, dispatcher=True, worker_url=worker_url, concurrency=options.dispatch_concurrency
        )
        server = Server(MOMENTS_APP, env=env, workers=workers, threads=threads, log_path=work_dir / "soak.log")
        with running(server, "/readyz"):
            progress(f"soak: {rate_per_s:,.0f} generations/s for {windows} x {window_s} s, dispatcher and worker on")
            request = wrk.Request(
                method="POST",
                path="/v1/users/{user}/generations",
                expected_status=202,
                headers={
                    "Authorization": f"Bearer {keys.service}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": "{key}",
                },
                body=GENERATION_BODY,
                users=users,
            )
            for window in range(windows):
                result = wrk.run(
                    wrk_path,
                    server.url,
                    request,
                    run_id=f"soak{window}{uuid.uuid4().hex[:6]}",
                    work_dir=work_dir,
                    duration_s=window_s,
                    connections=options.connections,
                    rate_per_s=rate_per_s,
                )
                figures.append((result.per_s, result.p99_ms, server.rss_mib(), process_tree_rss_mib(worker.pid)))
                progress(
                    f"  window {window + 1}: {result.per_s:,.0f}/s, p99 {result.p99_ms:.1f} ms, "
                    f"API RSS {figures[-1][2]:.0f} MiB, worker RSS {figures[-1][3]:.0f} MiB, errors {result.errors}"
                )
    finally:
        stop(worker)
    first, last = figures[0], figures[-1]
    return {
        "rate_per_s": rate_per_s,
        "windows": float(windows),
        "window_s": float(window_s),
        "first_per_s": first[0],
        "last_per_s": last[0],
        "first_p99_ms": first[1],
        "last_p99_ms": last[1],
        "first_api_rss_mib": first[2],
        "last_api_rss_mib": last[2],
        "first_worker_rss_mib": first[3],
        "last_worker_rss_mib": last[3],
    }


def medians(report: Report) -> dict[str, Figure]:
    names = {name for figures in report.rounds for name in figures}
    return {
        name: median_of([figures[name] for figures in report.rounds if name in figures], lambda figure: figure.per_s)
        for name in names
    }


def ratio_rounds(report: Report, name: str, baseline: str) -> list[float]:
    return [
        figures[name].per_s / figures[baseline].per_s
        for figures in report.rounds
        if name in figures and baseline in figures and figures[baseline].per_s
    ]


def median(values: list[float]) -> float | None:
    return sorted(values)[(len(values) - 1) // 2] if values else None


def goals(report: Report) -> list[tuple[str, float | None, float, bool]]:
    """(what, value, goal, met) for every goal of the issue."""
    verdicts = []
    for name, (baseline, goal) in GOALS.items():
        value = median(ratio_rounds(report, name, baseline))
        verdicts.append((f"{name} / {baseline}", value, goal, value is not None and value >= goal))
    generations = [figures["generations"].per_s for figures in report.rounds if "generations" in figures]
    over_tpcb = median([g / t.tps for g, t in zip(generations, report.tpcb, strict=False) if t.tps])
    verdicts.append(
        (
            "generations / pgbench tpcb",
            over_tpcb,
            GOAL_GENERATIONS_OVER_TPCB,
            (over_tpcb or 0) >= GOAL_GENERATIONS_OVER_TPCB,
        )
    )
    p99 = median([figures["generations"].result.p99_ms for figures in report.rounds if "generations" in figures])
    verdicts.append(
        (
            "generations p99 ms (at most)",
            p99,
            GOAL_GENERATIONS_P99_MS,
            p99 is not None and p99 <= GOAL_GENERATIONS_P99_MS,
        )
    )
    if report.dispatch:
        value = report.dispatch["ratio"]
        verdicts.append(
            ("dispatcher settled / created", value, GOAL_DISPATCH_OVER_CREATION, value >= GOAL_DISPATCH_OVER_CREATION)
        )
    return verdicts


def render(report: Report) -> str:
    options = report.options
    middle = medians(report)
    lines = [
        "",
        "Moments HTTP benchmark",
        f"  machine : {report.machine['nproc']} CPUs ({report.machine['cpu']}), Python {report.machine['python']}, "
        f"PostgreSQL {report.machine.get('postgres', '?')} (embedded, same machine, "
        f"{'fsync OFF' if options['fast'] else 'durable'})",
        f"  server  : granian, {options['workers']} worker(s), {options['threads']} runtime thread(s), dispatcher off; "
        f"load: wrk, {options['connections']} connections, 1 thread, {options['duration_s']} s per figure, "
        f"{options['repeat']} round(s), medians shown; whole run {report.total_s:.0f} s",
        "",
        f"  {'figure':<48}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>8}   "
        "CPU cores: server / postgres / wrk / machine",
        f"  {'-' * 48}{'-' * 9}{'-' * 8}{'-' * 8}{'-' * 8}   {'-' * 44}",
    ]
    for name in [name for name in report.rounds[0]] if report.rounds else []:
        figure = middle[name]
        result = figure.result
        lines.append(
            f"  {figure.label:<48}{figure.per_s:>9,.0f}{result.p50_ms:>8.1f}{result.p99_ms:>8.1f}{result.errors:>8}"
            f"   {figure.server_cores:.2f} / {figure.postgres_cores:.2f} / {figure.wrk_cores:.2f} / "
            f"{figure.machine_busy_cores:.2f}"
        )
        if result.first_unexpected:
            lines.append(f"      first unexpected answer: {result.first_unexpected[:200]}")
    if report.tpcb:
        tpcb = median_of(report.tpcb, lambda result: result.tps)
        lines.append(f"  {'pgbench tpcb-like, 8 clients (same server)':<48}{tpcb.tps:>9,.0f}")
    if len(report.rounds) > 1:
        lines.append("")
        for name in report.rounds[0]:
            values = ", ".join(f"{figures[name].per_s:,.0f}" for figures in report.rounds if name in figures)
            lines.append(f"  every round ({name}): {values}")
        lines.append(f"  every round (tpcb): {', '.join(f'{result.tps:,.0f}' for result in report.tpcb)}")
    lines += ["", "  ratios (median of the rounds' ratios) and goals:"]
    for what, value, goal, met in goals(report):
        shown = "n/a" if value is None else f"{value:.2f}"
        relation = "<=" if "at most" in what else ">="
        lines.append(f"    {what:<40}{shown:>8}   {'PASS' if met else 'FAIL'} (goal {relation} {goal:g})")
    lines += through_pgbouncer.ratio_lines(lambda name, baseline: median(ratio_rounds(report, name, baseline)))
    lines += floors.render(report.rounds, report.tpcb)
    if report.dispatch:
        dispatch = report.dispatch
        lines += [
            "",
            f"  dispatcher (instant worker): settled {dispatch['settled_per_s']:,.0f} generations/s beside a creation "
            f"rate of {dispatch['creation_per_s']:,.0f}/s = {dispatch['ratio']:.2f} (DISPATCHER_CONCURRENCY="
            f"{options['dispatch_concurrency']}); "
            f"{dispatch['queued_at_start']:,.0f} queued at its start, {dispatch['failed']:,.0f} failed",
        ]
    if report.soak:
        soak_figures = report.soak
        lines += [
            "",
            f"  soak: {soak_figures['rate_per_s']:,.0f} generations/s offered (half the peak), "
            f"{soak_figures['windows']:.0f} windows of {soak_figures['window_s']:.0f} s, dispatcher and worker on",
            *(
                f"    {which:<12}: {soak_figures[f'{key}_per_s']:,.0f}/s, p99 {soak_figures[f'{key}_p99_ms']:.1f} ms, "
                f"API RSS {soak_figures[f'{key}_api_rss_mib']:.0f} MiB, "
                f"worker RSS {soak_figures[f'{key}_worker_rss_mib']:.0f} MiB"
                for which, key in (("first window", "first"), ("last window", "last"))
            ),
        ]
    lines.append("")
    if report.checks:
        lines += ["  CHECKS FAILED:", *(f"    {problem}" for problem in report.checks)]
    else:
        lines.append("  after every round: audit passed; every accepted generation is in the database exactly once")
    lines.append("")
    return "\n".join(lines)


def to_json(report: Report) -> str:
    data = asdict(report)
    data["goals"] = [
        {"what": what, "value": value, "goal": goal, "met": met} for what, value, goal, met in goals(report)
    ]
    data["ceilings"] = floors.to_json(report.rounds, report.tpcb)
    return json.dumps(data, indent=2, default=str)


def main(argv: list[str]) -> int:
    options = parse(argv)
    if options.repeat < 1 or options.duration_s < 1 or options.connections < 1 or options.users < 1:
        print("--repeat, --duration-s, --connections and --users must be at least 1", file=sys.stderr)
        return 2
    report = run(options)
    print(render(report), flush=True)
    if options.json:
        options.json.write_text(to_json(report))
    missed = not all(met for _, _, _, met in goals(report))
    return 1 if not report.consistent or (options.strict and missed) else 0
