"""Partition locks: one writer per lake partition at a time, held in PostgreSQL.

A writer takes a session-level advisory lock (``pg_try_advisory_lock``) on a 63-bit key derived
from the partition's lake key, on a connection whose ``application_name`` names the writer's run.
A second writer does not wait: it fails at once with a message naming the holder. The lock lives
as long as the holder's connection, so a writer killed with ``kill -9`` releases it when the
server notices the closed socket; there is no stale lock file to clean up.

PostgreSQL rather than an S3 conditional write: the embedded S3 server and many S3-compatible
stores do not all honour ``If-None-Match`` on PUT, and an S3 lock object survives a crashed holder.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from typing import Iterator

from lakeforge.config import Settings
from lakeforge.errors import ConcurrentRunError

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable non-negative 63-bit key for ``name`` (pg advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") & (2**63 - 1)


def _dsn(uri: str) -> str:
    # SQLAlchemy-style URIs (postgresql+psycopg2://) are not libpq URIs
    scheme, sep, rest = uri.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgresql") else uri


@contextmanager
def partition_lock(settings: Settings, name: str, owner: str) -> Iterator[None]:
    """Hold the lock called ``name`` (e.g. ``raw/movie_reviews/dt=2026-11-20``) for ``owner``.

    Raises :class:`ConcurrentRunError` when another owner holds it.
    """
    import psycopg2

    key = lock_key(name)
    conn = psycopg2.connect(_dsn(settings.require("pg_uri")), application_name=f"lakeforge {owner}"[:63],
                            connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            if not cur.fetchone()[0]:
                cur.execute(
                    "SELECT a.application_name, a.backend_start, a.client_addr FROM pg_locks l"
                    " JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.objsubid = 1 AND l.classid::bigint * 4294967296 + l.objid::bigint = %s",
                    (key,))
                holder = cur.fetchone()
                who = f"{holder[0]!r} (connected since {holder[1]:%Y-%m-%d %H:%M:%S %Z})" if holder else "another run"
                raise ConcurrentRunError(
                    f"{name} is being written by {who}; this run ({owner}) stops without touching it. "
                    "Wait for that run to finish (or kill it) and rerun.")
            log.info("lock %s taken by %s", name, owner)
            try:
                yield
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()
