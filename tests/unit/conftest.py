"""Shared fixtures of the unit tests: one small local SparkSession, Arrow-built tiny frames, and a
lake on local disk (the same Iceberg tables, in a SQLite catalog) for round trips of the Spark jobs."""

from __future__ import annotations

import os
import sys

import pytest


@pytest.fixture(scope="session")
def spark():
    """A plain local SparkSession: one core, no UI, 2 shuffle partitions, UTC (no S3 settings; the
    Iceberg jars are on its class path, and Iceberg's SQL extensions on, because a JVM's class
    path and a session's extensions are fixed at its start)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    try:  # the jars on the class path: integration tests later in this session reuse this JVM for the lake
        from lakeforge.catalog import SPARK_EXTENSIONS
        from lakeforge.spark import _spark_jar_paths

        builder = builder.config("spark.driver.extraClassPath", os.pathsep.join(_spark_jar_paths())).config(
            "spark.sql.extensions", SPARK_EXTENSIONS)
    except Exception:  # jars not resolved (no `make setup`): unit tests need none
        pass
    session = (
        builder.master("local[1]")
        .appName("lakeforge-unit-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.session.timeZone", "UTC")
        # tiny frames: adaptive re-planning costs more than it saves (results are the same)
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    # py4j logs "closing down" from an atexit hook after pytest closed its streams: keep it quiet
    import logging

    logging.getLogger("py4j").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def arrow_frame(spark):
    """``arrow_frame(schema, rows)``: a Spark DataFrame of ``rows`` (tuples) with a small DDL-like
    schema (``"id string, n bigint"``; types string, bigint, int, timestamp in UTC).

    Built through Arrow: unlike a Python list, it needs no Python worker, which keeps tiny-frame
    tests fast.
    """
    import pyarrow as pa

    types = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(),
             "timestamp": pa.timestamp("us", tz="UTC")}

    def make(schema: str, rows):
        fields = [(name, types[kind]) for name, kind in (part.split() for part in schema.split(","))]
        names = [name for name, _ in fields]
        table = pa.Table.from_pylist([dict(zip(names, row)) for row in rows], schema=pa.schema(fields))
        return spark.createDataFrame(table)

    return make


def make_local_lake(root):
    """A :class:`lakeforge.lake.LocalLake` rooted in a local directory: the same Iceberg tables (a
    SQLite catalog, a ``file://`` warehouse) and object keys, no server."""
    from lakeforge.lake import LocalLake

    return LocalLake(root)


@pytest.fixture(scope="session")
def make_lake():
    """``make_lake(root)``: :func:`make_local_lake` for module-scoped fixtures (conftest is not importable)."""
    return make_local_lake


@pytest.fixture
def local_lake(tmp_path):
    """A lake on local disk under ``tmp_path`` (see :func:`make_local_lake`)."""
    return make_local_lake(tmp_path / "lake")


def write_raw(lake, rows, partition="2026-11-23", pipeline="movie_reviews"):
    """Commit raw rows (dicts following the raw contract) as one Parquet file to the ``raw`` table of
    ``lake``, as a landing does; returns the Partition. ``rows=[]`` publishes an empty partition."""
    from datetime import datetime, timezone

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakeforge.config import Partition, PipelineConfig
    from lakeforge.ingest.records import raw_schema
    from lakeforge.lake import Commit

    config = PipelineConfig.load(pipeline)
    schema = raw_schema(config)
    part = Partition.parse(partition)
    keys = []
    if rows:
        full = [{"source": "imdb", "event_time": part.start.replace(hour=1), "kafka_topic": "movie_reviews.events",
                 "kafka_partition": 0, "kafka_offset": i, "kafka_timestamp": part.start.replace(hour=1), **r}
                for i, r in enumerate(rows)]
        key = lake.staging_key(lake.table(config, "raw"), part, "ingest1") + "/part-00000.parquet"
        path = lake.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
        keys = [key]
    commit = Commit(layer="raw", pipeline=config.name, partition=part.path, interval=(part.start, part.end),
                    schema_version=1, run_id="ingest1", rows=len(rows),
                    created_at=datetime(2026, 11, 24, tzinfo=timezone.utc))
    lake.publish_files(config, commit, keys, started_from=None)
    return part


@pytest.fixture(scope="session")
def raw_writer():
    """:func:`write_raw` for module-scoped fixtures (conftest is not importable)."""
    return write_raw


@pytest.fixture
def publish_raw(local_lake):
    """``publish_raw(rows, partition=…, pipeline=…)``: :func:`write_raw` into the test's local lake."""

    def _publish(rows, partition="2026-11-23", pipeline="movie_reviews"):
        return write_raw(local_lake, rows, partition, pipeline)

    return _publish


def tiny_pipeline_file(directory, **overrides):
    """A copy of pipelines/movie_reviews.yaml in ``directory`` (same name, so ``publish_raw`` feeds
    it) with the quality gate opened for tiny inline partitions and the given top-level keys replaced."""
    import yaml

    from lakeforge.config import PIPELINES_DIR

    spec = yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())
    spec["quality_gate"] = {"min_rows": 0}
    spec.update(overrides)
    path = directory / f"movie_reviews-{len(list(directory.glob('movie_reviews-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.fixture(scope="session")
def pipeline_writer():
    """:func:`tiny_pipeline_file` for module-scoped fixtures."""
    return tiny_pipeline_file


@pytest.fixture
def tiny_pipeline(tmp_path):
    """``tiny_pipeline(**overrides)``: path of :func:`tiny_pipeline_file` in the test's tmp dir."""

    def make(**overrides):
        return tiny_pipeline_file(tmp_path, **overrides)

    return make


@pytest.fixture
def partition_parses(monkeypatch):
    """Every string ``Partition.parse`` is called with during the test (to check "parsed once")."""
    from lakeforge.config import Partition

    calls = []
    parse = Partition.parse.__func__

    def counting(cls, value, granularity="daily"):
        calls.append(value)
        return parse(cls, value, granularity)

    monkeypatch.setattr(Partition, "parse", classmethod(counting))
    return calls
