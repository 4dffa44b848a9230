"""A PgBouncer of our own in front of a PostgreSQL, for the tests and the HTTP benchmark.

Debian's `pgbouncer` package (1.18 on bookworm: no protocol-level prepared statements), started with a
configuration written here: pool_mode=transaction by default, every database of the server reachable
under its own name (`* =`), trust authentication (the embedded servers trust loopback), and no
`ignore_startup_parameters`, so that a startup parameter the service should not send is refused, not
dropped. PgBouncer will not run as root: it is then started as the embedded server's own system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from entitlements.dev.embedded_db import SERVER_USER_WHEN_ROOT, free_port

PGBOUNCER = Path(os.environ.get("PGBOUNCER_PATH", "/usr/sbin/pgbouncer"))
INSTALL_HINT = "apt-get install pgbouncer (Debian's package; `make test` installs it when run as root)"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.05


class PgBouncerError(RuntimeError):
    pass


def installed() -> bool:
    return PGBOUNCER.is_file() and os.access(PGBOUNCER, os.X_OK)


@dataclass(frozen=True, kw_only=True)
class PgBouncerOptions:
    pool_mode: str = "transaction"
    # Server connections per database and user: smaller than the clients' pools, so that consecutive
    # transactions of one client connection do land on different server connections.
    default_pool_size: int = 20
    max_client_conn: int = 1000
    # After a failed server login (PostgreSQL restarting) PgBouncer waits this long before trying again;
    # its default, 15 s, would outlast a restart by far.
    server_login_retry_s: float = 0.5
    # A client waits at most this long for a server connection before PgBouncer fails its query.
    query_wait_timeout_s: float = 30.0


class PgBouncer:
    """One PgBouncer process on a free loopback port in front of the server at `server_host:server_port`."""

    def __init__(self, server_host: str, server_port: int, options: PgBouncerOptions | None = None) -> None:
        self.server_host = server_host
        self.server_port = server_port
        self.options = options or PgBouncerOptions()
        self.port = 0
        self.directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def in_front_of(cls, dsn: str, options: PgBouncerOptions | None = None) -> PgBouncer:
        """For the server `dsn` names: postgresql://user@host:port/db, or a socket directory's
        postgresql://user@/db?host=/dir&port=N (PgBouncer takes either)."""
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or query.get("host", [""])[0]
        port = parts.port or int(query.get("port", ["5432"])[0])
        if not host:
            raise PgBouncerError(f"no server address in {dsn!r}")
        return cls(host, port, options)

    def url_for(self, dsn: str) -> str:
        """`dsn`'s user and database, through this PgBouncer."""
        parts = urlsplit(dsn)
        user = parts.username or "postgres"
        database = parts.path.lstrip("/") or "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path | None:
        return None if self.directory is None else self.directory / "pgbouncer.log"

    def log_tail(self, chars: int = 4000) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return path.read_text(errors="replace")[-chars:]

    def start(self) -> PgBouncer:
        if not installed():
            raise PgBouncerError(f"pgbouncer is not installed at {PGBOUNCER}: {INSTALL_HINT}")
        self.directory = Path(tempfile.mkdtemp(prefix="moments-pgbouncer-"))
        self.port = free_port()
        config = self.directory / "pgbouncer.ini"
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        options = self.options
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={self.server_host} port={self.server_port}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.directory / 'users.txt'}",
                    f"pool_mode = {options.pool_mode}",
                    f"default_pool_size = {options.default_pool_size}",
                    "min_pool_size = 0",
                    "reserve_pool_size = 0",
                    f"max_client_conn = {options.max_client_conn}",
                    f"server_login_retry = {options.server_login_retry_s}",
                    f"query_wait_timeout = {options.query_wait_timeout_s}",
                    # Transaction mode never runs it; session mode would (DISCARD ALL) between clients.
                    "server_reset_query = DISCARD ALL",
                    f"logfile = {self.directory / 'pgbouncer.log'}",
                    f"pidfile = {self.directory / 'pgbouncer.pid'}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "",
                ]
            )
        )
        command = [str(PGBOUNCER), "-q", str(config)]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; it reads its files after changing user.
            entry = pwd.getpwnam(SERVER_USER_WHEN_ROOT)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            command[1:1] = ["-u", SERVER_USER_WHEN_ROOT]
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, arguments built here
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts():
            if self._process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise PgBouncerError(f"pgbouncer did not start: {tail or 'no log'}")
            time.sleep(POLL_S)
        return self

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
            return True
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # SIGTERM: PgBouncer 1.18's immediate shutdown (SIGINT would wait for every client to leave).
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextlib.contextmanager
def pgbouncer_in_front_of(dsn: str, options: PgBouncerOptions | None = None) -> Iterator[PgBouncer]:
    with PgBouncer.in_front_of(dsn, options) as bouncer:
        yield bouncer
