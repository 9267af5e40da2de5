"""The lake's Iceberg catalog on the real services: the JDBC/SQL catalog in the embedded PostgreSQL
(over loopback TCP, with a password), data on SeaweedFS, pyiceberg and Spark sharing one catalog."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest

from lakeforge.catalog import (LAYERS, PARTITION_KEY, RUN_ID_KEY, ensure_table, ensure_tables, load_catalog,
                               publish_partition, spark_table, table_name, tag_snapshot)
from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import PublishConflictError

pytestmark = pytest.mark.integration

DAY1 = datetime(2026, 11, 23, tzinfo=timezone.utc)
DAY2 = DAY1 + timedelta(days=1)


@pytest.fixture(scope="module")
def pipeline():
    base = PipelineConfig.load("movie_reviews")
    return base.model_copy(update={"name": f"itest_catalog_{datetime.now():%H%M%S%f}"})


@pytest.fixture(scope="module")
def catalog(settings):
    return load_catalog(settings)


def raw_rows(pipeline: PipelineConfig, day: datetime, ids: range, topic_partition: int = 0) -> pa.Table:
    """Raw rows of one day in the raw table's arrow schema, with ascending Kafka offsets."""
    from lakeforge.ingest.records import raw_schema

    schema = raw_schema(pipeline)
    n = len(ids)
    columns = {
        "id": [f"r{i}" for i in ids], "text": [f"review number {i}" for i in ids], "label": [i % 2 for i in ids],
        "source": ["itest"] * n, "event_time": [day + timedelta(minutes=i) for i in ids],
        "kafka_topic": [pipeline.topic] * n, "kafka_partition": [topic_partition] * n,
        "kafka_offset": list(ids), "kafka_timestamp": [day + timedelta(minutes=i) for i in ids],
    }
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


def day_filter(pipeline: PipelineConfig, day: datetime):
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    column = pipeline.field("event_time").name
    return And(GreaterThanOrEqual(column, day.isoformat()), LessThan(column, (day + timedelta(days=1)).isoformat()))


def test_every_layer_is_a_table_partitioned_by_the_grain_with_columns_from_the_yaml(catalog, pipeline):
    tables = ensure_tables(catalog, pipeline)
    assert set(tables) == set(LAYERS)
    assert {t[1] for t in catalog.list_tables(pipeline.name)} == set(LAYERS)
    raw = tables["raw"]
    assert [f.name for f in raw.schema().fields][: len(pipeline.fields)] == [f.name for f in pipeline.fields]
    (field,) = raw.spec().fields
    assert str(field.transform) == "day" and raw.schema().find_field(field.source_id).name == "event_time"
    assert ensure_table(catalog, pipeline, "raw").metadata.table_uuid == raw.metadata.table_uuid  # idempotent
    assert raw.location().startswith("s3://")


def test_a_partition_overwrite_is_one_atomic_commit_and_time_travel_reads_the_old_rows(catalog, pipeline):
    raw = ensure_table(catalog, pipeline, "raw")
    raw.append(raw_rows(pipeline, DAY1, range(0, 10)), snapshot_properties={"lakeforge.run_id": "first"})
    raw.append(raw_rows(pipeline, DAY2, range(100, 105)), snapshot_properties={"lakeforge.run_id": "day2"})
    first = raw.refresh().current_snapshot()
    offsets = {pipeline.topic: {"0": [0, 12]}}
    raw.overwrite(raw_rows(pipeline, DAY1, range(0, 12)), overwrite_filter=day_filter(pipeline, DAY1),
                  snapshot_properties={"lakeforge.run_id": "rerun", "lakeforge.kafka_offsets": json.dumps(offsets)})
    raw.refresh()
    latest = raw.current_snapshot()
    assert latest.summary["lakeforge.run_id"] == "rerun"
    assert json.loads(latest.summary["lakeforge.kafka_offsets"]) == offsets
    now = raw.scan(row_filter=day_filter(pipeline, DAY1)).to_arrow()
    assert sorted(now.column("id").to_pylist()) == sorted(f"r{i}" for i in range(12))
    assert raw.scan(row_filter=day_filter(pipeline, DAY2)).to_arrow().num_rows == 5  # the other day untouched
    before = raw.scan(row_filter=day_filter(pipeline, DAY1), snapshot_id=first.snapshot_id).to_arrow()
    assert sorted(before.column("id").to_pylist()) == sorted(f"r{i}" for i in range(10))


def test_spark_and_pyiceberg_share_the_catalog(catalog, pipeline, settings):
    from lakeforge.spark import spark_session
    from pyspark.sql import functions as F

    raw = ensure_table(catalog, pipeline, "raw")
    raw.overwrite(raw_rows(pipeline, DAY1, range(0, 6)), overwrite_filter=day_filter(pipeline, DAY1))
    spark = spark_session("itest-catalog", settings)
    name = spark_table(pipeline.name, "raw", settings)
    day1 = spark.table(name).where((F.col("event_time") >= DAY1) & (F.col("event_time") < DAY2))
    assert sorted(r.id for r in day1.select("id").collect()) == sorted(f"r{i}" for i in range(6))

    # Spark replaces one day in one commit (dynamic partition overwrite) with its own summary property
    rows = day1.where(F.col("kafka_offset") < 3).withColumn("text", F.upper("text"))
    rows.writeTo(name).option("snapshot-property.lakeforge.run_id", "spark-run").overwritePartitions()
    raw.refresh()
    assert raw.current_snapshot().summary["lakeforge.run_id"] == "spark-run"
    got = raw.scan(row_filter=day_filter(pipeline, DAY1)).to_arrow()
    assert sorted(got.column("text").to_pylist()) == [f"REVIEW NUMBER {i}" for i in range(3)]
    assert raw.scan(row_filter=day_filter(pipeline, DAY2)).to_arrow().num_rows == 5


