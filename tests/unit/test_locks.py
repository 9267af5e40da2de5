"""Partition locks (lakeforge.locks) against a scripted stand-in of psycopg2's connection: the SQL sent,
the holder named on conflict, the lock released and the connection closed on every path. The real
PostgreSQL lock is exercised by tests/integration/test_ingest.py (two landings of one partition)."""

from __future__ import annotations

import sys
import types
from datetime import datetime, timezone

import pytest

from lakeforge.config import Settings
from lakeforge.errors import ConcurrentRunError
from lakeforge.locks import _dsn, lock_key, partition_lock


class FakeConnection:
    """Answers ``pg_try_advisory_lock`` with ``granted``; the holder query with ``holder``."""

    def __init__(self, granted: bool, holder=None):
        self.granted, self.holder = granted, holder
        self.sql: list[tuple[str, tuple]] = []
        self.closed = False
        self.autocommit = False
        self._last = None

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, args=()):
        self.sql.append((sql, args))
        self._last = sql

    def fetchone(self):
        return (self.granted,) if "pg_try_advisory_lock" in self._last else self.holder

    def close(self):
        self.closed = True


@pytest.fixture
def connect(monkeypatch):
    """``connect(conn)``: make ``psycopg2.connect`` return ``conn``; records the connect arguments."""
    calls = []

    def install(conn):
        def fake_connect(dsn, **kwargs):
            calls.append((dsn, kwargs))
            return conn

        monkeypatch.setitem(sys.modules, "psycopg2", types.SimpleNamespace(connect=fake_connect))
        return calls

    return install


SETTINGS = Settings(pg_uri="postgresql+psycopg2://postgres@/airflow?host=/tmp/pg")


def test_lock_key_is_stable_and_fits_a_bigint():
    key = lock_key("raw/movie_reviews/dt=2026-11-20")
    assert key == lock_key("raw/movie_reviews/dt=2026-11-20") and 0 <= key < 2**63
    assert key != lock_key("raw/movie_reviews/dt=2026-11-21")


@pytest.mark.parametrize("uri, dsn", [
    ("postgresql+psycopg2://u:p@h:5/db", "postgresql://u:p@h:5/db"),
    ("postgresql://u@/db?host=/tmp", "postgresql://u@/db?host=/tmp"),
    ("host=h dbname=db", "host=h dbname=db"),
])
def test_sqlalchemy_uris_become_libpq_dsns(uri, dsn):
    assert _dsn(uri) == dsn


def test_a_free_lock_is_taken_released_and_its_connection_closed(connect):
    conn = FakeConnection(granted=True)
    calls = connect(conn)
    with partition_lock(SETTINGS, "raw/p/dt=2026-11-20", "run-1"):
        assert not conn.closed and conn.autocommit
    key = lock_key("raw/p/dt=2026-11-20")
    assert conn.sql == [("SELECT pg_try_advisory_lock(%s)", (key,)), ("SELECT pg_advisory_unlock(%s)", (key,))]
    assert conn.closed
    dsn, kwargs = calls[0]
    assert dsn == "postgresql://postgres@/airflow?host=/tmp/pg" and kwargs["application_name"] == "lakeforge run-1"


def test_the_lock_is_released_when_the_body_fails(connect):
    conn = FakeConnection(granted=True)
    connect(conn)
    with pytest.raises(RuntimeError):
        with partition_lock(SETTINGS, "raw/p/dt=2026-11-20", "run-1"):
            raise RuntimeError("the landing failed")
    assert conn.sql[-1][0] == "SELECT pg_advisory_unlock(%s)" and conn.closed


def test_a_held_lock_fails_at_once_naming_its_holder(connect):
    since = datetime(2026, 11, 20, 8, 30, tzinfo=timezone.utc)
    conn = FakeConnection(granted=False, holder=("lakeforge scheduled__2026-11-20", since, None))
    connect(conn)
    with pytest.raises(ConcurrentRunError) as err:
        with partition_lock(SETTINGS, "raw/p/dt=2026-11-20", "run-2"):
            pytest.fail("the body must not run without the lock")
    message = str(err.value)
    assert "raw/p/dt=2026-11-20" in message and "'lakeforge scheduled__2026-11-20'" in message
    assert "2026-11-20 08:30:00" in message and "run-2" in message
    assert not any("unlock" in sql for sql, _ in conn.sql) and conn.closed


def test_a_holder_gone_meanwhile_is_another_run(connect):
    conn = FakeConnection(granted=False, holder=None)
    connect(conn)
    with pytest.raises(ConcurrentRunError, match="being written by another run"):
        with partition_lock(SETTINGS, "raw/p/dt=2026-11-20", "run-2"):
            pass
