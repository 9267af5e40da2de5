"""The lake's Iceberg catalog on the real services: the JDBC/SQL catalog in the embedded PostgreSQL
(over loopback TCP, with a password), data on SeaweedFS, pyiceberg and Spark sharing one catalog, and
``Lake.publish_files`` (one commit per partition, rival runs detected) on top of it."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.catalog import LAYERS, ensure_table, ensure_tables, load_catalog, spark_table, table_name, tag_snapshot
from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import PublishConflictError
from lakeforge.lake import PARTITION_KEY, RUN_ID_KEY, Commit, Lake

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


def stage_rows(lake: Lake, table, partition: Partition, run_id: str, rows: list[dict]) -> list[str]:
    """Write ``rows`` (dicts; missing columns null) as one Parquet file in the table's schema where a
    run of ``partition`` stages its files; return its key (what :meth:`Lake.publish_files` commits)."""
    key = lake.staging_key(table, partition, run_id) + "/part-00000.parquet"
    arrow = pa.Table.from_pylist(rows, schema=table.schema().as_arrow())
    pq.write_table(arrow, lake.arrow_path(key), filesystem=lake.fs)
    return [key]


def publish(lake: Lake, pipeline: PipelineConfig, layer: str, partition: Partition, run_id: str, rows: list[dict],
            started_from: int | None) -> Commit:
    """One run's publish of ``rows`` to ``partition`` of ``<pipeline>.<layer>``, as a stage does it."""
    keys = stage_rows(lake, lake.table(pipeline, layer), partition, run_id, rows)
    commit = Commit(layer=layer, pipeline=pipeline.name, partition=partition.path,
                    interval=(partition.start, partition.end), schema_version=1, run_id=run_id, rows=len(rows))
    return lake.publish_files(pipeline, commit, keys, started_from)


def test_commits_to_different_partitions_at_once_both_land(settings, catalog, pipeline):
    ident = table_name(pipeline.name, "curated")
    ensure_table(catalog, pipeline, "curated")
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def write(day: datetime, ids: range) -> None:
        lake = Lake(settings)  # each writer its own catalog connection
        part = Partition.containing(day)
        run_id = f"w{day:%d}"
        table = lake.table(pipeline, "curated")
        start = table.current_snapshot()
        keys = stage_rows(lake, table, part, run_id, [{"id": f"c{i}", "text": "t", "label": 0, "source": "x",
                                                       "event_time": day, "text_hash": "h", "cluster_id": "k"}
                                                      for i in ids])
        commit = Commit(layer="curated", pipeline=pipeline.name, partition=part.path, interval=(part.start, part.end),
                        schema_version=1, run_id=run_id, rows=len(ids))
        barrier.wait()
        try:
            lake.publish_files(pipeline, commit, keys, started_from=start.snapshot_id if start else None)
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
    # each commit record reads back, with the files it added
    commits = Lake(settings).commits("curated", pipeline.name)
    assert {p: (c.run_id, c.rows, c.files) for p, c in commits.items()} == {
        "dt=2026-11-23": ("w23", 4, 1), "dt=2026-11-24": ("w24", 3, 1)}


