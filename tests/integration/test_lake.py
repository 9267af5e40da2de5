"""The lake's Iceberg guarantees on the real services (PostgreSQL catalog, SeaweedFS, Spark): concurrent
commits of different partitions, one winner per partition, a reader during a rerun, every layer
queryable by pyiceberg and Spark SQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeforge.catalog import LAYERS, partition_column, spark_table
from lakeforge.config import Partition, PipelineConfig
from lakeforge.errors import PublishConflictError
from lakeforge.lake import Commit, Lake
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import publish_frame, read_partition

pytestmark = pytest.mark.integration

DAYS = [Partition.parse(d) for d in ("2026-11-20", "2026-11-21", "2026-11-22")]


@pytest.fixture(scope="module")
def pipeline():
    base = PipelineConfig.load("movie_reviews")
    return base.model_copy(update={"name": f"itest_lake_{datetime.now():%H%M%S%f}"})


@pytest.fixture(scope="module")
def lake(settings):
    return Lake(settings)


@pytest.fixture(scope="module")
def spark(settings):
    from lakeforge.spark import spark_session

    return spark_session("itest-lake", settings)


def stage(pipeline: PipelineConfig, lake: Lake, part: Partition, run_id: str) -> StageRun:
    return StageRun.create(pipeline, part, run_id, lake=lake)


def key_column(layer: str) -> str:
    """A string column that tells the rows of ``layer`` apart (quarantine rows have no id)."""
    return "detail" if layer == "quarantine" else "id"


def frame(spark, lake: Lake, pipeline: PipelineConfig, layer: str, part: Partition, ids: list[str]):
    """A Spark frame of ``layer``'s columns: ``ids``, the partition column inside ``part``, the rest null."""
    schema = lake.table(pipeline, layer).schema().as_arrow()
    column = partition_column(pipeline, layer)
    rows = [{name: None for name in schema.names} | {key_column(layer): i, column: part.start + timedelta(minutes=n)}
            for n, i in enumerate(ids)]
    return spark.createDataFrame(pa.Table.from_pylist(rows, schema=schema))


def ids_of(lake: Lake, commit: Commit) -> list[str]:
    return sorted(lake.read_table(commit, ["id"]).column("id").to_pylist())


def test_parallel_spark_commits_to_different_partitions_all_land(spark, lake, pipeline):
    errors: list[BaseException] = []
    commits: dict[str, Commit] = {}
    barrier = threading.Barrier(len(DAYS), timeout=120)
    started = lake.snapshot_id(pipeline.name, "features")

    def write(part: Partition) -> None:  # one Spark job per thread: they race to commit
        try:
            df = frame(spark, lake, pipeline, "features", part, [f"{part.path}-{i}" for i in range(5)])
            barrier.wait()
            commits[part.path] = publish_frame(stage(pipeline, lake, part, f"w-{part.start:%Y%m%d}"), df, 5, layer="features",
                                               rows_per_file=1000, started_from=started)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(part,)) for part in DAYS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({c.snapshot_id for c in commits.values()}) == len(DAYS)
    for part in DAYS:
        assert lake.read_commit("features", pipeline.name, part).run_id == f"w-{part.start:%Y%m%d}"
        assert ids_of(lake, commits[part.path]) == sorted(f"{part.path}-{i}" for i in range(5))


# One Spark application per process (its own JVM, its own Iceberg catalog client): it starts, writes a
# frame of features for its day, signals ready, waits for the go file, then commits.
SPARK_WRITER = """
import json, sys, time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa

from lakeforge.config import Partition, PipelineConfig
from lakeforge.lake import Lake
from lakeforge.spark import spark_session
from lakeforge.stage.run import StageRun
from lakeforge.stage.spark_io import publish_frame

name, day, started, sync = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
pipeline = PipelineConfig.load("movie_reviews").model_copy(update={"name": name})
part, lake = Partition.parse(day), Lake()
spark = spark_session(f"itest-lake-{day}")
schema = lake.table(pipeline, "features").schema().as_arrow()
rows = [{c: None for c in schema.names} | {"id": f"{day}-p{i}", "event_time": part.start + timedelta(minutes=i)}
        for i in range(7)]
df = spark.createDataFrame(pa.Table.from_pylist(rows, schema=schema)).cache()
df.count()
(sync / f"ready-{day}").touch()
while not (sync / "go").exists():
    time.sleep(0.05)
stage = StageRun.create(pipeline, part, f"proc-{part.start:%Y%m%d}", lake=lake)
commit = publish_frame(stage, df, 7, layer="features", rows_per_file=1000, started_from=int(started) or None)
print(json.dumps({"snapshot_id": commit.snapshot_id, "run_id": commit.run_id}))
"""


@pytest.mark.slow  # (~60 s: one JVM per process) the threaded test above races commits in one application
def test_separate_spark_applications_commit_different_partitions_at_once(lake, pipeline, tmp_path):
    days = [Partition.parse(d) for d in ("2026-11-24", "2026-11-25")]
    started = lake.snapshot_id(pipeline.name, "features") or 0
    procs = [subprocess.Popen([sys.executable, "-c", SPARK_WRITER, pipeline.name, part.path, str(started),
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for part in days]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready-{part.path}").exists() for part in days):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline, "the Spark writers did not start"
        time.sleep(0.2)
    (tmp_path / "go").touch()  # both commit now, from the same starting snapshot
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["snapshot_id"] for r in results}) == 2
    for part in days:
        commit = lake.read_commit("features", pipeline.name, part)
        assert commit.run_id == f"proc-{part.start:%Y%m%d}"
        assert ids_of(lake, commit) == sorted(f"{part.path}-p{i}" for i in range(7))


