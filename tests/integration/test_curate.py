"""Curate and features on the real services (the Iceberg catalog in PostgreSQL, the tables' files on
SeaweedFS through Iceberg's S3FileIO): a 3-day backfill with cross-partition duplicates, the report and
the excluded rows in the lake, and the spark-submit entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from lakeforge.config import PIPELINES_DIR, REPO_ROOT, Partition, PipelineConfig
from lakeforge.ingest.records import raw_schema
from lakeforge.lake import Commit, Lake

pytestmark = pytest.mark.integration

BASE = [
    "A slow burn of a thriller that pays off in its last act, with a performance that will stay with me for weeks.",
    "The jokes land more often than not and the cast clearly had fun making it, which is infectious to watch.",
    "An overlong mess with a script that never decides what it wants to be, and a score that drowns every scene.",
    "Gorgeous to look at, but the story is thin and the characters are sketches rather than people I cared about.",
]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    spec = yaml.safe_load((PIPELINES_DIR / "movie_reviews.yaml").read_text())
    spec["name"] = f"itest_curate_{datetime.now():%H%M%S%f}"
    spec["quality_gate"] = {"min_rows": 1}
    path = tmp_path_factory.mktemp("curate") / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path), spec["name"]


def publish_raw(lake: Lake, path: str, day: str, rows: list[tuple[str, str]]) -> Commit:
    """Commit ``rows`` (id, text) as the raw partition of ``day``, as a landing does: one Parquet file
    in the raw table's data location, then one commit."""
    pipeline = PipelineConfig.load(path)
    part = Partition.parse(day)
    at = part.start + timedelta(hours=1)
    table = pa.Table.from_pylist([{"id": i, "text": t, "label": 1, "source": "imdb", "event_time": at,
                                   "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": n, "kafka_timestamp": at}
                                  for n, (i, t) in enumerate(rows)], schema=raw_schema(pipeline))
    key = lake.staging_key(lake.table(pipeline, "raw"), part, "ingest") + "/part-00000.parquet"
    pq.write_table(table, lake.arrow_path(key), filesystem=lake.fs)
    commit = Commit(layer="raw", pipeline=pipeline.name, partition=part.path, interval=(part.start, part.end),
                    schema_version=1, run_id="ingest", rows=len(rows))
    return lake.publish_files(pipeline, commit, [key], lake.snapshot_id(pipeline.name, "raw"))