def curated_rows(table, day: datetime, ids: range) -> pa.Table:
    n = len(ids)
    return pa.table({
        "id": [f"c{i}" for i in ids], "text": ["t"] * n, "label": [0] * n, "source": ["x"] * n,
        "event_time": [day] * n, "text_hash": ["h"] * n, "cluster_id": ["k"] * n,
    }).cast(table.schema().as_arrow())


def test_commits_to_different_partitions_at_once_both_land(catalog, pipeline):
    ident = table_name(pipeline.name, "curated")
    ensure_table(catalog, pipeline, "curated")
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def write(day: datetime, ids: range) -> None:
        table = load_catalog().load_table(ident)  # each writer its own catalog connection
        start = table.current_snapshot()
        rows = curated_rows(table, day, ids)
        barrier.wait()
        try:
            publish_partition(table, rows, column="event_time", partition=Partition.containing(day), run_id=f"w{day:%d}",
                              started_from=start.snapshot_id if start else None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(DAY1, range(0, 4))),
               threading.Thread(target=write, args=(DAY2, range(10, 13)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    table = catalog.load_table(ident)
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == sorted(
        [f"c{i}" for i in range(0, 4)] + [f"c{i}" for i in range(10, 13)])
    summaries = [s.summary for s in table.snapshots() if s.summary.get(RUN_ID_KEY)]
    assert {(s[RUN_ID_KEY], s[PARTITION_KEY]) for s in summaries} >= {("w23", "dt=2026-11-23"), ("w24", "dt=2026-11-24")}


def test_two_runs_of_one_partition_the_later_commit_fails_clearly_and_a_rerun_wins(catalog, pipeline):
    table = ensure_table(catalog, pipeline, "excluded")
    ident = table_name(pipeline.name, "excluded")
    part = Partition.containing(DAY1)
    rows = lambda t, ids: pa.table({"id": [f"x{i}" for i in ids], "event_time": [DAY1] * len(ids)}).cast(  # noqa: E731
        pa.schema([t.schema().as_arrow().field("id"), t.schema().as_arrow().field("event_time")]))
    start = table.current_snapshot()
    started_from = start.snapshot_id if start else None
    # run A and run B both began at `started_from`; A commits first
    publish_partition(catalog.load_table(ident), rows(table, range(3)), column="event_time", partition=part,
                      run_id="run-a", started_from=started_from)
    with pytest.raises(PublishConflictError, match=r"run 'run-a' published this partition .* while run 'run-b'"):
        publish_partition(catalog.load_table(ident), rows(table, range(5)), column="event_time", partition=part,
                          run_id="run-b", started_from=started_from)
    table.refresh()
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == ["x0", "x1", "x2"]  # B committed nothing
    # a rerun that starts after A's commit replaces A's rows
    publish_partition(table, rows(table, range(5)), column="event_time", partition=part, run_id="run-c",
                      started_from=table.current_snapshot().snapshot_id)
    assert sorted(table.refresh().scan().to_arrow().column("id").to_pylist()) == [f"x{i}" for i in range(5)]


def test_a_tagged_snapshot_survives_expiry_and_still_reads_its_rows(catalog, pipeline):
    table = ensure_table(catalog, pipeline, "features")
    part = Partition.containing(DAY1)
    arrow = table.schema().as_arrow()
    rows = lambda ids: pa.table({"id": [f"f{i}" for i in ids], "event_time": [DAY1] * len(ids)}).cast(  # noqa: E731
        pa.schema([arrow.field("id"), arrow.field("event_time")]))
    trained_on = publish_partition(table, rows(range(4)), column="event_time", partition=part, run_id="v1",
                                   started_from=None)
    tag_snapshot(table, "model-itest-v1", trained_on.snapshot_id)
    tag_snapshot(table, "model-itest-v1", trained_on.snapshot_id)  # idempotent
    publish_partition(table, rows(range(10, 12)), column="event_time", partition=part, run_id="rerun",
                      started_from=trained_on.snapshot_id)
    table.maintenance.expire_snapshots().older_than(datetime.now(timezone.utc) + timedelta(seconds=1)).commit()
    table.refresh()
    kept = {s.snapshot_id for s in table.snapshots()}
    assert trained_on.snapshot_id in kept and table.current_snapshot().snapshot_id in kept
    old = table.scan(snapshot_id=table.metadata.refs["model-itest-v1"].snapshot_id).to_arrow()
    assert sorted(old.column("id").to_pylist()) == ["f0", "f1", "f2", "f3"]