def test_two_runs_of_one_partition_the_later_commit_fails_and_nothing_of_it_lands(spark, lake, pipeline):
    part = DAYS[0]
    # Spark (curated): run A began before run B committed the same partition
    a_started = lake.snapshot_id(pipeline.name, "curated")
    b = publish_frame(stage(pipeline, lake, part, "run-b"), frame(spark, lake, pipeline, "curated", part, ["b1"]), 1,
                      layer="curated", rows_per_file=1000, started_from=a_started)
    with pytest.raises(PublishConflictError, match="run-b.*published this partition"):
        publish_frame(stage(pipeline, lake, part, "run-a"), frame(spark, lake, pipeline, "curated", part, ["a1"]), 1,
                      layer="curated", rows_per_file=1000, started_from=a_started)
    assert lake.read_commit("curated", pipeline.name, part).snapshot_id == b.snapshot_id
    # pyiceberg (what ingest uses): the same rule
    raw = lake.table(pipeline, "raw")
    a_started = lake.snapshot_id(pipeline.name, "raw")
    first = publish_raw(lake, pipeline, part, "land-b", ["x1", "x2"], a_started)
    with pytest.raises(PublishConflictError, match="land-b"):
        publish_raw(lake, pipeline, part, "land-a", ["y1"], a_started)
    assert lake.read_commit("raw", pipeline.name, part).snapshot_id == first.snapshot_id
    assert raw.refresh().current_snapshot().snapshot_id == first.snapshot_id
    # a rerun that starts after the winner replaces it
    again = publish_raw(lake, pipeline, part, "land-a", ["y1"], lake.snapshot_id(pipeline.name, "raw"))
    assert ids_of(lake, again) == ["y1"]


def publish_raw(lake: Lake, pipeline: PipelineConfig, part: Partition, run_id: str, ids: list[str],
                started_from: int | None) -> Commit:
    """Commit raw rows the way ingest does: Parquet files in the table's data location, one commit."""
    from lakeforge.ingest.records import raw_schema

    schema = raw_schema(pipeline)
    rows = [{"id": i, "text": f"text {i}", "label": 1, "source": "itest", "event_time": part.start + timedelta(hours=1),
             "kafka_topic": pipeline.topic, "kafka_partition": 0, "kafka_offset": n,
             "kafka_timestamp": part.start + timedelta(hours=1)} for n, i in enumerate(ids)]
    key = lake.staging_key(lake.table(pipeline, "raw"), part, run_id) + "/part-00000-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), lake.arrow_path(key), filesystem=lake.fs)
    commit = stage(pipeline, lake, part, run_id).commit("raw", len(ids),
                                                        kafka_offsets={pipeline.topic: {"0": [0, len(ids)]}})
    return lake.publish_files(pipeline, commit, [key], started_from)


def test_a_reader_during_a_rerun_reads_the_old_partition_whole(spark, lake, pipeline):
    part = DAYS[1]
    old = publish_raw(lake, pipeline, part, "land-1", [f"o{i}" for i in range(4)], lake.snapshot_id(pipeline.name, "raw"))
    reader = lake.read_commit("raw", pipeline.name, part)  # a reader (curate, training) found the partition
    files = lake.data_files(reader)
    new = publish_raw(lake, pipeline, part, "land-2", [f"n{i}" for i in range(6)], lake.snapshot_id(pipeline.name, "raw"))
    # the reader keeps reading what it found, whole, through pyiceberg, Spark and the files themselves
    assert ids_of(lake, reader) == sorted(f"o{i}" for i in range(4)) == ids_of(lake, old)
    assert sorted(r.id for r in read_partition(spark, stage(pipeline, lake, part, "r"), reader).select("id").collect()) \
        == sorted(f"o{i}" for i in range(4))
    assert sum(pq.read_metadata(f, filesystem=lake.fs).num_rows for f in files) == 4  # nothing deleted under it
    # a fresh reader gets the new partition, whole
    assert ids_of(lake, lake.read_commit("raw", pipeline.name, part)) == sorted(f"n{i}" for i in range(6))
    assert new.snapshot_id == lake.read_commit("raw", pipeline.name, part).snapshot_id


def test_every_layer_is_queryable_by_pyiceberg_and_spark_sql(spark, lake, pipeline, settings):
    part = DAYS[2]
    publish_raw(lake, pipeline, part, "land-q", ["q1", "q2"], lake.snapshot_id(pipeline.name, "raw"))
    for layer in LAYERS:
        if layer == "raw":
            continue
        publish_frame(stage(pipeline, lake, part, f"q-{layer}"), frame(spark, lake, pipeline, layer, part, ["q1", "q2"]),
                      2, layer=layer, rows_per_file=1000, started_from=lake.snapshot_id(pipeline.name, layer))
    from lakeforge.catalog import load_catalog, table_name

    catalog = load_catalog(settings)
    for layer in LAYERS:
        column = partition_column(pipeline, layer)
        scanned = catalog.load_table(table_name(pipeline.name, layer)).scan(
            row_filter=f"{column} >= '{part.start.isoformat()}' AND {column} < '{part.end.isoformat()}'").to_arrow()
        assert sorted(scanned.column(key_column(layer)).to_pylist()) == ["q1", "q2"], layer
        name = spark_table(pipeline.name, layer, settings)
        counted = spark.sql(f"SELECT count(*) AS n FROM {name} WHERE {column} >= TIMESTAMP '{part.start:%Y-%m-%d}' "
                            f"AND {column} < TIMESTAMP '{part.end:%Y-%m-%d}'").first()["n"]
        assert counted == 2, layer
        runs = {r[0] for r in spark.sql(f"SELECT summary['lakeforge.run_id'] FROM {name}.snapshots").collect()}
        assert ("land-q" if layer == "raw" else f"q-{layer}") in runs