def test_backfill_on_s3_and_the_spark_submit_entry_point(settings, pipeline):
    from lakeforge.curate import run
    from lakeforge.spark import spark_session, submit_kwargs
    from lakeforge.stage.run import StageRun

    path, name = pipeline
    lake = Lake(settings)
    publish_raw(lake, path, "2026-11-20", [("a1", BASE[0]), ("a2", BASE[1])])
    raw2 = publish_raw(lake, path, "2026-11-21",
                       [("b1", BASE[0].lower()), ("b2", BASE[1] + " Really."), ("b3", BASE[2])])
    publish_raw(lake, path, "2026-11-22", [("c1", BASE[2]), ("c2", BASE[3]), ("c3", "meh")])

    spark = spark_session("itest-curate", settings)
    try:
        day1 = run(StageRun.create(path, "2026-11-20", "d1", settings=settings, lake=lake), spark=spark)
        day2 = run(StageRun.create(path, "2026-11-21", "d2", settings=settings, lake=lake), spark=spark)
    finally:
        spark.stop()
    assert day1.rows == 2 and day2.rows == 1
    assert day2.dropped["exact_duplicate_cross_partition"] == 1 and day2.dropped["near_duplicate_cross_partition"] == 1
    assert day2.inputs == [raw2.ref]  # lineage: the raw table's snapshot it read
    # the curated partition is a commit to <pipeline>.curated, its files in that table's location on S3
    curated = lake.existing_table(name, "curated")
    assert curated.location().startswith(f"s3://{lake.bucket}/")
    files = lake.data_files(day2)
    assert len(files) == day2.files >= 1
    assert all(f.startswith(lake.arrow_path(lake.key_of(curated.location())) + "/data/") for f in files)
    assert lake.read_table(day2, columns=["id"]).column("id").to_pylist() == ["b3"]
    report = json.loads(lake.get_bytes(day2.stats["report"]["json"]))
    assert report["drops_by_reason"]["near_duplicate_cross_partition"] == 1
    assert b"<svg" in lake.get_bytes(day2.stats["report"]["html"])
    excluded_commit = lake.read_commit("excluded", name, Partition.parse("2026-11-21"))
    assert excluded_commit.snapshot_id == day2.stats["excluded"]["snapshot_id"] and excluded_commit.run_id == "d2"
    excluded = lake.read_table(excluded_commit).to_pylist()
    assert sorted((r["id"], r["duplicate_of"]) for r in excluded) == [("b1", "a1"), ("b2", "a2")]

    # day 3 through spark-submit, as Airflow runs it
    kw = submit_kwargs(settings)
    args = [os.path.join(os.path.dirname(sys.executable), "spark-submit")]
    for key, value in kw["conf"].items():
        args += ["--conf", f"{key}={value}"]
    if "driver_class_path" in kw:
        args += ["--driver-class-path", kw["driver_class_path"]]
    if "jars" in kw:
        args += ["--jars", kw["jars"]]
    summaries = {}
    for job, extra in (("curate", []), ("features", [])):
        out = subprocess.run([*args, str(REPO_ROOT / "jobs" / f"{job}.py"), "--pipeline", path, "--partition", "2026-11-22",
                              "--run-id", "scheduled__2026-11-22", *extra],
                             env={**os.environ, **kw["env_vars"]}, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = summaries[job] = json.loads(out.stdout.strip().splitlines()[-1])
        if job == "curate":
            assert summary["rows"] == 1 and summary["dropped"]["exact_duplicate_cross_partition"] == 1
            assert summary["report"]["html"].endswith("quality.html")
    part3 = Partition.parse("2026-11-22")
    curated3, features = lake.read_commit("curated", name, part3), lake.read_commit("features", name, part3)
    for job, commit in (("curate", curated3), ("features", features)):  # the jobs' summaries name their commits
        assert (summaries[job]["table"], summaries[job]["snapshot_id"]) == (commit.table, commit.snapshot_id)
        assert summaries[job]["run_id"] == commit.run_id and commit.run_id.startswith("scheduled__2026-11-22")
    assert features.inputs == [curated3.ref]
    table = lake.read_table(features)
    # the features columns, then the pipeline's extra field (source), kept through the layers, then the
    # table's partition column
    assert table.column_names == ["id", "text", "label", "split", "input_ids", "num_tokens", "cluster_id", "source",
                                  "event_time"]
    assert table.column("id").to_pylist() == ["c2"] and table.column("input_ids").to_pylist()[0][0] == 101
    assert table.column("source").to_pylist() == ["imdb"]


@pytest.mark.slow  # (45 s) the exit status mapping is a unit test; this is spark-submit passing it on
def test_gate_failure_exits_3_through_spark_submit(settings, pipeline, tmp_path):
    from lakeforge.spark import submit_kwargs

    path, name = pipeline
    spec = yaml.safe_load(open(path).read())
    spec["quality_gate"] = {"min_rows": 50}
    strict = tmp_path / f"{name}.yaml"
    strict.write_text(yaml.safe_dump(spec))
    lake = Lake(settings)
    # a text unlike every other partition's (a near-duplicate of one would be dropped, leaving 0 rows)
    publish_raw(lake, path, "2026-11-25", [("z1", "Nothing here resembles the other reviews: a documentary about "
                                                  "bees, patiently shot, oddly moving, a little too long.")])
    kw = submit_kwargs(settings)
    args = [os.path.join(os.path.dirname(sys.executable), "spark-submit")]
    for key, value in kw["conf"].items():
        args += ["--conf", f"{key}={value}"]
    args += ["--driver-class-path", kw["driver_class_path"]] if "driver_class_path" in kw else ["--jars", kw["jars"]]
    out = subprocess.run([*args, str(REPO_ROOT / "jobs" / "curate.py"), "--pipeline", str(strict), "--partition",
                          "2026-11-25"], env={**os.environ, **kw["env_vars"]}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stderr[-2000:]
    assert "min_rows: 1 curated rows, at least 50 required" in out.stdout.strip().splitlines()[-1]
