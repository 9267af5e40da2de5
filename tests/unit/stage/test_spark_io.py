"""Spark <-> lake I/O of the Spark stages on a local lake: a partition published as one Iceberg commit
(the same rows in the same files and order on reruns), read back at its commit's snapshot."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from lakeforge.errors import LakeError, PublishConflictError, SchemaMismatchError
from lakeforge.stage import spark_io
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import check_rows_read, publish_frame, read_partition

CURATED = ("id string, text string, label bigint, source string, event_time timestamp, text_hash string, "
           "cluster_id string")
WHEN = datetime(2026, 11, 23, 1, tzinfo=timezone.utc)


def curated(arrow_frame, ids):
    """A curated frame of rows with ids ``ids`` (in that order), in partition dt=2026-11-23."""
    return arrow_frame(CURATED, [(i, f"text {i}", 1, "imdb", WHEN, f"h{i}", f"h{i}") for i in ids])


def publish(lake, df, rows, run_id, started_from=None, rows_per_file=20, partition="2026-11-23"):
    stage = StageRun.create("movie_reviews", partition, run_id, lake=lake)
    return stage, publish_frame(stage, df, rows, layer="curated", rows_per_file=rows_per_file,
                                started_from=started_from, stats={"rows_in": rows})


def file_ids(lake, commit):
    return [pq.read_table(path, columns=["id"]).column("id").to_pylist() for path in lake.data_files(commit)]


def test_several_sorted_files_when_large_and_the_same_on_reruns(arrow_frame, local_lake):
    ids = [f"id{i:03d}" for i in reversed(range(50))]
    _, first = publish(local_lake, curated(arrow_frame, ids), 50, "f1")
    assert (first.layer, first.rows, first.files, first.run_id) == ("curated", 50, 3, "f1")
    assert first.stats == {"rows_in": 50} and first.snapshot_id == local_lake.snapshot_id("movie_reviews", "curated")
    layout = file_ids(local_lake, first)
    assert len(layout) == 3 and sorted(sum(layout, [])) == sorted(ids)
    assert all(chunk == sorted(chunk) for chunk in layout)
    # a rerun (rows in another order) replaces the partition with the same rows in the same files and order
    _, again = publish(local_lake, curated(arrow_frame, sorted(ids)), 50, "f2", started_from=first.snapshot_id)
    assert again.snapshot_id != first.snapshot_id
    assert sorted(file_ids(local_lake, again)) == sorted(layout)


def test_read_partition_reads_the_commit_at_its_snapshot(spark, arrow_frame, local_lake):
    stage, first = publish(local_lake, curated(arrow_frame, ["b", "a"]), 2, "f1")
    next_day = arrow_frame(CURATED, [("z", "t", 0, "imdb", datetime(2026, 11, 24, 1, tzinfo=timezone.utc), "hz", "hz")])
    _, other_day = publish(local_lake, next_day, 1, "f1", started_from=first.snapshot_id, partition="2026-11-24")
    _, rerun = publish(local_lake, curated(arrow_frame, ["c"]), 1, "f2", started_from=other_day.snapshot_id)
    # the first commit's rows, however the table moved on since; only its partition
    df = read_partition(spark, stage, first, {"label": "int"})
    assert sorted(r["id"] for r in df.collect()) == ["a", "b"] and dict(df.dtypes)["label"] == "int"
    assert [r["id"] for r in read_partition(spark, stage, rerun).collect()] == ["c"]
    check_rows_read(first, 2)
    with pytest.raises(LakeError, match=r"movie_reviews.curated dt=2026-11-23 \(run f2, snapshot \d+\) says 1 rows "
                                        r"but holds 2: rerun the upstream task"):
        check_rows_read(rerun, 2)
    with pytest.raises(SchemaMismatchError, match=r"table movie_reviews.curated lacks columns \['tokens'\]"):
        read_partition(spark, stage, first, {"tokens": "string"})


def test_a_rival_commit_of_the_partition_fails_the_later_run(arrow_frame, local_lake):
    _, first = publish(local_lake, curated(arrow_frame, ["a"]), 1, "f1")
    _, won = publish(local_lake, curated(arrow_frame, ["b"]), 1, "f2", started_from=first.snapshot_id)
    with pytest.raises(PublishConflictError, match="run 'f2' published this partition"):
        publish(local_lake, curated(arrow_frame, ["c"]), 1, "f3", started_from=first.snapshot_id)
    assert local_lake.snapshot_id("movie_reviews", "curated") == won.snapshot_id  # nothing of f3 committed
    assert local_lake.read_table(local_lake.read_commit("curated", "movie_reviews", won.lake_partition),
                                 ["id"]).column("id").to_pylist() == ["b"]


def test_a_rival_that_commits_while_spark_writes_still_fails_the_run(arrow_frame, local_lake, monkeypatch):
    """The check before the write cannot see a rival that commits during it: Spark's commit validates
    from the run's start snapshot (serializable) and fails the run instead of replacing rows it never saw."""
    _, first = publish(local_lake, curated(arrow_frame, ["a"]), 1, "f1")
    _, won = publish(local_lake, curated(arrow_frame, ["b"]), 1, "f2", started_from=first.snapshot_id)
    monkeypatch.setattr(spark_io, "check_no_rival", lambda *args: None)  # as if f2 committed after the check
    with pytest.raises(PublishConflictError, match="another run published this partition while run 'f3'"):
        publish(local_lake, curated(arrow_frame, ["c"]), 1, "f3", started_from=first.snapshot_id)
    assert local_lake.snapshot_id("movie_reviews", "curated") == won.snapshot_id
