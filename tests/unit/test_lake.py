"""The lake (lakeforge.lake): object keys built in one place, the tables' publish protocol (one Iceberg
commit replaces one partition whole), the commit record in the snapshot summary, lineage refs, readers
that read exactly what a commit published. On a local lake (SQLite catalog, ``file://`` warehouse) and
on an S3 Lake object that talks to no server (the S3 round trips run in tests/integration)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.config import Partition, PipelineConfig, Settings
from lakeforge.errors import LakeError, PartitionNotPublishedError, PublishConflictError
from lakeforge.ingest.records import raw_schema
from lakeforge.lake import COMMIT_KEY, Commit, Lake, LocalLake, layer_uri

DAY = Partition.parse("2026-11-23")
NEXT_DAY = Partition.parse("2026-11-24")
HOUR = Partition.parse("2026-11-23T05", "hourly")
REVIEWS = PipelineConfig.load("movie_reviews")


# -- object keys ----------------------------------------------------------------------------------


def test_object_keys_come_from_one_place():
    lake = Lake(Settings(s3_bucket="lake-b"))
    assert lake.report_key("p", DAY, "r1", "quality.html") == "reports/p/dt=2026-11-23/run=r1/quality.html"
    assert lake.report_key("p", HOUR, "r1", "q.json") == "reports/p/dt=2026-11-23/hour=05/run=r1/q.json"
    assert lake.checkpoint_key("p", DAY, "dag/run") == "checkpoints/p/dt=2026-11-23/dag/run"
    assert lake.uri("reports/p") == "s3://lake-b/reports/p"
    assert lake.key_of("s3a://lake-b/warehouse/p/raw/x.parquet") == "warehouse/p/raw/x.parquet"
    assert lake.key_of("s3://lake-b/reports/p") == "reports/p"
    assert lake.arrow_path("s3://lake-b/reports/x") == lake.arrow_path("reports/x") == "lake-b/reports/x"
    with pytest.raises(LakeError, match="outside the lake bucket 'lake-b'"):
        lake.key_of("s3://other/reports/x")


def test_a_local_lake_has_the_same_keys_under_its_root(local_lake):
    uri = local_lake.uri("reports/p/dt=2026-11-23/run=r1/q.json")
    assert uri == f"file://{local_lake.root}/reports/p/dt=2026-11-23/run=r1/q.json"  # '=' not escaped
    assert local_lake.key_of(uri) == "reports/p/dt=2026-11-23/run=r1/q.json"
    assert local_lake.arrow_path(uri) == local_lake.arrow_path(local_lake.key_of(uri)) == str(
        local_lake.root / "reports/p/dt=2026-11-23/run=r1/q.json")
    with pytest.raises(LakeError, match="outside the local lake"):
        local_lake.key_of("file:///etc/passwd")
    # staging prefixes: under the table's data location, one per attempt (a retry never overwrites a listed file)
    table = local_lake.table(REVIEWS, "raw")
    first, second = (local_lake.staging_key(table, DAY, "r1") for _ in range(2))
    assert first != second
    assert first.startswith(f"{local_lake.key_of(table.location())}/data/dt=2026-11-23/r1-")


def test_asset_uris_name_the_layers_table(monkeypatch):
    monkeypatch.delenv("LAKEFORGE_CATALOG_NAME", raising=False)
    monkeypatch.setenv("LAKEFORGE_S3_BUCKET", "team-lake")  # the bucket is no part of a table's identity
    assert layer_uri("raw", "movie_reviews") == "iceberg://lakeforge/movie_reviews/raw"
    monkeypatch.setenv("LAKEFORGE_CATALOG_NAME", "team_catalog")
    assert layer_uri("curated", "movie_reviews") == "iceberg://team_catalog/movie_reviews/curated"
    assert layer_uri("features", "p", catalog="c") == "iceberg://c/p/features"


# -- the commit record --------------------------------------------------------------------------


def record(**fields) -> Commit:
    return Commit(**{"layer": "curated", "pipeline": "movie_reviews", "partition": DAY.path,
                     "interval": (DAY.start, DAY.end), "schema_version": 1, "run_id": "c1", "rows": 2,
                     "created_at": datetime(2026, 11, 24, tzinfo=timezone.utc), **fields})


def test_the_commit_record_round_trips_through_a_snapshot_summary():
    inputs = [{"table": "movie_reviews.raw", "snapshot_id": 11, "partition": DAY.path}]
    commit = record(inputs=inputs, dropped={"too_short": 1}, quarantined={"malformed_json": 2},
                    kafka_offsets={"movie_reviews.events": {"0": [0, 3]}},
                    stats={"rows_in": 3, "dropped_samples": {"too_short": [{"id": "a", "text": "meh"}]}})
    assert commit.table == "movie_reviews.curated" and commit.lake_partition == DAY
    props = commit.properties()
    assert all(isinstance(v, str) for v in props.values())
    assert (props["lakeforge.partition"], props["lakeforge.run_id"], props["lakeforge.rows"]) == (DAY.path, "c1", "2")
    assert props["lakeforge.code_version"] == commit.code_version
    assert json.loads(props["lakeforge.inputs"]) == inputs
    assert json.loads(props["lakeforge.kafka_offsets"]) == {"movie_reviews.events": {"0": [0, 3]}}
    # the samples stay in the report (every metadata file repeats every summary); the table gives id and files
    stored = json.loads(props[COMMIT_KEY])
    assert "dropped_samples" not in stored["stats"] and not {"snapshot_id", "files"} & set(stored)
    snapshot = SimpleNamespace(snapshot_id=42, summary={**props, "added-data-files": "3", "operation": "overwrite"})
    assert Commit.of_snapshot(snapshot) == commit.model_copy(
        update={"stats": {"rows_in": 3}, "snapshot_id": 42, "files": 3})
    # headline keys are written only when there is something to say
    assert not {"lakeforge.inputs", "lakeforge.kafka_offsets"} & set(record().properties())
    # snapshots lakeforge did not commit (maintenance, another engine) carry no record
    assert Commit.of_snapshot(SimpleNamespace(snapshot_id=43, summary={"operation": "replace"})) is None


# -- publishing partitions of a table ------------------------------------------------------------


def land(lake: LocalLake, ids: list[str], part: Partition, run_id: str, *, started_from: int | None = None,
         files: int = 1) -> Commit:
    """Write raw rows ``ids`` as ``files`` Parquet files to a staging prefix and publish them as the
    partition of ``movie_reviews.raw`` (what a landing does)."""
    when = part.start + timedelta(hours=1)
    rows = [{"id": i, "text": f"review {i}", "label": 1, "source": "imdb", "event_time": when,
             "kafka_topic": "movie_reviews.events", "kafka_partition": 0, "kafka_offset": n, "kafka_timestamp": when}
            for n, i in enumerate(ids)]
    prefix = lake.staging_key(lake.table(REVIEWS, "raw"), part, run_id)
    keys = []
    for n in range(files):
        key = f"{prefix}/part-{n:05d}.parquet"
        (lake.root / key).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows[n::files], schema=raw_schema(REVIEWS)), lake.root / key)
        keys.append(key)
    commit = Commit(layer="raw", pipeline="movie_reviews", partition=part.path, interval=(part.start, part.end),
                    schema_version=1, run_id=run_id, rows=len(rows),
                    kafka_offsets={"movie_reviews.events": {"0": [0, len(rows)]}},
                    stats={"dropped_samples": {"malformed_json": [{"offset": 9}]}})
    published = lake.publish_files(REVIEWS, commit, keys, started_from=started_from)
    assert sorted(published.model_dump(exclude={"snapshot_id", "files"}).items()) == sorted(
        commit.model_dump(exclude={"snapshot_id", "files"}).items())  # the caller keeps its samples
    assert published.files == files and published.snapshot_id == lake.snapshot_id("movie_reviews", "raw")
    assert lake.data_files(published) == sorted(lake.arrow_path(k) for k in keys)  # exactly the files it added
    return published


def ids_of(lake: LocalLake, commit: Commit) -> list[str]:
    return sorted(lake.read_table(commit, ["id"]).column("id").to_pylist())


def stored(commit: Commit) -> Commit:
    """The commit as the snapshot summary records it: without the dropped samples."""
    return commit.model_copy(update={"stats": {k: v for k, v in commit.stats.items() if k != "dropped_samples"}})


def test_a_publish_replaces_exactly_its_partition_in_one_snapshot(local_lake):
    first = land(local_lake, ["a", "b", "c"], DAY, "r1", files=2)
    other = land(local_lake, ["x"], NEXT_DAY, "r1", started_from=first.snapshot_id)
    assert ids_of(local_lake, first) == ["a", "b", "c"] and ids_of(local_lake, other) == ["x"]
    table = local_lake.existing_table("movie_reviews", "raw")
    before = len(table.snapshots())

    rerun = land(local_lake, ["d"], DAY, "r2", started_from=other.snapshot_id)
    table = local_lake.existing_table("movie_reviews", "raw")
    assert len(table.snapshots()) == before + 1  # one commit
    summary = table.current_snapshot().summary
    assert summary.operation.value == "overwrite"
    assert (summary["deleted-data-files"], summary["added-data-files"]) == ("2", "1")  # the partition whole
    assert (summary["deleted-records"], summary["added-records"]) == ("3", "1")

    current = local_lake.read_commit("raw", "movie_reviews", DAY)
    assert current == stored(rerun) and current.run_id == "r2" and current.files == 1
    assert ids_of(local_lake, current) == ["d"]
    # the other partition is untouched: same commit, same rows, same files
    assert local_lake.read_commit("raw", "movie_reviews", NEXT_DAY) == stored(other)
    assert ids_of(local_lake, other) == ["x"]
    # time travel: the replaced run's rows stay readable at its snapshot (until maintenance expires it)
    assert ids_of(local_lake, first) == ["a", "b", "c"]
    assert all(Path(p).is_file() for p in local_lake.data_files(first))
    assert set(local_lake.data_files(first)).isdisjoint(local_lake.data_files(current))
    # the whole table: one current commit per partition, oldest partition first
    assert local_lake.commits("raw", "movie_reviews") == {DAY.path: stored(rerun), NEXT_DAY.path: stored(other)}
    assert local_lake.published_partitions("raw", "movie_reviews") == [DAY, NEXT_DAY]
    # the Arrow columns are the table's, whatever the files were written with
    assert local_lake.read_table(current).column_names == [f.name for f in table.schema().fields]


def test_lineage_refs_name_the_table_and_snapshot(local_lake):
    first = land(local_lake, ["a"], DAY, "r1")
    assert first.ref == {"table": "movie_reviews.raw", "snapshot_id": first.snapshot_id, "partition": DAY.path}
    land(local_lake, ["b"], DAY, "r2", started_from=first.snapshot_id)
    # the ref reads the commit it names, however the table moved on since
    assert local_lake.commit_of(first.ref) == stored(first)
    assert ids_of(local_lake, local_lake.commit_of(first.ref)) == ["a"]
    with pytest.raises(PartitionNotPublishedError, match="no lakeforge commit at snapshot 123"):
        local_lake.commit_of({"table": "movie_reviews.raw", "snapshot_id": 123, "partition": DAY.path})
    with pytest.raises(PartitionNotPublishedError, match="'movie_reviews.curated'"):
        local_lake.commit_of({**first.ref, "table": "movie_reviews.curated"})  # no such table yet


def test_a_partition_nothing_published_is_refused_by_name(local_lake):
    assert issubclass(PartitionNotPublishedError, LakeError)
    with pytest.raises(PartitionNotPublishedError, match="no published raw partition dt=2026-11-23"):
        local_lake.read_commit("raw", "movie_reviews", DAY)  # no table yet
    assert local_lake.commits("raw", "movie_reviews") == {} and local_lake.published_partitions("raw", "x") == []
    assert local_lake.snapshot_id("movie_reviews", "raw") is None
    land(local_lake, ["x"], NEXT_DAY, "r1")
    with pytest.raises(PartitionNotPublishedError, match="run the upstream task for dt=2026-11-23"):
        local_lake.read_commit("raw", "movie_reviews", DAY)  # the table exists, the partition does not


def test_a_rival_commit_of_the_same_partition_fails_the_later_run(local_lake):
    land(local_lake, ["a"], DAY, "r1")
    started = local_lake.snapshot_id("movie_reviews", "raw")  # r2 and r3 both start here
    won = land(local_lake, ["b"], DAY, "r2", started_from=started)
    with pytest.raises(PublishConflictError, match="run 'r2' published this partition .* while run 'r3'"):
        land(local_lake, ["c"], DAY, "r3", started_from=started)
    # nothing of the loser was committed
    assert local_lake.snapshot_id("movie_reviews", "raw") == won.snapshot_id
    assert ids_of(local_lake, local_lake.read_commit("raw", "movie_reviews", DAY)) == ["b"]
    # a commit of another partition in the meantime is no conflict
    land(local_lake, ["y"], NEXT_DAY, "r3", started_from=started)
    # without a start snapshot, any other run's commit of the partition is a rival; the run's own is not
    with pytest.raises(PublishConflictError):
        land(local_lake, ["d"], DAY, "r4")
    assert ids_of(local_lake, land(local_lake, ["e"], DAY, "r2", started_from=started)) == ["e"]


def test_json_and_bytes_round_trip(local_lake):
    uri = local_lake.put_json("reports/p/x.json", {"when": datetime(2026, 11, 23, tzinfo=timezone.utc)})
    assert uri == local_lake.uri("reports/p/x.json")
    assert json.loads(local_lake.get_bytes(uri)) == {"when": "2026-11-23 00:00:00+00:00"}
    assert local_lake.read_bytes(uri) == local_lake.get_bytes("reports/p/x.json")