def test_two_runs_of_one_partition_the_later_commit_fails_clearly_and_a_rerun_wins(settings, catalog, pipeline):
    lake = Lake(settings)
    table = ensure_table(catalog, pipeline, "excluded")
    part = Partition.containing(DAY1)
    rows = lambda ids: [{"id": f"x{i}", "reason": "too_short", "event_time": DAY1} for i in ids]  # noqa: E731
    start = table.current_snapshot()
    started_from = start.snapshot_id if start else None
    # run A and run B both began at `started_from`; A commits first
    first = publish(lake, pipeline, "excluded", part, "run-a", rows(range(3)), started_from)
    with pytest.raises(PublishConflictError, match=r"run 'run-a' published this partition .* while run 'run-b'"):
        publish(Lake(settings), pipeline, "excluded", part, "run-b", rows(range(5)), started_from)
    table.refresh()
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == ["x0", "x1", "x2"]  # B committed nothing
    assert table.current_snapshot().snapshot_id == first.snapshot_id
    # a rerun that starts after A's commit replaces A's rows
    rerun = publish(lake, pipeline, "excluded", part, "run-c", rows(range(5)), table.current_snapshot().snapshot_id)
    assert sorted(table.refresh().scan().to_arrow().column("id").to_pylist()) == [f"x{i}" for i in range(5)]
    assert lake.read_commit("excluded", pipeline.name, part) == rerun
    # A's rows stay readable at A's snapshot (time travel)
    assert sorted(lake.read_table(first, ["id"]).column("id").to_pylist()) == ["x0", "x1", "x2"]


def test_a_tagged_snapshot_survives_expiry_and_still_reads_its_rows(settings, catalog, pipeline):
    lake = Lake(settings)
    table = ensure_table(catalog, pipeline, "features")
    part = Partition.containing(DAY1)
    rows = lambda ids: [{"id": f"f{i}", "event_time": DAY1} for i in ids]  # noqa: E731
    trained_on = publish(lake, pipeline, "features", part, "v1", rows(range(4)), started_from=None)
    tag_snapshot(table, "model-itest-v1", trained_on.snapshot_id)
    tag_snapshot(table, "model-itest-v1", trained_on.snapshot_id)  # idempotent
    publish(lake, pipeline, "features", part, "rerun", rows(range(10, 12)), started_from=trained_on.snapshot_id)
    table.refresh()
    table.maintenance.expire_snapshots().older_than(datetime.now(timezone.utc) + timedelta(seconds=1)).commit()
    table.refresh()
    kept = {s.snapshot_id for s in table.snapshots()}
    assert trained_on.snapshot_id in kept and table.current_snapshot().snapshot_id in kept
    old = table.scan(snapshot_id=table.metadata.refs["model-itest-v1"].snapshot_id).to_arrow()
    assert sorted(old.column("id").to_pylist()) == ["f0", "f1", "f2", "f3"]
    assert sorted(lake.read_table(trained_on, ["id"]).column("id").to_pylist()) == ["f0", "f1", "f2", "f3"]


def test_files_without_field_ids_are_read_by_name_in_every_layer(settings, pipeline):
    """Ingest writes its Parquet files without Iceberg field ids: every table reads such files through
    its name mapping, which must follow the table's own ids (list columns' element ids included)."""
    lake = Lake(settings)
    own = pipeline.model_copy(update={"name": f"{pipeline.name}_ids"})
    part = Partition.containing(DAY2)
    values = {pa.string(): "v", pa.large_string(): "v", pa.int64(): 7, pa.int32(): 3, pa.float64(): 0.5,
              pa.bool_(): True, pa.binary(): b"b", pa.large_binary(): b"b"}
    for layer in LAYERS:
        table = lake.table(own, layer)
        plain = pa.schema([pa.field(f.name, f.type) for f in table.schema().as_arrow()])  # no field-id metadata
        row = {}
        for f in plain:
            if pa.types.is_timestamp(f.type):
                row[f.name] = DAY2 + timedelta(hours=1)
            elif pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
                row[f.name] = [1, 2]
            else:
                row[f.name] = f"{values[f.type]}-{f.name}" if values[f.type] == "v" else values[f.type]
        key = lake.staging_key(table, part, "ids") + "/part-00000.parquet"
        pq.write_table(pa.Table.from_pylist([row], schema=plain), lake.arrow_path(key), filesystem=lake.fs)
        commit = lake.publish_files(own, Commit(layer=layer, pipeline=own.name, partition=part.path,
                                                interval=(part.start, part.end), schema_version=1, run_id="ids",
                                                rows=1), [key], started_from=None)
        assert lake.read_table(commit).to_pylist() == [row], layer
