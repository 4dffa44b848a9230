"""PostgreSQL's own ceiling on the same server: pgbench tpcb-like and a one-row hot update."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ledger import cpu
from entitlements.dev.embedded_db import binary

TPS_PATTERN = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
LATENCY_PATTERN = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
SCALE = 10
CLIENTS = 8
THREADS = 2
REAP_WAIT_S = 2.0
HOT_ROW_SCRIPT = "\\set d random(1, 10)\nUPDATE hot SET v = v + :d WHERE id = 1;\n"


class PgbenchError(RuntimeError):
    pass


@dataclass(frozen=True, kw_only=True)
class PgbenchResult:
    name: str
    tps: float
    latency_ms: float | None
    clients: int
    duration_s: int
    cpu: cpu.CpuUsage


class Pgbench:
    def __init__(self, *, host: str, port: int, database: str, work_dir: Path, postmaster_pid: int | None) -> None:
        # host: 127.0.0.1, or the socket directory, as the ledger's side connects.
        self._connection = ["-h", host, "-p", str(port), "-U", "postgres"]
        self._database = database
        self._work_dir = work_dir
        self._postmaster_pid = postmaster_pid

    def _run(self, args: list[str], *, timeout_s: float) -> str:
        command = [str(binary("pgbench")), *self._connection, *args, self._database]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise PgbenchError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout + done.stderr

    def initialize(self) -> None:
        """The standard tables at scale 10 (1,000,000 accounts), plus the one-row table `hot`."""
        self._run(["-i", "-q", "-s", str(SCALE)], timeout_s=600)
        self._psql(
            "creating the hot-row table",
            [
                "CREATE TABLE hot (id integer PRIMARY KEY, v bigint NOT NULL)",
                "INSERT INTO hot VALUES (1, 0)",
                "VACUUM ANALYZE hot",
            ],
        )

    def _psql(self, what: str, statements: list[str]) -> None:
        psql = [str(binary("psql")), *self._connection, "-v", "ON_ERROR_STOP=1", "-q", "-d", self._database]
        arguments = [argument for statement in statements for argument in ("-c", statement)]
        done = subprocess.run([*psql, *arguments], capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise PgbenchError(f"{what} failed: {done.stderr}")

    def _measure(self, name: str, args: list[str], duration_s: int) -> PgbenchResult:
        # Every figure, PostgreSQL's and the ledger's, starts from a checkpoint: no dirty buffers left by
        # the figure before it to write out during this one.
        self._psql("CHECKPOINT", ["CHECKPOINT"])
        children = cpu.postgres_children(self._postmaster_pid)
        start = cpu.sample(self._postmaster_pid)
        output = self._run(
            ["-c", str(CLIENTS), "-j", str(THREADS), "-T", str(duration_s), *args], timeout_s=duration_s + 120
        )
        # A backend that has exited but is not yet reaped by the postmaster is in no CPU counter: wait for
        # pgbench's backends to be reaped, or their CPU would be reported as other programs'.
        deadline = time.monotonic() + REAP_WAIT_S
        while cpu.postgres_children(self._postmaster_pid) > children and time.monotonic() < deadline:
            time.sleep(0.01)
        end = cpu.sample(self._postmaster_pid)
        tps = TPS_PATTERN.search(output)
        if tps is None:
            raise PgbenchError(f"no TPS in pgbench's output:\n{output}")
        latency = LATENCY_PATTERN.search(output)
        return PgbenchResult(
            name=name,
            tps=float(tps.group(1)),
            latency_ms=float(latency.group(1)) if latency else None,
            clients=CLIENTS,
            duration_s=duration_s,
            cpu=cpu.usage(start, end),
        )

    def tpcb(self, duration_s: int) -> PgbenchResult:
        return self._measure("tpcb-like", ["-b", "tpcb-like"], duration_s)

    def hot_row(self, duration_s: int) -> PgbenchResult:
        script = self._work_dir / "hot_row.sql"
        script.write_text(HOT_ROW_SCRIPT)
        return self._measure("hot row", ["-n", "-f", str(script)], duration_s)
