"""Lake maintenance and lineage on a local lake (SQLite catalog, real Iceberg via pyiceberg and Spark):
expiry keeps each partition's latest commit and what a model trained on, removes the rest and orphan
files; a model's lineage walks features -> curated -> raw -> Kafka offsets."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.config import Partition, PipelineConfig
from lakeforge.lake import Commit, model_tag
from lakeforge.maintenance import maintain

PIPELINE = PipelineConfig.load("movie_reviews")
DAY1, DAY2 = Partition.parse("2026-11-23"), Partition.parse("2026-11-24")


def commit_rows(lake, layer: str, part: Partition, run_id: str, ids: list[str], **fields) -> Commit:
    """Commit rows with ``ids`` to ``layer``'s partition (every other column null but the partition column)."""
    table = lake.table(PIPELINE, layer)
    schema = table.schema().as_arrow()
    column = "event_time" if layer != "dedup_index" else "partition_start"
    rows = pa.Table.from_pylist([{"id": i, column: part.start + timedelta(minutes=n)} for n, i in enumerate(ids)],
                                schema=pa.schema([schema.field("id"), schema.field(column)]))
    key = lake.staging_key(table, part, run_id) + "/part-0.parquet"
    (lake.root / key).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows, lake.root / key)
    commit = Commit(layer=layer, pipeline=PIPELINE.name, partition=part.path, interval=(part.start, part.end),
                    schema_version=1, run_id=run_id, rows=len(ids), **fields)
    return lake.publish_files(PIPELINE, commit, [key], started_from=lake.snapshot_id(PIPELINE.name, layer))


@pytest.fixture
def lineage_chain(local_lake):
    """raw -> curated -> features of DAY1 (raw with Kafka offsets), and DAY2's raw."""
    raw = commit_rows(local_lake, "raw", DAY1, "land1", ["a", "b", "c"],
                      kafka_offsets={"movie_reviews.events": {"0": [0, 3]}})
    curated = commit_rows(local_lake, "curated", DAY1, "cur1", ["a", "b"], inputs=[raw.ref])
    features = commit_rows(local_lake, "features", DAY1, "feat1", ["a", "b"], inputs=[curated.ref])
    commit_rows(local_lake, "raw", DAY2, "land2", ["x"])
    return raw, curated, features


def test_lineage_walks_from_features_to_kafka_offsets(local_lake, lineage_chain):
    raw, curated, features = lineage_chain
    chain = local_lake.lineage(features.ref)
    assert [(c.table, c.snapshot_id) for c in chain] == [
        ("movie_reviews.features", features.snapshot_id), ("movie_reviews.curated", curated.snapshot_id),
        ("movie_reviews.raw", raw.snapshot_id)]
    assert chain[-1].kafka_offsets == {"movie_reviews.events": {"0": [0, 3]}}


def test_expiry_keeps_partition_records_and_model_snapshots_and_removes_the_rest(spark, local_lake, lineage_chain):
    raw, _, features = lineage_chain
    kept = local_lake.keep(features.ref, model_tag("reviews", 1))  # what training does per registered version
    assert [c.table for c in kept] == ["movie_reviews.features", "movie_reviews.curated", "movie_reviews.raw"]
    # DAY1's raw is re-landed twice (late records): the model's raw snapshot is no longer current
    commit_rows(local_lake, "raw", DAY1, "land1b", ["a", "b", "c", "d"])
    latest = commit_rows(local_lake, "raw", DAY1, "land1c", ["a", "b", "c", "d", "e"])
    table = local_lake.existing_table("movie_reviews", "raw")
    orphan = local_lake.root / local_lake.staging_key(table, DAY1, "crashed") / "part-0.parquet"
    orphan.write_bytes(b"a landing that crashed before its commit")
    two_days_ago = (datetime.now(timezone.utc) - timedelta(days=2)).timestamp()
    os.utime(orphan, (two_days_ago, two_days_ago))  # Iceberg refuses to remove orphans younger than 24 h

    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    report = maintain(spark, local_lake, PIPELINE, snapshot_age=timedelta(0), orphan_age=timedelta(days=1),
                      retain_last=1, now=later, layers=["raw"])

    raw_report = report[f"{local_lake.settings.catalog_name}.movie_reviews.raw"]
    assert raw_report["partitions_tagged"] == 2
    assert raw_report["snapshots_after"] < raw_report["snapshots_before"]
    assert raw_report["deleted_data_files"] >= 1  # land1b's file: neither current nor tagged
    assert raw_report["orphan_files_removed"] >= 1 and not orphan.exists()
    # every partition's latest commit is still readable, DAY2's too (its snapshot left the ancestry)
    assert local_lake.read_commit("raw", "movie_reviews", DAY1).snapshot_id == latest.snapshot_id
    assert local_lake.read_commit("raw", "movie_reviews", DAY2).run_id == "land2"
    # the model's snapshots survive: exactly the rows it was made from, by time travel
    assert sorted(local_lake.read_table(local_lake.commit_of(raw.ref)).column("id").to_pylist()) == ["a", "b", "c"]
    assert [c.snapshot_id for c in local_lake.lineage(features.ref)] == [c.snapshot_id for c in kept]
    # maintenance is idempotent
    again = maintain(spark, local_lake, PIPELINE, snapshot_age=timedelta(0), orphan_age=timedelta(days=1),
                     retain_last=1, now=later, layers=["raw"])
    assert again[f"{local_lake.settings.catalog_name}.movie_reviews.raw"]["deleted_data_files"] == 0
